"""``python -m lmdbio.study.bench versions``: two library versions side by side. Real git
archives, real processes with real DataLoader workers, a real LMDB file."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from lmdbio.study.bench import versions

REPO = Path(versions.RUNNER).parents[3]


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                          text=True).stdout.strip()


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_library_tree_is_lmdbio_as_committed_not_as_edited(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "lmdbio").mkdir(parents=True)
    (repo / "lmdbio" / "__init__.py").write_text("VERSION = 'committed'\n")
    (repo / "README").write_text("not part of the library\n")
    git(repo, "init", "-q")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "add", ".")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "one")
    commit = git(repo, "rev-parse", "HEAD")
    (repo / "lmdbio" / "__init__.py").write_text("VERSION = 'edited'\n")

    with versions.library_tree(str(repo), commit) as tree:
        assert (Path(tree) / "lmdbio" / "__init__.py").read_text() == "VERSION = 'committed'\n"
        assert sorted(p.name for p in Path(tree).iterdir()) == ["lmdbio"]
    assert not Path(tree).exists()  # removed after
    with versions.library_tree(str(repo), None) as tree:
        assert (Path(tree) / "lmdbio" / "__init__.py").read_text() == "VERSION = 'edited'\n"
    with pytest.raises(SystemExit, match="'no-such-commit' is not a commit of"):
        with versions.library_tree(str(repo), "no-such-commit"):
            pass


@pytest.mark.skipif(not (REPO / ".git").exists() or shutil.which("git") is None,
                    reason="needs this project's git checkout")
def test_a_run_imports_the_library_it_was_given(big_db: Path) -> None:
    """A run with an archived tree imports that tree's lmdbio, not the installed one (an
    editable install's finder must not win over PYTHONPATH), and reads the whole DB twice."""
    pytest.importorskip("torchvision")
    with versions.library_tree(str(REPO), "HEAD") as tree:
        result = versions.run_once(tree, str(big_db), seed=1)
        assert Path(result["library"]).resolve() == Path(tree).resolve()
    assert result["cold"] > 0 and result["warm"] > 0
    assert 0 < result["cold_ttfb_s"] and 0 < result["warm_ttfb_s"]


def test_summary_pairs_each_run_with_the_other_versions_run_of_the_same_pair() -> None:
    """The ratio is taken within a pair (the same stretch of the machine's time), matched by
    pair number whatever the rows' order, then the median: a pair where both ran slowly is one
    ratio like the others, and a pair missing a run is left out rather than shifting the rest."""
    rates = [(1000, 1100), (500, 540), (1000, 1000), (900, None)]
    rows = [{"storage": "ssd", "version": version, "pair": pair, "cache": cache,
             "images_per_s": rate, "ttfb_s": 0.1}
            for pair, (old, new) in enumerate(rates)
            for version, rate in (("old", old), ("new", new)) if rate is not None
            for cache in versions.CACHES]
    cold, warm = versions.summary(rows[::-1], "old", "new")
    assert cold == ("ssd cold: old 950 (500-1000), new 1000 (540-1100) img/s; paired new / "
                    "old 1.080x [1.000-1.100] over 3 pairs")
    assert warm.startswith("ssd warm:")


class Recorded:
    """A storage that records what was evicted, under the name ``compare`` reports."""

    name = "disk"

    def __init__(self) -> None:
        self.evicted: list[str] = []

    def path(self, relative: str) -> str:
        return "/data/" + relative

    def evict(self, relative: str) -> None:
        self.evicted.append(relative)


def test_compare_alternates_the_versions_abba_and_evicts_before_each(
        monkeypatch: pytest.MonkeyPatch) -> None:
    runs: list[tuple[str, str, int]] = []

    def run_once(tree: str, db: str, seed: int) -> dict:
        runs.append((tree, db, seed))
        return {"cold": 100.0 + len(runs), "cold_ttfb_s": 0.2,
                "warm": 200.0 + len(runs), "warm_ttfb_s": 0.1}

    monkeypatch.setattr(versions, "run_once", run_once)
    storage = Recorded()
    trees = {"A": "/tree/a", "B": "/tree/b"}
    rows = versions.compare(storage, "x.lmdb", trees, pairs=3)  # type: ignore[arg-type]
    assert [tree for tree, _, _ in runs] == ["/tree/a", "/tree/b", "/tree/b", "/tree/a",
                                            "/tree/a", "/tree/b"]
    assert [seed for _, _, seed in runs] == [100, 100, 101, 101, 102, 102]  # same per pair
    assert {db for _, db, _ in runs} == {"/data/x.lmdb"} and storage.evicted == ["x.lmdb"] * 6
    assert len(rows) == 12 and {r["cache"] for r in rows} == set(versions.CACHES)
    assert [(r["version"], r["pair"], r["images_per_s"]) for r in rows if r["cache"] == "cold"] \
        == [("A", 0, 101.0), ("B", 0, 102.0), ("B", 1, 103.0), ("A", 1, 104.0),
            ("A", 2, 105.0), ("B", 2, 106.0)]
