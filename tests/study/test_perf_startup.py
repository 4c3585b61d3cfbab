"""The startup section of the performance suite (issue #17): every strategy runs cold in both
modes with real DataLoader workers, and its table pairs lmdbio with each strategy within a
repeat."""

from __future__ import annotations

from pathlib import Path

import pytest

pandas = pytest.importorskip("pandas")
pytest.importorskip("torchvision")

from lmdbio.study.bench import perf_startup  # noqa: E402
from lmdbio.study.bench.perf_common import CEILING, Storage, jpeg_tree  # noqa: E402
from lmdbio.study.bench.perf_report import startup_table  # noqa: E402


def test_the_table_pairs_lmdbio_with_each_strategy_within_a_repeat(tmp_path: Path) -> None:
    """lmdbio / strategy is taken within each repeat, then its median: a repeat where the
    machine slowed everything (repeat 1) counts as the ratio it shows. Medians and ranges of
    the strategy's own images/s beside it."""
    rates = {"lmdbio": (1000, 500, 1100), "LitData": (1100, 400, 1000),
             CEILING: (1100, 500, 1250)}
    rows = [{"section": "startup", "storage": "nfs-sshfs", "mode": "emulate", "variant": name,
             "repeat": repeat, "step_ms": 100.0, "workers": 2, "batch_size": 128,
             "images_per_s": rate, "steady_images_per_s": rate + 100, "ttfb_s": 0.3 + repeat,
             "cpu_ms_per_image": 1.0, "idle_core_s": 2.0, "wall_s": 3.0}
            for name, values in rates.items() for repeat, rate in enumerate(values)]
    pandas.DataFrame(rows).to_csv(tmp_path / "startup.csv", index=False)
    text = startup_table(str(tmp_path))
    assert text == (tmp_path / "startup.md").read_text()
    assert "a 100 ms step per batch does. 3 repeats" in text
    lines = text.splitlines()
    # of the ceiling: 1000/1100, 500/500, 1100/1250 -> 0.91, 1.00, 0.88
    assert "| nfs-sshfs | emulate | lmdbio | 1000 (500-1100) | 1100 | 1.30 | 1.000 | 2.00 |  | " \
        "0.91x (0.88-1.00) |" in lines
    # 1000/1100, 500/400, 1100/1000 -> 0.91, 1.25, 1.10; 1.00, 0.80, 0.80 of the ceiling
    assert "| nfs-sshfs | emulate | LitData | 1000 (400-1100) | 1100 | 1.30 | 1.000 | 2.00 | " \
        "1.10x (0.91-1.25) | 0.80x (0.80-1.00) |" in lines
    # lmdbio over the ceiling: 1000/1100, 500/500, 1100/1250; nothing of itself
    assert f"| nfs-sshfs | emulate | {CEILING} | 1100 (500-1250) | 1200 | 1.30 | 1.000 | 2.00 | " \
        "0.91x (0.88-1.00) |  |" in lines


def test_no_csv_no_table(tmp_path: Path) -> None:
    assert startup_table(str(tmp_path)) is None
    assert not (tmp_path / "startup.md").exists()


def test_every_strategy_runs_cold_in_both_modes(tmp_path: Path) -> None:
    """A real run, small: the JPEG tree, its DB and (with the peers extra) its LitData copy;
    each strategy in each mode once after its warm-up, each epoch whole and timed."""
    work = str(tmp_path)
    jpeg = jpeg_tree(work, 48)
    files = perf_startup.prepare(work, jpeg)
    rows = perf_startup.bench_startup([Storage("ssd", work, work)], files, repeats=1,
                                      step_ms=5.0, batch_size=16)
    expected = [s for s in perf_startup.STRATEGIES if s != "LitData" or "litdata" in files]
    assert sorted((r["mode"], r["variant"]) for r in rows) == sorted(
        (mode, name) for mode in perf_startup.MODES for name in expected)
    for row in rows:
        assert row["repeat"] == 0 and row["storage"] == "ssd"
        assert row["step_ms"] == (5.0 if row["mode"] == "emulate" else 0.0)
        assert 0 < row["ttfb_s"] <= row["wall_s"]
        assert row["images_per_s"] == pytest.approx(48 / row["wall_s"])
        assert row["cpu_ms_per_image"] > 0 and row["idle_core_s"] >= 0
    emulated = [r["wall_s"] for r in rows if r["mode"] == "emulate"]
    assert min(emulated) >= 3 * 0.005  # three batches of 16, each followed by its 5 ms step


@pytest.mark.parametrize("option", ["--startup-repeats", "--repeats", "--loader-repeats",
                                    "--pair-repeats", "--images", "--epochs"])
def test_the_suite_refuses_counts_below_one(option: str,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """Zero repeats left a section without rows and its table without a header; a count is
    checked as the command line is read, before any data are made."""
    from lmdbio.study.bench import perf

    with pytest.raises(SystemExit) as raised:
        perf.main([option, "0"])
    assert raised.value.code == 2
    assert f"argument {option}: must be >= 1, not 0" in capsys.readouterr().err
