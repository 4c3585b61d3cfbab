"""``info``, ``verify`` and ``extract``: inspect, check and unpack a database, without torch."""

from __future__ import annotations

import collections
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import lmdb

from .envs import EnvOptions, options_for
from .errors import CorruptRecordError, DestinationError, FormatError
from .format import RECORD_HEADER_SIZE, decode_record, encode_key
from .lmdbcheck import check_structure
from .progress import Progress
from .database import Database
from .sources import check_image

__all__ = ["DatabaseInfo", "VerifyReport", "extract", "info", "verify"]


@dataclass(frozen=True)
class DatabaseInfo:
    """Counts, classes, sizes and versions of a database."""

    path: str
    file_bytes: int
    num_samples: int
    class_counts: dict[str, int]
    payload_bytes: int
    skipped: int
    format_version: int
    lmdbio_version: str
    lmdb_version: str
    created_utc: str
    source_root: str
    shard_index: int = 0
    shard_count: int = 1
    max_size: int | None = None   # images downscaled at conversion to fit max_size px
    quality: int | None = None    # JPEG quality of those re-encoded

    def __str__(self) -> str:
        shard = (f", shard {self.shard_index} of {self.shard_count}" if self.shard_count > 1
                 else "")
        lines = [f"{self.path}: lmdbio format v{self.format_version}{shard}, written by lmdbio "
                 f"{self.lmdbio_version} (liblmdb {self.lmdb_version}) at {self.created_utc}",
                 f"  samples: {self.num_samples} ({self.payload_bytes / 1e6:.1f} MB of images, "
                 f"file {self.file_bytes / 1e6:.1f} MB), skipped at conversion: {self.skipped}",
                 f"  source: {self.source_root}",
                 "  images: the source files' bytes" if self.max_size is None else
                 f"  images: downscaled to fit {self.max_size} px at conversion (JPEG quality "
                 f"{self.quality}); smaller ones unchanged",

                 f"  classes ({len(self.class_counts)}):"]
        lines += [f"    {name}: {count}" for name, count in self.class_counts.items()]
        return "\n".join(lines)


def info(path: str | os.PathLike[str]) -> DatabaseInfo:
    """Describe the database at ``path`` (reads the metadata, not the images)."""
    with Database(path, options_for(os.fspath(path), EnvOptions(readahead=False))) as db:
        meta = db.meta
        counts = collections.Counter(db.targets())
        return DatabaseInfo(
            path=db.path, file_bytes=os.path.getsize(db.path), num_samples=meta.num_samples,
            class_counts={name: counts[i] for i, name in enumerate(meta.classes)},
            payload_bytes=meta.payload_bytes, skipped=len(meta.skipped),
            format_version=meta.format_version, lmdbio_version=meta.lmdbio_version,
            lmdb_version=meta.lmdb_version, created_utc=meta.created_utc,
            source_root=meta.source_root, shard_index=meta.shard_index,
            shard_count=meta.shard_count, max_size=meta.max_size, quality=meta.quality)


@dataclass(frozen=True)
class VerifyReport:
    path: str
    checked: int
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def __str__(self) -> str:
        if self.ok:
            return f"{self.path}: OK, {self.checked} records verified"
        shown = self.problems[:20]
        more = len(self.problems) - len(shown)
        return "\n".join([f"{self.path}: {len(self.problems)} problems in {self.checked} records"]
                         + [f"  {p}" for p in shown] + ([f"  ... and {more} more"] if more else []))


def verify(path: str | os.PathLike[str], *, decode: bool = False,
           progress: bool = False) -> VerifyReport:
    """Check every record: key sequence, header, checksum, label against the stored targets,
    and (``decode=True``) that Pillow fully decodes the image. Reads the file sequentially."""
    problems = [f"LMDB structure: {p}" for p in check_structure(os.path.expanduser(path))]
    if problems:  # reading such a file through liblmdb could crash this process: stop here
        return VerifyReport(os.fspath(path), 0, problems)
    with Database(path, options_for(os.fspath(path), EnvOptions(readahead=True))) as db:
        targets = db.targets()
        try:
            db.relative_paths()
        except (FormatError, ValueError, OSError) as exc:  # decode_paths wraps zlib.error
            problems.append(f"path list: {exc}")
        env, samples, _ = db._handles()
        expected = stored_payload = 0
        with Progress(len(db), enabled=progress, unit="rec") as bar, \
                env.begin(db=samples, buffers=True) as txn:
            for key, value in _walk(txn, problems):
                if bytes(key) != encode_key(expected):
                    problems.append(f"record {expected}: unexpected key {bytes(key).hex()}")
                    break
                try:
                    label, payload = decode_record(value, expected)
                    if expected < len(targets) and label != targets[expected]:
                        raise CorruptRecordError(f"record {expected} has label {label}, the "
                                                 f"target list says {targets[expected]}")
                    if decode:
                        check_image(bytes(payload), full_decode=True)
                except (CorruptRecordError, ValueError) as exc:
                    problems.append(f"record {expected}: {exc}")
                bar.update(len(value))
                stored_payload += len(value) - RECORD_HEADER_SIZE
                expected += 1
        if stored_payload != db.meta.payload_bytes and not problems:  # a record that points
            # at another's data passes its checksum; the total size rarely still adds up
            problems.append(f"records hold {stored_payload} payload bytes, the header says "
                            f"{db.meta.payload_bytes}")
    if expected != len(targets) and not any("unexpected key" in p for p in problems):
        problems.append(f"found {expected} records, metadata says {len(targets)}")
    return VerifyReport(os.fspath(path), expected, problems)


def _walk(txn: lmdb.Transaction, problems: list[str]) -> Iterator[tuple[Any, Any]]:
    """The records in key order; liblmdb's error on a damaged page ends the walk as a problem
    instead of escaping as an lmdb exception."""
    count = 0
    try:
        for item in txn.cursor():
            yield item
            count += 1
    except lmdb.Error as exc:
        problems.append(f"record {count}: the LMDB structure is damaged ({exc})")


def _safe_relative(rel: str, outdir: str) -> str:
    """``outdir/rel``, refusing absolute paths, ``..`` and anything resolving outside."""
    # Split on this platform's separators only: on POSIX a backslash is an ordinary file-name
    # character (ImageFolder lists "a\\b.jpg" as one file), and cannot climb out of outdir.
    parts = rel.replace(os.altsep, os.sep).split(os.sep) if os.altsep else rel.split(os.sep)
    if os.path.isabs(rel) or not rel or any(p in ("", ".", "..") for p in parts) or "\0" in rel:
        raise FormatError(f"stored path {rel!r} would escape {outdir!r}; refusing to extract "
                          "(the database may be hostile)")
    target = os.path.join(outdir, *parts)
    real_out = os.path.realpath(outdir)
    if os.path.commonpath([real_out, os.path.realpath(target)]) != real_out:
        raise FormatError(f"stored path {rel!r} resolves outside {outdir!r} (through a symlink);"
                          " refusing to extract")
    return target


def extract(path: str | os.PathLike[str], outdir: str | os.PathLike[str], *,
            overwrite: bool = False, progress: bool = False) -> int:
    """Write the ImageFolder tree back to ``outdir``, byte for byte; returns the file count.

    Each file is written under a temporary name and renamed, so no half-written image is
    left under its final name.
    """
    outdir = os.path.abspath(os.path.expanduser(os.fspath(outdir)))
    with Database(path, options_for(os.fspath(path), EnvOptions(readahead=True))) as db:
        relative = db.relative_paths()
        targets = [_safe_relative(rel, outdir) for rel in relative]  # all checked before I/O
        os.makedirs(outdir, exist_ok=True)
        with Progress(len(db), enabled=progress) as bar:
            for index, target in enumerate(targets):
                if os.path.lexists(target) and not overwrite:
                    raise DestinationError(f"{target!r} already exists; pass --overwrite or "
                                           "extract into an empty folder")
                _, data = db.get(index)
                folder = os.path.dirname(target)
                os.makedirs(folder, exist_ok=True)
                _safe_relative(relative[index], outdir)  # again, now that folders exist
                fd, tmp = tempfile.mkstemp(dir=folder, prefix=".lmdbio-")
                try:
                    with os.fdopen(fd, "wb") as handle:
                        handle.write(data)
                    os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide images from other users
                    os.replace(tmp, target)
                except BaseException:
                    os.unlink(tmp)
                    raise
                bar.update(len(data))
    return len(targets)

