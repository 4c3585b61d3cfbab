"""The performance targets table, from section CSVs as ``bench perf`` writes them."""

from __future__ import annotations

from pathlib import Path

import pytest

pandas = pytest.importorskip("pandas")

from lmdbio.study.bench.perf_report import measured_targets  # noqa: E402
from lmdbio.study.bench.perf_reads import WARM_LOADER, WARM_ONE  # noqa: E402


def test_target_1_is_the_median_ratio_and_shows_the_readers_cpu_limit(tmp_path: Path) -> None:
    """Target 1 is the loader's cold rate over the sequential read (median of the repeats);
    beside it the same reads warm, so a short cold ratio can be read against what the readers'
    CPU allows at all."""
    ratios = {"lmdbio, 2 DataLoader workers (defaults)": (0.30, 0.36, 0.33),
              WARM_LOADER: (0.40, 0.42, 0.38), WARM_ONE: (0.25, 0.20, 0.22)}
    rows = [{"target": 1, "storage": "ssd", "variant": name, "repeat": repeat,
             "mb_per_s": 1000 * ratio, "ratio_to_sequential": ratio}
            for name, values in ratios.items() for repeat, ratio in enumerate(values)]
    pandas.DataFrame(rows).to_csv(tmp_path / "reads.csv", index=False)
    [target] = measured_targets(str(tmp_path))
    assert target["target"] == "1" and target["storage"] == "ssd"
    assert target["measured"] == 0.33 and target["met"] is False
    assert "warm, the readers' CPU limit: 0.40x with 2 workers, 0.22x in one" in target["detail"]
