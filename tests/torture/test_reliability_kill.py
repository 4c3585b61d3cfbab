"""Guarantee: a conversion leaves either a complete, verified DST or nothing under that name,
whatever instant it is killed at; --resume then gives exactly the uninterrupted result.

Real processes, SIGKILL, real files. The long version (100 trials) is ``make torture``
(kill.py); docs/RELIABILITY.md has its latest counts.
"""

from __future__ import annotations

import os
from pathlib import Path

import lmdbio

from tests.helpers import build_numbered_tree
from tests.torture import kill
from tests.torture.common import partial_state, run_cli, snapshot

ARGS = kill.ARGS


def test_seeded_kill_trials_lose_nothing(tmp_path: Path) -> None:
    """10 trials: random SIGKILLs and kills inside a commit, the final metadata commit, a
    records transaction and the rename; DST is absent or complete after every kill, and the
    resumed database equals the uninterrupted one, records and metadata, byte for byte."""
    summary = kill.run(tmp_path, trials=10, seed=0, images=300, log=lambda _: None)
    assert summary["failures"] == []
    assert summary["bytes_lost"] == 0
    assert summary["kills"] >= 8  # a kill that came too late is not counted
    points = set(summary["kill_points"])
    assert {"after-link", "txn", "before-link"} <= points, points
    assert any(p.startswith("commit: ") for p in points), points
    assert any(p.startswith("finish: ") for p in points), points
    assert len(summary["states_after_kill"]) >= 3, summary["states_after_kill"]


def test_a_kill_between_link_and_unlink_never_lets_a_later_run_write_through_dst(
        tmp_path: Path) -> None:
    """Killed between publishing's link() and unlink(), DST.partial is a second name of the
    finished DST. A later --overwrite run (fresh or --resume) used to truncate that inode and
    write into it: killed in turn, it left DST destroyed. Now DST stays complete throughout."""
    tree = build_numbered_tree(tmp_path / "src", 120, side=96)
    reference = tmp_path / "reference.lmdb"
    assert run_cli("convert", tree, reference, *ARGS).returncode == 0
    expected = snapshot(reference)
    for extra in ([], ["--resume"]):
        dst = tmp_path / f"out{len(extra)}.lmdb"
        partial = Path(f"{dst}.partial")
        done = run_cli("convert", tree, dst, *ARGS, hooks={"kill": {"at": "after-link"}})
        assert done.returncode == -9, done.stderr
        assert os.stat(dst).st_nlink == 2 and os.path.samefile(dst, partial)
        assert snapshot(dst) == expected
        again = run_cli("convert", tree, dst, *ARGS, "--overwrite", *extra,
                        hooks={"kill": {"at": "txn", "nth": 1}})
        assert again.returncode == -9, again.stderr
        assert snapshot(dst) == expected  # untouched: the new run wrote a new file
        assert lmdbio.verify(dst).ok
        assert partial_state(partial)[0] in ("empty", "records")
        assert not os.path.samefile(dst, partial)
        final = run_cli("convert", tree, dst, *ARGS, "--overwrite", "--resume")
        assert final.returncode == 0, final.stderr
        assert snapshot(dst) == expected and not partial.exists()
