"""Provenance of a result: which commit it was measured at, and whether the code had changed."""

from __future__ import annotations

import subprocess
from pathlib import Path

from lmdbio.study.machine import git_commit


def _git(root: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True,
                          text=True).stdout.strip()


def _checkout(root: Path) -> str:
    (root / "lmdbio").mkdir(parents=True)
    (root / "lmdbio" / "code.py").write_text("x = 1\n")
    (root / "results").mkdir()
    (root / "results" / "runs.csv").write_text("a\n1\n")
    _git(root, "init", "-q")
    _git(root, "add", ".")
    _git(root, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "first")
    return _git(root, "rev-parse", "--short", "HEAD")


def test_results_written_by_the_run_leave_the_commit_clean(tmp_path: Path) -> None:
    head = _checkout(tmp_path)
    assert git_commit(str(tmp_path)) == head
    (tmp_path / "results" / "runs.csv").write_text("a\n2\n")      # a run rewrites its output
    (tmp_path / "results" / "new.png").write_bytes(b"\x89PNG")    # and adds some
    assert git_commit(str(tmp_path)) == head


def test_changed_or_new_code_marks_the_commit_dirty(tmp_path: Path) -> None:
    head = _checkout(tmp_path)
    (tmp_path / "lmdbio" / "code.py").write_text("x = 2\n")
    assert git_commit(str(tmp_path)) == f"{head}-dirty"
    _git(tmp_path, "checkout", "--", "lmdbio/code.py")
    (tmp_path / "lmdbio" / "extra.py").write_text("")
    assert git_commit(str(tmp_path)) == f"{head}-dirty"


def test_outside_a_checkout_the_commit_is_unknown(tmp_path: Path) -> None:
    assert git_commit(str(tmp_path)) == "unknown"
