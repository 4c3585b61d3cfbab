"""The figure a bench or ddp notebook ends with: per-batch data time and batch time of every
format it ran, cold and warm, as box plots over all measured batches (the seed printed these
two numbers; this shows their spread). The first batch of each epoch is left out: it carries
the workers' start-up, which ``ttfb_s`` reports apart."""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from typing import Any

from lmdbio.publish import create_exclusive, staged
from lmdbio.study.conditions import CACHES, order
from lmdbio.study.report.figures import FORMAT_COLOURS

__all__ = ["PngImage", "batch_times"]


@dataclass(frozen=True)
class PngImage:
    """A rendered figure: shown inline by Jupyter (``_repr_png_``), saved with ``save``."""

    data: bytes

    def _repr_png_(self) -> bytes:
        return self.data

    def save(self, path: str) -> str:
        with staged(path) as partial, create_exclusive(partial, "wb") as handle:
            handle.write(self.data)
        return path

    def __repr__(self) -> str:  # what a text-only front end (or nbval) sees
        return "<PNG figure>"


def batch_times(runs: Any, batches: Any, *, save_dir: str = "", dpi: int = 72) -> PngImage:
    """Box plots (median, quartiles, 5th-95th percentile whiskers) of the per-batch data wait
    and batch time, per format and cache state, over every measured batch of ``batches``;
    also written to ``save_dir/batch_times.png`` when ``save_dir`` is given."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    measured = batches[~batches["warmup"] & (batches["batch"] > 0)]
    if measured.empty:  # one batch per epoch (a tiny run): nothing but first batches to show
        measured = batches[~batches["warmup"]]
    formats = order(measured["format"].unique())
    caches = [c for c in CACHES if c in set(measured["cache"])]
    figure = Figure(figsize=(8.5, 3.2), dpi=dpi)
    axes = figure.subplots(1, 2)
    width = 0.8 / max(len(formats), 1)
    for ax, (metric, label) in zip(axes, (("data_time", "data wait per batch (ms)"),
                                          ("batch_time", "batch time (ms)"))):
        for k, fmt in enumerate(formats):
            values = [measured[(measured["format"] == fmt) & (measured["cache"] == cache)][
                metric].to_numpy() * 1e3 for cache in caches]
            positions = [i + (k - (len(formats) - 1) / 2) * width for i in range(len(caches))]
            parts = ax.boxplot(values, positions=positions, widths=width * 0.9, whis=(5, 95),
                               showfliers=False, patch_artist=True, manage_ticks=False)
            for box in parts["boxes"]:
                box.set_facecolor(FORMAT_COLOURS.get(fmt, "#bbbbbb"))
            for median in parts["medians"]:
                median.set_color("black")
        ax.set_xticks(range(len(caches)), caches)
        ax.set_ylabel(label)
        ax.set_ylim(bottom=0)
        ax.grid(axis="y", alpha=0.3)
    first = runs.iloc[0]
    figure.legend(handles=[Patch(color=FORMAT_COLOURS.get(f, "#bbbbbb"), label=f)
                           for f in formats], loc="upper center", bbox_to_anchor=(0.5, 0.9),
                  ncol=len(formats), fontsize=8, frameon=False)
    counts = sorted(set(measured.groupby(["format", "cache"]).size()))
    boxes = f"{counts[0]}" if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
    plural = "" if counts[-1] == 1 else "es"
    figure.suptitle(f"{first['storage']} ({first['fs_type']}), mode {first['mode']}: per-batch "
                    f"times, {boxes} batch{plural} per box (whiskers 5th-95th percentile)",
                    fontsize=10)
    figure.tight_layout(rect=(0, 0, 1, 0.82))
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    image = PngImage(buffer.getvalue())
    if save_dir:
        os.makedirs(save_dir, exist_ok=True)
        image.save(os.path.join(save_dir, "batch_times.png"))
    return image
