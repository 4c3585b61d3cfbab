"""How much to trust each comparison the report draws. A rerun of the whole study on a busier
machine moved medians by 10-30 % and widened ranges up to 3x, so a difference is called only
when it stands outside the noise: when the two formats' images/s ranges (fastest to slowest
run, across the repetitions) do not overlap. Otherwise the verdict is "no clear difference",
however the medians compare. Runs flagged ``disturbed`` (``contention``: other processes or
steal took a share of the CPU) are counted beside every verdict."""

from __future__ import annotations

from typing import Any

from lmdbio.study.conditions import FORMATS, order
from lmdbio.study.extras import pandas as _pandas
from lmdbio.study.report.runs import KEYS, per_run

__all__ = ["comparisons", "disturbed_runs", "verdict"]

NO_CLEAR_DIFFERENCE = "no clear difference"


def verdict(first: str, a: Any, b: Any) -> str:
    """``first`` faster / slower than the other when the ranges of ``a`` and ``b`` (images/s of
    each run) separate; "no clear difference" when they overlap."""
    if min(a) > max(b):
        return f"{first} faster"
    if max(a) < min(b):
        return f"{first} slower"
    return NO_CLEAR_DIFFERENCE


COMPARISON_COLUMNS = ["comparison", "lmdb_images_per_s", "lmdb_min", "lmdb_max",
                      "other_images_per_s", "other_min", "other_max", "ratio", "ratio_min",
                      "ratio_max", "runs", "ranges_separate", "verdict", "disturbed_runs"]


def comparisons(runs: Any) -> Any:
    """LMDB against ImageFolder and against each peer, per storage x mode x cache: both
    formats' median images/s and ranges, the median of the per-repetition ratios (ABBA pairs),
    whether the ranges separate, the verdict, and how many of the runs were disturbed."""
    pandas = _pandas()
    table = per_run(runs[~runs["warmup"]])
    if "disturbed" not in table.columns:  # rows from before contention was recorded
        table = table.assign(disturbed=pandas.NA)
    rows = []
    for key, cell in table.groupby(KEYS[:-1]):
        present = order(cell["format"].unique())
        if "lmdb" not in present:
            continue
        for other in (f for f in present if f != "lmdb" and f in FORMATS):
            a = cell[cell["format"] == "lmdb"].set_index("repeat")["images_per_s"]
            b = cell[cell["format"] == other].set_index("repeat")["images_per_s"]
            paired = (a / b).dropna()
            pair = cell[cell["format"].isin(["lmdb", other])]
            flagged = pair["disturbed"].dropna()
            rows.append(dict(zip(KEYS[:-1], key)) | {
                "comparison": f"lmdb vs {other}", "lmdb_images_per_s": a.median(),
                "lmdb_min": a.min(), "lmdb_max": a.max(),
                "other_images_per_s": b.median(), "other_min": b.min(), "other_max": b.max(),
                "ratio": paired.median(), "ratio_min": paired.min(), "ratio_max": paired.max(),
                "runs": len(pair), "ranges_separate": bool(a.min() > b.max() or a.max() < b.min()),
                "verdict": verdict("lmdb", a, b),
                "disturbed_runs": int(flagged.astype(bool).sum()) if len(flagged) else -1})
    return pandas.DataFrame(rows, columns=KEYS[:-1] + COMPARISON_COLUMNS)  # header if no rows


def disturbed_runs(runs: Any) -> str:
    """One line: how many measured runs were disturbed, or that it was not recorded."""
    measured = runs[~runs["warmup"]]
    if "disturbed" not in measured.columns or measured["disturbed"].isna().all():
        return "contention not recorded for these runs (results from before it was measured)"
    flagged = measured[measured["disturbed"].astype(bool)]
    line = (f"{len(flagged)} of {len(measured)} measured runs disturbed (other processes > "
            f"10 % of the CPU, or steal > 5 %)")
    if len(flagged):
        line += (f"; worst: {flagged['other_cpu_share'].max():.0%} other CPU, load "
                 f"{flagged['load1'].max():.1f}")
    return line
