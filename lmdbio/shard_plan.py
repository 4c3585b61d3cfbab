"""Sharded conversion: one source listing cut into N contiguous shard files.

Shard *i* of *N* holds positions ``[i * L // N, (i + 1) * L // N)`` of the source listing (L
files in torchvision order), so a global index is a shard's offset plus a local index and a
sequential scan of the shards in order is a sequential scan of the dataset. Every shard is an
ordinary lmdbio file; its header records its place in the set (``shard_index``,
``shard_count``, ``shard_start``, ``shard_stop``, ``listing_total``) next to the fingerprint
and classes of the *whole* listing, so a reader can check that a set of files is complete.

Names follow ``DST`` with ``-IIIII-of-NNNNN`` before ``.lmdb`` (0-based, as the TFRecord and
Hugging Face conventions): ``train.lmdb`` -> ``train-00000-of-00002.lmdb``. A ``DST`` that
already carries the matching suffix is taken literally. No torch here. Converting a whole set is ``shard_conversion``; reading one, ``shard_set``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from .errors import ShardSpecError
from .sources import Listing

__all__ = ["ShardSpec", "is_glob", "parse_shard", "plan", "set_name", "shard_glob", "shard_path",
           "slice_listing"]

_SUFFIX = re.compile(r"-(\d+)-of-(\d+)$")
GLOB_CHARS = frozenset("*?[")


@dataclass(frozen=True)
class ShardSpec:
    """Shard ``index`` of ``count``: listing positions ``[start, stop)`` of ``total``."""

    index: int
    count: int
    start: int
    stop: int
    total: int


def parse_shard(text: str) -> tuple[int, int]:
    """``"1/4"`` -> ``(1, 4)`` (0-based index); ``ShardSpecError`` when it is not ``i/N``
    with ``0 <= i < N``."""
    index, slash, count = text.partition("/")
    try:
        pair = (int(index), int(count))
    except ValueError:
        pair = (-1, 0)
    if not slash or not 0 <= pair[0] < pair[1]:
        raise ShardSpecError(f"shard {text!r} is not I/N with 0 <= I < N (0-based, e.g. 0/2 "
                             "and 1/2); fix --shard")
    return pair


def plan(index: int, count: int, total: int) -> ShardSpec:
    """The listing positions shard ``index`` of ``count`` covers, for ``total`` files."""
    if not 0 <= index < count:
        raise ShardSpecError(f"shard {index} of {count} does not exist (0-based: 0 to "
                             f"{count - 1}); fix the shard index")
    if count > total:
        raise ShardSpecError(f"{count} shards for {total} images: a shard would be empty; "
                             f"use at most {total} shards")
    return ShardSpec(index, count, index * total // count, (index + 1) * total // count, total)


def slice_listing(listing: Listing, spec: ShardSpec) -> Listing:
    """The part of ``listing`` in shard ``spec``; the fingerprint stays the whole listing's."""
    cut = slice(spec.start, spec.stop)
    return Listing(listing.root, listing.classes, listing.relative_paths[cut],
                   listing.targets[cut], listing.sizes[cut], listing.fingerprint,
                   newest_mtime_ns=listing.newest_mtime_ns)


def shard_path(destination: str, index: int, count: int) -> str:
    """``train.lmdb`` -> ``train-00001-of-00004.lmdb`` (``DST`` kept if already so named)."""
    base, ext = (destination[:-5], ".lmdb") if destination.endswith(".lmdb") else (destination,
                                                                                   "")
    match = _SUFFIX.search(os.path.basename(base))
    if match:
        if (int(match[1]), int(match[2])) == (index, count):
            return destination
        raise ShardSpecError(f"{destination!r} is named as shard {int(match[1])} of "
                             f"{int(match[2])}, not {index} of {count}; pass the set's name "
                             "(e.g. train.lmdb) or the matching --shard")
    return f"{base}-{index:05d}-of-{count:05d}{ext}"


def shard_glob(destination: str, count: int) -> str:
    """The glob pattern matching every shard of the set ``destination`` of ``count``."""
    first = shard_path(destination, 0, count)
    head, tail = first.rsplit(f"-{0:05d}-of-", 1)
    return f"{head}-[0-9]*-of-{tail}"


def is_glob(path: str) -> bool:
    return any(char in GLOB_CHARS for char in path)


def set_name(shard_file: str) -> str:
    """``train-00001-of-00004.lmdb`` -> ``train.lmdb`` (a name not so formed is kept)."""
    base, ext = (shard_file[:-5], ".lmdb") if shard_file.endswith(".lmdb") else (shard_file, "")
    match = _SUFFIX.search(os.path.basename(base))  # offsets within the basename
    cut = len(base) - len(os.path.basename(base)) + match.start() if match else 0
    return base[:cut] + ext if match else shard_file
