"""The measurement protocol around ``harness.measure``: cache state, order, repeats, rows.

* Cold vs warm is enforced and verified before every run: cold = every reader closed, then the
  data's pages evicted (``posix_fadvise`` DONTNEED, also on the server side of a network FS);
  warm = after a full sequential pass. Page-cache residency is recorded in each run's row.
* Conditions are counterbalanced (ABBA: the order reverses on every repetition), one warm-up
  run is discarded, and every run gets a fresh seeded model and its own shuffle seed.
* Results are tidy tables: one row per batch and one per run, each with the run metadata.
* Under torchrun every rank runs the same plan in lock-step: before each run, local rank 0
  prepares its node's cache while the others wait at a barrier, every rank records the
  residency it sees, and all start together; rows carry ``rank`` and ``world_size`` and are
  gathered to rank 0, which writes the tables.
"""

from __future__ import annotations

import contextlib
import gc
import os
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from lmdbio.study import pagecache, peers
from lmdbio.study.conditions import (BASE_FORMATS, CACHES, FORMATS, LOCALITY_FORMATS, MODES,
                                     PEER_FORMATS, checked, checked_counts, switch)
from lmdbio.study.contention import contention, sample
from lmdbio.study.distributed import DistContext, setup
from lmdbio.study.extras import pandas as _pandas
from lmdbio.study.harness import RunSpec, measure, seed_transform, shuffle_seed
from lmdbio.study.machine import run_metadata
from lmdbio.study.profiling import Profiler
from lmdbio.study.report.runs import write_table

__all__ = ["BenchResult", "data_path", "run_bench", "schedule"]


@dataclass(frozen=True)
class BenchResult:
    batches: Any   # pandas.DataFrame, one row per batch
    runs: Any      # pandas.DataFrame, one row per run
    output_dir: str | None


def schedule(formats: Sequence[str], caches: Sequence[str],
             repeats: int) -> list[tuple[str, str, int]]:
    """ABBA order: A B C D, then D C B A, ... so drift and order effects cancel out."""
    conditions = [(fmt, cache) for cache in caches for fmt in formats]
    order = []
    for repeat in range(repeats):
        sequence = conditions if repeat % 2 == 0 else conditions[::-1]
        order += [(fmt, cache, repeat) for fmt, cache in sequence]
    return order


def _peer_path(fmt: str, split_dir: str, peer_paths: Mapping[str, str] | None) -> str:
    return (peer_paths or {}).get(fmt) or peers.default_destination(split_dir, fmt)


def data_path(fmt: str, split_dir: str, lmdb_path: str,
              peer_paths: Mapping[str, str] | None = None) -> str:
    """What a run of ``fmt`` reads: the ImageFolder tree, the LMDB file (both lmdbio orders),
    or a peer format's folder of shards/chunks."""
    if fmt == "imagefolder":
        return split_dir
    if fmt in ("lmdb",) + LOCALITY_FORMATS:
        return lmdb_path
    return _peer_path(fmt, split_dir, peer_paths)


def _data_paths(fmt: str, split_dir: str, lmdb_path: str, data_dir: str,
                backing_dir: str, peer_paths: Mapping[str, str] | None = None) -> list[str]:
    """``data_path`` and, on a network FS, its server-side copy: evicted before a cold run,
    read through before a warm one (folders walked whole)."""
    path = data_path(fmt, split_dir, lmdb_path, peer_paths)
    paths = [path]
    if backing_dir:  # the same file on the server side of a network file system
        paths.append(os.path.join(backing_dir, os.path.relpath(path, data_dir)))
    return paths


def prepare_cache(paths: Sequence[str], cache: str) -> pagecache.Residency:
    """Evict (cold) or fully read (warm) ``paths``; returns the residency of ``paths[0]``."""
    if cache not in CACHES:
        raise ValueError(f"cache must be one of {CACHES}, not {cache!r}")
    for path in paths:
        if cache == "cold":
            pagecache.evict(path)
        else:
            pagecache.read_through(path)
    return pagecache.residency(paths[0])


def _prepare(ctx: DistContext, paths: Sequence[str], cache: str) -> pagecache.Residency:
    """``prepare_cache`` once per node, with every rank's readers closed and none reading
    before all have measured the residency they start from."""
    if not ctx.enabled:
        return prepare_cache(paths, cache)
    ctx.barrier()  # every rank has closed its readers: eviction can drop every page
    if ctx.is_local_main:
        prepare_cache(paths, cache)
    ctx.barrier()
    resident = pagecache.residency(paths[0])
    ctx.barrier()
    return resident


def _dataset(fmt: str, split_dir: str, lmdb_path: str, readahead: bool | str, *, seed: int = 0,
             batch_size: int = 1, peer_paths: Mapping[str, str] | None = None) -> Any:
    """The dataset of one run; ``seed`` is the run's shuffle seed, used by the peers, which
    shuffle themselves (ImageFolder and LMDB are shuffled by the DataLoader's sampler)."""
    transform = seed_transform()
    if fmt == "imagefolder":
        from torchvision.datasets import ImageFolder

        return ImageFolder(split_dir, transform=transform)
    if fmt in ("lmdb",) + LOCALITY_FORMATS:
        from lmdbio.dataset import ImageFolderLMDB

        return ImageFolderLMDB(lmdb_path, transform=transform, readahead=readahead)
    if fmt in PEER_FORMATS:
        from lmdbio.study.peers.reading import open_peer

        return open_peer(fmt, _peer_path(fmt, split_dir, peer_paths), transform, seed=seed,
                         batch_size=batch_size)
    raise ValueError(f"format must be one of {FORMATS}, not {fmt!r}")


def _sampler(spec: RunSpec, dataset: Any) -> Any:
    """The order of a run that is not the DataLoader's uniform shuffle (``None`` otherwise):
    ``lmdb-block`` reads blocks of neighbouring records (``BlockShuffleSampler``, its
    defaults), each block asked of storage ahead of time through ``will_need``."""
    if spec.fmt not in LOCALITY_FORMATS:
        return None
    from lmdbio.samplers import BlockShuffleSampler

    return BlockShuffleSampler(dataset, seed=shuffle_seed(spec))


def run_bench(*, data_dir: str, split_dir: str, lmdb_path: str, storage: str, mode: str,
              formats: Sequence[str] = BASE_FORMATS, caches: Sequence[str] = CACHES,
              epochs: int = 1, batch_size: int = 128, num_workers: int = 2, repeats: int = 1,
              step_ms: float = 50.0, seed: int = 0, threads: int = 0, warmup: bool = True,
              backing_dir: str = "", readahead: bool | str = "auto", max_batches: int = 0,
              device: str = "cpu", output_dir: str | None = None,
              record_indices: bool = False,
              peer_paths: Mapping[str, str] | None = None, profile: str = "") -> BenchResult:
    """Measure every (format, cache) condition ``repeats`` times in ABBA order.

    ``formats`` may name the peers (``conditions.installed_formats()`` lists what is installed); they are read from
    ``peer_paths[fmt]``, by default next to ``split_dir`` (``train.wds``, ``train.litdata``).

    Under torchrun (``WORLD_SIZE`` > 1) this is one rank's part of a distributed run: rank 0
    returns (and saves) every rank's rows, the other ranks their own and save nothing.

    ``profile``: ``"cpu"`` adds each run's CPU seconds per process group to its row
    (``cpu_*_s``: main process, workers, the network FS's processes, kernel threads, idle...),
    ``"stacks"`` also where the Python processes spend them (``stage_*_s``, sampled by py-spy);
    see ``lmdbio.study.profiling``."""
    import torch

    mode = checked("mode", [mode], MODES)[0]
    formats, caches = checked("formats", formats, FORMATS), checked("cache", caches, CACHES)
    checked_counts(epochs=epochs, repeats=repeats, max_batches=max_batches,
                   batch_size=batch_size, num_workers=num_workers, threads=threads, seed=seed,
                   step_ms=step_ms)
    readahead = switch("readahead", readahead)
    if backing_dir and not os.path.isdir(os.path.expanduser(backing_dir)):
        raise ValueError(f"backing_dir {backing_dir!r} is not a folder; pass the server-side "
                         "copy of data_dir, or leave it empty")
    pandas = _pandas()
    ctx = setup()
    cores = max(1, (os.cpu_count() or 1) // ctx.local_world_size)
    torch.set_num_threads(threads or cores)  # main process; workers use 1
    common = run_metadata(storage, split_dir) | {"backend": ctx.backend or "none"}
    base = RunSpec(fmt=formats[0], mode=mode, cache=caches[0], repeat=0, epochs=epochs,
                   batch_size=batch_size, num_workers=num_workers, step_ms=step_ms, seed=seed,
                   device=ctx.device(device), max_batches=max_batches,
                   record_indices=record_indices)
    plan = [replace(base, warmup=True, repeat=-1, epochs=1)] if warmup else []
    plan += [replace(base, fmt=f, cache=c, repeat=r) for f, c, r in schedule(formats, caches,
                                                                             repeats)]
    batch_rows: list[dict[str, Any]] = []
    run_rows: list[dict[str, Any]] = []
    for order, spec in enumerate(plan):
        run_id = ctx.broadcast(uuid.uuid4().hex[:12])  # one id for all ranks' rows of a run
        resident = _prepare(ctx, _data_paths(spec.fmt, split_dir, lmdb_path, data_dir,
                                             backing_dir, peer_paths), spec.cache)
        opened = time.perf_counter()
        dataset = _dataset(spec.fmt, split_dir, lmdb_path, readahead, seed=shuffle_seed(spec),
                           batch_size=batch_size, peer_paths=peer_paths)
        setup_s = time.perf_counter() - opened
        n_samples = len(dataset)
        # what the LMDB reader chose ("auto": on when the data fit in half the memory budget)
        resolved_readahead = getattr(dataset, "readahead", None)  # None: not an LMDB run
        started = sample()
        profiler = Profiler(use_pyspy=profile == "stacks") if profile else None
        try:
            with profiler or contextlib.nullcontext():
                batches, summary = measure(dataset, spec, num_classes=len(dataset.classes),
                                           dist=ctx, sampler=_sampler(spec, dataset))
            busy = contention(started, sample())
        finally:
            if hasattr(dataset, "close"):
                dataset.close()
            del dataset
            gc.collect()  # persistent workers (and their mmaps) must be gone before evicting
        ids = {"run_id": run_id, "order": order, "storage": storage, "format": spec.fmt,
               "mode": spec.mode, "cache": spec.cache, "repeat": spec.repeat,
               "warmup": spec.warmup, "rank": ctx.rank, "world_size": ctx.world_size}
        batch_rows += [ids | row for row in batches]
        run_rows.append(common | ids | summary | {
            "resident_fraction": resident.fraction, "data_bytes": resident.bytes_total,
            "setup_s": setup_s, "n_samples": n_samples, **busy,
            "readahead": resolved_readahead, "threads": torch.get_num_threads(),
            **(profiler.columns() if profiler else {})})
    gathered = ctx.gather((batch_rows, run_rows))
    if gathered is None:  # not rank 0: rank 0 writes every rank's rows
        return BenchResult(pandas.DataFrame(batch_rows), pandas.DataFrame(run_rows), None)
    batch_rows = [row for rank_batches, _ in gathered for row in rank_batches]
    run_rows = [row for _, rank_runs in gathered for row in rank_runs]
    result = BenchResult(pandas.DataFrame(batch_rows), pandas.DataFrame(run_rows), output_dir)
    if output_dir:
        save(result, output_dir)
    return result


def save(result: BenchResult, output_dir: str) -> None:
    """Write ``batches.parquet``, ``runs.parquet`` and ``runs.csv``, each via a temp name."""
    os.makedirs(output_dir, exist_ok=True)
    for name, frame in (("batches.parquet", result.batches), ("runs.parquet", result.runs),
                        ("runs.csv", result.runs)):
        write_table(frame, os.path.join(output_dir, name))
