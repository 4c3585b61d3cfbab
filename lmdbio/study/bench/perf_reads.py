"""Targets 1 and 2: cold raw-record reads (no decode) against the storage's sequential limit.

1. DB that fits in RAM, random order: lmdbio as ImageFolderLMDB opens it (readahead on,
   prefetch "auto" = on here, and with it batch hints "auto" = off; and with hints on) vs the
   same file without prefetch, with readahead off, the seed's pickled DB read the seed's way,
   and loose files; in one process, and through a DataLoader with 2 worker processes. And the same lmdbio reads warm: the
   readers' own CPU limit (one Python process checks and copies well under a fast local
   disk's sequential bandwidth), which no cold read can pass.
2. DB larger than the page cache: a v1 memory cgroup limited to 1/4 of the DB holds the reader
   (``--cgroup-child``), so its page cache is bounded like a dataset 4x larger than RAM.
   BlockShuffleSampler order vs plain random order vs sequential, each in the cgroup; prefetch
   "auto" sees the cgroup's limit and stays off. The order's randomness is measured too.
"""

from __future__ import annotations

import importlib
import json
import statistics
import os
import random
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence


from lmdbio import Database, EnvOptions, open_database
from lmdbio.folder import find_classes, make_dataset
from lmdbio.prefetch import fits_in_memory, prefetch_files, stop_all
from lmdbio.samplers import BlockShuffleSampler
from lmdbio.study import cgroups, pagecache
from lmdbio.study.cgroups import ControlGroup
from lmdbio.study.strategies import order_randomness
from lmdbio.study.bench.perf_common import MB, Storage, banner, median, sequential_mb_s

CHILD = "lmdbio.study.bench.perf_reads"  # python -m CHILD --cgroup-child ...: one condition
CHILD_FLAG = "--cgroup-child"  # what run_in_cgroup passes; child_main requires it
BLOCK, BUFFER = 128, 1024   # records per block (~4 MB of 30 KB JPEGs), shuffle buffer
# The same reads with the file in the page cache: what the readers' CPU allows at all (record
# lookup, copy, CRC-32), the ceiling of any cold variant whatever the storage.
WARM_LOADER = "lmdbio, 2 DataLoader workers, warm (CPU limit)"
WARM_ONE = "lmdbio, one process, warm (CPU limit)"


def read_lmdbio(path: str, order: Sequence[int], readahead: bool, prefetch: bool,
                deadline: float) -> tuple[int, int]:
    """Read records in ``order`` (until ``deadline``); returns (records, bytes)."""
    total = count = 0
    with Database(path, EnvOptions(readahead=readahead)) as db:
        started = prefetch_files([path]) if prefetch else []
        try:
            for index in order:
                total += len(db.get(index)[1])
                count += 1
                if count % 256 == 0 and time.perf_counter() > deadline:
                    break
        finally:
            stop_all(started)
    return count, total


def read_seed(path: str, order: Sequence[int], deadline: float) -> tuple[int, int]:
    """The seed's reader: readahead off, str keys, one pickle per record (through lmdbio's
    opt-in legacy reader)."""
    total = count = 0
    with open_database(path, EnvOptions(readahead=False), allow_pickle=True) as db:
        for index in order:
            total += len(db.get(index)[1])
            count += 1
            if count % 256 == 0 and time.perf_counter() > deadline:
                break
    return count, total


def read_files(paths: Sequence[str], order: Sequence[int], deadline: float) -> tuple[int, int]:
    total = count = 0
    for index in order:
        with open(paths[index], "rb", buffering=0) as handle:
            total += len(handle.read())
        count += 1
        if count % 256 == 0 and time.perf_counter() > deadline:
            break
    return count, total


class RawFiles:
    """Loose files as a map-style dataset of raw bytes (their length, so batches stay small)."""

    def __init__(self, paths: Sequence[str]) -> None:
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[int, int]:
        with open(self.paths[index], "rb", buffering=0) as handle:
            return len(handle.read()), 0


def _lmdbio_dataset(path: str, **options: object) -> object:
    # imported here: torch would not fit in the cgroup children of target 2 (~300 MB)
    from lmdbio.dataset import ImageFolderLMDB

    return ImageFolderLMDB(path, decode=len, **options)  # type: ignore[arg-type]


def read_loader(make_dataset: Callable[[], object], deadline: float,
                workers: int = 2) -> tuple[int, int]:
    """Random order through a DataLoader with ``workers`` processes, as training reads."""
    import torch
    from torch.utils.data import DataLoader

    dataset = make_dataset()
    loader = DataLoader(dataset, batch_size=256, shuffle=True, num_workers=workers,
                        generator=torch.Generator().manual_seed(0))
    total = count = 0
    try:
        for lengths, _ in loader:
            total += int(lengths.sum())
            count += len(lengths)
            if time.perf_counter() > deadline:
                break
    finally:
        if hasattr(dataset, "close"):
            dataset.close()
    return count, total


def timed(read: Callable[[float], tuple[int, int]], max_seconds: float) -> dict[str, float]:
    start = time.perf_counter()
    count, nbytes = read(start + max_seconds)
    seconds = time.perf_counter() - start
    return {"records": count, "mb": nbytes / MB, "seconds": seconds,
            "mb_per_s": nbytes / MB / seconds, "per_s": count / seconds}


def bench_fits_in_ram(storages: list[Storage], raw: str, repeats: int,
                      max_seconds: float) -> list[dict]:
    rows: list[dict] = []
    db, seed_db = f"{raw}.lmdb", f"{raw}.seed.lmdb"
    # Imported before any clock starts (here, not in the cgroup children): the first
    # DataLoader variant of the first repetition used to time the import of torchvision
    # (ImageFolderLMDB subclasses ImageFolder), 2-3 s here: 0.35x where the others read 0.86x
    for module in ("torch.utils.data", "lmdbio.dataset"):
        importlib.import_module(module)
    for storage in storages:
        root = storage.path(raw)
        paths = [p for p, _ in make_dataset(root, find_classes(root)[1])]
        path, seed_path = storage.path(db), storage.path(seed_db)
        seq = [sequential_mb_s(storage, db) for _ in range(2)]
        banner(f"[{storage.name}] target 1: cold random raw reads, DB fits in RAM "
               f"({os.path.getsize(path) / MB:.0f} MB, prefetch auto -> "
               f"{fits_in_memory([path])})",
               {"sequential read of the DB file, cold (MB/s)": max(seq)})
        variants: list[tuple[str, str, Callable[[list[int], float], tuple[int, int]]]] = [
            ("lmdbio (readahead on, prefetch auto)", db,
             lambda o, d: read_lmdbio(path, o, True, fits_in_memory([path]), d)),
            ("lmdbio, prefetch off", db, lambda o, d: read_lmdbio(path, o, True, False, d)),
            ("lmdbio, 2 DataLoader workers (defaults)", db,
             lambda o, d: read_loader(lambda: _lmdbio_dataset(path), d)),
            ("lmdbio, 2 DataLoader workers, batch hints on", db,
             lambda o, d: read_loader(lambda: _lmdbio_dataset(path, batch_hints=True), d)),
            ("loose files, 2 DataLoader workers", raw,
             lambda o, d: read_loader(lambda: RawFiles(paths), d)),
            ("lmdbio, readahead off", db, lambda o, d: read_lmdbio(path, o, False, False, d)),
            ("seed-style DB (pickle, readahead off)", seed_db,
             lambda o, d: read_seed(seed_path, o, d)),
            ("loose files", raw, lambda o, d: read_files(paths, o, d)),
            (WARM_LOADER, db,
             lambda o, d: read_loader(lambda: _lmdbio_dataset(path, prefetch=False,
                                                              batch_hints=False), d)),
            (WARM_ONE, db, lambda o, d: read_lmdbio(path, o, True, False, d)),
        ]
        for repeat in range(repeats):
            order = list(range(len(paths)))
            random.Random(repeat).shuffle(order)
            limit = statistics.median(sequential_mb_s(storage, db) for _ in range(3))
            rows.append({"target": 1, "storage": storage.name, "variant": "sequential (limit)",
                         "repeat": repeat, "mb_per_s": limit, "ratio_to_sequential": 1.0})
            for name, relative, read in variants if repeat % 2 == 0 else variants[::-1]:
                if name in (WARM_LOADER, WARM_ONE):
                    pagecache.read_through(storage.path(relative))
                else:
                    storage.evict(relative)
                row = timed(lambda d: read(order, d), max_seconds)  # noqa: B023
                rows.append({"target": 1, "storage": storage.name, "variant": name,
                             "repeat": repeat, **row,
                             "ratio_to_sequential": row["mb_per_s"] / limit})
                print(f"   {name}: {row['mb_per_s']:.0f} MB/s = "
                      f"{row['mb_per_s'] / limit:.2f}x sequential", flush=True)
        print(f"[{storage.name}] median lmdbio/sequential: "
              f"{median(rows, 'ratio_to_sequential', storage=storage.name, variant=variants[0][0]):.2f}x",
              flush=True)
    return rows


# -- target 2: a DB 4x larger than the page cache ------------------------------------------

def _child(argv: list[str]) -> None:
    """In the cgroup: one condition; prints one JSON line. Variants: "sequential", or
    "<order>:<readahead>" with order "random" or "block<records>/<buffer>" and readahead
    "on", "off" or "auto" (what ImageFolderLMDB would pick here); block orders hint each block
    to storage through ``will_need`` (the sampler's default) unless the order ends in "-nohint"."""
    path, variant, max_seconds = argv[0], argv[1], float(argv[2])
    if variant == "sequential":
        start = time.perf_counter()
        total = pagecache.read_through(path)
        seconds = time.perf_counter() - start
        print(json.dumps({"mb_per_s": total / MB / seconds, "seconds": seconds}))
        return
    kind, readahead = variant.split(":")
    fits = fits_in_memory([path])
    ahead = fits if readahead == "auto" else readahead == "on"
    with Database(path, EnvOptions(readahead=ahead)) as db:
        if kind.startswith("block"):
            block, buffer_size = (int(x) for x in kind[5:].removesuffix("-nohint").split("/"))
            order: Iterable[int] = BlockShuffleSampler(db, block_size=block,
                                                       buffer_size=buffer_size, seed=1,
                                                       hint_blocks=not kind.endswith("-nohint"))
        else:
            shuffled = list(range(len(db)))
            random.Random(1).shuffle(shuffled)
            order = shuffled
        start = time.perf_counter()
        total = count = 0
        for index in order:  # lazily: the sampler's hints go out as its blocks come up
            total += len(db.get(index)[1])
            count += 1
            if count % 256 == 0 and time.perf_counter() - start > max_seconds:
                break
        seconds = time.perf_counter() - start
    print(json.dumps({"records": count, "mb": total / MB, "seconds": seconds,
                      "mb_per_s": total / MB / seconds, "per_s": count / seconds,
                      "prefetch_auto": fits, "readahead": ahead}))


def run_in_cgroup(limit_bytes: int, argv: list[str], module: str = CHILD) -> dict:
    """Run ``python -m MODULE --cgroup-child ARGV`` (its ``_child``, here the one above, started
    by ``child_main``) in a fresh v1 memory cgroup of ``limit_bytes``; its last line of output,
    a JSON object."""
    with ControlGroup("memory", {"memory.limit_in_bytes": str(limit_bytes)},
                      name="perf") as group:
        procs = group.path / "cgroup.procs"  # type: ignore[operator]

        def enter() -> None:
            procs.write_text(str(os.getpid()))

        out = subprocess.run([sys.executable, "-m", module, CHILD_FLAG, *argv],
                             preexec_fn=enter, capture_output=True, text=True, check=True)
        peak = group.read_int("memory.max_usage_in_bytes")
    return json.loads(out.stdout.strip().splitlines()[-1]) | {"cgroup_peak_mb": peak / MB}


def bench_larger_than_ram(storages: list[Storage], raw: str, repeats: int,
                          max_seconds: float) -> list[dict]:
    rows: list[dict] = []
    ok, why = cgroups.available("memory")
    if not ok:
        print(f"target 2 skipped: {why}", flush=True)
        return rows
    db = f"{raw}.lmdb"
    for storage in storages:
        path = storage.path(db)
        size = os.path.getsize(path)
        limit = size // 4
        n = len(Database(path))
        shuffled = list(range(n))
        random.Random(1).shuffle(shuffled)
        randomness = {"random": order_randomness(shuffled),
                      "block": order_randomness(list(BlockShuffleSampler(
                          n, block_size=BLOCK, buffer_size=BUFFER, seed=1)), block=BLOCK)}
        variants = {  # child variant -> (label, order)
            f"block{BLOCK}/{BUFFER}:auto": (f"BlockShuffleSampler({BLOCK}, {BUFFER}) + block "
                                           "hints, lmdbio defaults (readahead auto: off)",
                                           "block"),
            f"block{BLOCK}/{BUFFER}-nohint:on": (f"BlockShuffleSampler({BLOCK}, {BUFFER}), "
                                                "no hints, kernel readahead on", "block"),
            "random:auto": ("random order, lmdbio defaults (readahead auto: off)", "random"),
            "random:on": ("random order, kernel readahead on", "random"),
        }
        seqs: list[float] = []
        for repeat in range(repeats):
            storage.evict(db)
            seq = run_in_cgroup(limit, [path, "sequential", "0"])["mb_per_s"]
            seqs.append(seq)
            if repeat == 0:
                banner(f"[{storage.name}] target 2: DB {size / MB:.0f} MB, page cache bounded "
                       f"to {limit / MB:.0f} MB (v1 memory cgroup)",
                       {"sequential read of the DB file in the cgroup, cold (MB/s)": seq})
            rows.append({"target": 2, "storage": storage.name, "variant": "sequential (limit)",
                         "repeat": repeat, "mb_per_s": seq, "ratio_to_sequential": 1.0,
                         "cgroup_limit_mb": limit / MB})
            names = list(variants)
            for variant in names if repeat % 2 == 0 else names[::-1]:
                storage.evict(db)
                row = run_in_cgroup(limit, [path, variant, str(max_seconds)])
                label, kind = variants[variant]
                rows.append({"target": 2, "storage": storage.name, "variant": label,
                             "repeat": repeat, **row, **randomness[kind],
                             "ratio_to_sequential": row["mb_per_s"] / seq,
                             "cgroup_limit_mb": limit / MB})
                print(f"   {label}: {row['mb_per_s']:.0f} MB/s = {row['mb_per_s'] / seq:.2f}x "
                      f"sequential (cgroup peak {row['cgroup_peak_mb']:.0f} MB, prefetch auto "
                      f"-> {row['prefetch_auto']})", flush=True)
        for kind, figures in randomness.items():
            print(f"   order '{kind}': {figures['adjacent_pairs']:.3f} of consecutive samples "
                  f"are disk neighbours, {figures['blocks_per_batch']:.1f} distinct {BLOCK}-record "
                  "blocks per batch of 128", flush=True)
    return rows


def child_main(module: str, child: Callable[[list[str]], None], arguments: str,
               section: str) -> None:
    """``python -m MODULE``: run ``child`` on the arguments ``run_in_cgroup`` passed; by hand
    (without its flag), a usage line naming the bench section that runs it."""
    if sys.argv[1:2] != [CHILD_FLAG]:
        sys.exit(f"usage: python -m {module} {CHILD_FLAG} {arguments} (run by "
                 f"python -m lmdbio.study.bench perf --only {section})")
    child(sys.argv[2:])


if __name__ == "__main__":
    child_main(CHILD, _child, "DB VARIANT MAX_SECONDS", "cgroup")
