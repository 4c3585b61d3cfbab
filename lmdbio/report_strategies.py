"""The report's side-by-side of every storage strategy: images/s of each format over
ImageFolder's, what each costs to write, and how each shuffles.

Ratios are taken within ABBA repetition pairs (the same repeat index of the same notebook ran
side by side) and summarised as median and range, as ``report.speedups`` does for LMDB.
"""

from __future__ import annotations

import glob
import os
from typing import Any

from .strategies import STRATEGIES, shuffle_table

__all__ = ["ratios", "shuffle_semantics", "writers"]

WRITER_COLUMNS = ["storage", "format", "images", "seconds", "images_per_s", "bytes_on_disk",
                  "peak_rss_mb", "source_cache"]


def _pandas() -> Any:
    from .report import _pandas as pandas

    return pandas()


def _order(formats: Any) -> list[str]:
    """The study's order (imagefolder, lmdb, webdataset, litdata), then anything else."""
    present = set(formats)
    return [f for f in STRATEGIES if f in present] + sorted(present - set(STRATEGIES))


def ratios(runs: Any) -> Any:
    """Every format's images/s over ImageFolder's, per storage x mode x cache: the median
    ratio of the repetition pairs and its range, beside both medians."""
    from .report import KEYS, per_run

    pandas = _pandas()
    wide = per_run(runs[~runs["warmup"]]).pivot_table(
        index=KEYS[:-1] + ["repeat"], columns="format", values="images_per_s")
    if "imagefolder" not in wide.columns:
        return pandas.DataFrame()
    tables = []
    for fmt in _order(wide.columns):
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
    return pandas.concat(tables, ignore_index=True) if tables else pandas.DataFrame()


def writers(results_dir: str) -> Any:
    """Every ``writers.csv`` below ``results_dir`` (the convert notebooks' conversion cost
    per format and target); an empty table with the columns if there is none."""
    pandas = _pandas()
    files = (sorted(glob.glob(os.path.join(results_dir, "**", "writers.csv"), recursive=True))
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
    return pandas.DataFrame(shuffle_table(_order(formats) if formats is not None else None))
