"""The study's figures. Each takes the run table (one row per run, ``target`` column added)
and pyplot, and returns a Figure or None when the runs hold nothing for it. Bars are medians
across repetitions; whiskers span the fastest and slowest run."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy

from lmdbio.publish import create_exclusive, staged
from lmdbio.study.conditions import MODES
from lmdbio.study.report.runs import per_run, speedups
from lmdbio.study.report.tables import ratios, write_tables

__all__ = ["PLOTS", "Written", "figures", "write_report"]

FORMAT_COLOURS = {"imagefolder": "#8c8c8c", "lmdb": "#1f77b4", "webdataset": "#2ca02c",
                  "litdata": "#d62728"}


def _bars(ax: Any, runs: Any, metric: str, scale: float, ylabel: str) -> None:
    groups = sorted({(t, c) for t, c in zip(runs["target"], runs["cache"])})
    formats = [f for f in FORMAT_COLOURS if f in set(runs["format"])]
    width = 0.8 / max(len(formats), 1)
    for k, fmt in enumerate(formats):
        medians, lows, highs = [], [], []
        for target, cache in groups:
            values = runs[(runs["target"] == target) & (runs["cache"] == cache)
                          & (runs["format"] == fmt)][metric] * scale
            med = values.median() if len(values) else float("nan")
            medians.append(med)
            lows.append(med - values.min() if len(values) else 0)
            highs.append(values.max() - med if len(values) else 0)
        xs = [i + (k - (len(formats) - 1) / 2) * width for i in range(len(groups))]
        ax.bar(xs, medians, width, yerr=[lows, highs], capsize=3, label=fmt,
               color=FORMAT_COLOURS[fmt])
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels([f"{t}\n{c}" for t, c in groups], fontsize=8)
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)


def _legend(figure: Any, runs: Any) -> None:
    """One legend for the whole figure naming every format drawn in any panel (a panel's own
    legend names only the formats of that panel)."""
    from matplotlib.patches import Patch

    formats = [f for f in FORMAT_COLOURS if f in set(runs["format"])]
    figure.legend(handles=[Patch(color=FORMAT_COLOURS[f], label=f) for f in formats],
                  loc="upper right", ncol=len(formats), fontsize=8, frameon=False)


def _where_measured(runs: Any) -> str:
    """``2 x AMD EPYC, 23.5 GiB``: the machine the runs come from (each one, if several)."""
    machines = sorted({f"{c} cores {cpu}, {ram} GiB RAM" for cpu, c, ram in
                       zip(runs["cpu"], runs["cores"], runs["ram_gib"])})
    return "; ".join(machines)


def _modes(present: Any) -> list[str]:
    """The study's modes in their order, then distributed ones (``ddp2-load``...)."""
    present = set(present)
    return ([m for m in MODES if m in present]
            + sorted(m for m in present if str(m).startswith("ddp")))


def _per_mode(runs: Any, plt: Any, rows: list[tuple[str, float, str]],
              title: str) -> Any:
    runs = per_run(runs)
    modes = _modes(runs["mode"])
    if not modes:
        return None
    figure, axes = plt.subplots(len(rows), len(modes), squeeze=False,
                                figsize=(4.6 * len(modes), 3.4 * len(rows)))
    for j, mode in enumerate(modes):
        subset = runs[runs["mode"] == mode]
        for i, (metric, scale, label) in enumerate(rows):
            _bars(axes[i][j], subset, metric, scale, label)
            axes[i][j].set_title(f"mode: {mode}", fontsize=10)
    _legend(figure, runs)
    figure.suptitle(f"{title}\n{_where_measured(runs)}; bars: median of the runs, whiskers: "
                    "fastest to slowest run", fontsize=10)
    figure.tight_layout(rect=(0, 0, 1, 0.97))
    return figure


def data_and_batch_time(runs: Any, plt: Any) -> Any:
    return _per_mode(runs, plt, [("data_mean_s", 1e3, "data wait per batch (ms, mean)"),
                                 ("batch_mean_s", 1e3, "batch time (ms, mean)")],
                     "Data time and batch time per storage x format")


def throughput(runs: Any, plt: Any) -> Any:
    return _per_mode(runs, plt, [("images_per_s", 1.0, "images/s (whole run)")],
                     "Throughput")


def time_to_first_batch(runs: Any, plt: Any) -> Any:
    return _per_mode(runs, plt, [("ttfb_s", 1.0, "time to first batch (s)")],
                     "Time to first batch (includes worker start-up)")


def utilisation(runs: Any, plt: Any) -> Any:
    emulate = runs[runs["mode"] == "emulate"]
    if emulate.empty:
        return None
    figure, ax = plt.subplots(figsize=(6, 3.6))
    _bars(ax, emulate, "utilisation", 100.0, "accelerator utilisation (%)")
    step = ", ".join(sorted({f"{v:g} ms" for v in emulate["step_ms"]}))
    ax.axhline(90, color="red", lw=0.8, ls="--", label="MLPerf Storage pass (90 %)")
    ax.set_title(f"Emulated accelerator, step {step}: compute time / wall time\n"
                 f"{_where_measured(emulate)}", fontsize=10)
    ax.legend(fontsize=8)
    figure.tight_layout()
    return figure


def when_lmdb_helps(runs: Any, plt: Any) -> Any:
    table = speedups(runs)
    if table.empty:
        return None
    table = table.assign(row=table["storage"] + " (" + table["fs_type"] + "), "
                         + table["cache"])
    grid = table.pivot_table(index="row", columns="mode", values="speedup")
    grid = grid[_modes(grid.columns)]
    figure, ax = plt.subplots(figsize=(1.8 + 1.6 * grid.shape[1], 0.9 + 0.55 * grid.shape[0]))
    image = ax.imshow(grid.values, cmap="RdBu", vmin=0, vmax=2, aspect="auto")
    ax.set_xticks(range(grid.shape[1]), list(grid.columns))
    ax.set_yticks(range(grid.shape[0]), list(grid.index))
    for (i, j), value in numpy.ndenumerate(grid.values):
        ax.text(j, i, f"{value:.2f}x", ha="center", va="center", fontsize=9)
    figure.colorbar(image, ax=ax, label="LMDB / ImageFolder images/s")
    ax.set_xlabel("mode")
    ax.set_ylabel("storage (file system), cache state")
    ax.set_title("When does LMDB help? LMDB / ImageFolder images/s\nmedian of the ABBA pairs "
                 f"(>1: LMDB faster); {_where_measured(runs)}", fontsize=9)
    figure.tight_layout()
    return figure


def strategies(runs: Any, plt: Any) -> Any:
    """Every format's images/s over ImageFolder's: one heat map per mode, a column per format,
    a row per storage target and cache state (the peers' shuffle is weaker: see the table)."""
    table = ratios(runs)
    if table.empty:
        return None
    table = table.assign(row=table["storage"] + " (" + table["fs_type"] + "), "
                         + table["cache"])
    modes = _modes(table["mode"])
    formats = [f for f in FORMAT_COLOURS if f in set(table["format"])]
    figure, axes = plt.subplots(1, len(modes), squeeze=False, sharey=True,
                                figsize=(1.2 + 1.35 * len(formats) * len(modes),
                                         1.2 + 0.55 * table["row"].nunique()))
    for j, mode in enumerate(modes):
        grid = table[table["mode"] == mode].pivot_table(index="row", columns="format",
                                                        values="ratio")
        grid = grid.reindex(index=sorted(set(table["row"])), columns=formats)
        ax = axes[0][j]
        image = ax.imshow(grid.values, cmap="RdBu", vmin=0, vmax=2, aspect="auto")
        ax.set_xticks(range(len(formats)), formats, rotation=30, fontsize=8)
        ax.set_yticks(range(grid.shape[0]), list(grid.index))
        for (i, k), value in numpy.ndenumerate(grid.values):
            ax.text(k, i, f"{value:.2f}x" if value == value else "not run", ha="center",
                    va="center", fontsize=8, color="black" if value == value else "#999999")
        ax.set_title(f"mode: {mode}", fontsize=10)
    figure.colorbar(image, ax=axes[0].tolist(), label="images/s / ImageFolder images/s")
    figure.suptitle("Every storage strategy against ImageFolder: images/s ratio, median of the "
                    f"ABBA pairs (>1: faster)\n{_where_measured(runs)}", fontsize=10, y=1.08)
    return figure


def ddp_ranks(runs: Any, plt: Any) -> Any:
    """Data wait per batch seen by each rank of the distributed runs (one panel per rank)."""
    if "world_size" not in runs.columns:
        return None
    ddp = runs[(runs["world_size"] > 1) & (runs["rank"] >= 0)]
    if ddp.empty:
        return None
    ranks = sorted(set(ddp["rank"]))
    figure, axes = plt.subplots(1, len(ranks), squeeze=False, sharey=True,
                                figsize=(4.6 * len(ranks), 3.6))
    for j, rank in enumerate(ranks):
        _bars(axes[0][j], ddp[ddp["rank"] == rank], "data_mean_s", 1e3,
              "data wait per batch (ms, mean)")
        axes[0][j].set_title(f"rank {rank}", fontsize=10)
    _legend(figure, ddp)
    modes = ", ".join(sorted(set(ddp["mode"])))
    figure.suptitle(f"torchrun, {int(ddp['world_size'].max())} ranks ({modes}): data wait "
                    "per rank\n" + _where_measured(ddp), fontsize=10)
    figure.tight_layout(rect=(0, 0, 1, 0.95))
    return figure


PLOTS: dict[str, Callable[[Any, Any], Any]] = {
    "ddp_ranks": ddp_ranks,
    "data_and_batch_time": data_and_batch_time,
    "throughput": throughput,
    "time_to_first_batch": time_to_first_batch,
    "strategies": strategies,
    "utilisation": utilisation,
    "when_lmdb_helps": when_lmdb_helps,
}


def _label(row: Any) -> str:
    return f"{row['storage']} ({row['fs_type']})"


def figures(runs: Any, out_dir: str) -> list[str]:
    """Write the study's PNG figures; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(out_dir, exist_ok=True)
    runs = runs.assign(target=runs.apply(_label, axis=1))
    paths = []
    for name, plot in PLOTS.items():
        figure = plot(runs, plt)
        if figure is None:
            continue
        path = os.path.join(out_dir, f"{name}.png")
        figure.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(figure)
        paths.append(path)
    return paths


@dataclass(frozen=True)
class Written:
    """What ``write_report`` wrote: ``out_dir``, and the paths of the tables and figures."""

    out_dir: str
    tables: list[str]
    figures: list[str]

    def __str__(self) -> str:  # relative to out_dir: the same lines wherever out_dir is
        lines = [f"{len(self.tables)} tables, {len(self.figures)} figures written"]
        lines += [f"  {os.path.relpath(path, self.out_dir)}"
                  for path in sorted(self.tables) + sorted(self.figures)]
        return "\n".join(lines)


def write_report(runs: Any, out_dir: str = "", results_dir: str = "") -> Written:
    """Every table (``write_tables``) into ``out_dir/tables`` and every figure (PNG files,
    ``figures``) into ``out_dir/figures``; ``out_dir`` empty: a new temporary folder. What the
    report written there before wrote and this one does not (a condition these results lack)
    is removed, as its list (``.lmdbio-report.json``) says: the folders show one report, not
    a mix of two, and files that no report wrote stay."""
    out = os.path.abspath(out_dir) if out_dir else tempfile.mkdtemp(prefix="lmdbio-report-")
    tables = sorted(write_tables(runs, os.path.join(out, "tables"),
                                 results_dir=results_dir).values())
    drawn = figures(runs, os.path.join(out, "figures"))
    _replace_listing(out, tables + drawn)
    return Written(out, tables, drawn)


REPORT_LISTING = ".lmdbio-report.json"


def _replace_listing(out: str, written: list[str]) -> None:
    """Remove what the previous listing in ``out`` names and ``written`` does not, then list
    ``written`` (paths relative to ``out``; a listing that is not ours names nothing)."""
    listing = os.path.join(out, REPORT_LISTING)
    now = sorted(os.path.relpath(path, out) for path in written)
    try:
        with open(listing) as handle:
            earlier = json.load(handle).get("files", [])
    except (OSError, ValueError, AttributeError):
        earlier = []
    for rel in set(earlier if isinstance(earlier, list) else []) - set(now):
        inside = isinstance(rel, str) and not os.path.isabs(rel) and ".." not in rel.split(os.sep)
        path = os.path.join(out, rel) if inside else ""
        if inside and os.path.isfile(path) and not os.path.islink(path):
            os.unlink(path)
    with staged(listing) as partial, create_exclusive(partial, "w") as handle:
        json.dump({"written_by": "lmdbio.study.report.write_report", "files": now}, handle,
                  indent=1)
