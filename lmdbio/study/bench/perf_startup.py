"""Issue #17: what lmdbio's prefetch buys and what it costs, by who sets the pace of an epoch.

The committed study (``make study``) finds lmdbio ahead of or level with LitData in every
cell but one: cold ``emulate`` through the sshfs stand-in, where its epoch starts later (time
to first batch) and then runs at the same rate. This section measures why, on the study's own
terms (3 000 images, seed transform, batch 128, 2 workers, cold on both sides of the mount):

* ``lmdbio``: its defaults. On opening a DB that fits in memory a prefetch streams the whole
  file in (several streams on a network FS), so no later batch waits for storage;
* ``lmdbio, prefetch=False``: each batch's records asked of storage when the batch is
  (``batch_hints``), so the first batch has the cores to itself and every batch waits a little;
* ``LitData``: ``StreamingDataset(shuffle=True)`` reads a chunk at a time as it goes;
* the ceiling (``perf_common.CEILING``): every record's bytes read into the process before
  the epoch (``perf_loader.InMemory``), the same decode and transform: what any loader could
  reach with storage costing nothing. With a slower step it bounds what a lead over LitData
  can be: the epoch is then its first batch plus the steps, and the first batch cannot come
  sooner than a worker decodes it.

each in two modes: ``load`` (the loader sets the pace) and ``emulate`` (a 100 ms step per
batch sets it, as in the study: the loader could go faster). Per run: images/s, images/s
after the first batch, time to first batch, the machine's CPU per image and its idle
core-seconds. On a mount whose reads cost CPU on the same cores (ssh, sshfs and sftp-server
here), streaming the file takes those cores from the first batch: when the loader sets the
pace that costs nothing it would not pay later anyway and saves every later wait; when a
slower step sets it, the late start is never made up.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from lmdbio.dataset import ImageFolderLMDB
from lmdbio.decode import decode_pil
from lmdbio.study.bench.perf_common import CEILING, Storage, median, paired_ratios, spread
from lmdbio.study.bench.perf_loader import InMemory, cold_epoch
from lmdbio.study.harness import RunSpec, seed_transform, shuffle_seed

__all__ = ["MODES", "STEP_MS", "STRATEGIES", "bench_startup", "prepare"]

STRATEGIES = ("lmdbio", "lmdbio, prefetch=False", "LitData", CEILING)
MODES = ("load", "emulate")
STEP_MS = 100.0  # the study's emulated accelerator step (batch 128)


def prepare(work: str, jpeg: str) -> dict[str, str]:
    """The LitData copy of the JPEG tree beside its lmdbio DB (relative paths); without the
    ``peers`` extra, the section says so and runs lmdbio alone."""
    from lmdbio.study.peers import available, default_destination, write_litdata

    split = os.path.join(work, jpeg)
    files = {"lmdb": f"{jpeg}.lmdb"}
    if "litdata" not in available():
        print("   LitData not installed (pip install 'lmdbio[peers]'): lmdbio alone", flush=True)
        return files
    destination = default_destination(split, "litdata")
    if not os.path.exists(destination):
        write_litdata(split, destination)
    files["litdata"] = os.path.relpath(destination, work)
    return files


def _conditions(storage: Storage, files: dict[str, str],
                spec: RunSpec) -> list[tuple[str, str, Callable[[], Any]]]:
    """(strategy, file evicted before the run, dataset factory) for one run of ``spec``."""
    transform, path = seed_transform(), storage.path(files["lmdb"])
    chosen: list[tuple[str, str, Callable[[], Any]]] = [
        ("lmdbio", files["lmdb"], lambda: ImageFolderLMDB(path, transform)),
        ("lmdbio, prefetch=False", files["lmdb"],
         lambda: ImageFolderLMDB(path, transform, prefetch=False))]
    if "litdata" in files:
        from lmdbio.study.peers.reading import open_peer

        chosen.append(("LitData", files["litdata"], lambda: open_peer(
            "litdata", storage.path(files["litdata"]), transform, seed=shuffle_seed(spec),
            batch_size=spec.batch_size)))
    # read from the local copy: the records are in memory before the epoch on either storage
    local = os.path.join(storage.local_root, files["lmdb"])
    chosen.append((CEILING, "", lambda: InMemory(local, decode_pil, transform)))
    return chosen


def bench_startup(storages: list[Storage], files: dict[str, str], repeats: int,
                  step_ms: float = STEP_MS, workers: int = 2,
                  batch_size: int = 128) -> list[dict]:
    """Every strategy in both modes on every storage, ``repeats`` times in ABBA order within
    each mode (after one discarded warm-up of each), cold."""
    rows: list[dict] = []
    for storage in storages:
        for mode in MODES:
            for repeat in range(-1, repeats):
                spec = RunSpec(fmt="", mode=mode, cache="cold", repeat=max(repeat, 0),
                               step_ms=step_ms, batch_size=batch_size, num_workers=workers,
                               seed=1)  # LitData's shuffle seed must not be negative
                chosen = _conditions(storage, files, spec)
                for name, evict, factory in chosen if repeat % 2 == 0 else chosen[::-1]:
                    row = cold_epoch(storage, evict, factory, spec)
                    if repeat >= 0:
                        rows.append({"section": "startup", "storage": storage.name,
                                     "mode": mode, "variant": name, "repeat": repeat,
                                     "step_ms": step_ms if mode == "emulate" else 0.0,
                                     "workers": workers, "batch_size": batch_size} | row)
            _print(rows, storage.name, mode)
    return rows


def _print(rows: list[dict], storage: str, mode: str) -> None:
    print(f"\n== [{storage}] first batch and epoch, cold, {mode}", flush=True)
    where = {"storage": storage, "mode": mode}
    for name in STRATEGIES:
        rate = median(rows, "images_per_s", variant=name, **where)
        if rate != rate:  # NaN: not run (no LitData)
            continue
        pairs = paired_ratios(rows, "lmdbio", name, **where) if name != "lmdbio" else []
        versus = f", lmdbio / this {spread(pairs, 2, 'x')}" if pairs else ""
        bound = paired_ratios(rows, name, CEILING, **where) if name != CEILING else []
        versus += f", of the ceiling {spread(bound, 2, 'x')}" if bound else ""
        print(f"   {name}: {rate:.0f} img/s (after the first batch "
              f"{median(rows, 'steady_images_per_s', variant=name, **where):.0f}), first batch "
              f"{median(rows, 'ttfb_s', variant=name, **where):.2f} s{versus}", flush=True)
