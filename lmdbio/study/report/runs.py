"""The run table every report is built from: loaded from a results folder, one row per run.

Statistics are computed from run-level figures (one value per run), never from pooled
batches: per-batch data time is a sawtooth with period ``num_workers``. Warm-up runs are
left out. Each figure labels the storage target with its file-system type.

A distributed run (torchrun) has one row per rank; ``per_run`` folds them into one row per run
(images/s = all ranks' images / the slowest rank's wall time; waits averaged over ranks) with
the mode labelled ``ddpN-MODE``, and ``ranks`` keeps the per-rank data wait.
"""

from __future__ import annotations

import glob
import json
import os
from pathlib import Path
from typing import Any

from lmdbio.publish import create_exclusive, staged
from lmdbio.study.extras import pandas as _pandas

__all__ = ["KEYS", "METRICS", "PROTOCOL", "cache_check", "describe", "format_parity",
           "load_results", "mixed_protocols", "per_run", "ranks", "results_location",
           "run_counts", "speedups", "summary", "write_table"]

METRICS = ("images_per_s", "steady_images_per_s", "ttfb_s", "data_mean_s", "data_median_s",
           "data_p95_s", "data_share", "utilisation", "batch_mean_s", "batch_median_s")
KEYS = ["storage", "fs_type", "mode", "cache", "format"]
SPEEDUP_COLUMNS = ["imagefolder_images_per_s", "lmdb_images_per_s", "speedup", "speedup_min",
                   "speedup_max", "pairs"]
# What a run was measured with: runs of one condition (KEYS) that differ here are not
# repetitions of one measurement
PROTOCOL = ("epochs", "batch_size", "num_workers", "step_ms", "max_batches", "n_samples",
            "readahead", "threads", "device", "world_size", "seed")


def results_location(results_dir: str) -> str:
    """``results_dir``, or where it is empty the committed run of the checkout this package is
    imported from (``results/reference``): not a path relative to the working directory, which
    papermill, nbval and JupyterLab each set differently."""
    if results_dir:
        return results_dir
    checkout = Path(__file__).resolve().parents[3]
    if not (checkout / "pyproject.toml").is_file():  # an installed wheel: no committed run
        raise FileNotFoundError("results_dir is empty and lmdbio is installed, not imported "
                                "from a checkout with its committed results: pass results_dir,"
                                " the folder 'python -m lmdbio.study --results-dir DIR' wrote")
    return str(checkout / "results" / "reference")


def load_results(results_dir: str) -> tuple[Any, Any, list[dict[str, str]]]:
    """All ``runs.parquet`` / ``batches.parquet`` below ``results_dir`` (warm-ups dropped),
    and the targets the study skipped (``skipped.json``), each with its reason."""
    pandas = _pandas()
    run_files = sorted(f for f in glob.glob(os.path.join(results_dir, "**", "runs.parquet"),
                                            recursive=True)
                       if os.path.exists(os.path.join(os.path.dirname(f), "batches.parquet")))
    if not run_files:
        raise FileNotFoundError(f"no runs.parquet under {results_dir!r}; pass the folder of a "
                                "study's results, or run the study ('make study' in a "
                                "checkout, else 'python -m lmdbio.study') or the bench "
                                "notebook with output_dir set")
    runs = pandas.concat([pandas.read_parquet(f) for f in run_files], ignore_index=True)
    batches = pandas.concat([pandas.read_parquet(os.path.join(os.path.dirname(f),
                                                              "batches.parquet"))
                             for f in run_files], ignore_index=True)
    runs = runs[~runs["warmup"]].copy()
    batches = batches[~batches["warmup"]].copy()
    for frame in (runs, batches):  # rows from before distributed runs lack these columns
        for column, default in (("world_size", 1), ("rank", 0)):
            if column in frame.columns:
                frame[column] = frame[column].fillna(default).astype(int)
    mixed = mixed_protocols(runs)
    if mixed:
        raise ValueError(f"the runs under {results_dir!r} mix protocols within one condition "
                         f"({mixed[0]}{f'; and {len(mixed) - 1} more' if len(mixed) > 1 else ''})"
                         ": their medians would pool them; point results_dir at one "
                         "experiment's folder")
    skipped_file = os.path.join(results_dir, "skipped.json")
    skipped = json.load(open(skipped_file)) if os.path.exists(skipped_file) else []
    return runs, batches, skipped


def mixed_protocols(runs: Any) -> list[str]:
    """Each condition whose measured runs differ in a ``PROTOCOL`` column, as "storage/mode/
    cache/format: column values" (distributed runs folded first: their ranks agree)."""
    measured = per_run(runs[~runs["warmup"]])
    found = []
    for column in (c for c in PROTOCOL if c in measured.columns):
        for key, values in measured.groupby(KEYS)[column]:
            distinct = sorted({str(v) for v in values})
            if len(distinct) > 1:
                found.append(f"{'/'.join(map(str, key))}: {column} {', '.join(distinct)}")
    return found


# How a run's per-rank figures combine; anything else keeps rank 0's value.
_RANK_AGG = {"images_total": "sum", "batches": "sum", "steady_images_per_s": "sum",
             "wall_s": "max", "ttfb_s": "max", "ttfb_mean_s": "max", "data_p95_s": "max",
             "setup_s": "max", "data_mean_s": "mean", "data_median_s": "mean",
             "batch_mean_s": "mean", "batch_median_s": "mean", "data_share": "mean",
             "utilisation": "mean", "last_epoch_loss": "mean", "last_epoch_accuracy": "mean"}


def per_run(runs: Any) -> Any:
    """One row per run: the ranks of a distributed run folded together (see the module
    docstring), its mode relabelled ``ddpN-MODE``; single-process rows unchanged."""
    pandas = _pandas()
    if "world_size" not in runs.columns:  # results written before distributed runs existed
        runs = runs.assign(world_size=1, rank=0)
    ranked = (runs["world_size"] > 1) & (runs["rank"] >= 0)
    if not ranked.any():
        return runs
    ddp = runs[ranked]
    agg = {c: _RANK_AGG.get(c, "first") for c in ddp.columns if c != "run_id"}
    grouped = ddp.groupby("run_id", sort=False)
    merged = grouped.agg(agg).reset_index()
    merged["images_per_s"] = merged["images_total"] / merged["wall_s"]
    merged["data_mean_worst_rank_s"] = grouped["data_mean_s"].max().to_numpy()
    cold = merged["cache"] == "cold"  # the least favourable rank's start
    merged["resident_fraction"] = _where(cold, grouped["resident_fraction"].max(),
                                         grouped["resident_fraction"].min())
    merged["rank"] = -1
    merged["mode"] = "ddp" + merged["world_size"].astype(str) + "-" + merged["mode"]
    return pandas.concat([runs[~ranked], merged[runs.columns.tolist() + [
        "data_mean_worst_rank_s"]]], ignore_index=True)


def _where(mask: Any, yes: Any, no: Any) -> Any:
    import numpy

    return numpy.where(mask.to_numpy(), yes.to_numpy(), no.to_numpy())


def ranks(runs: Any) -> Any:
    """Per rank of each distributed condition: median data wait (mean, p95 per batch) and
    images/s across repetitions; empty without distributed runs."""
    pandas = _pandas()
    if "world_size" not in runs.columns:
        runs = runs.assign(world_size=1, rank=0)
    ddp = runs[(runs["world_size"] > 1) & (runs["rank"] >= 0) & ~runs["warmup"]]
    if ddp.empty:  # one rank (nproc 1): the table, with no row
        return pandas.DataFrame(columns=[*KEYS, "rank", "data_mean_s", "data_p95_s",
                                         "images_per_s", "batches", "runs"])
    ddp = ddp.assign(mode="ddp" + ddp["world_size"].astype(str) + "-" + ddp["mode"])
    grouped = ddp.groupby(KEYS + ["rank"])
    table = grouped[["data_mean_s", "data_p95_s", "images_per_s", "batches"]].median()
    table["runs"] = grouped.size()
    return table.reset_index()


def summary(runs: Any) -> Any:
    """Median and spread (min, max, n) of each metric per storage x mode x cache x format."""
    grouped = per_run(runs[~runs["warmup"]]).groupby(KEYS)
    table = grouped[list(METRICS)].median()
    table["runs"] = grouped.size()
    for metric in ("images_per_s", "data_mean_s"):
        table[f"{metric}_min"] = grouped[metric].min()
        table[f"{metric}_max"] = grouped[metric].max()
    return table.reset_index()


def speedups(runs: Any) -> Any:
    """LMDB over ImageFolder, per storage x mode x cache, from the median images/s; also the
    ratio's range across repetition pairs (ABBA pairs run side by side)."""
    pandas = _pandas()
    wide = per_run(runs[~runs["warmup"]]).pivot_table(
        index=KEYS[:-1] + ["repeat"], columns="format", values="images_per_s")
    if not {"lmdb", "imagefolder"} <= set(wide.columns):  # its columns, no rows: a CSV
        return pandas.DataFrame(columns=KEYS[:-1] + SPEEDUP_COLUMNS)  # with its header
    wide = wide[["imagefolder", "lmdb"]].dropna()  # a peer absent from a cell (ddp) drops nothing
    wide["ratio"] = wide["lmdb"] / wide["imagefolder"]
    grouped = wide.groupby(level=KEYS[:-1])
    table = pandas.DataFrame({
        "imagefolder_images_per_s": grouped["imagefolder"].median(),
        "lmdb_images_per_s": grouped["lmdb"].median(),
        "speedup": grouped["ratio"].median(),
        "speedup_min": grouped["ratio"].min(),
        "speedup_max": grouped["ratio"].max(),
        "pairs": grouped.size(),
    })
    return table.reset_index()


def run_counts(runs: Any) -> str:
    """Measured runs per condition, e.g. for a notebook's deterministic output."""
    runs = per_run(runs)
    measured = runs[~runs["warmup"]]
    counts = measured.groupby(["format", "cache"]).size()
    parts = [f"{fmt}/{cache}: {n}" for (fmt, cache), n in counts.items()]
    return (f"{len(measured)} measured runs + {int(runs['warmup'].sum())} warm-up "
            f"({', '.join(parts)})")


def cache_check(runs: Any, cold_max: float = 0.05, warm_min: float = 0.95) -> str:
    """Whether every cold run started evicted and every warm run started cached."""
    cold = runs[runs["cache"] == "cold"]["resident_fraction"]
    warm = runs[runs["cache"] == "warm"]["resident_fraction"]

    def held(values: Any, ok: Any, cache: str) -> str:  # all() of nothing is True: say so
        return str(bool(ok.all())) if len(values) else f"n/a (no {cache} runs)"
    return (f"cold runs evicted (residency <= {cold_max:.0%}): "
            f"{held(cold, cold <= cold_max, 'cold')}; warm runs cached (residency >= "
            f"{warm_min:.0%}): {held(warm, warm >= warm_min, 'warm')}")


def format_parity(runs: Any) -> str:
    """In train mode both formats see the same pixels, shuffle and augmentation, so a run's
    loss must be identical across formats: a check that LMDB is a true drop-in."""
    train = runs[(runs["mode"] == "train") & ~runs["warmup"]]
    if train.empty:
        return "loss parity: n/a (no train-mode runs)"
    index = ["cache", "repeat"] + (["rank"] if "rank" in train.columns else [])
    wide = train.pivot_table(index=index, columns="format", values="last_epoch_loss")
    if not {"lmdb", "imagefolder"} <= set(wide.columns):
        return "loss parity: n/a (needs both formats)"
    same = int((wide["lmdb"] == wide["imagefolder"]).sum())
    return f"training loss identical across formats in {same} of {len(wide)} paired runs"


def describe(runs: Any, skipped: list[dict[str, str]]) -> str:
    """Where every run comes from: per target its machine (CPU, cores, RAM, torch, commit),
    file system, and runs per mode; then the skipped targets."""
    runs = per_run(runs)
    lines = []
    machine = ["cpu", "cores", "ram_gib", "v_torch", "v_lmdb", "git_commit"]
    for (storage, fs_type, options, *box), group in runs.groupby(
            ["storage", "fs_type", "mount_options", *machine]):
        cpu, cores, ram, torch, lmdb, commit = box
        modes = ", ".join(f"{m} x{n}" for m, n in group.groupby("mode").size().items())
        lines.append(f"target {storage}: {fs_type} ({options}); measured on {cpu}, {cores} "
                     f"cores, {ram} GiB RAM; torch {torch}, lmdb {lmdb}, commit {commit}; "
                     f"runs per mode: {modes}")
    lines += [f"skipped target {s['target']}: {s['reason']}" for s in skipped]
    return "\n".join(lines)


def write_table(frame: Any, path: str) -> None:
    """``frame`` as ``path`` (``.parquet``, else CSV), written under a temporary name and
    renamed, so a stopped run never leaves half a table under the final name."""
    with staged(path) as partial:
        if path.endswith(".parquet"):
            with create_exclusive(partial, "wb") as handle:
                frame.to_parquet(handle, index=False)
        else:
            with create_exclusive(partial, "w", newline="") as handle:
                frame.to_csv(handle, index=False)
