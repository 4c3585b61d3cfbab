"""Where the CPU seconds of a run go, per point and strategy (``profile.csv``, ``profile.md``).

From the ``cpu_*_s`` columns every sweep run carries (``lmdbio.study.profiling``: CPU seconds per
process group, counted from ``/proc`` over the run) and, in a ``--profile`` sweep, the
``stage_*_s`` columns (py-spy's samples of the main process and the DataLoader workers by stage
of loading). Per image, so strategies at different speeds compare: CPU milliseconds of each
group per image, the idle share of the cores, and each stage's share of the workers' samples.
Medians over a cell's repetitions; warm-up runs left out.
"""

from __future__ import annotations

import os
from typing import Any

from lmdbio.publish import create_exclusive, staged
from lmdbio.study.conditions import order
from lmdbio.study.extras import pandas as _pandas
from lmdbio.study.report.runs import write_table

__all__ = ["profile_markdown", "profile_table", "write_profile"]

KEY = ["condition", "mode", "cache", "format"]
# process groups, in the order the tables show them (lmdbio.study.profiling's names)
GROUPS = ("workers", "main_process", "sshfs", "sftp_server", "sshd", "relay", "kernel_threads",
          "other_processes", "profiler", "unaccounted")
STAGES = ("decode", "transform", "read_record", "read_checksum", "read_peer", "read_file",
          "prefetch", "collate_hand_over", "loader_loop", "harness", "other")


def profile_table(frame: Any) -> Any:
    """One row per point x mode x cache x strategy: images/s, CPU ms per image of every
    process group, idle share of the cores, and (when sampled) the workers' and the main
    process's stage shares."""
    pandas = _pandas()
    runs = frame[~frame["warmup"].astype(bool)] if "warmup" in frame else frame
    if "cpu_wall_s" not in runs:
        return pandas.DataFrame()
    rows = []
    for key, cell in runs.groupby(KEY, dropna=False, sort=False):
        images = cell["images_total"].astype(float)
        row: dict[str, Any] = dict(zip(KEY, key)) | {
            "runs": len(cell), "images_per_s": cell["images_per_s"].median()}
        for group in GROUPS:
            column = f"cpu_{group}_s"
            if column in cell and cell[column].notna().any():
                row[f"{group}_ms_per_image"] = (cell[column].fillna(0) / images).median() * 1e3
        cores = cell["cores"].astype(float) if "cores" in cell else 1.0
        row["idle_share"] = (cell["cpu_idle_s"] / (cores * cell["cpu_wall_s"])).median()
        for role in ("workers", "main"):
            columns = [c for c in cell if c.startswith(f"stage_{role}_")]
            if not columns:
                continue
            sampled = cell[columns].fillna(0)
            total = sampled.sum(axis=1)
            for stage in STAGES:
                column = f"stage_{role}_{stage}_s"
                if column in sampled:
                    row[f"{role}_{stage}_share"] = (sampled[column] / total).median()
            row[f"{role}_sampled_ms_per_image"] = (total / images).median() * 1e3
        rows.append(row)
    table = pandas.DataFrame(rows)
    # cells in the order the sweep ran them, strategies in the study's order within each
    table["_cell"] = table.groupby(KEY[:3], sort=False, dropna=False).ngroup()
    table["_rank"] = table["format"].map(
        {f: i for i, f in enumerate(order(table["format"].unique()))})
    return table.sort_values(["_cell", "_rank"]).drop(columns=["_cell", "_rank"])


def _cells(row: Any, columns: list[str], digits: int = 2) -> list[str]:
    out = []
    for column in columns:
        value = row.get(column)
        out.append("" if value is None or value != value else f"{value:.{digits}f}")
    return out


def profile_markdown(table: Any, machine: str = "") -> str:
    """The tables of ``profile.md``."""
    if table.empty:
        return "No run of this sweep recorded CPU time (cpu_*_s columns).\n"
    groups = [g for g in GROUPS if f"{g}_ms_per_image" in table
              and table[f"{g}_ms_per_image"].fillna(0).max() >= 0.005]
    lines = ["# Where the CPU time of a run goes", ""]
    if machine:
        lines += [machine, ""]
    lines += [
        "CPU milliseconds per image of each process group over the whole run (user + system, "
        "from /proc; `workers` are the DataLoader workers, `main_process` includes lmdbio's "
        "prefetch threads), and the share of the cores left idle. Medians over repetitions.", "",
        "| point | mode | cache | strategy | images/s | " + " | ".join(groups)
        + " | idle |", "|" + "---|" * (5 + len(groups) + 1)]
    for _, row in table.iterrows():
        lines.append("| " + " | ".join([str(row["condition"]), str(row["mode"]),
                                        str(row["cache"]), str(row["format"]),
                                        f"{row['images_per_s']:.0f}"]
                                       + _cells(row, [f"{g}_ms_per_image" for g in groups])
                                       + [f"{row['idle_share']:.0%}"]) + " |")
    for role, title in (("workers", "DataLoader workers"), ("main", "the main process")):
        stages = [s for s in STAGES if f"{role}_{s}_share" in table
                  and table[f"{role}_{s}_share"].fillna(0).max() >= 0.005]
        if not stages:
            continue
        lines += ["", f"Where {title} spend their on-CPU samples (py-spy, `--profile`): share "
                  f"of the samples per stage, and sampled CPU ms per image.", "",
                  "| point | mode | cache | strategy | ms/image | " + " | ".join(
                      s.replace("_", " ") for s in stages) + " |",
                  "|" + "---|" * (5 + len(stages))]
        sampled = table[table[f"{role}_sampled_ms_per_image"].notna()] \
            if f"{role}_sampled_ms_per_image" in table else table.iloc[0:0]
        for _, row in sampled.iterrows():
            shares = [("" if row.get(f"{role}_{s}_share") != row.get(f"{role}_{s}_share")
                       or row.get(f"{role}_{s}_share") is None
                       else f"{row[f'{role}_{s}_share']:.0%}") for s in stages]
            lines.append("| " + " | ".join([str(row["condition"]), str(row["mode"]),
                                            str(row["cache"]), str(row["format"]),
                                            f"{row[f'{role}_sampled_ms_per_image']:.2f}"]
                                           + shares) + " |")
    return "\n".join(lines) + "\n"


def write_profile(frame: Any, out_dir: str, machine: str = "") -> list[str]:
    """``profile.csv`` and ``profile.md`` into ``out_dir`` (nothing when no run has cpu_*_s)."""
    table = profile_table(frame)
    if table.empty:
        return []
    csv_path = os.path.join(out_dir, "profile.csv")
    write_table(table, csv_path)
    md_path = os.path.join(out_dir, "profile.md")
    with staged(md_path) as partial:
        with create_exclusive(partial, "w") as handle:
            handle.write(profile_markdown(table, machine))
    return [csv_path, md_path]
