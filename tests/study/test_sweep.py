"""The storage sweep's parts, real: blkio and memory cgroups that bite, a tiny sweep end to end
through a real relayed SFTP mount, and nothing left behind on success or Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lmdbio.study import cgroups
from lmdbio.study.cgroups import ControlGroup, block_device, own_group, sweep_stale
from lmdbio.study.latency_fs import latency_available
from lmdbio.study.sweep_points import throttle_check
from lmdbio.system import mounts


def need(controller: str) -> None:
    ok, why = cgroups.available(controller)
    if not ok:
        pytest.skip(why)


def our_groups() -> list[str]:
    found = []
    for controller in ("blkio", "memory"):
        try:
            found += [p.name for p in own_group(controller).glob("lmdbio-*")]
        except cgroups.CgroupUnavailable:
            pass
    return found


def big_file(path: Path, mib: int) -> Path:
    with open(path, "wb") as handle:
        for _ in range(mib):
            handle.write(os.urandom(1 << 20))
        handle.flush()
        os.fsync(handle.fileno())
    return path


@pytest.mark.root
def test_blkio_throttle_bites_buffered_reads(tmp_path: Path) -> None:
    need("blkio")
    data = big_file(tmp_path / "data.bin", 64)
    try:
        device = block_device(data)
    except cgroups.CgroupUnavailable as exc:
        pytest.skip(str(exc))
    free = throttle_check(str(data), seconds=0.5)
    settings = {"blkio.throttle.read_iops_device": f"{device} 100",
                "blkio.throttle.read_bps_device": f"{device} {20 * 10**6}"}
    with ControlGroup("blkio", settings, name="test") as group, group.joined():
        held = throttle_check(str(data), seconds=1.0)
        assert open("/proc/self/cgroup").read().count(group.name) == 1
    assert group.name not in open("/proc/self/cgroup").read()
    assert held["random_read_iops"] < 140, held        # 100 IOPS, some slack for the slice
    assert held["seq_mb_s"] < 30, held                 # 20 MB/s
    assert free["random_read_iops"] > 2 * held["random_read_iops"], (free, held)
    assert group.name not in our_groups()


@pytest.mark.root
def test_memory_group_bounds_the_page_cache_of_what_joins(tmp_path: Path) -> None:
    need("memory")
    data = big_file(tmp_path / "data.bin", 96)
    limit = 32 << 20
    with ControlGroup("memory", {"memory.limit_in_bytes": str(limit)}, name="test") as group:
        with group.joined():
            fd = os.open(data, os.O_RDONLY)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            while os.read(fd, 1 << 20):
                pass
            os.close(fd)
            assert group.read_int("memory.max_usage_in_bytes") <= limit
            assert group.stat()["total_cache"] <= limit
            assert group.read_int("memory.failcnt") > 0  # it hit the limit and reclaimed
    assert group.name not in our_groups()


@pytest.mark.root
def test_groups_of_a_killed_run_are_removed(tmp_path: Path) -> None:
    need("memory")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = own_group("memory") / f"lmdbio-test-{dead.pid}"
    stale.mkdir()
    assert stale.name in sweep_stale("memory")
    assert not stale.exists()


def tiny_args(tmp_path: Path) -> list[str]:
    return ["--images", "96", "--big-images", "1500", "--max-images", "64", "--batch-size",
            "32", "--rtt", "0,1", "--capped", "", "--warm-at", "0", "--repeats", "1",
            "--modes", "load", "--formats", "imagefolder,lmdb", "--no-relay-check",
            "--work-dir", str(tmp_path / "work"), "--out", str(tmp_path / "out")]


def nothing_left(tmp_path: Path) -> None:
    assert not [m for m in mounts() if m.fstype == "fuse.sshfs" and str(tmp_path) in m.source]
    assert our_groups() == []
    out = subprocess.run(["pgrep", "-f", "lmdbio/study/relay.py"], capture_output=True)
    assert out.stdout == b""


@pytest.mark.root
@pytest.mark.sshfs
@pytest.mark.slow
def test_tiny_sweep_end_to_end(tmp_path: Path) -> None:
    need("blkio")
    need("memory")
    if not latency_available("direct")[0]:
        pytest.skip(latency_available("direct")[1])
    import pandas

    from lmdbio.study.sweep import main

    assert main(tiny_args(tmp_path)) == 0
    out = tmp_path / "out"
    runs = pandas.read_csv(out / "runs.csv")
    for column in ("storage", "rtt_ms", "measured_rtt_ms", "bandwidth_mbps", "format", "mode",
                   "cache", "images_per_s", "data_mean_s", "repeat"):
        assert column in runs.columns, column
    runs = runs[~runs["warmup"]]
    net = runs[runs["kind"] == "network"]
    rtt = net.groupby("rtt_ms")["measured_rtt_ms"].median()
    assert 0.7 < rtt[1.0] - rtt[0.0] < 1.6, rtt  # 1 ms configured: measured, not assumed
    assert set(net["cache"]) == {"cold", "warm"}
    assert (runs.loc[runs["cache"] == "cold", "resident_fraction"] < 0.05).all()
    hdd = runs[runs["storage"] == "hdd-like"]
    assert len(hdd) == 2 and hdd["rtt_ms"].isna().all()
    assert (hdd["random_read_iops"] < 250).all()
    big = runs[runs["storage"] == "larger-than-cache"]
    assert set(big["format"]) == {"imagefolder", "lmdb", "lmdb-block"}
    room = big["cache_room_bytes"] / big["data_bytes_on_disk"]
    assert ((room > 0.2) & (room < 0.3)).all(), room
    for name in ("runs.parquet", "cells.csv", "summary.md", "rtt.png", "map.png",
                 "shuffle.csv", "advise.csv"):
        assert (out / name).stat().st_size > 0, name
    advice = pandas.read_csv(out / "advise.csv")  # lmdbio advise at every point, vs measured
    assert set(advice["condition"]) == set(runs["condition"])
    assert (advice["predicted_speedup"] > 0).all() and advice["error"].notna().all()
    nothing_left(tmp_path)


@pytest.mark.root
@pytest.mark.sshfs
@pytest.mark.slow
@pytest.mark.parametrize("signum,status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)],
                         ids=["ctrl-c", "sigterm"])
def test_an_interrupt_mid_sweep_leaves_nothing(tmp_path: Path, signum: int, status: int) -> None:
    if not latency_available("direct")[0]:
        pytest.skip(latency_available("direct")[1])
    proc = subprocess.Popen([sys.executable, "-m", "lmdbio.study.sweep", *tiny_args(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    seen = []
    for line in proc.stdout:  # interrupt once a run on the relayed mount has finished
        seen.append(line)
        if "load    imagefolder cold r-1" in line:
            break
    time.sleep(0.3)
    proc.send_signal(signum)
    rest, _ = proc.communicate(timeout=60)
    assert proc.returncode == status, "".join(seen) + rest
    nothing_left(tmp_path)


def test_report_of_a_sweep_without_imagefolder(tmp_path: Path) -> None:
    """--formats lmdb,litdata: no speedup over ImageFolder to map (no figure, no crash) nor to
    tabulate (no empty columns), the paired ratio against each peer in the summary and in the
    round-trip figure's lower row, the CPU profile beside it."""
    pandas = pytest.importorskip("pandas")
    from lmdbio.study.report.sweep import cells, figure_rtt, write_all

    rows = []
    for repeat, (lmdb, litdata) in enumerate(((700.0, 600.0), (720.0, 610.0), (690.0, 640.0))):
        for fmt, rate in (("lmdb", lmdb), ("litdata", litdata)):
            rows.append({"condition": "+2 ms RTT", "kind": "network", "rtt_ms": 2.0,
                         "bandwidth_mbps": None, "mode": "load", "cache": "cold",
                         "format": fmt, "repeat": repeat, "warmup": False,
                         "images_per_s": rate, "data_mean_s": 0.01, "measured_rtt_ms": 2.3,
                         "cpu": "test CPU", "cores": 2, "ram_gib": 1.0, "git_commit": "x",
                         "images_total": 2048, "cpu_wall_s": 3.0, "cpu_workers_s": 5.0,
                         "cpu_idle_s": 0.5})
    written = write_all(pandas.DataFrame(rows), str(tmp_path))
    names = {Path(p).name for p in written}
    assert "map.png" not in names and {"summary.md", "profile.md", "rtt.png"} <= names
    summary = (tmp_path / "summary.md").read_text()
    assert "| lmdb / litdata (paired) |" in summary
    assert "1.17x (1.08-1.18) lmdb faster" in summary  # 700/600, 720/610, 690/640
    assert "ImageFolder" not in summary and "speedup" not in summary
    assert "2.44" in (tmp_path / "profile.md").read_text()  # 5.0 s / 2048 images, in ms
    lower = figure_rtt(cells(pandas.DataFrame(rows))).axes[1]
    assert lower.get_ylabel() == "lmdbio / peer (median of pairs)"
    (ratio,) = [bars for bars in lower.containers if bars.get_label() == "litdata"]
    assert list(ratio.lines[0].get_ydata()) == pytest.approx([700 / 600])  # the median pair


@pytest.mark.parametrize("args, says", [
    (["--rtt", "0,x"], "invalid number: 'x'"),
    (["--rtt", "-1"], "must be a number >= 0, not -1"),
    (["--capped", "0.5"], "is not RTT_MS:MBPS"),
    (["--capped", "0.5:0"], "must be a number > 0, not 0"),
    (["--warm-at", "3"], "--warm-at 3: not a round trip of --rtt"),
    (["--modes", "load,train"], "modes 'train': not one of load, emulate"),
    (["--formats", "lmdb,tfrecord"], "formats 'tfrecord': not one of"),
    (["--repeats", "0"], "must be >= 1, not 0"),
    (["--images", "1"], "must be >= 2, not 1"),
    (["--workers", "-1"], "must be >= 0, not -1"),
    (["--step-ms", "nan"], "must be a number >= 0, not nan"),
    (["--target", "/nonexistent-lmdbio-mount"], "'/nonexistent-lmdbio-mount' is not a folder"),
])
def test_a_wrong_argument_stops_the_sweep_before_it_starts(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], says: str) -> None:
    from lmdbio.study.sweep import main

    with pytest.raises(SystemExit) as stopped:
        main(["--work-dir", str(tmp_path / "work"), "--out", str(tmp_path / "out"), *args])
    assert stopped.value.code == 2
    assert says in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # nothing generated, mounted or written


def test_the_default_warm_levels_follow_the_round_trips_swept(monkeypatch: pytest.MonkeyPatch,
                                                              tmp_path: Path) -> None:
    from lmdbio.study import sweep

    planned = []
    monkeypatch.setattr(sweep, "run_sweep", planned.append)
    out = ["--work-dir", str(tmp_path / "work"), "--out", str(tmp_path / "out")]
    assert sweep.main([*out, "--rtt", "", "--capped", ""]) == 0   # README: a real mount alone
    assert sweep.main([*out, "--rtt", "0.5,2"]) == 0
    assert sweep.main([*out]) == 0
    assert [(cfg.rtts, cfg.warm_at) for cfg in planned] == [
        ((), ()), ((0.5, 2.0), (2.0,)), ((0.0, 0.2, 0.5, 1.0, 2.0), (0.0, 2.0))]


def test_the_sweeps_help_says_every_default(capsys: pytest.CaptureFixture[str]) -> None:
    from lmdbio.study.sweep import SweepConfig, main

    with pytest.raises(SystemExit):
        main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    default = SweepConfig()
    for option, value in (("--images", default.images), ("--repeats", default.repeats),
                          ("--rtt", "0,0.2,0.5,1,2"), ("--capped", "0.5:1000"),
                          ("--step-ms", default.step_ms), ("--workers", default.num_workers)):
        described = text.split(f" {option} ", 1)[1].split(" --", 1)[0]
        assert f"(default: {value})" in described, (option, described)
