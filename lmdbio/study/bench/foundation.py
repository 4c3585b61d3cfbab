"""Converter speed and Dataset read rates, side by side in one run (ratios, not absolutes).

    python -m lmdbio.study.bench foundation [--images 5000] [--out results/foundation]

1. Converter, cold source: ``lmdbio.convert`` vs the pytorch-lmdb seed's converter (ImageFolder
   + DataLoader, pickled records) and vs a plain one-file-at-a-time loop (``converters``). Each
   runs in its own process, so peak RSS is its own; the output always goes to local disk.
2. Raw random-order reads (no decode), cold and warm: loose files, LMDB with readahead on and
   off (the seed's setting), against the sequential read bandwidth of the same LMDB file.
Both on local disk ("ssd") and through the sshfs network-FS stand-in ("nfs-sshfs").
Cold = pages evicted with posix_fadvise (both sides of sshfs) after every reader closed.
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import sys
import time

import lmdbio
from lmdbio import Database, EnvOptions
from lmdbio.study import netfs, pagecache
from lmdbio.folder import find_classes, make_dataset
from lmdbio.study.bench import converters
from lmdbio.study.synthetic import ensure_dataset

def run_converter(name: str, src: str, dst: str, evict: list[str]) -> dict:
    """One converter of ``converters.CONVERTERS`` in its own process, the source evicted."""
    for path in evict:
        pagecache.evict(path)
    return converters.run(name, src, dst)


def read_files(paths: list[str]) -> int:
    total = 0
    for path in paths:
        with open(path, "rb") as handle:
            total += len(handle.read())
    return total


def read_lmdb(path: str, order: list[int], readahead: bool) -> int:
    total = 0
    with Database(path, EnvOptions(readahead=readahead)) as db:
        for index in order:
            total += len(db.get(index)[1])
    return total


def sequential(path: str, evict: list[str]) -> float:
    for p in evict:
        pagecache.evict(p)
    start = time.perf_counter()
    total = pagecache.read_through(path, 1 << 20)
    return total / (time.perf_counter() - start)


def bench_converters(storage: str, split: str, backing: list[str], work: str,
                     repeats: int) -> list[dict]:
    rows = []
    variants = ["seed", "plain-loop", "lmdbio"]  # converters.CONVERTERS
    for repeat in range(repeats):  # the order reverses every repeat: drift cancels out
        for name in variants if repeat % 2 == 0 else variants[::-1]:
            dst = os.path.join(work, f"{name}.lmdb")  # always on local disk
            for leftover in (dst, dst + "-lock"):
                if os.path.exists(leftover):
                    os.unlink(leftover)
            r = run_converter(name, split, dst, [split, *backing])
            rows.append({"benchmark": "convert", "storage": storage, "variant": name,
                         "repeat": repeat, "per_s": r["images"] / r["seconds"],
                         "mb_per_s": r["bytes"] / 1e6 / r["seconds"],
                         "peak_rss_mb": r["peak_rss"] / 1e6})
            print(rows[-1], flush=True)
    return rows


def bench_reads(storage: str, split: str, db_path: str, backing: list[str],
                repeats: int) -> list[dict]:
    rows = []
    paths = [p for p, _ in make_dataset(split, find_classes(split)[1])]
    for repeat in range(repeats):
        order = list(range(len(paths)))
        random.Random(repeat).shuffle(order)
        seq = sequential(db_path, [db_path, *backing])
        rows.append({"benchmark": "read", "storage": storage, "variant": "sequential-lmdb-file",
                     "cache": "cold", "repeat": repeat, "mb_per_s": seq / 1e6,
                     "ratio_to_sequential": 1.0})
        readers = [("loose-files", split, lambda: read_files([paths[i] for i in order])),
                   ("lmdb-readahead-on", db_path, lambda: read_lmdb(db_path, order, True)),
                   ("lmdb-readahead-off", db_path, lambda: read_lmdb(db_path, order, False))]
        for cache in ("cold", "warm"):
            for name, target, read in readers if repeat % 2 == 0 else readers[::-1]:
                if cache == "cold":
                    for path in (target, *backing):
                        pagecache.evict(path)
                else:
                    read()
                resident = pagecache.residency(target).fraction
                start = time.perf_counter()
                nbytes = read()
                seconds = time.perf_counter() - start
                rows.append({"benchmark": "read", "storage": storage, "variant": name,
                             "cache": cache, "repeat": repeat, "per_s": len(order) / seconds,
                             "mb_per_s": nbytes / 1e6 / seconds, "resident_before": resident,
                             "ratio_to_sequential": nbytes / seconds / seq})
                print(rows[-1], flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lmdbio.study.bench foundation",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--work", default="/tmp/lmdbio-bench")
    parser.add_argument("--out", default="results/foundation")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-nfs", action="store_true", help="skip the sshfs stand-in")
    args = parser.parse_args(argv)
    data = os.path.join(args.work, f"data-{args.images}")
    split = os.fspath(ensure_dataset(data, args.images))
    db_path = split + ".lmdb"
    if not os.path.exists(db_path):
        lmdbio.convert(split, db_path, progress=False)
    rows = bench_converters("ssd", split, [], args.work, args.repeats)
    rows += bench_reads("ssd", split, db_path, [], args.repeats)
    if not args.no_nfs and netfs.available()[0]:
        with netfs.SshfsMount(data) as mount:
            remote = os.path.join(mount.mountpoint, "train")
            rows += bench_converters("nfs-sshfs", remote, [split], args.work, args.repeats)
            rows += bench_reads("nfs-sshfs", remote, remote + ".lmdb", [split, db_path],
                                args.repeats)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "bench_foundation.csv"), "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=sorted({k for r in rows for k in r}))
        writer.writeheader()
        writer.writerows(rows)
    summarize(rows)
    return 0


def summarize(rows: list[dict]) -> None:
    import statistics

    def med(storage: str, variant: str, key: str, cache: str | None = None) -> float:
        return statistics.median(r[key] for r in rows if r["storage"] == storage
                                 and r["variant"] == variant and r.get("cache") == cache)

    for storage in sorted({r["storage"] for r in rows}):
        ours = med(storage, "lmdbio", "per_s")
        print(f"\n[{storage}] converter, cold source: lmdbio {ours:.0f} img/s "
              f"({med(storage, 'lmdbio', 'mb_per_s'):.0f} MB/s, peak RSS "
              f"{med(storage, 'lmdbio', 'peak_rss_mb'):.0f} MB)")
        for base in ("seed", "plain-loop"):
            other = med(storage, base, "per_s")
            print(f"  vs {base}: {other:.0f} img/s (peak RSS "
                  f"{med(storage, base, 'peak_rss_mb'):.0f} MB): lmdbio is {ours / other:.1f}x")
        seq = med(storage, "sequential-lmdb-file", "mb_per_s", "cold")
        print(f"[{storage}] sequential read of the LMDB file, cold: {seq:.0f} MB/s")
        for cache in ("cold", "warm"):
            files = med(storage, "loose-files", "per_s", cache)
            for variant in ("loose-files", "lmdb-readahead-on", "lmdb-readahead-off"):
                rate = med(storage, variant, "per_s", cache)
                print(f"  {cache} random reads, {variant}: {rate:.0f} rec/s, "
                      f"{med(storage, variant, 'mb_per_s', cache):.0f} MB/s = "
                      f"{med(storage, variant, 'ratio_to_sequential', cache):.2f}x sequential, "
                      f"{rate / files:.2f}x loose files")


if __name__ == "__main__":
    sys.exit(main())
