"""Where a run's CPU seconds go (lmdbio.study.profiling): real processes burning real CPU are
counted in their groups, py-spy's nested stacks are read per process, stages are decided by
priority, and the profile report turns run rows into per-image tables."""

from __future__ import annotations

import multiprocessing
import os
import time
from pathlib import Path

import pytest

from lmdbio.study import profiling
from lmdbio.study.profiling import Profiler, categorize, read_collapsed


def _burn(seconds: float) -> None:
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass


def test_a_childs_cpu_is_counted_as_workers_and_the_rest_adds_up() -> None:
    with Profiler(use_pyspy=False) as profiler:
        child = multiprocessing.get_context("fork").Process(target=_burn, args=(0.6,))
        child.start()
        _burn(0.3)
        child.join()
    cpu = profiler.cpu
    assert 0.5 <= cpu["workers"] <= 1.0, cpu  # the reaped child's 0.6 s
    assert 0.25 <= cpu["main process"] <= 0.6, cpu
    cores = os.cpu_count() or 1
    counted = sum(v for k, v in cpu.items() if k != "wall")
    # every busy and idle second of the window is in some group (clock ticks: 10 ms each)
    assert counted == pytest.approx(cores * cpu["wall"], rel=0.25, abs=0.1), cpu
    columns = profiler.columns()
    assert columns["cpu_workers_s"] == cpu["workers"] and "cpu_idle_s" in columns


def test_a_renamed_or_reused_pid_is_not_counted_with_its_lifetime() -> None:
    before = {7: profiling.ProcessCpu(7, 2, "kworker/0:1-events", "", 100.0, 50)}
    renamed = {7: profiling.ProcessCpu(7, 2, "kworker/0:1H-kblockd", "", 100.5, 50)}
    reused = {7: profiling.ProcessCpu(7, 2, "kworker/0:1H-kblockd", "", 0.25, 900)}
    assert profiling.cpu_by_group(before, renamed, 0.0) == {
        "workers": 0.0, "kernel threads": pytest.approx(0.5)}
    assert profiling.cpu_by_group(before, reused, 0.0)["kernel threads"] == pytest.approx(0.25)


def test_stages_go_by_priority_anywhere_in_the_stack() -> None:
    transform = ["_worker_loop (torch/utils/data/_utils/worker.py:1)",
                 "__getitem__ (lmdbio/dataset.py:2)", "__call__ (torchvision/transforms/x.py:3)",
                 "resize (PIL/Image.py:4)"]
    assert categorize(transform) == "transform"  # Pillow called by the transform
    checksum = ["__getitem__ (lmdbio/dataset.py:2)", "get (lmdbio/database.py:3)",
                "decode_record (lmdbio/format.py:9)"]
    assert categorize(checksum) == "read: checksum"
    assert categorize(checksum[:2]) == "read: record"
    assert categorize(["fetch (torch/utils/data/_utils/fetch.py:1)",
                       "default_collate (torch/utils/data/_utils/collate.py:2)"]) \
        == "collate + hand-over"
    assert categorize(["run (threading.py:1)", "_run (lmdbio/prefetch.py:5)"]) == "prefetch"
    assert categorize(["<module> (x.py:1)"]) == "other"


def test_stages_leave_the_relay_out_of_the_workers(tmp_path: Path) -> None:
    """The delay relay is a Python child of the sweep: py-spy samples it with the DataLoader
    workers, but its CPU is counted in its own group, not as the workers' stages."""
    me = os.getpid()
    raw = [(f'process {me}:"python -m lmdbio.study.sweep"', ["main (x.py:1)"], 3),
           ('process 11:"python /x/lmdbio/study/relay.py --upstream 127.0.0.1:1"',
            ["_pump (lmdbio/study/relay.py:250)"], 50),
           ('process 12:"python -m lmdbio.study.sweep"', ["decode_pil (lmdbio/decode.py:3)"], 7)]
    stages = Profiler(rate=10)._stages(raw)
    assert stages == {"main process": {"other": 0.3}, "workers": {"decode": 0.7}}


def test_collapsed_stacks_of_nested_processes(tmp_path: Path) -> None:
    raw = tmp_path / "raw.txt"
    raw.write_text('process 10:"python x";main (x.py:1);loop (x.py:2) 7\n'
                   'process 10:"python x";process 11:"python x";work (x.py:3) 5\n'
                   'malformed line\n')
    assert read_collapsed(str(raw)) == [
        ('process 10:"python x"', ["main (x.py:1)", "loop (x.py:2)"], 7),
        ('process 11:"python x"', ["work (x.py:3)"], 5)]


@pytest.mark.root
def test_pyspy_splits_the_main_process_from_its_workers() -> None:
    if profiling.pyspy() is None:
        pytest.skip("py-spy is not installed (pip install py-spy)")
    with Profiler(rate=100) as profiler:
        time.sleep(0.5)  # py-spy attaches
        child = multiprocessing.get_context("fork").Process(target=_burn, args=(1.0,))
        child.start()
        _burn(0.5)
        child.join()
    assert set(profiler.stages) == {"main process", "workers"}, profiler.stages
    assert sum(profiler.stages["workers"].values()) > 0.3
    assert profiler.cpu["profiler"] > 0
    assert any(c.startswith("stage_workers_") for c in profiler.columns())


def test_profile_report_per_image() -> None:
    pandas = pytest.importorskip("pandas")
    from lmdbio.study.report.profile import profile_markdown, profile_table

    rows = []
    for fmt, workers in (("lmdb", 2.0), ("imagefolder", 3.0)):
        for repeat in (0, 1):
            rows.append({"condition": "+0 ms RTT", "mode": "load", "cache": "cold",
                         "format": fmt, "warmup": False, "repeat": repeat,
                         "images_total": 1000, "images_per_s": 500.0, "cores": 2,
                         "cpu_wall_s": 2.0, "cpu_workers_s": workers, "cpu_sshfs_s": 0.5,
                         "cpu_idle_s": 1.0, "stage_workers_decode_s": 1.5,
                         "stage_workers_transform_s": 0.5})
    table = profile_table(pandas.DataFrame(rows))
    assert list(table["format"]) == ["imagefolder", "lmdb"]  # the study's order
    lmdb = table[table["format"] == "lmdb"].iloc[0]
    assert lmdb["workers_ms_per_image"] == pytest.approx(2.0)
    assert lmdb["idle_share"] == pytest.approx(0.25)
    assert lmdb["workers_decode_share"] == pytest.approx(0.75)
    text = profile_markdown(table)
    assert "| +0 ms RTT | load | cold | lmdb | 500 | 2.00 | 0.50 | 25% |" in text
    assert "75%" in text
