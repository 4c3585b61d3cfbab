"""A conversion killed with SIGKILL resumes to exactly what an uninterrupted one writes."""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import lmdb
import pytest

import lmdbio
from lmdbio.format import SAMPLES_DB

from tests.helpers import BIG_BAD as BAD
from tests.helpers import BIG_KEPT as KEPT
from tests.helpers import REPO, assert_one_line_error, build_big_tree, read_progress, run_cli


@dataclasses.dataclass(frozen=True)
class Killed:
    tree: Path
    partial: Path  # a pristine copy of the killed run's DST.partial
    written: int
    reference: Path  # the same source converted without interruption


@pytest.fixture(scope="module")
def killed(tmp_path_factory: pytest.TempPathFactory) -> Killed:
    base = tmp_path_factory.mktemp("resume")
    tree = build_big_tree(base / "src")
    dst = base / "killed.lmdb"
    partial = Path(f"{dst}.partial")
    proc = subprocess.Popen([sys.executable, "-m", "lmdbio.cli", "convert", str(tree), str(dst),
                             "--commit-mb", "1", "--workers", "2", "-q", "--on-error", "skip"],
                            cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            if partial.exists() and partial.stat().st_size > 4 << 20:  # a few 1 MB commits
                os.kill(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.001)
    finally:
        if proc.poll() is None and time.monotonic() >= deadline:
            proc.kill()
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, ("the conversion ended before it was killed",
                                                proc.returncode, out, err)
    assert not dst.exists()
    assert partial.exists()
    progress = read_progress(partial)
    assert 0 < progress["written"] == progress["entries"] < KEPT
    assert [p for p, _ in progress["skipped"]] == BAD[:1]
    pristine = base / "pristine.partial"
    shutil.copyfile(partial, pristine)
    partial.unlink()
    reference = lmdbio.convert(tree, base / "reference.lmdb", commit_bytes=1 << 20,
                               on_error="skip", progress=False).destination
    return Killed(tree, pristine, progress["written"], Path(reference))


def assert_same_database(a: Path, b: Path) -> None:
    with lmdbio.open_database(a) as x, lmdbio.open_database(b) as y:
        assert len(x) == len(y) == KEPT
        assert [p for p, _ in x.meta.skipped] == BAD
        assert dataclasses.replace(x.meta, created_utc="") == dataclasses.replace(
            y.meta, created_utc="")
        assert x.relative_paths() == y.relative_paths()
        assert x.targets() == y.targets()
        for index in range(KEPT):
            assert x.get(index) == y.get(index), index


def test_unfinished_partial_is_not_readable_and_says_resume(killed: Killed) -> None:
    with pytest.raises(lmdbio.FormatError, match="--resume"):
        lmdbio.open_database(killed.partial)
    assert_one_line_error(run_cli("info", killed.partial), str(killed.partial),
                          "unfinished conversion", "--resume")


def test_resume_completes_to_the_uninterrupted_result(killed: Killed, tmp_path: Path) -> None:
    dst = tmp_path / "out.lmdb"
    shutil.copyfile(killed.partial, f"{dst}.partial")
    proc = run_cli("convert", killed.tree, dst, "--resume", "--commit-mb", "1", "-q",
                   "--on-error", "skip")
    assert proc.returncode == 0, proc.stderr
    assert f"resumed after {killed.written} images" in proc.stdout
    assert f"wrote {KEPT} images of 3 classes" in proc.stdout
    assert "skipped 2 bad files:" in proc.stdout
    assert not Path(f"{dst}.partial").exists()
    assert_same_database(dst, killed.reference)
    assert lmdbio.verify(dst).ok


def test_resume_after_the_source_changed_is_refused(killed: Killed, tmp_path: Path) -> None:
    dst = tmp_path / "out.lmdb"
    shutil.copyfile(killed.partial, f"{dst}.partial")
    victim = killed.tree / "class1" / "00004.jpg"
    before = victim.stat()
    os.utime(victim, ns=(before.st_atime_ns, before.st_mtime_ns + 10**9))  # touched
    try:
        assert_one_line_error(run_cli("convert", killed.tree, dst, "--resume", "-q"),
                              str(killed.tree), "changed", "without --resume")
    finally:
        os.utime(victim, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert not dst.exists()
    assert Path(f"{dst}.partial").exists()  # kept: restoring the source makes it resumable again
    resumed = run_cli("convert", killed.tree, dst, "--resume", "-q", "--on-error", "skip")
    assert resumed.returncode == 0, resumed.stderr
    assert_same_database(dst, killed.reference)


def test_resume_publishes_a_partial_killed_before_its_rename(killed: Killed,
                                                             tmp_path: Path) -> None:
    dst = tmp_path / "out.lmdb"
    shutil.copyfile(killed.reference, f"{dst}.partial")  # complete, but never renamed
    proc = run_cli("convert", killed.tree, dst, "--resume", "-q", "--on-error", "skip")
    assert proc.returncode == 0, proc.stderr
    assert not Path(f"{dst}.partial").exists()
    assert_same_database(dst, killed.reference)


def test_a_new_conversion_discards_a_stale_partial(killed: Killed, tmp_path: Path) -> None:
    dst = tmp_path / "out.lmdb"
    shutil.copyfile(killed.partial, f"{dst}.partial")
    proc = run_cli("convert", killed.tree, dst, "-q", "--on-error", "skip")  # afresh
    assert proc.returncode == 0, proc.stderr
    assert "resumed" not in proc.stdout
    assert not Path(f"{dst}.partial").exists()
    assert_same_database(dst, killed.reference)


def test_resume_without_a_partial_is_a_fresh_conversion(killed: Killed, tmp_path: Path) -> None:
    dst = tmp_path / "out.lmdb"
    report = lmdbio.convert(killed.tree, dst, resume=True, on_error="skip", progress=False)
    assert report.resumed_from == 0 and report.num_samples == KEPT
    assert_same_database(dst, killed.reference)


def test_partial_without_a_checkpoint_is_refused(killed: Killed, tmp_path: Path) -> None:
    dst = tmp_path / "out.lmdb"
    partial = Path(f"{dst}.partial")
    env = lmdb.open(str(partial), subdir=False, max_dbs=2, lock=False)
    with env.begin(write=True) as txn:
        txn.put(b"\0" * 8, b"record", db=env.open_db(SAMPLES_DB, txn=txn))
    env.close()
    assert_one_line_error(run_cli("convert", killed.tree, dst, "--resume", "-q"), str(partial),
                          "without a valid checkpoint")
    assert not dst.exists()


@pytest.mark.parametrize("signum,status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)],
                         ids=["ctrl-c", "sigterm"])
def test_an_interrupt_keeps_a_resumable_partial(killed: Killed, tmp_path: Path, signum: int,
                                                status: int) -> None:
    """Ctrl-C or a plain ``kill`` (a scheduler's time limit): the partial is kept, resumable."""
    dst = tmp_path / "out.lmdb"
    partial = Path(f"{dst}.partial")
    proc = subprocess.Popen([sys.executable, "-m", "lmdbio.cli", "convert", str(killed.tree),
                             str(dst), "--commit-mb", "1", "--workers", "2", "-q",
                             "--on-error", "skip"], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline:
        if partial.exists() and partial.stat().st_size > 4 << 20:
            proc.send_signal(signum)
            break
        time.sleep(0.001)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == status, (proc.returncode, out, err)
    assert "Traceback" not in err
    assert all(line.startswith("lmdbio: interrupted") for line in err.splitlines()), err
    assert "--resume" in err and str(partial) in err
    assert not dst.exists() and partial.exists()
    written = read_progress(partial)["written"]
    assert 0 < written < KEPT
    resumed = run_cli("convert", killed.tree, dst, "--resume", "-q", "--on-error", "skip")
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed after {written} images" in resumed.stdout
    assert_same_database(dst, killed.reference)
