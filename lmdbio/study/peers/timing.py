"""Conversion cost of every storage strategy, measured the same way: seconds, bytes on disk
and peak memory of lmdbio's converter beside the WebDataset and LitData writers.

Each writer runs in a fresh interpreter (``python -m lmdbio.study.peers.timing FMT SRC DST``), so
its imports, threads and worker processes are its own, from a cold source (the ImageFolder's
pages evicted, on the server side of a network FS too), into a scratch name next to its
destination on the same storage. Peak memory is the largest single process of the writer's
tree, as the child sees it when done: its own ``VmHWM`` (since exec, so not the forking
notebook's size, which ``wait4``'s ``ru_maxrss`` would inherit) or its waited-for children's
``ru_maxrss`` (litdata's optimize forks worker processes; lmdbio and WebDataset use one).
The scratch output then becomes the destination if that is missing, else it is removed.
"""

from __future__ import annotations

import csv
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

from lmdbio.publish import create_exclusive, discard, staged
from lmdbio.study import pagecache, peers
from lmdbio.system import peak_rss_bytes

__all__ = ["destination", "measure_writer", "measure_writers"]

COLUMNS = ("format", "images", "seconds", "images_per_s", "bytes_on_disk", "peak_rss_mb",
           "source_cache")


def destination(fmt: str, split_dir: str, lmdb_path: str = "") -> str:
    """Where ``fmt``'s data lives: ``lmdb_path`` (default ``SPLIT.lmdb``) or ``SPLIT.wds`` ..."""
    if fmt == "lmdb":
        from lmdbio.converter import default_destination

        return lmdb_path or default_destination(split_dir)
    return peers.default_destination(split_dir, fmt)


def _write(fmt: str, source: str, target: str) -> int:
    """In the child: write ``target``; returns the number of samples."""
    if fmt == "lmdb":
        from lmdbio.converter import convert

        return convert(source, target, progress=False).num_samples
    peers.write(fmt, source, target)
    return int(peers.read_manifest(target)["num_samples"])


def measure_writer(fmt: str, split_dir: str, target: str, *, backing_dir: str = "",
                   data_dir: str = "") -> dict[str, Any]:
    """Convert ``split_dir`` to ``target`` (a scratch name is used, then published or dropped)
    in a child process; returns one row of ``COLUMNS``."""
    if fmt != "lmdb":
        peers.require(fmt)  # the install hint here, not a traceback from the child
    for path in [split_dir] + ([os.path.join(backing_dir, os.path.relpath(split_dir, data_dir))]
                               if backing_dir else []):
        pagecache.evict(path)  # a cold source, as a first conversion meets it
    scratch = target + ".measure"
    discard(scratch)
    # output to files, not pipes: a chatty child must not block on a full pipe
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        code = subprocess.run([sys.executable, "-m", "lmdbio.study.peers.timing", fmt, split_dir,
                               scratch], stdout=out, stderr=err).returncode
        seconds = time.perf_counter() - started
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    if code != 0:
        discard(scratch)
        raise RuntimeError(f"{fmt} writer failed ({code}): {stderr[-2000:]}")
    report = json.loads(stdout.strip().splitlines()[-1])
    images = int(report["images"])
    row = {"format": fmt, "images": images, "seconds": seconds,
           "images_per_s": images / seconds, "bytes_on_disk": peers.sizes([scratch]),
           "peak_rss_mb": report["peak_rss_kb"] / 1024, "source_cache": "cold"}
    if os.path.exists(target):
        discard(scratch)
    else:
        os.replace(scratch, target)
    return row


def measure_writers(split_dir: str, formats: Sequence[str], *, lmdb_path: str = "",
                    backing_dir: str = "", data_dir: str = "", csv_path: str = "",
                    storage: str = "") -> list[dict[str, Any]]:
    """``measure_writer`` for each of ``formats`` (names, or one comma-separated string);
    the rows also go to ``csv_path`` if given."""
    from lmdbio.study.conditions import PEER_FORMATS, checked

    formats = checked("writers", formats, ("lmdb", *PEER_FORMATS))  # before any is written
    rows = [measure_writer(fmt, split_dir, destination(fmt, split_dir, lmdb_path),
                           backing_dir=backing_dir, data_dir=data_dir) | {"storage": storage}
            for fmt in formats]
    if csv_path:
        os.makedirs(os.path.dirname(os.path.abspath(csv_path)), exist_ok=True)
        with staged(csv_path) as partial, create_exclusive(partial, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=["storage", *COLUMNS])
            writer.writeheader()
            writer.writerows(rows)
    return rows


def _peak_rss_kb() -> int:
    """In the child: the larger of its own peak RSS since exec and its children's."""
    return max(peak_rss_bytes() // 1024, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)


if __name__ == "__main__":  # the child: python -m lmdbio.study.peers.timing FMT SRC DST
    fmt_arg, source_arg, target_arg = sys.argv[1:4]
    count = _write(fmt_arg, source_arg, target_arg)
    print(json.dumps({"images": count, "peak_rss_kb": _peak_rss_kb()}), flush=True)
