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

from .errors import CorruptRecordError, FormatError

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "META_DB",
    "RECORD_HEADER_SIZE",
    "SAMPLES_DB",
    "Metadata",
    "decode_paths",
    "decode_record",
    "decode_targets",
    "encode_key",
    "encode_paths",
    "encode_record",
    "encode_targets",
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

_KEY = struct.Struct(">Q")
# magic, record version, flags (reserved, 0), label, payload length, crc32(header[:12] + payload)
_RECORD = struct.Struct("<2sBBIII")
_RECORD_MAGIC = b"LR"
_RECORD_VERSION = 1
RECORD_HEADER_SIZE = _RECORD.size  # 16


def encode_key(index: int) -> bytes:
    """Key of sample ``index``: fixed-width big-endian, so byte order equals numeric order."""
    return _KEY.pack(index)


def encode_record(label: int, payload: bytes) -> bytes:
    """Header + payload; the checksum covers the label too, so a flipped label is caught."""
    head = _RECORD.pack(_RECORD_MAGIC, _RECORD_VERSION, 0, label, len(payload), 0)[:12]
    crc = zlib.crc32(payload, zlib.crc32(head))
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
    if verify and zlib.crc32(payload, zlib.crc32(memoryview(value)[:12])) != crc:
        raise CorruptRecordError(f"record {index} fails its checksum; the file is damaged: "
                                 "re-convert the source or restore the database from a copy")
    return label, payload


def encode_paths(paths: Sequence[str]) -> bytes:
    """Relative paths, NUL-separated (the one byte no path holds), compressed."""
    return zlib.compress(b"\0".join(os.fsencode(p) for p in paths), 6)


def decode_paths(blob: bytes, count: int) -> list[str]:
    """Inverse of ``encode_paths``; checks the count so a damaged list is not half-used."""
    try:
        raw = zlib.decompress(blob)
    except zlib.error as exc:  # not a ValueError/OSError: would escape as a traceback
        raise FormatError(f"path list is damaged ({exc}); re-convert the source") from None
    paths = [os.fsdecode(p) for p in raw.split(b"\0")] if count else []
    if len(paths) != count:
        raise FormatError(f"path list holds {len(paths)} entries, header says {count}; "
                          "re-convert the source")
    return paths


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
        except ValueError as exc:
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
            fields["skipped"] = [tuple(item) for item in fields.get("skipped", [])]
            meta = cls(**fields)
            if len(meta.classes) != len(set(meta.classes)) or meta.num_samples < 0:
                raise ValueError("duplicate classes or negative count")
        except (TypeError, ValueError, KeyError) as exc:
            raise FormatError(f"{where}: header is malformed ({exc}); re-convert the "
                              "source") from None
        return meta
