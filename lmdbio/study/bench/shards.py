"""Sharded conversion and sharded reads, side by side in one run (ratios, not absolutes).

    python -m lmdbio.study.bench shards [--images 5000] [--out results/shards]

1. Conversion, cold source, output on local disk: one database (``lmdbio convert``) vs two
   shards written one after the other by one process (``--num-shards 2``) vs two shards
   written at once by two processes (``--shard 0/2`` and ``--shard 1/2``, as two nodes or two
   torchrun ranks would). images/s = images / wall time from the first start to the last exit.
2. Raw random-order reads (no decode, one process), cold and warm: the single database vs the
   same samples as 2 and as 4 shards (``ShardedDatabase``), the same global order for all;
   cold = evict, then open and read once, all timed; warm = three passes over databases
   already open and read (one pass of 5 000 records takes ~0.07 s).
Variants alternate their order every repetition; on local disk ("ssd") and through the sshfs
network-FS stand-in ("nfs-sshfs"). Cold = pages evicted with posix_fadvise (both sides of sshfs).
"""

from __future__ import annotations

import argparse
import csv
import glob
import os
import random
import statistics
import subprocess
import sys
import time

import lmdbio
from lmdbio import Database, ShardedDatabase
from lmdbio.study import netfs, pagecache
from lmdbio.shard_plan import shard_path
from lmdbio.study.synthetic import ensure_dataset

CLI = [sys.executable, "-m", "lmdbio.cli", "convert"]


def _clean(pattern: str) -> None:
    for path in glob.glob(pattern):
        os.unlink(path)


def convert_variant(variant: str, src: str, dst: str) -> float:
    """Wall seconds of one conversion variant, launched as real processes."""
    base = [*CLI, src, dst, "-q", "--overwrite"]
    commands = {"1 db": [base], "2 shards, 1 process": [base + ["--num-shards", "2"]],
                "2 shards, 2 processes": [base + ["--shard", f"{i}/2"] for i in range(2)]}
    start = time.perf_counter()
    procs = [subprocess.Popen(cmd, stdout=subprocess.DEVNULL) for cmd in commands[variant]]
    codes = [proc.wait() for proc in procs]
    seconds = time.perf_counter() - start
    if any(codes):
        raise SystemExit(f"{variant}: a conversion failed ({codes})")
    return seconds


def bench_convert(storage: str, split: str, backing: list[str], work: str, images: int,
                  payload: int, repeats: int) -> list[dict]:
    rows = []
    variants = ["1 db", "2 shards, 1 process", "2 shards, 2 processes"]
    for repeat in range(repeats):
        for variant in variants if repeat % 2 == 0 else variants[::-1]:
            dst = os.path.join(work, "conv.lmdb")  # always on local disk
            _clean(os.path.join(work, "conv*.lmdb"))
            for path in (split, *backing):
                pagecache.evict(path)
            seconds = convert_variant(variant, split, dst)
            rows.append({"benchmark": "convert", "storage": storage, "variant": variant,
                         "repeat": repeat, "seconds": seconds, "per_s": images / seconds,
                         "mb_per_s": payload / 1e6 / seconds})
            print(rows[-1], flush=True)
    return rows


def read_all(db, order: list[int]) -> int:
    total = 0
    for index in order:
        total += len(db.get(index)[1])
    return total


def bench_reads(storage: str, sets: dict[str, list[str]], backing: dict[str, list[str]],
                repeats: int, warm_passes: int = 3) -> list[dict]:
    """Cold: the clock covers opening (header reads, and the readahead they trigger: up to
    read_ahead_kb per file) and one pass. Warm: databases opened and read once before the
    clock, which covers three passes (as a DataLoader worker that opened them long ago)."""
    rows = []
    with Database(sets["1 db"][0]) as db:
        count = len(db)
    names = list(sets)
    for repeat in range(repeats):
        order = list(range(count))
        random.Random(repeat).shuffle(order)
        for cache in ("cold", "warm"):
            rates = {}
            for name in names if repeat % 2 == 0 else names[::-1]:
                files = sets[name]
                opener = (lambda: Database(files[0])) if len(files) == 1 else (
                    lambda: ShardedDatabase(files))
                if cache == "cold":
                    for path in files + backing.get(name, []):
                        pagecache.evict(path)
                    resident = statistics.fmean(pagecache.residency(p).fraction for p in files)
                    start = time.perf_counter()
                    db = opener()  # cold: opening (header reads + their readahead) counts
                    nbytes = read_all(db, order)
                    passes = 1
                else:
                    db = opener()
                    read_all(db, order)
                    resident = statistics.fmean(pagecache.residency(p).fraction for p in files)
                    passes = warm_passes
                    start = time.perf_counter()
                    nbytes = sum(read_all(db, order) for _ in range(passes))
                seconds = time.perf_counter() - start
                db.close()
                rates[name] = passes * count / seconds
                rows.append({"benchmark": "read", "storage": storage, "variant": name,
                             "cache": cache, "repeat": repeat, "seconds": seconds,
                             "per_s": rates[name], "mb_per_s": nbytes / 1e6 / seconds,
                             "resident_before": resident})
            for row in rows[-len(names):]:
                row["ratio_to_single"] = rates[row["variant"]] / rates["1 db"]
                print(row, flush=True)
    return rows


def make_sets(split: str, work: str) -> dict[str, list[str]]:
    """The single database and its 2- and 4-shard sets, next to the split folder."""
    db = split + ".lmdb"
    if not os.path.exists(db):
        lmdbio.convert(split, db, progress=False)
    sets = {"1 db": [db]}
    for count in (2, 4):
        files = [shard_path(db, i, count) for i in range(count)]
        if not all(os.path.exists(f) for f in files):
            lmdbio.convert_shards(split, db, count, overwrite=True, progress=False)
        sets[f"{count} shards"] = files
    return sets


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lmdbio.study.bench shards",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--work", default="/tmp/lmdbio-bench")
    parser.add_argument("--out", default="results/shards")
    parser.add_argument("--repeats", type=int, default=3, help="conversion repetitions")
    parser.add_argument("--read-repeats", type=int, default=7, help="read repetitions")
    parser.add_argument("--no-nfs", action="store_true", help="skip the sshfs stand-in")
    args = parser.parse_args(argv)
    data = os.path.join(args.work, f"data-{args.images}")
    split = os.fspath(ensure_dataset(data, args.images))
    sets = make_sets(split, args.work)
    with Database(sets["1 db"][0]) as db:
        images, payload = len(db), db.meta.payload_bytes
    rows = bench_convert("ssd", split, [], args.work, images, payload, args.repeats)
    rows += bench_reads("ssd", sets, {}, args.read_repeats)
    if not args.no_nfs and netfs.available()[0]:
        with netfs.SshfsMount(data) as mount:
            remote = os.path.join(mount.mountpoint, "train")
            rows += bench_convert("nfs-sshfs", remote, [split], args.work, images, payload,
                                  args.repeats)
            remote_sets = {name: [os.path.join(mount.mountpoint, os.path.relpath(f, data))
                                  for f in files] for name, files in sets.items()}
            rows += bench_reads("nfs-sshfs", remote_sets, sets, args.read_repeats)
    _clean(os.path.join(args.work, "conv*.lmdb"))
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "bench_shards.csv"), "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=sorted({k for r in rows for k in r}))
        writer.writeheader()
        writer.writerows(rows)
    summarize(rows)
    return 0


def summarize(rows: list[dict]) -> None:
    def med(storage: str, bench: str, variant: str, key: str, cache: str | None = None) -> float:
        return statistics.median(r[key] for r in rows if r["storage"] == storage
                                 and r["benchmark"] == bench and r["variant"] == variant
                                 and r.get("cache") == cache)

    for storage in sorted({r["storage"] for r in rows}):
        one = med(storage, "convert", "1 db", "per_s")
        print(f"\n[{storage}] conversion, cold source (median of repeats):")
        for variant in ("1 db", "2 shards, 1 process", "2 shards, 2 processes"):
            rate = med(storage, "convert", variant, "per_s")
            mb = med(storage, "convert", variant, "mb_per_s")
            print(f"  {variant}: {rate:.0f} img/s ({mb:.0f} MB/s) = {rate / one:.2f}x one "
                  "database")
        for cache in ("cold", "warm"):
            for variant in ("1 db", "2 shards", "4 shards"):
                print(f"  {cache} random reads, {variant}: "
                      f"{med(storage, 'read', variant, 'per_s', cache):.0f} rec/s = "
                      f"{med(storage, 'read', variant, 'ratio_to_single', cache):.2f}x one "
                      "database (median of per-repeat ratios)")


if __name__ == "__main__":
    sys.exit(main())
