"""Sharded conversion: one source listing cut into N contiguous shard files.

Shard *i* of *N* holds positions ``[i * L // N, (i + 1) * L // N)`` of the source listing (L
files in torchvision order), so a global index is a shard's offset plus a local index and a
sequential scan of the shards in order is a sequential scan of the dataset. Every shard is an
ordinary lmdbio file; its header records its place in the set (``shard_index``,
``shard_count``, ``shard_start``, ``shard_stop``, ``listing_total``) next to the fingerprint
and classes of the *whole* listing, so a reader can check that a set of files is complete.

Names follow ``DST`` with ``-IIIII-of-NNNNN`` before ``.lmdb`` (0-based, as the TFRecord and
Hugging Face conventions): ``train.lmdb`` -> ``train-00000-of-00002.lmdb``. A ``DST`` that
already carries the matching suffix is taken literally. No torch here.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import errors
from .errors import ShardSpecError
from .sources import Listing

if TYPE_CHECKING:
    from .convert import ConvertReport

__all__ = ["ShardSpec", "convert_shards", "parse_shard", "plan", "shard_glob", "shard_path",
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
                   listing.targets[cut], listing.sizes[cut], listing.fingerprint)


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


def _convert_one(source: str, destination: str, index: int, count: int,
                 options: dict[str, Any]) -> ConvertReport | tuple[str, str]:
    """One shard, in a worker process; an lmdbio error comes back as (class name, message)
    (some error classes take more than a message and would not unpickle)."""
    from .convert import convert

    try:
        return convert(source, destination, shard=(index, count), **options)
    except errors.LmdbioError as exc:
        return type(exc).__name__, str(exc)


def convert_shards(source: str | os.PathLike[str], destination: str | os.PathLike[str] | None,
                   num_shards: int, *, jobs: int = 1, **options: Any) -> list[ConvertReport]:
    """Convert all ``num_shards`` shards of ``source``: the same files as converting each with
    ``convert(..., shard=(i, num_shards))`` separately. ``jobs`` > 1 converts that many shards
    at once in separate processes. With ``resume=True``, shards already complete are kept."""
    from .convert import convert, default_destination

    if num_shards < 1 or jobs < 1:
        raise ShardSpecError(f"num_shards and jobs must be >= 1, not {num_shards}, {jobs}")
    dst = (os.path.abspath(os.path.expanduser(os.fspath(destination))) if destination
           else default_destination(source))
    todo = [i for i in range(num_shards)
            if not (options.get("resume") and _complete(shard_path(dst, i, num_shards), i,
                                                        num_shards))]
    if jobs == 1 or len(todo) <= 1:
        reports = [convert(source, dst, shard=(i, num_shards), **options) for i in todo]
    else:
        options = options | {"progress": False}
        context = multiprocessing.get_context("spawn")  # no fork of a threaded process
        with concurrent.futures.ProcessPoolExecutor(min(jobs, len(todo)),
                                                    mp_context=context) as pool:
            futures = [pool.submit(_convert_one, os.fspath(source), dst, i, num_shards,
                                   options) for i in todo]
            results = [future.result() for future in futures]
        failed = [r for r in results if isinstance(r, tuple)]
        if failed:
            name, message = failed[0]
            kind = getattr(errors, name, errors.LmdbioError)
            raise (kind(message) if name != "SourceFileError" else kind(message, ""))
        reports = [r for r in results if not isinstance(r, tuple)]
    from .sharded import ShardedDatabase

    ShardedDatabase([shard_path(dst, i, num_shards) for i in range(num_shards)]).close()
    return reports


def _complete(path: str, index: int, count: int) -> bool:
    """Whether ``path`` is a finished database of shard ``index`` of ``count``."""
    from .reader import Database

    if not os.path.exists(path):
        return False
    with Database(path) as db:
        if (db.meta.shard_index, db.meta.shard_count) != (index, count):
            raise ShardSpecError(f"{path!r} holds shard {db.meta.shard_index} of "
                                 f"{db.meta.shard_count}, not {index} of {count}; delete it "
                                 "or convert with --overwrite")
    return True
