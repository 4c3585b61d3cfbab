"""How long each notebook of the study's plan will take: its size in images read, times the
seconds per image that earlier runs (after a fixed start-up cost) of the same notebook, mode and target took (on this
machine if it ran them, else from the committed run's notebooks). Printed by ``make study``
before each notebook, with what is left, so a long run says where it is."""

from __future__ import annotations

import glob
import json
import os
import statistics
from typing import Any

__all__ = ["Estimator", "units"]

CACHE_STATES = 2  # every bench/ddp condition runs cold and warm
# Kernel start and imports (torch, torchvision) of every notebook, whatever its size: measured
# here, a 16-image convert notebook takes 8 s, a 16-image bench notebook 9 s.
OVERHEAD_S = 6.0


def units(notebook: str, parameters: dict[str, Any]) -> float:
    """The images a notebook reads in all (its size in the plan)."""
    name = os.path.basename(notebook)
    images = float(parameters.get("n_images", 0))
    if name == "convert.ipynb":
        return images * (1 + len(str(parameters.get("writers", "")).split(",")))
    if name in ("bench.ipynb", "ddp.ipynb"):
        formats = len(str(parameters.get("formats", "imagefolder,lmdb")).split(","))
        runs = formats * CACHE_STATES * int(parameters.get("repeats", 1)) + 1  # + warm-up
        per_epoch = images
        if parameters.get("max_batches"):
            per_epoch = min(images, int(parameters["max_batches"]) * int(
                parameters.get("batch_size", 1)))
        return runs * per_epoch * int(parameters.get("epochs", 1))
    return 1.0  # the report: a fixed cost


def _key(notebook: str, parameters: dict[str, Any]) -> tuple[str, str, str]:
    return (os.path.basename(notebook), str(parameters.get("mode", "")),
            str(parameters.get("storage", "")))


class Estimator:
    """Seconds per image by notebook, mode and target, learnt from earlier runs."""

    def __init__(self, *results_dirs: str) -> None:
        self.rates: dict[tuple[str, str, str], list[float]] = {}
        for folder in results_dirs:
            for path in sorted(glob.glob(os.path.join(folder, "**", "*.ipynb"),
                                         recursive=True)):
                self._learn_from(path)

    def _learn_from(self, executed: str) -> None:
        try:
            with open(executed) as handle:
                papermill = json.load(handle)["metadata"]["papermill"]
            notebook = os.path.basename(papermill["input_path"])
            seconds, parameters = float(papermill["duration"]), papermill["parameters"]
        except (OSError, ValueError, KeyError, TypeError):
            return
        self.learn(notebook, parameters, seconds)

    def learn(self, notebook: str, parameters: dict[str, Any], seconds: float) -> None:
        size = units(notebook, parameters)
        if size > 0 and seconds > 0:
            self.rates.setdefault(_key(notebook, parameters), []).append(
                max(0.0, seconds - OVERHEAD_S) / size)

    def estimate(self, notebook: str, parameters: dict[str, Any]) -> float | None:
        """Seconds, from the closest earlier runs (same notebook, mode and target; else same
        notebook and mode; else same notebook); None when none ran yet."""
        name, mode, storage = _key(notebook, parameters)
        for match in ((lambda k: k == (name, mode, storage)), (lambda k: k[:2] == (name, mode)),
                      (lambda k: k[0] == name)):
            rates = [r for key, values in self.rates.items() if match(key) for r in values]
            if rates:
                return OVERHEAD_S + statistics.median(rates) * units(notebook, parameters)
        return None
