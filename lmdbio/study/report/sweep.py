"""The storage sweep's tables and figures (``lmdbio.study.sweep`` writes them into its folder).

Every number is a median over the repetitions of a cell with its range (fastest and slowest
run); a speedup is the median of per-repetition ratios (repetition r of a strategy over
repetition r of ImageFolder at the same point, mode and cache: the ABBA pairs), with their
range. Warm-up runs are left out.
"""

from __future__ import annotations

import os
from typing import Any

from lmdbio.publish import create_exclusive, staged
from lmdbio.study.conditions import PEER_FORMATS, order
from lmdbio.study.extras import pandas as _pandas
from lmdbio.study.report.figures import FORMAT_COLOURS
from lmdbio.study.report.profile import write_profile
from lmdbio.study.report.runs import write_table
from lmdbio.study.report.trust import verdict

__all__ = ["advise_table", "cells", "figure_map", "figure_rtt", "summary_markdown", "write_all"]

COLOURS = FORMAT_COLOURS | {"lmdb-block": "#9467bd"}
CELL = ["condition", "kind", "rtt_ms", "bandwidth_mbps", "mode", "cache"]


def _measured(frame: Any) -> Any:
    return frame[~frame["warmup"].astype(bool)]


def cells(frame: Any) -> Any:
    """One row per point x mode x cache x strategy: images/s median/min/max, data wait, the
    measured round trip, and the speedup over ImageFolder (median, min, max of the pairs)."""
    pandas = _pandas()
    runs = _measured(frame)
    rows = []
    for key, cell in runs.groupby(CELL, dropna=False, sort=False):
        by_repeat = {fmt: part.set_index("repeat")["images_per_s"]
                     for fmt, part in cell.groupby("format")}
        base = by_repeat.get("imagefolder", pandas.Series(dtype=float))
        for fmt in order(cell["format"].unique()):
            mine = cell[cell["format"] == fmt]
            rate = mine["images_per_s"]
            pairs = (by_repeat[fmt] / base).dropna()
            against_peers = {}
            for peer in PEER_FORMATS:  # the same ABBA pairing against each peer
                if peer in by_repeat and peer != fmt:
                    ratio = (by_repeat[fmt] / by_repeat[peer]).dropna()
                    against_peers |= {
                        f"over_{peer}": ratio.median(), f"over_{peer}_min": ratio.min(),
                        f"over_{peer}_max": ratio.max(),
                        f"vs_{peer}": verdict(fmt, rate.tolist(), by_repeat[peer].tolist())}
            rows.append(dict(zip(CELL, key)) | against_peers | {
                "format": fmt, "runs": len(mine), "images_per_s": rate.median(),
                "images_per_s_min": rate.min(), "images_per_s_max": rate.max(),
                "data_mean_ms": mine["data_mean_s"].median() * 1e3,
                "measured_rtt_ms": (mine["measured_rtt_ms"].median()
                                    if "measured_rtt_ms" in mine else float("nan")),
                "speedup": pairs.median() if len(pairs) else float("nan"),
                "speedup_min": pairs.min() if len(pairs) else float("nan"),
                "speedup_max": pairs.max() if len(pairs) else float("nan"),
                "vs_imagefolder": (verdict(fmt, rate.tolist(), base.tolist())
                                   if len(base) and fmt != "imagefolder" else "")})
    return pandas.DataFrame(rows)


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _ratio_lines(cell: Any, baseline: bool) -> list[tuple[str, str, Any]]:
    """The bottom row's lines: (label, column, rows) for every strategy's speedup over
    ImageFolder, or, in a sweep without ImageFolder (``--formats``), lmdbio's paired ratio over
    each peer."""
    if baseline:
        return [(fmt, "speedup", cell[cell["format"] == fmt])
                for fmt in order(cell["format"].unique())]
    lmdb = cell[cell["format"] == "lmdb"]
    return [(peer, f"over_{peer}", lmdb) for peer in PEER_FORMATS if f"over_{peer}" in lmdb
            and lmdb[f"over_{peer}"].notna().any()]


def figure_rtt(table: Any) -> Any:
    """images/s (top) and speedup over ImageFolder (bottom; lmdbio over each peer where
    ImageFolder was not run) against added round trip, one line per strategy, one column per
    mode; cold, uncapped network points; whiskers: range."""
    plt = _pyplot()
    net = table[(table["kind"] == "network") & table["bandwidth_mbps"].isna()
                & (table["cache"] == "cold")]
    if net.empty:
        return None
    baseline = "imagefolder" in set(net["format"])
    modes = [m for m in ("load", "emulate", "train") if m in set(net["mode"])]
    fig, axes = plt.subplots(2, len(modes), figsize=(5.2 * len(modes), 7.5), squeeze=False,
                             sharex=True)
    for col, mode in enumerate(modes):
        cell = net[net["mode"] == mode]
        rates = [(fmt, "images_per_s", cell[cell["format"] == fmt])
                 for fmt in order(cell["format"].unique())]
        for row, lines in enumerate((rates, _ratio_lines(cell, baseline))):
            for label, metric, line in lines:
                line = line.sort_values("rtt_ms")
                axes[row][col].errorbar(
                    line["rtt_ms"].astype(float), line[metric],
                    yerr=[line[metric] - line[metric + "_min"],
                          line[metric + "_max"] - line[metric]],
                    marker="o", capsize=3, label=label, color=COLOURS.get(label))
        measured = cell.groupby("rtt_ms")["measured_rtt_ms"].median()
        axes[0][col].set_title(f"{mode}, cold: SFTP mount + added round trip")
        axes[0][col].set_ylabel("images/s (median, range of runs)")
        axes[1][col].set_ylabel("speedup over ImageFolder (median of pairs)" if baseline
                                else "lmdbio / peer (median of pairs)")
        if not baseline:
            axes[1][col].legend(fontsize=8, title="lmdbio over", title_fontsize=8)
        axes[1][col].axhline(1.0, color="black", linewidth=0.8)
        axes[1][col].set_xlabel("added round trip, ms (measured RTT through the mount below)")
        axes[1][col].set_xticks(list(measured.index.astype(float)))
        axes[1][col].set_xticklabels([f"{r:g}\n({m:.2f})" for r, m in measured.items()])
        for ax in axes[:, col]:
            ax.grid(alpha=0.3)
        axes[0][col].legend(fontsize=8)
    fig.suptitle("When does LMDB help? Loader throughput against storage round-trip time "
                 "(2 workers, 2 cores)")
    fig.tight_layout()
    return fig


def _row_label(cell: Any) -> str:
    return f"{cell['condition']}, {cell['cache']}"


def figure_map(table: Any) -> Any:
    """Speedup of lmdbio over ImageFolder at every point x cache (rows) and mode (columns),
    with the range of the pairs; where data exceed the cache also BlockShuffleSampler."""
    plt = _pyplot()
    lmdb = table[table["format"].isin(["lmdb", "lmdb-block"])].copy()
    if lmdb.empty:
        return None
    lmdb["row"] = lmdb.apply(_row_label, axis=1)
    lmdb.loc[lmdb["format"] == "lmdb-block", "row"] += " (BlockShuffleSampler)"
    rows = list(dict.fromkeys(lmdb["row"]))
    modes = [m for m in ("load", "emulate", "train") if m in set(lmdb["mode"])]
    grid = [[float("nan")] * len(modes) for _ in rows]
    text = [[""] * len(modes) for _ in rows]
    for _, cell in lmdb.iterrows():
        i, j = rows.index(cell["row"]), modes.index(cell["mode"])
        grid[i][j] = cell["speedup"]
        text[i][j] = f"{cell['speedup']:.2f}x\n({cell['speedup_min']:.2f}-{cell['speedup_max']:.2f})"
    speedups = [max(v, 1 / v) for row in grid for v in row if v == v and v > 0]
    if not speedups:  # ImageFolder was not run (--formats): no speedup to map
        return None
    from matplotlib.colors import LogNorm

    fig, ax = plt.subplots(figsize=(5.5 + 2.0 * len(modes), 0.55 * len(rows) + 1.8))
    # log scale centred on 1 (no difference): 0.5x and 2x are equally far from it
    extreme = max([2.0, *speedups])
    image = ax.imshow(grid, cmap="RdYlGn", aspect="auto",
                      norm=LogNorm(vmin=1 / extreme, vmax=extreme))
    for i in range(len(rows)):
        for j in range(len(modes)):
            ax.text(j, i, text[i][j], ha="center", va="center", fontsize=7)
    ax.set_xticks(range(len(modes)), modes)
    ax.set_yticks(range(len(rows)), rows, fontsize=8)
    fig.colorbar(image, ax=ax, label="lmdbio images/s / ImageFolder's (log)")
    ax.set_title("When does LMDB help: speedup over ImageFolder\n(round trip x cache state x "
                 "data vs page cache)")
    fig.tight_layout()
    return fig


def _fmt_rate(cell: Any) -> str:
    return (f"{cell['images_per_s']:.0f} ({cell['images_per_s_min']:.0f}-"
            f"{cell['images_per_s_max']:.0f})")


def _ratio(row: Any, column: str) -> str:
    """``1.23x (1.10-1.30)``: a paired ratio's median and range; empty where not measured."""
    if row is None or column not in row or row[column] != row[column]:
        return ""
    return f"{row[column]:.2f}x ({row[column + '_min']:.2f}-{row[column + '_max']:.2f})"


def _text(row: Any, column: str) -> str:
    value = None if row is None else row.get(column)
    return value if isinstance(value, str) else ""


def summary_markdown(table: Any, frame: Any, skipped: list[str]) -> str:
    formats = order(table["format"].unique())
    baseline = "imagefolder" in formats  # a sweep of some strategies only has no speedup
    lines = ["# Storage sweep: images/s (median, range)"
             + (" and speedup over ImageFolder" if baseline else ""), "",
             f"{len(_measured(frame))} measured runs; machine: {frame['cpu'].iloc[0]}, "
             f"{frame['cores'].iloc[0]} cores, {frame['ram_gib'].iloc[0]} GiB; commit "
             f"{frame['git_commit'].iloc[0]}.", ""]
    peers = [p for p in PEER_FORMATS if f"over_{p}" in table]
    header = (["point", "cache", "mode", "measured RTT ms", *formats]
              + (["lmdb speedup", "lmdb vs ImageFolder"] if baseline else [])
              + [f"lmdb / {p} (paired)" for p in peers])
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for key, cell in table.groupby(["condition", "cache", "mode"], sort=False):
        by = cell.set_index("format")
        lmdb = by.loc["lmdb"] if "lmdb" in by.index else None
        rtt = cell["measured_rtt_ms"].median()
        row = [*key, "" if rtt != rtt else f"{rtt:.2f}",
               *(_fmt_rate(by.loc[f]) if f in by.index else "" for f in formats)]
        if baseline:
            row += [_ratio(lmdb, "speedup"), _text(lmdb, "vs_imagefolder")]
        row += [f"{_ratio(lmdb, f'over_{p}')} {_text(lmdb, f'vs_{p}')}".strip() for p in peers]
        lines.append("| " + " | ".join(row) + " |")
    if skipped:
        lines += ["", "Skipped: " + "; ".join(skipped)]
    return "\n".join(lines) + "\n"


def advise_table(advice: list[dict[str, Any]], frame: Any) -> Any:
    """Per point and mode: lmdbio advise's predicted speedup (cold) beside the measured one."""
    pandas = _pandas()
    table = cells(frame)
    rows = []
    for point in advice:
        for mode, predicted in point["by_mode"].items():
            cell = table[(table["condition"] == point["condition"]) & (table["mode"] == mode)
                         & (table["cache"] == "cold")].set_index("format")
            if "lmdb" not in cell.index or "imagefolder" not in cell.index:
                continue
            measured = cell.loc["lmdb", "speedup"]
            rows.append({
                "condition": point["condition"], "mode": mode,
                "predicted_imagefolder_images_per_s": predicted["imagefolder_images_per_s"],
                "measured_imagefolder_images_per_s": cell.loc["imagefolder", "images_per_s"],
                "predicted_lmdb_images_per_s": predicted["lmdb_images_per_s"],
                "measured_lmdb_images_per_s": cell.loc["lmdb", "images_per_s"],
                "predicted_speedup": predicted["speedup"],
                "predicted_speedup_upper": predicted.get("speedup_upper", predicted["speedup"]),
                "measured_speedup": measured,
                "error": predicted["speedup"] / measured - 1,
                "recommendation": predicted["recommendation"],
                **{f"in_{k}": v for k, v in predicted.items()
                   if k in ("file_latency_ms", "seq_mb_s", "seq_lower_bound", "random_read_ms",
                            "decode_per_core_images_per_s", "cores", "dataset_bytes",
                            "mem_available_bytes", "evicted")}})
    return pandas.DataFrame(rows)


def _save_png(fig: Any, path: str) -> None:
    with staged(path) as partial:
        with create_exclusive(partial, "wb") as handle:
            fig.savefig(handle, format="png", dpi=110)


def write_all(frame: Any, out_dir: str, skipped: list[str] = ()) -> list[str]:  # type: ignore[assignment]
    """``cells.csv``, ``summary.md``, ``profile.csv``/``profile.md`` (when the runs carry CPU
    times), ``rtt.png`` and ``map.png`` into ``out_dir``."""
    plt = _pyplot()
    table = cells(frame)
    written = []
    path = os.path.join(out_dir, "cells.csv")
    write_table(table, path)
    written.append(path)
    path = os.path.join(out_dir, "summary.md")
    with staged(path) as partial:
        with create_exclusive(partial, "w") as handle:
            handle.write(summary_markdown(table, frame, list(skipped)))
    written.append(path)
    written += write_profile(frame, out_dir)  # where each run's CPU went (cpu_*_s columns)
    for name, make in (("rtt.png", figure_rtt), ("map.png", figure_map)):
        fig = make(table)
        if fig is not None:
            _save_png(fig, os.path.join(out_dir, name))
            plt.close(fig)
            written.append(os.path.join(out_dir, name))
    return written
