"""``info``, ``verify`` and ``extract``: inspect, check and unpack a database, without torch."""

from __future__ import annotations

import collections
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import lmdb

from .database import Database
from .envs import EnvOptions, check_database_path, options_for
from .errors import CorruptRecordError, FormatError, printable
from .format import (
    KEY_TARGETS,
    RECORD_HEADER_SIZE,
    decode_record,
    decode_targets,
    encode_key,
    stored_path_problems,
)
from .lmdbcheck import check_structure
from .progress import Progress
from .unpack import extract
from .validate import JPEG_START, PNG_START, check_payload

__all__ = ["DatabaseInfo", "VerifyReport", "extract", "info", "verify"]


_CHECKED = {  # what info says each check of convert --check means for the stored files
    "decode": "decode (each file loaded as ImageFolder's loader would)",
    "full": "full (each file decoded at full size)",
    "structure": "structure (headers and end markers only: 'lmdbio verify --decode' loads "
                 "every image)",
    "": "structure (before lmdbio recorded its check: 'lmdbio verify --decode' loads every "
        "image)"}


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
    # what every stored file passed at conversion: "decode", "full" or "structure" ("" in
    # files written before the check was recorded, which checked the structure)
    check: str = ""
    warnings: int = 0             # Pillow's warnings at conversion, kept in the metadata

    def __str__(self) -> str:
        shard = (f", shard {self.shard_index} of {self.shard_count}" if self.shard_count > 1
                 else "")
        text = printable  # every stored string: a crafted file must not drive the terminal
        lines = [f"{text(self.path)}: lmdbio format v{self.format_version}{shard}, written by "
                 f"lmdbio {text(self.lmdbio_version)} (liblmdb {text(self.lmdb_version)}) at "
                 f"{text(self.created_utc)}",
                 f"  samples: {self.num_samples} ({self.payload_bytes / 1e6:.1f} MB of images, "
                 f"file {self.file_bytes / 1e6:.1f} MB), skipped at conversion: {self.skipped}",
                 f"  source: {text(self.source_root)}",
                 "  images: the source files' bytes" if self.max_size is None else
                 f"  images: downscaled to fit {self.max_size} px at conversion (JPEG quality "
                 f"{self.quality}); smaller ones unchanged",
                 f"  checked at conversion: {_CHECKED.get(self.check, text(self.check))}"
                 + (f"; {self.warnings} warning{'s' * (self.warnings != 1)} (metadata)"
                    if self.warnings else ""),
                 f"  classes ({len(self.class_counts)}):"]
        lines += [f"    {text(name)}: {count}" for name, count in self.class_counts.items()]
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
            shard_count=meta.shard_count, max_size=meta.max_size, quality=meta.quality,
            check=meta.check, warnings=len(meta.warnings))


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
            return f"{printable(self.path)}: OK, {self.checked} records verified"
        shown = self.problems[:20]
        more = len(self.problems) - len(shown)
        count = len(self.problems)
        return "\n".join([f"{printable(self.path)}: {count} problem{'s' * (count != 1)} in "
                          f"{self.checked} records"] + [f"  {printable(p)}" for p in shown]
                         + ([f"  ... and {more} more"] if more else []))


def verify(path: str | os.PathLike[str], *, decode: bool = False,
           progress: bool = False) -> VerifyReport:
    """Check every record: key sequence, header, checksum, label against the class list and
    the stored targets, that the payload is not empty and, in a file 'lmdbio convert' wrote,
    looks like an image (its magic bytes, or Pillow's header parse for formats without known
    ones); ``decode=True``: that it loads as ImageFolder's loader loads it (decompression-bomb
    limit, full decode, RGB). Problems name the record and its stored path. And that the stored paths can be
    extracted (no duplicates, no ``..``). Reads sequentially."""
    check_database_path(os.path.expanduser(os.fspath(path)))  # a FIFO must not hang us
    problems = [f"LMDB structure: {p}" for p in check_structure(os.path.expanduser(path))]
    if problems:  # reading such a file through liblmdb could crash this process: stop here
        return VerifyReport(os.fspath(path), 0, problems)
    with Database(path, options_for(os.fspath(path), EnvOptions(readahead=True))) as db:
        classes = len(db.meta.classes)
        try:  # raw: db.targets() would raise on the first bad target, verify lists them
            targets = decode_targets(db._read_meta(KEY_TARGETS) or b"", db.meta.num_samples)
        except FormatError as exc:
            problems.append(f"target list: {exc}")
            targets = []
        relative: list[str] = []
        try:
            relative = db.relative_paths()
            problems += [p for _, p in stored_path_problems(relative)]
        except (FormatError, ValueError, OSError) as exc:  # decode_paths wraps zlib.error
            problems.append(f"path list: {exc}")
        named = (lambda i: f"record {i} ({relative[i]!r})") if relative else "record {}".format
        problems += [f"target list: sample {i} has target {t}, outside the {classes} classes"
                     for i, t in enumerate(targets) if t >= classes][:20]
        # 'lmdbio convert' stores only payloads that passed this same check, and names
        # itself in the header; files written otherwise (LmdbWriter, other tools) may hold
        # any bytes, and only --decode judges them
        images = bool(db.meta.lmdbio_version)
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
                    if label >= classes:
                        raise CorruptRecordError(f"{named(expected)} has label {label}, "
                                                 f"outside the {classes} classes")
                    if expected < len(targets) and label != targets[expected]:
                        raise CorruptRecordError(f"record {expected} has label {label}, the "
                                                 f"target list says {targets[expected]}")
                    if not len(payload):
                        raise ValueError("the payload is empty, not an image")
                    if decode or images and not payload[:12].tobytes().startswith(
                            _IMAGE_MAGIC) and not (payload[:4] == b"RIFF"
                                                   and payload[8:12] == b"WEBP"):
                        check_payload(bytes(payload), "full" if decode else "structure")
                except (CorruptRecordError, ValueError) as exc:
                    text = str(exc)  # "record i: 'cls/x.jpg': reason": the stored path too
                    stored = relative[expected] if expected < len(relative) else None
                    where = (f"{stored!r}: " if stored is not None and repr(stored) not in text
                             else "")
                    problems.append(f"record {expected}: {where}{text}")
                bar.update(len(value))
                stored_payload += len(value) - RECORD_HEADER_SIZE
                expected += 1
        if stored_payload != db.meta.payload_bytes and not problems:  # a record that points
            # at another's data passes its checksum; the total size rarely still adds up
            problems.append(f"records hold {stored_payload} payload bytes, the header says "
                            f"{db.meta.payload_bytes}")
    if targets and expected != len(targets) and not any("unexpected key" in p
                                                          for p in problems):
        problems.append(f"found {expected} records, metadata says {len(targets)}")
    return VerifyReport(os.fspath(path), expected, problems)


# Leading bytes of the formats ImageFolder's extensions name (JPEG, PNG, BMP, TIFF, PPM/PGM;
# WebP is RIFF....WEBP) and GIF: these pass without Pillow. Anything else, the empty payload
# included, goes to Pillow's header parse (tens of microseconds), which decides.
_IMAGE_MAGIC = (JPEG_START, PNG_START, b"BM", b"II*\0", b"MM\0*", b"P1", b"P2", b"P3", b"P4",
                b"P5", b"P6", b"P7", b"GIF87a", b"GIF89a")


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
