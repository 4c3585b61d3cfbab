"""Read-only access to one lmdbio database file, without torch (``access.open_database`` opens
any database: one file, a shard set or a seed file)."""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import lmdb

from . import envs, locality, residency
from .direct import DirectAccess, open_direct
from .errors import (CorruptRecordError, DatabaseChangedError, FormatError,
                     LegacyFormatError, LmdbioError)
from .legacy import is_legacy
from .lmdbcheck import require_sound
from .format import (KEY_COMPLETE, KEY_HEADER, KEY_HEADER_CRC, KEY_PATHS, KEY_PROGRESS,
                     KEY_TARGETS, META_DB, SAMPLES_DB, Metadata, data_file, decode_paths,
                     decode_record, decode_targets, encode_key, header_checksum)

__all__ = ["Database"]

# errors opening the file for direct reads that say nothing about the file: tried again later
_TRANSIENT = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.EINTR, errno.EAGAIN})
# fetch_records serves the first this many records a process asks of a database, a cold start's
# first batches, and no more: later a reader faster than the prefetch's stream (raw reads, a fast
# decode) fetching every batch competed with the stream for the network and slowed it (README)
FETCH_FIRST = 256


class Database:
    """A complete lmdbio database, opened read-only.

    The LMDB environment opens lazily in the process that reads (a DataLoader worker opens its
    own after fork or spawn) and is left out when the object is pickled.

    Args:
        path: the ``.lmdb`` file written by ``lmdbio convert``.
        options: LMDB knobs (``readahead``, ``lock``, ``max_readers``...).
        verify_checksums: check each record's CRC32 on read (costs ~1 % of a JPEG decode).
    """

    def __init__(self, path: str | os.PathLike[str], options: envs.EnvOptions | None = None,
                 *, verify_checksums: bool = True) -> None:
        self.path = os.path.expanduser(os.fspath(path))  # "~/x.lmdb", as ImageFolder's root
        self.options = options or envs.EnvOptions()
        self.verify_checksums = verify_checksums
        self._shared: envs.SharedEnv | None = None
        self._dbs: tuple[Any, Any] | None = None
        self._map_base: tuple[int, int | None] | None = None  # (pid, address) of the map
        # (pid, access): pread of records and read-ahead hints (lmdbio.direct); None: the map
        self._direct: tuple[int, DirectAccess | None] | None = None
        # (pid, records fetch_records was asked for): it fetches for a cold start's first ones
        self._fetch_asked: tuple[int, int] | None = None
        self._header: bytes = b""  # the header read at open: the file's identity (see get)
        self.meta = self._read_header()

    # -- opening -----------------------------------------------------------------------------
    def _handles(self) -> tuple[lmdb.Environment, Any, Any]:
        shared = self._shared
        if shared is None or shared.pid != os.getpid() or self._dbs is None:
            shared = self._shared = envs.acquire(self.path, self.options)
            self._dbs = self._open_dbs(shared.env)
        return shared.env, self._dbs[0], self._dbs[1]

    def _open_dbs(self, env: lmdb.Environment) -> tuple[Any, Any]:
        try:
            # Without txn=: a handle opened inside a read transaction dies with it.
            return (env.open_db(SAMPLES_DB, create=False), env.open_db(META_DB, create=False))
        except (lmdb.NotFoundError, lmdb.IncompatibleError, lmdb.BadValsizeError):
            with env.begin() as txn:
                legacy = is_legacy(txn)
            self.close()
            if legacy:
                raise LegacyFormatError(
                    f"{self.path!r} was written by the pytorch-lmdb seed tools (pickled records);"
                    " reading it runs pickle, so pass allow_pickle=True only if you trust it, "
                    "or re-convert the source with 'lmdbio convert'") from None
            raise FormatError(f"{self.path!r} is an LMDB file but not an lmdbio database; "
                              "convert an ImageFolder with 'lmdbio convert SRC'") from None
        except lmdb.MapResizedError:
            # the environment this process already shares was mapped before the file was
            # rewritten larger (see _lmdb_errors)
            self.close()
            raise self._changed("it grew beyond the size mapped when it was opened") from None
        except lmdb.Error as exc:  # a damaged page: typed, one line (docs/RELIABILITY.md)
            self.close()
            raise FormatError(f"{self.path!r} is damaged ({exc}); re-convert the source or "
                              "restore a copy") from None

    def _changed(self, how: str) -> DatabaseChangedError:
        """The one error for a file rewritten in place while open, whichever check saw it."""
        return DatabaseChangedError(
            f"{self.path!r} changed while open ({how}: rewritten in place?); close and reopen "
            "it (the dataset, and every other reader of it in this process), and publish new "
            "databases by rename, never by copying over an open one")

    @contextlib.contextmanager
    def _lmdb_errors(self, what: str, error: type[FormatError] = FormatError) -> Iterator[None]:
        """liblmdb's own errors on a damaged file, as lmdbio's typed one-line errors."""
        try:
            yield
        except lmdb.Error as exc:
            raise self._typed(exc, what, error) from None

    def _typed(self, exc: lmdb.Error, what: str,
               error: type[FormatError] = FormatError) -> FormatError:
        """The typed one-line error for liblmdb's ``exc`` while reading ``what``."""
        if isinstance(exc, lmdb.ReadersFullError):
            return FormatError(f"{self.path!r}: no free LMDB reader slot ({exc}); open it with "
                               "lock=False (the default) or a larger max_readers")
        if isinstance(exc, lmdb.MapResizedError):
            # The file now has pages beyond the map taken at open: only a rewrite in place
            # does that (a published lmdbio file never changes), so it is the header check's
            # case, not damage. Not remapped here: that needs every read transaction of the
            # process closed (liblmdb), and the header would then differ anyway.
            return self._changed("it grew beyond the size mapped when it was opened")
        return error(f"{self.path!r}: {what} cannot be read ({exc}); the file is damaged: "
                     "re-convert the source or restore a copy")

    def _read_meta(self, key: bytes) -> bytes | None:
        env, _, meta = self._handles()
        with self._lmdb_errors("the metadata"), env.begin(db=meta) as txn:
            if self._header:
                self._check_identity(txn, meta)
            return txn.get(key)

    def _check_identity(self, txn: lmdb.Transaction, meta: Any) -> None:
        """The file still holds the conversion opened: a file rewritten in place (``cp B A``
        while A is open) shows another header, and reading on would pair B's images with A's
        class names. One more key lookup in the transaction already open, ~1 us (bytes():
        comparing a memoryview to bytes directly costs 1.7 us more)."""
        header = txn.get(KEY_HEADER, db=meta)
        if header is None or bytes(header) != self._header:
            raise self._changed("it now holds another conversion")

    def _read_header(self) -> Metadata:
        # liblmdb trusts its pages (lmdbio.lmdbcheck): what opening reads through it, the main
        # tree and the metadata's, is walked with plain reads first, a few pages
        require_sound(self.path, skip=(SAMPLES_DB,), main_keys=(SAMPLES_DB, META_DB))
        try:
            return self._parse_header()
        except BaseException:
            self.close()  # a refused file must not keep its environment open in this process
            raise

    def _parse_header(self) -> Metadata:
        if self._read_meta(KEY_COMPLETE) != b"1":
            hint = ("resume it with 'lmdbio convert --resume'"
                    if self._read_meta(KEY_PROGRESS) is not None else "re-convert the source")
            raise FormatError(f"{self.path!r} holds an unfinished conversion; {hint}")
        blob = self._read_meta(KEY_HEADER)
        header = bytes(blob or b"")
        crc = self._read_meta(KEY_HEADER_CRC)  # None: written before the checksum
        if blob is not None and crc is not None and bytes(crc) != header_checksum(header):
            raise FormatError(f"{self.path!r}: its header fails its checksum; the file is "
                              "damaged: re-convert the source or restore the file from a copy")
        meta = Metadata.from_json(header, self.path)
        self._header = header
        with self._lmdb_errors("the record count"), \
                self._handles()[0].begin(db=self._dbs[0]) as txn:  # type: ignore[index]
            stored = txn.stat(self._dbs[0])["entries"]  # type: ignore[index]
        if stored != meta.num_samples:
            raise FormatError(f"{self.path!r} holds {stored} records, header says "
                              f"{meta.num_samples}; the file is damaged: re-convert the source")
        return meta

    # -- reading -----------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.meta.num_samples

    def get(self, index: int) -> tuple[int, bytes]:
        """``(label, original file bytes)`` of sample ``index`` (0 <= index < len)."""
        if not 0 <= index < self.meta.num_samples:
            raise IndexError(f"sample index {index} out of range for {self.meta.num_samples} "
                             f"samples in {self.path!r}")
        env, samples, meta = self._handles()
        try:  # (not _lmdb_errors: its context manager is a tenth of a warm read)
            with env.begin(db=samples, buffers=True) as txn:
                self._check_identity(txn, meta)
                key = encode_key(index)
                value = self._read_direct(key, index) if not self.options.readahead else None
                if value is None:
                    value = txn.get(key)
                if value is None:
                    raise CorruptRecordError(f"record {index} is missing from {self.path!r}; "
                                             "re-convert the source")
                try:
                    label, payload = decode_record(value, index, verify=self.verify_checksums)
                except CorruptRecordError as exc:
                    raise CorruptRecordError(f"{self.path!r}: {exc}") from None
                if label >= len(self.meta.classes):
                    raise CorruptRecordError(
                        f"{self.path!r}: record {index} ({self.stored_path(index)!r}) has label "
                        f"{label}, outside the {len(self.meta.classes)} classes; the file is "
                        "damaged or hostile: re-convert the source")
                return label, bytes(payload)
        except lmdb.Error as exc:
            raise self._typed(exc, f"record {index}", CorruptRecordError) from None

    def _direct_access(self) -> DirectAccess | None:
        """This process's direct access to the file (``lmdbio.direct``), made on first use;
        None where it cannot be had (the map not found, the layout not confirmed, the name
        removed or now another file): then the map reads, as liblmdb always can. Running
        out of descriptors or memory is not kept: the next read tries again."""
        state = self._direct
        if state is not None and state[0] == os.getpid():
            return state[1]
        try:
            access = self._open_direct()
        except OSError as exc:
            if exc.errno in _TRANSIENT:
                return None
            access = None
        state = self._direct
        if state is not None and state[0] == os.getpid():  # another thread was first
            if access is not None:
                access.close()
            return state[1]
        self._direct = (os.getpid(), access)
        return access

    def _open_direct(self) -> DirectAccess | None:
        env, samples, _ = self._handles()
        base = self._map_start()
        if base is None:
            return None
        return open_direct(env, samples, data_file(self.path),
                           self._shared.identity,  # type: ignore[union-attr]
                           base, self.meta.num_samples, self._map_offset)

    def will_need_records(self, indices: Iterable[int]) -> None:
        """Ask storage for records ``indices`` now, in the background: one asynchronous request
        per run of neighbouring records, so reading them next waits for the slowest request,
        not for their sum (what ``ImageFolderLMDB`` does for each DataLoader batch). Finding
        them touches none of their pages. A hint: out-of-range indices are skipped and
        nothing is raised; the reads report problems."""
        wanted = [i for i in indices if 0 <= i < self.meta.num_samples]
        if not wanted:
            return
        try:
            access = self._direct_access()
            if access is not None:
                access.will_need(encode_key(i) for i in wanted)
        except (lmdb.Error, OSError, LmdbioError):
            return  # the read that follows says what is wrong, in its own words

    def fetch_records(self, indices: Iterable[int]) -> None:
        """Read records ``indices`` into the page cache now where they are not there yet, all
        at once, and return when they are (``DirectAccess.fetch``): a cold batch then waits for
        its slowest read, not for each read in turn behind whatever storage has in flight.
        Only the first ``FETCH_FIRST`` records this process asks for are fetched (a cold start);
        later calls return at once and the reads find what the prefetch streamed. Out-of-range
        indices are skipped and nothing is raised: the reads that follow report problems."""
        pid = os.getpid()
        asked = self._fetch_asked[1] if self._fetch_asked and self._fetch_asked[0] == pid else 0
        if asked >= FETCH_FIRST:
            return
        wanted = [i for i in indices if 0 <= i < self.meta.num_samples]
        self._fetch_asked = (pid, asked + len(wanted))
        try:
            access = self._direct_access()
            base = self._map_start()
            if not wanted or access is None or base is None:
                return
            access.fetch([encode_key(i) for i in wanted],
                         lambda offset, length: residency.map_resident(base + offset, length))
        except (lmdb.Error, OSError, LmdbioError, RuntimeError):  # RuntimeError: no thread
            return  # could be started (a process limit) or the interpreter is shutting down

    def records_cached(self, indices: Sequence[int]) -> list[bool]:
        """For each of records ``indices``: whether reading it now waits for no storage (its
        pages are in the page cache; ``DirectAccess.cached``). True where this cannot be told
        (no direct access, an index out of range): the read then goes as it would anyway."""
        try:
            access = self._direct_access()
            base = self._map_start()
            if access is None or base is None:
                return [True] * len(indices)
            inside = [0 <= i < self.meta.num_samples for i in indices]
            answers = iter(access.cached(
                [encode_key(i) for i, ok in zip(indices, inside) if ok],
                lambda offset, length: residency.map_resident(base + offset, length)))
            return [next(answers) if ok else True for ok in inside]
        except (lmdb.Error, OSError, LmdbioError):
            return [True] * len(indices)  # the reads that follow say what is wrong

    def _read_direct(self, key: bytes, index: int) -> memoryview | None:
        """The record under ``key`` read with one ``pread`` (``lmdbio.direct``): with readahead
        off, the map would fault its pages in one at a time. None: read it through the map."""
        access = self._direct_access()
        if access is None:
            return None
        try:
            return access.read(key)
        except OSError as exc:  # through the map this would be SIGBUS: typed, one line
            raise CorruptRecordError(
                f"{self.path!r}: record {index} ({self.stored_path(index)!r}) cannot be read "
                f"({exc.strerror}); check the storage (a network mount gone away?) and retry, "
                "or run 'lmdbio verify'") from None

    def _map_start(self) -> int | None:
        """Address of this process's map of the file (None if not found in
        ``/proc/self/maps``)."""
        env = self._handles()[0]
        if self._map_base is None or self._map_base[0] != os.getpid():
            base = locality.map_base(data_file(self.path), env.info()["map_size"])
            self._map_base = (os.getpid(), base)
        return self._map_base[1]

    def _map_offset(self, view: memoryview) -> int | None:
        """Offset in the file of a view into this process's map (None if the map is not
        found in ``/proc/self/maps``)."""
        base = self._map_start()
        return None if base is None else locality.buffer_address(view) - base

    def stored_path(self, index: int) -> str:
        """Sample ``index``'s path relative to the source root, for messages (``"?"`` when the
        path list itself is unreadable)."""
        try:
            return self.relative_paths()[index]
        except (FormatError, IndexError):
            return "?"

    def byte_range(self, start: int, stop: int) -> tuple[int, int] | None:
        """``(offset, length)`` in the file of records ``[start, stop)``: from LMDB's tree
        without reading them (``lmdbio.btree``), else from liblmdb's views of the first and
        last (which reads those two); None if neither places them."""
        stop = min(stop, self.meta.num_samples)
        if not 0 <= start < stop:
            return None
        access = self._direct_access()
        span = None if access is None else access.range(encode_key(start), encode_key(stop - 1))
        if span is not None:
            return span
        env, samples, _ = self._handles()
        with self._lmdb_errors(f"records {start}-{stop}", CorruptRecordError), \
                env.begin(db=samples, buffers=True) as txn:
            first, last = txn.get(encode_key(start)), txn.get(encode_key(stop - 1))
            if first is None or last is None:
                return None
            low, end = self._map_offset(first), self._map_offset(last)
            if low is None or end is None:
                return None
            high = end + len(last)
        return (low, high - low) if 0 <= low < high else None

    def will_need(self, start: int, stop: int) -> None:
        """Have storage read records ``[start, stop)`` into the page cache now, in one
        asynchronous request (what ``BlockShuffleSampler`` asks for each block), sent from
        this process's hint thread (``locality.in_background``): this returns at once. A
        hint: nothing is raised; the reads that follow report problems."""
        stop = min(stop, self.meta.num_samples)
        if not 0 <= start < stop:
            return
        try:
            if self._direct_access() is None:
                # placed through a read transaction: here, not in the hint thread, where a
                # DataLoader forking meanwhile would copy it open into its workers
                span = self.byte_range(start, stop)
                if span is not None:
                    locality.in_background(locality.will_need, data_file(self.path), *span)
                return
        except (lmdb.Error, OSError, LmdbioError):
            return
        locality.in_background(self._will_need_now, start, stop)

    def _will_need_now(self, start: int, stop: int) -> None:
        """In the hint thread. It opens nothing: a database closed meanwhile stays closed."""
        direct = self._direct
        if (self._shared is not None and direct is not None and direct[0] == os.getpid()
                and direct[1] is not None):
            direct[1].will_need_range(encode_key(start), encode_key(stop - 1))

    @property
    def paths(self) -> list[str]:
        """The file(s) read: this one."""
        return [self.path]

    def relative_paths(self) -> list[str]:
        """Each sample's path relative to the source root, decoded on demand."""
        return decode_paths(self._read_meta(KEY_PATHS) or b"", self.meta.num_samples)

    def targets(self) -> list[int]:
        """Each sample's class index, decoded on demand (4 bytes per sample on disk)."""
        targets = decode_targets(self._read_meta(KEY_TARGETS) or b"", self.meta.num_samples)
        classes = len(self.meta.classes)
        if targets and not 0 <= max(targets) < classes:  # ~5 ms per million, once
            index = next(i for i, t in enumerate(targets) if t >= classes)
            raise FormatError(f"{self.path!r}: sample {index} ({self.stored_path(index)!r}) has "
                              f"target {targets[index]}, outside the {classes} classes; the file "
                              "is damaged or hostile: re-convert the source")
        return targets

    def lib_version(self) -> str:
        return ".".join(map(str, self._handles()[0].lib_version()))

    # -- lifetime ----------------------------------------------------------------------------
    def close(self) -> None:
        """Release this process's environment (closed with its last user, so pages can be
        evicted); first waits for this process's queued block hints, so none reads the file
        back in after it is evicted."""
        locality.settle()
        self._release()

    def _release(self, wait: bool = True) -> None:
        if self._shared is not None:
            envs.release(self._shared, wait=wait)
        self._shared = None
        self._dbs = None
        self._map_base = None  # a reopened environment maps the file elsewhere
        if self._direct is not None and self._direct[1] is not None:
            self._direct[1].close()
        self._direct = None
        self._fetch_asked = None  # pages may be evicted before it is read again: a cold start

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_shared"] = None
        state["_dbs"] = None
        state["_fetch_asked"] = None
        state["_map_base"] = None
        state["_direct"] = None
        return state

    def __del__(self) -> None:
        try:
            # Neither waits for hints (a queued hint holds a reference to this object, so none
            # is queued) nor for a lock: the collector may run this while the thread holds one.
            self._release(wait=False)
        except Exception:  # interpreter shutdown: modules may already be gone
            pass

