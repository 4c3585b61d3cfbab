"""Convert every shard of a set (``lmdbio convert --num-shards N [--jobs J]``).

The plan (which listing positions each shard holds, and the file names) is ``shard_plan``'s;
each shard is an ordinary ``converter.convert`` with ``shard=(i, N)``, in this process or in
``jobs`` spawned ones, and the finished set is opened once as a ``ShardedDatabase`` to check it:
complete, and (with ``on_error="skip"``) still an ImageFolder as a whole, which no shard can
judge alone (a shard may hold no file of a class, or lose all of its own).
"""

from __future__ import annotations

import collections
import concurrent.futures
import multiprocessing
import os
import sys
from typing import Any

from . import errors
from .converter import (ConvertReport, check_destination, check_what_is_left, convert,
                        default_destination, judged_by_set)
from .database import Database
from .errors import ShardSpecError
from .paths import absolute_path, named
from .publish import discard
from .shard_plan import shard_path
from .shard_set import ShardedDatabase

__all__ = ["convert_shards"]


def _convert_one(source: str, destination: str, index: int, count: int,
                 options: dict[str, Any]) -> ConvertReport | tuple[str, str]:
    """One shard, in a worker process; an lmdbio error comes back as (class name, message)
    (some error classes take more than a message and would not unpickle)."""
    judged_by_set.set(True)  # this worker process converts shards of one set only
    try:
        return convert(source, destination, shard=(index, count), **options)
    except errors.LmdbioError as exc:
        return type(exc).__name__, str(exc)


def convert_shards(source: str | os.PathLike[str], destination: str | os.PathLike[str] | None,
                   num_shards: int, *, jobs: int = 1, **options: Any) -> list[ConvertReport]:
    """Convert all ``num_shards`` shards of ``source``: the same files as converting each with
    ``convert(..., shard=(i, num_shards))`` separately. ``jobs`` > 1 converts that many shards
    at once in separate processes. With ``resume=True``, shards already complete are kept.
    With ``on_error="skip"``, what is left is judged over the whole set, as ``convert`` judges
    one file: nothing stored at all, or a class whose every file was refused (unless
    ``allow_empty``), is a ``SourceError``, and the shards this call wrote are removed."""
    named(source, "source", errors.SourceError)
    if destination is not None:
        named(destination, "destination", errors.DestinationError)
    if num_shards < 1 or jobs < 1:
        raise ShardSpecError(f"num_shards and jobs must be >= 1, not {num_shards}, {jobs}")
    dst = (absolute_path(destination) if destination
           else default_destination(source))
    todo = [i for i in range(num_shards)
            if not (options.get("resume") and _complete(shard_path(dst, i, num_shards), i,
                                                        num_shards))]
    for i in todo:  # all refused before the first is written, not at the third
        check_destination(shard_path(dst, i, num_shards), bool(options.get("overwrite")))
    if jobs == 1 or len(todo) <= 1:
        judging = judged_by_set.set(True)
        try:
            reports = [convert(source, dst, shard=(i, num_shards), **options) for i in todo]
        finally:
            judged_by_set.reset(judging)
    else:
        options = options | {"progress": False}
        context = multiprocessing.get_context("spawn")  # no fork of a threaded process
        with concurrent.futures.ProcessPoolExecutor(min(jobs, len(todo)),
                                                    mp_context=context) as pool:
            futures = [pool.submit(_convert_one, os.fspath(source), dst, i, num_shards,
                                   options) for i in todo]
            try:
                results = [future.result() for future in futures]
            except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the shards' processes stop too
                # this pool's processes only (the caller may have children of its own); the
                # executor offers no public handle on them before Python 3.14
                workers = list((getattr(pool, "_processes", None) or {}).values())
                pool.shutdown(wait=False, cancel_futures=True)
                for worker in workers:
                    worker.terminate()  # what each committed stays, for --resume
                print(f"lmdbio: interrupted; continue with --resume (complete shards are "
                      f"kept, the others resume from their .partial files next to {dst})",
                      file=sys.stderr)
                raise
            except concurrent.futures.BrokenExecutor:  # a worker process was killed
                raise errors.ConversionProcessError(
                    f"a process converting a shard of {dst!r} died (killed, out of memory?); "
                    "run the same command with --resume (complete shards are kept, the others "
                    "resume from their .partial files)") from None
        failed = [r for r in results if isinstance(r, tuple)]
        if failed:
            name, message = failed[0]
            kind = getattr(errors, name, errors.LmdbioError)
            raise (kind(message) if name != "SourceFileError" else kind(message, ""))
        reports = [r for r in results if not isinstance(r, tuple)]
    paths = [shard_path(dst, i, num_shards) for i in range(num_shards)]
    with ShardedDatabase(paths) as shards:  # complete, one conversion
        meta, kept = shards.meta, collections.Counter(shards.targets())
    try:
        check_what_is_left(meta.source_root, meta.classes, kept, meta.skipped,
                           options.get("allow_empty", False))
    except errors.SourceError:
        for i in todo:  # what this call wrote: the set must not open as if it were good
            discard(paths[i])
        raise
    return reports


def _complete(path: str, index: int, count: int) -> bool:
    """Whether ``path`` is a finished database of shard ``index`` of ``count``."""
    if not os.path.exists(path):
        return False
    with Database(path) as db:
        if (db.meta.shard_index, db.meta.shard_count) != (index, count):
            raise ShardSpecError(f"{path!r} holds shard {db.meta.shard_index} of "
                                 f"{db.meta.shard_count}, not {index} of {count}; delete it "
                                 "or convert with --overwrite")
    return True
