"""Launching the distributed benchmark from Python (the ddp notebook): ``torchrun --standalone``
on this machine, ``nproc`` ranks of ``lmdbio.study.ddp_bench``, and the tables rank 0 wrote.

    from lmdbio.study.ddp_launch import rank_check, run_torchrun
    result = run_torchrun(nproc=2, data_dir=workspace.data_dir, mode="load")
    print(rank_check(result.runs))

Several nodes: start ``torchrun`` on each one yourself (README, "Scale out").
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from typing import TYPE_CHECKING, Any

from lmdbio.study.conditions import CACHES, FORMATS, MODES, checked, checked_counts
from lmdbio.study.contention import OWN_TREE_ENV
from lmdbio.study.extras import pandas as _pandas

if TYPE_CHECKING:
    from lmdbio.study.protocol import BenchResult

__all__ = ["TorchrunError", "rank_check", "run_torchrun", "torchrun_command"]


class TorchrunError(RuntimeError):
    """torchrun exited non-zero; the message ends with the tail of its stderr."""


def torchrun_command(output_dir: str, *, nproc: int = 2, data_dir: str = "",
                     split: str = "train", lmdb_path: str = "", storage: str = "local",
                     backing_dir: str = "", mode: str = "load",
                     formats: str = "imagefolder,lmdb", cache: str = "cold,warm",
                     epochs: int = 1, batch_size: int = 8, num_workers: int = 1,
                     repeats: int = 1, step_ms: float = 20.0, n_images: int = 64, seed: int = 0,
                     max_batches: int = 0) -> list[str]:
    """The command line: this interpreter's ``torch.distributed.run`` (torchrun) running
    ``nproc`` ranks of ``lmdbio.study.ddp_bench`` with these options (its flags, as keywords).
    Mode, formats, cache and the counts are checked here: a mistyped one would otherwise be a
    usage error deep in torchrun's output (``nproc 0``: its bare AssertionError)."""
    checked_counts(nproc=nproc, epochs=epochs, batch_size=batch_size, num_workers=num_workers,
                   repeats=repeats, n_images=n_images, seed=seed, max_batches=max_batches,
                   step_ms=step_ms)
    checked("mode", [mode], MODES)
    formats = ",".join(checked("formats", formats, FORMATS))
    cache = ",".join(checked("cache", cache, CACHES))
    options = {"data-dir": data_dir, "split": split, "lmdb-path": lmdb_path, "storage": storage,
               "backing-dir": backing_dir, "mode": mode, "formats": formats, "cache": cache,
               "epochs": epochs, "batch-size": batch_size, "num-workers": num_workers,
               "repeats": repeats, "step-ms": step_ms, "seed": seed, "n-images": n_images,
               "max-batches": max_batches, "output-dir": output_dir}
    flags = [item for name, value in options.items() for item in (f"--{name}", str(value))]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
            str(nproc), "-m", "lmdbio.study.ddp_bench", *flags]


def run_torchrun(*, output_dir: str = "", timeout: float | None = None,
                 **options: Any) -> BenchResult:
    """Run the benchmark under torchrun (``options``: see ``torchrun_command``) and return the
    tables rank 0 wrote to ``output_dir`` (empty: a new temporary folder): ``runs`` and
    ``batches``, one row per rank, with a ``rank`` column. ``OMP_NUM_THREADS=1`` as torchrun
    advises (each rank sets its own torch threads). Raises ``TorchrunError`` if it fails."""
    out = os.path.abspath(output_dir) if output_dir else tempfile.mkdtemp(prefix="lmdbio-ddp-")
    scratch = tempfile.mkdtemp(prefix="lmdbio-torchrun-")  # its torchelastic_* log folder,
    try:  # which torchrun leaves in the temporary folder
        env = dict(os.environ, OMP_NUM_THREADS="1", TMPDIR=scratch)
        env.setdefault(OWN_TREE_ENV, str(os.getpid()))  # every rank's CPU is the run's own
        done = subprocess.run(torchrun_command(out, **options), env=env, capture_output=True,
                              text=True, timeout=timeout, check=False)
        if done.returncode != 0:
            raise TorchrunError(f"torchrun failed ({done.returncode}):\n{done.stderr[-4000:]}")
        from lmdbio.study.protocol import BenchResult

        pandas = _pandas()
        return BenchResult(pandas.read_parquet(os.path.join(out, "batches.parquet")),
                           pandas.read_parquet(os.path.join(out, "runs.parquet")),
                           out if output_dir else None)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        if not output_dir:  # the tables are read: the folder was only their way back
            shutil.rmtree(out, ignore_errors=True)


def rank_check(runs: Any) -> str:
    """What a distributed run must show: how many ranks and backend each measured run had,
    and whether every rank read the same number of batches (``DistributedSampler`` with
    ``drop_last``)."""
    measured = runs[~runs["warmup"]]
    per_run = measured.groupby("run_id")
    ranks = sorted(set(per_run["rank"].nunique()))
    backends = sorted(set(measured["backend"])) if "backend" in measured.columns else []
    equal = bool(per_run["batches"].nunique().eq(1).all())
    return (f"ranks per run: {ranks}; backend: {', '.join(backends) or 'unknown'}\n"
            f"batches per rank and run: {sorted(set(measured['batches']))} (equal on every "
            f"rank: {equal})")
