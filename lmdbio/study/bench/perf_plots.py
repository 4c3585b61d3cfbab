"""The figures of ``results/perf/``: one PNG per section, medians with min-max whiskers."""

from __future__ import annotations

import os
import textwrap

import matplotlib

matplotlib.use("Agg")  # files only; no display on a CI machine
import matplotlib.pyplot as plt  # noqa: E402
import pandas  # noqa: E402

from lmdbio.study.bench.perf_common import PAIRS, STORAGE_READ  # noqa: E402


def _bars(ax: plt.Axes, frame: pandas.DataFrame, value: str, title: str, xlabel: str,
          line: float | None = None, line_label: str = "") -> None:
    """Horizontal bars per (variant, storage): median, whiskers to min and max."""
    stats = frame.groupby(["variant", "storage"], sort=False)[value].agg(["median", "min", "max"])
    storages = list(dict.fromkeys(frame["storage"]))
    variants = list(dict.fromkeys(frame["variant"]))
    height = 0.8 / len(storages)
    for k, storage in enumerate(storages):
        ys, meds, lo, hi = [], [], [], []
        for i, variant in enumerate(variants):
            if (variant, storage) in stats.index:
                s = stats.loc[(variant, storage)]
                ys.append(i + k * height)
                meds.append(s["median"])
                lo.append(s["median"] - s["min"])
                hi.append(s["max"] - s["median"])
        ax.barh(ys, meds, height, xerr=[lo, hi], label=storage, capsize=2)
    ax.set_yticks([i + height * (len(storages) - 1) / 2 for i in range(len(variants))],
                  [textwrap.fill(v, 40) for v in variants], fontsize=8)
    ax.invert_yaxis()
    if line is not None:
        ax.axvline(line, color="black", linestyle="--", linewidth=1, label=line_label)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel)
    ax.legend(fontsize=8)


def _save(fig: plt.Figure, out: str, name: str) -> None:
    fig.tight_layout()
    fig.savefig(os.path.join(out, name), dpi=110)
    plt.close(fig)


def plot_all(out: str) -> None:
    def load(name: str) -> pandas.DataFrame | None:
        path = os.path.join(out, name)
        return pandas.read_csv(path) if os.path.exists(path) else None

    reads, big = load("reads.csv"), load("larger_than_ram.csv")
    if reads is not None or big is not None:
        fig, axes = plt.subplots(1, 2, figsize=(14, 5))
        if reads is not None:
            _bars(axes[0], reads[reads["variant"] != "sequential (limit)"],
                  "ratio_to_sequential", "Target 1: cold random raw reads, DB fits in RAM",
                  "throughput / sequential read of the DB file", 0.9, "target 0.9x")
        if big is not None:
            _bars(axes[1], big[big["variant"] != "sequential (limit)"], "ratio_to_sequential",
                  "Target 2: DB 4x the page cache (cgroup)",
                  "throughput / sequential read in the cgroup", 0.7, "target 0.7x")
        _save(fig, out, "reads.png")
    loader = load("loader.csv")
    if loader is not None:
        fig, ax = plt.subplots(figsize=(9, 5.5))
        # the storage's sequential file read is a limit, not a loader (its CPU: targets.md);
        # every bar from the same repetitions: target 3a's own phase is in targets.md
        runs = loader[loader["variant"] != STORAGE_READ]
        if "phase" in runs:
            runs = runs[runs["phase"] != PAIRS]
        _bars(ax, runs, "images_per_s", "Target 3: loader, seed transform, 2 workers, cold",
              "images / s (one epoch, worker start-up included)")
        _save(fig, out, "loader.png")
    convert, rss = load("convert.csv"), load("convert_rss.csv")
    if convert is not None:
        fig, axes = plt.subplots(1, 2, figsize=(12, 4))
        speed = convert[convert["variant"] != "source read in order (limit)"]
        _bars(axes[0], speed, "mb_per_s", "Target 4: converter, cold source",
              "MB/s of image bytes")
        if rss is not None:
            axes[1].plot(rss["images"], rss["peak_rss_mb"], marker="o")
            axes[1].axhline(300, color="black", linestyle="--", linewidth=1, label="target")
            axes[1].set_xscale("log")
            axes[1].set_ylim(0, max(350, rss["peak_rss_mb"].max() * 1.1))
            axes[1].set_title("Converter peak RSS", fontsize=10)
            axes[1].set_xlabel("images")
            axes[1].set_ylabel("MB")
            axes[1].legend(fontsize=8)
        _save(fig, out, "convert.png")
    memory = load("memory.csv")
    if memory is not None:
        fig, ax = plt.subplots(figsize=(6, 4))
        for context, part in memory.groupby("context"):
            per = part.groupby("samples")[["anon_overhead_mb", "pss_overhead_mb"]].max()
            ax.plot(per.index, per["anon_overhead_mb"], marker="o",
                    label=f"{context}: anonymous (the Dataset's own)")
            ax.plot(per.index, per["pss_overhead_mb"], marker="x", linestyle=":",
                    label=f"{context}: + mapped pages of records read")
        ax.set_xscale("log")
        ax.set_xlabel("records in the database")
        ax.set_ylabel("worker PSS minus trivial dataset (MB)")
        ax.set_title("Target 5: per-worker memory of ImageFolderLMDB", fontsize=10)
        ax.legend(fontsize=8)
        _save(fig, out, "memory.png")
