"""The performance suite (issue #4): regenerates ``results/perf/`` (CSV + PNG + targets table).

    make bench-perf            # or: python -m lmdbio.study.bench perf [--only reads,loader]

Sections (each prints the limits it is measured against first):
  reads    target 1, cold random raw reads, DB fits in RAM, vs sequential bandwidth
  cgroup   target 2, DB 4x the page cache (v1 memory cgroup), block-shuffled vs random order
  iocost   issue #17, CPU per record of each way to read a DB 4x the page cache
  loader   target 3, end-to-end loader vs the in-memory ceiling; fast decode paths; accuracy
  startup  issue #17, lmdbio's prefetch against reading on demand and LitData, cold, when the
           loader sets an epoch's pace and when a slower step does, beside the in-memory ceiling
  convert  target 4, converter vs the seed and the source's sequential read; RSS 5k-100k
  memory   target 5, per-worker RSS/PSS at 10k and 1M records
Storages: local disk ("ssd") and sshfs over sshd on 127.0.0.1 ("nfs-sshfs"). Ratios are taken
within one run, conditions in ABBA order; run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from lmdbio.cli_args import positive_int
from lmdbio.study.bench.perf_common import jpeg_tree, raw_tree, storages, write_rows

SECTIONS = ("reads", "cgroup", "iocost", "loader", "startup", "convert", "memory")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lmdbio.study.bench perf", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="/tmp/lmdbio-perf",
                        help="generated data (kept for later runs)")
    parser.add_argument("--out", default="results/perf")
    parser.add_argument("--images", type=positive_int, default=3000, help="JPEGs in the loader's tree")
    parser.add_argument("--replicas", type=positive_int, default=12,
                        help="copies of each JPEG in the raw-read tree")
    parser.add_argument("--repeats", type=positive_int, default=3)
    parser.add_argument("--loader-repeats", type=positive_int, default=8,
                        help="the loader section's repetitions (target 3a is a ratio of a few "
                             "percent: 3 do not place it within this VM's drift)")
    parser.add_argument("--pair-repeats", type=positive_int, default=20,
                        help="then the in-memory ceiling and lmdbio alone, back to back, this "
                             "many times (target 3a)")
    parser.add_argument("--startup-repeats", type=positive_int, default=8,
                        help="the startup section's repetitions of each strategy and mode")
    parser.add_argument("--epochs", type=positive_int, default=4, help="accuracy runs' epochs")
    parser.add_argument("--only", default=",".join(SECTIONS))
    parser.add_argument("--no-nfs", action="store_true", help="local disk only")
    args = parser.parse_args(argv)
    only = [s for s in args.only.split(",") if s]
    unknown = sorted(set(only) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown section(s) {unknown}; choose from {SECTIONS}")
    import torch

    torch.set_num_threads(2)
    started = time.perf_counter()
    os.makedirs(args.work, exist_ok=True)
    jpeg = jpeg_tree(args.work, args.images)
    raw_reads = {"reads", "cgroup", "iocost"} & set(only)
    raw = raw_tree(args.work, jpeg, args.replicas) if raw_reads else ""
    print(f"data ready in {time.perf_counter() - started:.0f} s", flush=True)
    with storages(args.work, not args.no_nfs) as places:
        if "reads" in only:
            from lmdbio.study.bench.perf_reads import bench_fits_in_ram

            write_rows(bench_fits_in_ram(places, raw, args.repeats, 10.0),
                       os.path.join(args.out, "reads.csv"))
        if "cgroup" in only:
            from lmdbio.study.bench.perf_reads import bench_larger_than_ram

            write_rows(bench_larger_than_ram(places[:1], raw, args.repeats, 8.0),
                       os.path.join(args.out, "larger_than_ram.csv"))
        if "iocost" in only:
            from lmdbio.study.bench.perf_iocost import bench_io_cost

            write_rows(bench_io_cost(places[0], raw, args.repeats),
                       os.path.join(args.out, "iocost.csv"))
        if "loader" in only:
            from lmdbio.study.bench.perf_loader import bench_accuracy, bench_loader, prepare

            files = prepare(args.work, jpeg)
            write_rows(bench_loader(places, files, args.loader_repeats,
                                    args.pair_repeats),
                       os.path.join(args.out, "loader.csv"))
            write_rows(bench_accuracy(args.work, files, 1000, args.epochs),
                       os.path.join(args.out, "accuracy.csv"))
        if "startup" in only:
            from lmdbio.study.bench.perf_startup import bench_startup
            from lmdbio.study.bench.perf_startup import prepare as prepare_startup

            write_rows(bench_startup(places, prepare_startup(args.work, jpeg),
                                     args.startup_repeats),
                       os.path.join(args.out, "startup.csv"))
        if "convert" in only:
            from lmdbio.study.bench.perf_convert import bench_rss, bench_speed

            write_rows(bench_speed(places, jpeg, args.work, args.repeats),
                       os.path.join(args.out, "convert.csv"))
            write_rows(bench_rss(args.work, jpeg, args.work), os.path.join(args.out, "convert_rss.csv"))
    if "memory" in only:
        from lmdbio.study.bench.perf_memory import bench_memory

        write_rows(bench_memory(args.work), os.path.join(args.out, "memory.csv"))
    from lmdbio.study.bench.perf_report import report

    report(args.out)
    print(f"\nbench-perf done in {(time.perf_counter() - started) / 60:.1f} min", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
