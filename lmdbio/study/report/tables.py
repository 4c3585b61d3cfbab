"""The report's tables: every storage strategy side by side (images/s of each format over
ImageFolder's, what each costs to write, how each shuffles), and all of them written out.

Ratios are taken within ABBA repetition pairs (the same repeat index of the same notebook ran
side by side) and summarised as median and range, as ``report.speedups`` does for LMDB.
"""

from __future__ import annotations

import glob
import os
from typing import Any

from lmdbio.study.conditions import order
from lmdbio.study.extras import pandas as _pandas
from lmdbio.study.report.runs import KEYS, per_run, ranks, speedups, summary
from lmdbio.study.report.trust import comparisons
from lmdbio.study.strategies import shuffle_table

__all__ = ["ratios", "shuffle_notes", "shuffle_semantics", "write_tables", "writers"]

WRITER_COLUMNS = ["storage", "format", "images", "seconds", "images_per_s", "bytes_on_disk",
                  "peak_rss_mb", "source_cache"]


def ratios(runs: Any) -> Any:
    """Every format's images/s over ImageFolder's, per storage x mode x cache: the median
    ratio of the repetition pairs and its range, beside both medians."""
    pandas = _pandas()
    wide = per_run(runs[~runs["warmup"]]).pivot_table(
        index=KEYS[:-1] + ["repeat"], columns="format", values="images_per_s")
    empty = pandas.DataFrame(columns=KEYS[:-1] + ["format", "images_per_s",
                                                  "imagefolder_images_per_s", "ratio",
                                                  "ratio_min", "ratio_max", "pairs"])
    if "imagefolder" not in wide.columns:
        return empty  # no rows, but a CSV with its header
    tables = []
    for fmt in order(wide.columns):
        if fmt == "imagefolder":
            continue
        pair = wide[["imagefolder", fmt]].dropna()
        if pair.empty:
            continue
        ratio = pair[fmt] / pair["imagefolder"]
        grouped = pair.assign(ratio=ratio).groupby(level=KEYS[:-1])
        tables.append(pandas.DataFrame({
            "format": fmt,
            "images_per_s": grouped[fmt].median(),
            "imagefolder_images_per_s": grouped["imagefolder"].median(),
            "ratio": grouped["ratio"].median(),
            "ratio_min": grouped["ratio"].min(),
            "ratio_max": grouped["ratio"].max(),
            "pairs": grouped.size(),
        }).reset_index())
    return pandas.concat(tables, ignore_index=True) if tables else empty


def writers(results_dir: str) -> Any:
    """Every ``writers.csv`` below ``results_dir`` (the convert notebooks' conversion cost
    per format and target); an empty table with the columns if there is none."""
    pandas = _pandas()
    files = (sorted(f for f in glob.glob(os.path.join(results_dir, "**", "writers.csv"),
                                         recursive=True)
                    if os.path.basename(os.path.dirname(f)) != "tables")  # not our own output
             if results_dir else [])
    if not files:
        return pandas.DataFrame(columns=WRITER_COLUMNS)
    table = pandas.concat([pandas.read_csv(f) for f in files], ignore_index=True)
    table["storage"] = table["storage"].fillna("")
    table["MB_on_disk"] = table["bytes_on_disk"] / 1e6
    return table


def shuffle_semantics(formats: Any = None) -> Any:
    """Layout and shuffle of each strategy (default: all four), as a table."""
    pandas = _pandas()
    return pandas.DataFrame(shuffle_table(order(formats) if formats is not None else None))


def shuffle_notes(formats: Any = None) -> str:
    """``shuffle_semantics`` as text: per strategy its layout, whether an epoch is a uniform
    permutation of the samples, and how it shuffles."""
    return "\n".join(f"{row.format} ({row.layout}; uniform permutation: {row.uniform}):\n"
                     f"  {row.shuffle}" for row in shuffle_semantics(formats).itertuples())


def write_tables(runs: Any, out_dir: str, results_dir: str = "") -> dict[str, str]:
    """``summary``, ``speedups``, every format's ``ratios`` over ImageFolder and the
    ``comparisons`` with their verdicts as CSV and parquet, plus every run (``all_runs``, one row per rank), the strategies' shuffle
    (``strategies``), the conversion cost found under ``results_dir`` (``writers``) and, with
    distributed runs, the per-rank table (``ddp_ranks``)."""
    os.makedirs(out_dir, exist_ok=True)
    written = {}
    tables = [("summary", summary(runs)), ("speedups", speedups(runs)), ("all_runs", runs),
              ("comparisons", comparisons(runs)),
              ("ratios", ratios(runs)), ("strategies", shuffle_semantics()),
              ("writers", writers(results_dir))]
    per_rank = ranks(runs)
    if not per_rank.empty:
        tables.append(("ddp_ranks", per_rank))
    for name, frame in tables:
        for ext in ("csv", "parquet"):
            path = os.path.join(out_dir, f"{name}.{ext}")
            (frame.to_csv(path, index=False) if ext == "csv"
             else frame.to_parquet(path, index=False))
            written[f"{name}.{ext}"] = path
    return written
