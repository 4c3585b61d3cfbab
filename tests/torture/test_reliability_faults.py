"""Guarantees under faults of the machine around lmdbio: a full disk, source files that change
after the listing, read-only mounts, folders where no lock file can be created.

Real mounts (tmpfs, loop-mounted ext4, read-only bind mounts) as root, always unmounted in
teardown; skipped with the reason where mounting is impossible. ``make torture`` sweeps many
more disk sizes (faults.py).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import lmdbio

from tests.helpers import build_numbered_tree
from tests.torture import faults
from tests.torture.common import (mount_problem, one_line_error, readonly_bind, run_cli, snapshot,
                                  tree_state)
from tests.torture.probe import Sandbox, expected_of, violations

needs_mounts = pytest.mark.skipif(mount_problem() is not None,
                                  reason=f"cannot mount: {mount_problem()}")


@pytest.mark.root
@needs_mounts
def test_disk_full_is_one_clear_error_leaves_nothing_and_keeps_the_source(
        tmp_path: Path) -> None:
    """tmpfs and ext4 of 16 KiB .. 4 MiB for a ~2.7 MB database: each run either fits and
    equals a conversion on a roomy disk, or fails with the one-line 'disk full' error with
    nothing left on the small file system (checked inside faults.py)."""
    summary = faults.disk_full(tmp_path, faults.sizes_for_sweep(quick=True),
                               log=lambda _: None)
    assert summary["failures"] == []
    assert summary["disk_full_errors"] >= 4 and summary["succeeded"] >= 2
    assert summary["bytes_left_behind"] == 0
    # 16 KiB: full while LMDB creates its two databases (was an lmdb.Error traceback)
    assert summary["phases"].get("creating the file", 0) >= 1, summary["phases"]


@pytest.mark.parametrize("mode", ["fail", "skip"])
@pytest.mark.parametrize("action", [  # "unreadable" runs the converter as nobody: root
    pytest.param(a, marks=pytest.mark.root) if a == "unreadable" else a for a in faults.ACTIONS])
def test_a_source_file_that_changes_after_listing(tmp_path: Path, action: str,
                                                  mode: str) -> None:
    """Deleted, shrunk, emptied, overwritten, replaced by a directory, a dangling symlink, a
    FIFO (which used to hang the converter forever), a file whose read() fails with EIO, or
    unreadable (mode 000, converter run as nobody)."""
    if action == "unreadable" and faults.nobody_problem():
        pytest.skip(faults.nobody_problem())
    result = faults.source_change(tmp_path, action, mode)
    assert result["problems"] == [], result


def _converted(tmp_path: Path, count: int = 12) -> tuple[Path, Path]:
    tree = build_numbered_tree(tmp_path / "src", count, side=48)
    folder = tmp_path / "data"
    folder.mkdir()
    db = Path(lmdbio.convert(tree, folder / "train.lmdb", progress=False).destination)
    return tree, db


def _read_all(db: Path, **options: object) -> list[tuple[int, bytes]]:
    from lmdbio.dataset import ImageFolderLMDB

    dataset = ImageFolderLMDB(db, decode=bytes, **options)
    try:
        return [dataset[i] for i in range(len(dataset))]
    finally:
        dataset.close()


@pytest.mark.root
@needs_mounts
def test_reading_from_a_read_only_mount(tmp_path: Path) -> None:
    tree, db = _converted(tmp_path)
    expected = _read_all(db)
    with readonly_bind(db.parent, tmp_path / "ro") as mounted:
        ro_db = mounted / db.name
        probe = mounted / "probe"
        with pytest.raises(OSError):  # really read-only, even for root
            probe.write_bytes(b"x")
        assert _read_all(ro_db) == expected  # lock=False, the default
        # LMDB tolerates a lock file it cannot create on a read-only file system
        assert _read_all(ro_db, lock=True) == expected
        assert lmdbio.verify(ro_db).ok and lmdbio.info(ro_db).num_samples == len(expected)
        assert run_cli("verify", ro_db, "-q").returncode == 0
        assert run_cli("info", ro_db).returncode == 0
        out = tmp_path / "extracted"
        assert run_cli("extract", ro_db, out, "-q").returncode == 0
        assert {k: v[2] for k, v in tree_state(out).items()} == {
            k: v[2] for k, v in tree_state(tree).items()}  # same names, same bytes
        loader = subprocess.run(
            [sys.executable, "-c", _LOADER, os.fspath(ro_db)], capture_output=True,
            text=True, timeout=300)
        assert loader.returncode == 0 and loader.stdout.split() == ["12", "OK"], loader.stderr
        converted = run_cli("convert", tree, mounted / "new.lmdb", "-q")
        line = one_line_error(converted)
        assert line is not None and "new.lmdb.partial" in line, converted.stderr
        assert sorted(os.listdir(mounted)) == [db.name]  # no lock file, no partial


_LOADER = """
import sys
from torch.utils.data import DataLoader
from lmdbio.dataset import ImageFolderLMDB
dataset = ImageFolderLMDB(sys.argv[1], decode=len)
seen = [int(t) for _, targets in DataLoader(dataset, batch_size=5, num_workers=2)
        for t in targets]
print(len(seen), "OK" if seen == dataset.targets else "WRONG")
"""


def test_a_folder_where_the_lock_file_cannot_be_created(tmp_path: Path) -> None:
    """The default (lock=False) needs no lock file. lock=True where LMDB cannot create one
    (here its name is taken by a directory; an immutable folder below) is one typed error
    that says what to do."""
    _, db = _converted(tmp_path)
    expected = _read_all(db)
    blocker = Path(f"{db}-lock")
    blocker.mkdir()
    try:
        assert _read_all(db) == expected
        with pytest.raises(lmdbio.FormatError, match="lock=False"):
            _read_all(db, lock=True)
    finally:
        blocker.rmdir()


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("chattr"),
                    reason="needs root and chattr")
def test_an_immutable_folder_stops_even_root_from_creating_the_lock_file(
        tmp_path: Path) -> None:
    _, db = _converted(tmp_path)
    expected = _read_all(db)
    if subprocess.run(["chattr", "+i", os.fspath(db.parent)], capture_output=True).returncode:
        pytest.skip(f"the file system of {db.parent} has no immutable attribute")
    try:
        with pytest.raises(OSError):
            (db.parent / "probe").write_bytes(b"x")
        assert _read_all(db) == expected
        with pytest.raises(lmdbio.FormatError, match="lock=False"):
            _read_all(db, lock=True)
        assert run_cli("info", db).returncode == 0  # the CLI never asks for a lock
    finally:
        subprocess.run(["chattr", "-i", os.fspath(db.parent)], check=True)
    assert sorted(os.listdir(db.parent)) == [db.name]


def test_every_truncation_is_a_typed_error_not_a_crash(tmp_path: Path) -> None:
    """A database cut short at every page boundary and a few bytes around it (an interrupted
    copy). liblmdb would map it past its end and die with SIGBUS on the first read there;
    lmdbio now refuses such a file when it opens it."""
    _, db = _converted(tmp_path, count=30)
    expected = tmp_path / "expected.json"
    expected.write_text(json.dumps(expected_of(db)))
    size = db.stat().st_size
    cuts = sorted({c for page in range(0, size, 4096) for c in (page - 1, page, page + 7)
                   if 0 <= c < size})
    cut = tmp_path / "cut.lmdb"
    outcomes = []
    with Sandbox(timeout=60) as sandbox:
        for length in cuts:
            shutil.copyfile(db, cut)
            os.truncate(cut, length)
            result = sandbox.probe(cut, expected)
            assert violations(result, json.loads(expected.read_text())) == [], (length, result)
            assert not result.get("crash"), (length, result)
            outcomes.append(result["verify"])
    assert sandbox.crashes == 0 and sandbox.hangs == 0
    assert True not in outcomes  # every cut file is refused or fails verify


def test_the_fault_helpers_can_see_a_difference(tmp_path: Path) -> None:
    """The comparisons the fault tests rely on do notice damage (so they can fail)."""
    from tests.torture.fuzz import record_offsets

    _, db = _converted(tmp_path)
    copy = tmp_path / "copy.lmdb"
    shutil.copyfile(db, copy)
    assert snapshot(copy) == snapshot(db)
    offset, length = record_offsets(copy)[3]
    raw = bytearray(copy.read_bytes())
    raw[offset + 20] ^= 1
    copy.write_bytes(bytes(raw))
    assert snapshot(copy).lost_bytes(snapshot(db)) == length
    state = tree_state(db.parent)
    os.utime(db, ns=(0, 0))
    assert tree_state(db.parent) != state
