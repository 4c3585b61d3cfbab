"""Converter speed and Dataset read rates, side by side in one run (ratios, not absolutes).

    .venv/bin/python benchmarks/bench_foundation.py [--images 5000] [--out results/foundation]

1. Converter, cold source: ``lmdbio.convert`` vs a plain one-file-at-a-time converter in the
   style of the pytorch-lmdb seed (read, pickle ``(bytes, label)``, ``put(str(i))``, commit
   every 5 000). Each runs in its own process so peak RSS is its own.
2. Raw random-order reads (no decode), cold and warm: loose files, LMDB with readahead on and
   off (the seed's setting), against the sequential read bandwidth of the same LMDB file.
Cold = pages evicted with posix_fadvise after every reader closed; verified by residency.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import subprocess
import sys
import time

from lmdbio import Database, EnvOptions, pagecache
from lmdbio.folder import find_classes, make_dataset
from lmdbio.synthetic import ensure_dataset

SEED_CONVERTER = r"""
import json, os, pickle, resource, sys, time, lmdb
from lmdbio.folder import find_classes, make_dataset
src, dst = sys.argv[1], sys.argv[2]
start = time.perf_counter()
samples = make_dataset(src, find_classes(src)[1])
env = lmdb.open(dst, subdir=False, map_size=int(28.6 * 2**30), readonly=False, meminit=False,
                map_async=True)
txn = env.begin(write=True)
total = 0
for i, (path, label) in enumerate(samples):
    with open(path, "rb") as f:
        data = f.read()
    total += len(data)
    txn.put(str(i).encode("ascii"), pickle.dumps((data, label)))
    if i % 5000 == 0:
        txn.commit(); txn = env.begin(write=True)
txn.commit()
with env.begin(write=True) as txn:
    keys = [str(i).encode("ascii") for i in range(len(samples))]
    txn.put(b"__keys__", pickle.dumps(keys)); txn.put(b"__len__", pickle.dumps(len(keys)))
env.sync(); env.close()
print(json.dumps({"seconds": time.perf_counter() - start, "images": len(samples), "bytes": total,
                  "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
"""

LMDBIO_CONVERTER = r"""
import json, sys, lmdbio
r = lmdbio.convert(sys.argv[1], sys.argv[2], overwrite=True, progress=False)
print(json.dumps({"seconds": r.seconds, "images": r.num_samples, "bytes": r.payload_bytes,
                  "peak_rss": r.peak_rss_bytes}))
"""


def run_converter(code: str, src: str, dst: str) -> dict:
    pagecache.evict(src)
    out = subprocess.run([sys.executable, "-c", code, src, dst], capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


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


def sequential(path: str) -> float:
    pagecache.evict(path)
    start = time.perf_counter()
    with open(path, "rb", buffering=0) as handle:
        while handle.read(1 << 20):
            pass
    return os.path.getsize(path) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--work", default="/tmp/lmdbio-bench")
    parser.add_argument("--out", default="results/foundation")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    split = os.fspath(ensure_dataset(os.path.join(args.work, f"data-{args.images}"), args.images,
                                     progress=True))
    rows = []
    for repeat in range(args.repeats):  # alternate the order: drift cancels out
        pair = [("seed-style", SEED_CONVERTER), ("lmdbio", LMDBIO_CONVERTER)]
        for name, code in pair if repeat % 2 == 0 else pair[::-1]:
            dst = os.path.join(args.work, f"{name}.lmdb")
            if os.path.exists(dst):
                os.unlink(dst)
            r = run_converter(code, split, dst)
            rows.append({"benchmark": "convert", "variant": name, "repeat": repeat,
                         "per_s": r["images"] / r["seconds"],
                         "mb_per_s": r["bytes"] / 1e6 / r["seconds"],
                         "peak_rss_mb": r["peak_rss"] / 1e6})
            print(rows[-1], flush=True)
    db_path = os.path.join(args.work, "lmdbio.lmdb")
    paths = [p for p, _ in make_dataset(split, find_classes(split)[1])]
    for repeat in range(args.repeats):
        order = list(range(len(paths)))
        random.Random(repeat).shuffle(order)
        seq = sequential(db_path)
        rows.append({"benchmark": "read", "variant": "sequential-lmdb-file", "cache": "cold",
                     "repeat": repeat, "mb_per_s": seq / 1e6, "ratio_to_sequential": 1.0})
        readers = [("loose-files", split, lambda: read_files([paths[i] for i in order])),
                   ("lmdb-readahead-on", db_path, lambda: read_lmdb(db_path, order, True)),
                   ("lmdb-readahead-off", db_path, lambda: read_lmdb(db_path, order, False))]
        for cache in ("cold", "warm"):
            for name, target, read in readers if repeat % 2 == 0 else readers[::-1]:
                pagecache.evict(target) if cache == "cold" else read()
                resident = pagecache.residency(target).fraction
                start = time.perf_counter()
                nbytes = read()
                seconds = time.perf_counter() - start
                rows.append({"benchmark": "read", "variant": name, "cache": cache,
                             "repeat": repeat, "per_s": len(order) / seconds,
                             "mb_per_s": nbytes / 1e6 / seconds, "resident_before": resident,
                             "ratio_to_sequential": nbytes / seconds / seq})
                print(rows[-1], flush=True)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "bench_foundation.csv"), "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=sorted({k for r in rows for k in r}))
        writer.writeheader()
        writer.writerows(rows)
    summarize(rows)


def summarize(rows: list[dict]) -> None:
    import statistics

    def med(variant: str, key: str, cache: str | None = None) -> float:
        values = [r[key] for r in rows if r["variant"] == variant and r.get("cache") == cache]
        return statistics.median(values)

    seed, ours = med("seed-style", "per_s"), med("lmdbio", "per_s")
    print(f"\nconverter: lmdbio {ours:.0f} img/s ({med('lmdbio', 'mb_per_s'):.0f} MB/s, peak RSS "
          f"{med('lmdbio', 'peak_rss_mb'):.0f} MB) vs seed-style {seed:.0f} img/s "
          f"({med('seed-style', 'peak_rss_mb'):.0f} MB): {ours / seed:.1f}x")
    for cache in ("cold", "warm"):
        files = med("loose-files", "per_s", cache)
        for variant in ("loose-files", "lmdb-readahead-on", "lmdb-readahead-off"):
            print(f"{cache} random reads, {variant}: {med(variant, 'per_s', cache):.0f} rec/s, "
                  f"{med(variant, 'mb_per_s', cache):.0f} MB/s, "
                  f"{med(variant, 'ratio_to_sequential', cache):.2f}x sequential, "
                  f"{med(variant, 'per_s', cache) / files:.2f}x loose files")


if __name__ == "__main__":
    main()
