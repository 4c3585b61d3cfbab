"""The on-disk format, in one place for the writer and the reader (see docs/FORMAT.md).

One LMDB file (``subdir=False``) holds two named databases:

* ``samples``: key = sample index as 8-byte big-endian unsigned int, so B-tree order is index
  order and the writer bulk-loads with ``append=True``; value = 16-byte record header + the
  original file bytes, unchanged.
* ``meta``: reserved keys holding JSON or flat binary arrays, never pickle.

Nothing here imports torch, torchvision or Pillow.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .checksum import crc32
from .errors import CorruptRecordError, FormatError

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "META_DB",
    "RECORD_HEADER_SIZE",
    "SAMPLES_DB",
    "Metadata",
    "data_file",
    "decode_paths",
    "decode_record",
    "decode_targets",
    "encode_key",
    "encode_paths",
    "encode_record",
    "encode_targets",
    "header_checksum",
    "stored_path_problems",
]

FORMAT_NAME = "lmdbio"
FORMAT_VERSION = 1
SAMPLES_DB = b"samples"
META_DB = b"meta"

# Reserved keys of the meta database.
KEY_HEADER = b"header"      # JSON: Metadata below; written last, with KEY_COMPLETE
KEY_PATHS = b"paths"        # zlib(NUL-joined relative paths, os.fsencode'd)
KEY_TARGETS = b"targets"    # little-endian uint32 per sample
KEY_COMPLETE = b"complete"  # b"1" once the conversion finished
KEY_PROGRESS = b"progress"  # JSON checkpoint of an unfinished conversion, for --resume
# little-endian uint32 CRC-32 of KEY_HEADER's bytes (files written before it have none): a
# flipped bit in the JSON would otherwise change a path or a shard position and still parse
KEY_HEADER_CRC = b"header-crc32"

_KEY = struct.Struct(">Q")
# magic, record version, flags (reserved, 0), label, payload length, crc32(header[:12] + payload)
_RECORD = struct.Struct("<2sBBIII")
_RECORD_MAGIC = b"LR"
_RECORD_VERSION = 1
RECORD_HEADER_SIZE = _RECORD.size  # 16


def data_file(path: str | os.PathLike[str]) -> str:
    """The file holding the pages: ``path`` itself, or ``path/data.mdb`` for an LMDB folder."""
    path = os.fspath(path)
    return os.path.join(path, "data.mdb") if os.path.isdir(path) else path


def header_checksum(header: bytes) -> bytes:
    """What ``KEY_HEADER_CRC`` holds for ``header``."""
    return struct.pack("<I", crc32(header))


def encode_key(index: int) -> bytes:
    """Key of sample ``index``: fixed-width big-endian, so byte order equals numeric order."""
    return _KEY.pack(index)


def encode_record(label: int, payload: bytes) -> bytes:
    """Header + payload; the checksum covers the label too, so a flipped label is caught."""
    head = _RECORD.pack(_RECORD_MAGIC, _RECORD_VERSION, 0, label, len(payload), 0)[:12]
    crc = crc32(payload, crc32(head))
    return head + struct.pack("<I", crc) + payload


def decode_record(value: bytes, index: int, *, verify: bool = True) -> tuple[int, memoryview]:
    """``(label, payload)`` of a stored record; ``CorruptRecordError`` when it does not add up."""
    if len(value) < RECORD_HEADER_SIZE:
        raise CorruptRecordError(f"record {index} is truncated ({len(value)} bytes); run "
                                 "'lmdbio verify' and re-convert the source")
    magic, version, _flags, label, length, crc = _RECORD.unpack_from(value)
    if magic != _RECORD_MAGIC or version != _RECORD_VERSION:
        raise CorruptRecordError(f"record {index} has an unknown header {bytes(value[:4])!r}; "
                                 "re-convert the source or upgrade lmdbio")
    payload = memoryview(value)[RECORD_HEADER_SIZE:]
    if len(payload) != length:
        raise CorruptRecordError(f"record {index} holds {len(payload)} payload bytes, header says "
                                 f"{length}; re-convert the source")
    if verify and crc32(payload, crc32(memoryview(value)[:12])) != crc:
        raise CorruptRecordError(f"record {index} fails its checksum; the file is damaged: "
                                 "re-convert the source or restore the database from a copy")
    return label, payload


def encode_paths(paths: Sequence[str]) -> bytes:
    """Relative paths, NUL-separated (the one byte no path holds), compressed."""
    return zlib.compress(b"\0".join(os.fsencode(p) for p in paths), 6)


_PATH_MAX = 4096  # Linux's PATH_MAX: no stored relative path is longer


def decode_paths(blob: bytes, count: int) -> list[str]:
    """Inverse of ``encode_paths``; checks the count so a damaged list is not half-used.

    Inflates at most what ``count`` paths can take, so a hostile file cannot make a small blob
    expand into gigabytes (a zlib bomb)."""
    limit = count * (_PATH_MAX + 1)
    inflater = zlib.decompressobj()
    try:
        raw = inflater.decompress(blob, limit + 1)
    except zlib.error as exc:  # not a ValueError/OSError: would escape as a traceback
        raise FormatError(f"path list is damaged ({exc}); re-convert the source") from None
    if len(raw) > limit:
        raise FormatError(f"path list inflates beyond what {count} paths can take; the file is "
                          "damaged or hostile: re-convert the source")
    if not inflater.eof:
        raise FormatError("path list is damaged (truncated); re-convert the source")
    paths = [os.fsdecode(p) for p in raw.split(b"\0")] if count else []
    if len(paths) != count:
        raise FormatError(f"path list holds {len(paths)} entries, header says {count}; "
                          "re-convert the source")
    return paths


_NAME_MAX = 255    # bytes in one path component (Linux, most file systems)
MAX_DEPTH = 256    # components in one stored path: ImageFolder trees are a few levels deep


def stored_path_problems(paths: Sequence[str], limit: int = 20) -> list[tuple[int, str]]:
    """``(index, problem)`` for stored relative paths that ``extract`` must not write (at most
    ``limit``): empty, absolute, ``..``/``.``/empty components, NUL, longer than PATH_MAX,
    a component longer than NAME_MAX, deeper than ``MAX_DEPTH``, the same path twice, or a
    file that another path needs as a folder. Linear in the total length of the paths."""
    problems: list[tuple[int, str]] = []
    files: dict[str, int] = {}
    folders: dict[str, int] = {}
    sep = os.sep
    for index, rel in enumerate(paths):
        if len(problems) >= limit:
            break
        parts = rel.replace(os.altsep, sep).split(sep) if os.altsep else rel.split(sep)
        encoded = os.fsencode(rel)
        reason = None
        if not rel or os.path.isabs(rel) or "\0" in rel or any(
                p in ("", ".", "..") for p in parts):
            reason = "is empty, absolute, or has an empty, '.' or '..' component"
        elif len(encoded) > _PATH_MAX:
            reason = f"is {len(encoded)} bytes long, more than {_PATH_MAX}"
        elif len(parts) > MAX_DEPTH:
            reason = f"is {len(parts)} folders deep, more than {MAX_DEPTH}"
        elif any(len(os.fsencode(p)) > _NAME_MAX for p in parts):
            reason = f"has a name longer than {_NAME_MAX} bytes"
        elif rel in files:
            reason = f"is also stored path {files[rel]} (a duplicate)"
        elif rel in folders:
            reason = f"is a folder of stored path {folders[rel]}"
        if reason is None:
            files[rel] = index
            for depth in range(1, len(parts)):
                folder = sep.join(parts[:depth])
                if folder in files:
                    reason = f"needs stored path {files[folder]} as a folder"
                    break
                folders.setdefault(folder, index)
        if reason is not None:
            shown = rel if len(rel) <= 100 else f"{rel[:60]}...{rel[-30:]}"  # a message line
            problems.append((index, f"stored path {index} {shown!r} {reason}"))
    return problems


def encode_targets(targets: Sequence[int]) -> bytes:
    """Targets as little-endian uint32, 4 bytes per sample (1 M samples: 4 MB, no parsing)."""
    return struct.pack(f"<{len(targets)}I", *targets)


def decode_targets(blob: bytes, count: int) -> list[int]:
    """Inverse of ``encode_targets``."""
    if len(blob) != 4 * count:
        raise FormatError(f"target list holds {len(blob) // 4} entries, header says {count}; "
                          "re-convert the source")
    return list(struct.unpack(f"<{count}I", blob))


@dataclass(frozen=True)
class Metadata:
    """The ``header`` record: what a reader needs before touching any sample."""

    num_samples: int
    classes: list[str]
    source_root: str
    source_fingerprint: str
    extensions: list[str]
    payload_bytes: int
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (relative path, reason)
    lmdbio_version: str = ""
    lmdb_version: str = ""
    created_utc: str = ""
    format_version: int = FORMAT_VERSION
    # Sharding (docs/FORMAT.md, "Shards"): this file holds positions [shard_start, shard_stop)
    # of the source listing of ``listing_total`` files. Headers without these fields (a single
    # database) read as shard 0 of 1 covering the whole listing; -1 means "derive that".
    shard_index: int = 0
    shard_count: int = 1
    shard_start: int = 0
    shard_stop: int = -1
    listing_total: int = -1
    # Resize at conversion (docs/FORMAT.md): images longer than max_size px were downscaled
    # and re-encoded (JPEGs at JPEG quality ``quality``); None: the source files' bytes.
    max_size: int | None = None
    quality: int | None = None
    # The source as the caller spelled it to convert ("data/train"; "~" expanded, as
    # torchvision does): ImageFolderLMDB.samples join their relative paths to it, as
    # ImageFolder(that spelling) lists them. "" (files before it): source_root.
    source_as_given: str = ""
    # What every stored file passed at conversion (lmdbio.validate: "decode", "full",
    # "structure"); "" in files written before the check existed (structure).
    check: str = ""
    warnings: list[tuple[str, str]] = field(default_factory=list)  # (relative path, warning)

    @property
    def samples_root(self) -> str:
        """The root ``samples`` paths are joined to (see ``source_as_given``)."""
        return self.source_as_given or self.source_root

    def __post_init__(self) -> None:
        listed = self.num_samples + len(self.skipped) if isinstance(self.num_samples, int) else -1
        if self.shard_stop == -1:
            object.__setattr__(self, "shard_stop", self.shard_start + listed)
        if self.listing_total == -1:
            object.__setattr__(self, "listing_total", self.shard_stop)

    @property
    def class_to_idx(self) -> dict[str, int]:
        return {name: index for index, name in enumerate(self.classes)}

    def to_json(self) -> bytes:
        body: dict[str, Any] = {"format": FORMAT_NAME, **self.__dict__}
        body["class_to_idx"] = self.class_to_idx
        return json.dumps(body, ensure_ascii=True, sort_keys=True).encode()

    @classmethod
    def from_json(cls, blob: bytes, where: str) -> Metadata:
        try:
            body = json.loads(blob)
        except (ValueError, RecursionError) as exc:  # RecursionError: "[[[[..." nested deep
            raise FormatError(f"{where}: header is not valid JSON ({exc}); re-convert the "
                              "source") from None
        if not isinstance(body, dict) or body.get("format") != FORMAT_NAME:
            raise FormatError(f"{where} is not an lmdbio database; convert an ImageFolder "
                              "with 'lmdbio convert SRC'")
        version = body.get("format_version")
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise FormatError(f"{where}: header is malformed (format version {version!r}); "
                              "re-convert the source")
        if version > FORMAT_VERSION:
            raise FormatError(f"{where} has format version {version!r}, newer than {FORMAT_VERSION}"
                              " which this lmdbio reads; upgrade: pip install -U lmdbio")
        try:
            fields = {k: body[k] for k in cls.__dataclass_fields__ if k in body}
            _check_types(fields)
            fields["skipped"] = [tuple(item) for item in fields.get("skipped", [])]
            fields["warnings"] = [tuple(item) for item in fields.get("warnings", [])]
            meta = cls(**fields)
            if len(meta.classes) != len(set(meta.classes)) or meta.num_samples < 0:
                raise ValueError("duplicate classes or negative count")
            if "class_to_idx" in body and body["class_to_idx"] != meta.class_to_idx:
                # written beside "classes" by to_json: a damaged class name or order shows
                raise ValueError("classes and class_to_idx disagree")
            if (meta.max_size is not None and meta.max_size < 1) or (
                    meta.quality is not None and not 1 <= meta.quality <= 100):
                raise ValueError(f"max_size {meta.max_size}, quality {meta.quality}")
            if not (0 <= meta.shard_index < meta.shard_count <= max(1, meta.listing_total)
                    and 0 <= meta.shard_start <= meta.shard_stop <= meta.listing_total):
                # a shard is never empty (shard_plan.plan), so count <= files listed
                raise ValueError(f"shard {meta.shard_index} of {meta.shard_count}, positions "
                                 f"{meta.shard_start}..{meta.shard_stop} of "
                                 f"{meta.listing_total}")
        except (TypeError, ValueError, KeyError) as exc:
            raise FormatError(f"{where}: header is malformed ({exc}); re-convert the "
                              "source") from None
        return meta


_FIELD_TYPES: dict[str, type] = {
    "num_samples": int, "classes": list, "source_root": str, "source_fingerprint": str,
    "extensions": list, "payload_bytes": int, "skipped": list, "lmdbio_version": str,
    "lmdb_version": str, "created_utc": str, "format_version": int, "shard_index": int,
    "shard_count": int, "shard_start": int, "shard_stop": int, "listing_total": int,
    "max_size": int, "quality": int, "source_as_given": str, "check": str, "warnings": list,
}
_NULLABLE = frozenset({"max_size", "quality"})


def _check_types(fields: dict[str, Any]) -> None:
    """JSON types of the header fields, so a damaged header fails here, as a FormatError,
    rather than later as a TypeError deep in a DataLoader worker."""
    for name, value in fields.items():
        kind = _FIELD_TYPES.get(name)
        if value is None and name in _NULLABLE:
            continue
        if kind is not None and (not isinstance(value, kind) or isinstance(value, bool)):
            raise ValueError(f"{name} is {type(value).__name__}, not {kind.__name__}")
    for name in ("classes", "extensions"):
        if not all(isinstance(item, str) for item in fields.get(name, [])):
            raise ValueError(f"{name} must be a list of strings")
    for name in ("skipped", "warnings"):
        if not all(isinstance(item, list) and len(item) == 2
                   and all(isinstance(x, str) for x in item) for item in fields.get(name, [])):
            raise ValueError(f"{name} must be a list of [path, text] pairs")
