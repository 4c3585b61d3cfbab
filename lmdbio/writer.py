"""The converter's output side: one LMDB file written append-only in bounded transactions.

Keys arrive in increasing order, so ``putmulti(append=True)`` bulk-loads pages full, without
B-tree splits. Each commit also stores a progress checkpoint, so a killed conversion resumes
from its last commit. LMDB records the largest map size ever set in the file and never lowers
it, so the map starts small and grows before each transaction to what that transaction can
need (``MapFullError`` stays as the safety net): the recorded map ends within about two
commits of the file size, and readers never see a 28 GiB guess.
"""

from __future__ import annotations

import json
import os
from typing import Any

import lmdb

from .errors import DestinationError, DiskFullError, ResumeError
from .format import (KEY_COMPLETE, KEY_HEADER, KEY_HEADER_CRC, KEY_PATHS, KEY_PROGRESS,
                     KEY_TARGETS, META_DB, SAMPLES_DB, Metadata, encode_key, encode_paths,
                     encode_record, encode_targets, header_checksum)
from .publish import same_file

__all__ = ["Checkpoint", "LmdbWriter"]

_PAGE = 4096
_NODE_MAX = 2040  # LMDB's largest node kept inside a 4 KiB leaf page; larger values overflow
_SLACK = 1 << 20  # B-tree branch pages, pages copied on write, freelist, small meta records
Checkpoint = dict[str, Any]


def _bytes_needed(items: list[tuple[bytes, bytes]]) -> int:
    """Worst-case new pages for ``items``: overflow values take whole pages; small ones are
    counted twice, for half-empty leaf pages."""
    total = 0
    for key, value in items:
        node = 8 + len(key) + len(value)  # node header, key, value
        if node > _NODE_MAX:
            total += -(-(16 + len(value)) // _PAGE) * _PAGE + 2 * (8 + len(key) + 8)
        else:
            total += 2 * (node + 2)
    return total


class LmdbWriter:
    """Append-only writer of one lmdbio file; the caller owns naming and renaming."""

    def __init__(self, path: str, map_size: int = 1 << 20, *, fd: int | None = None) -> None:
        """``map_size`` is the initial map; keep it small (see the module docstring). ``fd``:
        the file ``path`` names, already opened and checked by the caller (the converter's
        locked partial); liblmdb then writes that very inode, reopened through
        ``/proc/self/fd``, whatever ``path`` names by the time it opens (a symlink swapped in
        after the check is never followed)."""
        self.path = path
        target = path
        if fd is not None and os.path.isdir("/proc/self/fd"):
            target = f"/proc/self/fd/{fd}"
        try:
            self.env = lmdb.open(target, subdir=False, map_size=map_size, max_dbs=2,
                                 lock=False, readahead=False, meminit=False, sync=True,
                                 metasync=True)
        except lmdb.Error as exc:
            not_lmdb = (lmdb.InvalidError, lmdb.VersionMismatchError, lmdb.CorruptedError)
            if isinstance(exc, not_lmdb) and fd is not None and os.fstat(fd).st_size:
                # kept to resume, and not LMDB's; ENOMEM, EACCES... are the machine's: below
                raise ResumeError(f"{path!r} is not a partial conversion lmdbio can resume "
                                  f"({exc}); delete it, or convert again without --resume"
                                  ) from None
            raise DestinationError(f"cannot create {path!r} ({exc}); check that the folder "
                                   "exists and is writable") from None
        if fd is not None and target == path and not same_file(path, fd):
            self.env.close()  # no /proc: checked after the open instead
            raise DestinationError(f"{path!r} was replaced while being opened; convert again")
        try:  # creating the two databases is a commit: the disk may fill up right here
            self.samples = self.env.open_db(SAMPLES_DB)
            self.meta = self.env.open_db(META_DB)
        except lmdb.Error as exc:
            self.env.close()
            raise self._classify(exc, 0) from None

    def checkpoint(self) -> Checkpoint | None:
        """The progress record of an interrupted run, or None for a fresh file."""
        with self.env.begin(db=self.meta) as txn:
            blob = txn.get(KEY_PROGRESS)
            entries = txn.stat(self.samples)["entries"]
        if blob is None:
            return None if entries == 0 else {"written": -1}
        progress: Checkpoint = json.loads(blob)
        if progress.get("written") != entries:
            progress["written"] = -1  # records and checkpoint disagree: not resumable
        return progress

    def finished_metadata(self) -> Metadata | None:
        """The header of a file whose last commit already happened (killed before the
        rename), else None."""
        with self.env.begin(db=self.meta) as txn:
            if txn.get(KEY_COMPLETE) != b"1":
                return None
            return Metadata.from_json(txn.get(KEY_HEADER) or b"", self.path)

    def commit(self, first_index: int, records: list[tuple[int, bytes]],
               checkpoint: Checkpoint) -> None:
        """Append ``records`` as ``(label, payload)`` from ``first_index`` with a checkpoint."""
        self.commit_encoded(first_index, [encode_record(label, payload)
                                          for label, payload in records], checkpoint)

    def commit_encoded(self, first_index: int, values: list[bytes],
                       checkpoint: Checkpoint) -> None:
        """Append records already encoded with ``format.encode_record`` (the converter encodes
        each as it arrives, so a batch is held once, not as payloads plus records)."""
        items = [(encode_key(first_index + i), value) for i, value in enumerate(values)]
        self._commit_with_growth(lambda txn: self._append(txn, items, checkpoint),
                                 _bytes_needed(items))

    def _append(self, txn: lmdb.Transaction, items: list[tuple[bytes, bytes]],
                checkpoint: Checkpoint) -> None:
        with txn.cursor(db=self.samples) as cursor:
            consumed, added = cursor.putmulti(items, append=True)
        if added != len(items):
            raise RuntimeError(f"appended {added} of {len(items)} records: keys out of order")
        txn.put(KEY_PROGRESS, json.dumps(checkpoint).encode(), db=self.meta)

    def finish(self, meta: Metadata, relative_paths: list[str], targets: list[int]) -> None:
        """Write the metadata and the completion flag in the last transaction, then close."""
        header = meta.to_json()
        paths_blob, targets_blob = encode_paths(relative_paths), encode_targets(targets)

        def write(txn: lmdb.Transaction) -> None:
            txn.put(KEY_HEADER, header, db=self.meta)
            txn.put(KEY_HEADER_CRC, header_checksum(header), db=self.meta)
            txn.put(KEY_PATHS, paths_blob, db=self.meta)
            txn.put(KEY_TARGETS, targets_blob, db=self.meta)
            txn.put(KEY_COMPLETE, b"1", db=self.meta)
            txn.delete(KEY_PROGRESS, db=self.meta)

        blobs = [(KEY_HEADER, header), (KEY_HEADER_CRC, b"0000"), (KEY_PATHS, paths_blob),
                 (KEY_TARGETS, targets_blob)]
        self._commit_with_growth(write, _bytes_needed(blobs))
        try:
            self.env.sync(True)
        except lmdb.Error as exc:
            raise self._classify(exc, 0) from None
        self.close()

    def _reserve(self, batch_bytes: int) -> None:
        """Grow the map, if needed, to the used size plus what one transaction can add."""
        info = self.env.info()
        need = (info["last_pgno"] + 1) * _PAGE + batch_bytes + _SLACK
        if info["map_size"] < need:
            self.env.set_mapsize(need)

    def _commit_with_growth(self, body: Any, batch_bytes: int) -> None:
        self._reserve(batch_bytes)  # no transaction is open here
        while True:
            try:
                with self.env.begin(write=True) as txn:
                    body(txn)
                return
            except lmdb.MapFullError:
                # Aborted by the with-block; no transaction is open, so the map may grow.
                current = self.env.info()["map_size"]
                self.env.set_mapsize(current + batch_bytes + _SLACK)
            except lmdb.Error as exc:
                raise self._classify(exc, batch_bytes) from None

    def _classify(self, exc: lmdb.Error, batch_bytes: int) -> OSError:
        folder = os.path.dirname(os.path.abspath(self.path))
        try:
            free = os.statvfs(folder).f_bavail * os.statvfs(folder).f_frsize
        except OSError:
            free = -1
        if "No space" in str(exc) or 0 <= free < batch_bytes + (1 << 20):
            return DiskFullError(f"disk full while writing {self.path!r} ({free >> 20} MiB "
                                 f"free in {folder!r}); free space or choose another DST")
        return DestinationError(f"writing {self.path!r} failed ({exc}); check the disk and "
                                "the folder's permissions")

    def close(self) -> None:
        self.env.close()
