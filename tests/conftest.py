"""Shared fixtures: real ImageFolder trees with awkward images and names, real LMDB files.

Nothing is mocked. Trees are written with Pillow, converted with the real converter, and the
CLI runs in real subprocesses. The builders and helpers themselves are in ``tests/helpers.py``.
"""

from __future__ import annotations

import collections
import signal
import subprocess
from pathlib import Path

import pytest

import lmdbio

from tests.helpers import Converted, build_odd_tree, build_simple_tree, expected_digests

# A suite started in the background of a non-interactive shell (``make test &``) inherits SIGINT
# ignored, and so would every process it starts: the Ctrl-C tests would find nothing to
# interrupt. Python's own handler here gives them the default back (exec resets a handler).
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture
def odd_tree(tmp_path: Path) -> Path:
    return build_odd_tree(tmp_path / "train")


@pytest.fixture(scope="session")
def odd_db(tmp_path_factory: pytest.TempPathFactory) -> Converted:
    """The odd tree converted once per session; tests must not modify either."""
    base = tmp_path_factory.mktemp("odd")
    tree = build_odd_tree(base / "train")
    report = lmdbio.convert(tree, base / "train.lmdb", progress=False, workers=4)
    return Converted(tree, Path(report.destination))


@pytest.fixture(scope="module")
def big_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """60 records of ~10-20 KB: every value on overflow pages, like real JPEGs (one per test
    module, which may evict it at will)."""
    root = tmp_path_factory.mktemp("big")
    tree = build_simple_tree(root / "tree", per_class=30, size=(160, 120))
    lmdbio.convert(tree, root / "db.lmdb", progress=False)
    return root / "db.lmdb"


@pytest.fixture(scope="module")
def reference(odd_db) -> collections.Counter[tuple[str, int]]:
    """Pixel digests of the odd tree as torchvision's ImageFolder loads it."""
    counts = expected_digests(odd_db.tree)
    assert len(counts) == 23 and max(counts.values()) == 1  # every image distinct
    return counts


@pytest.fixture
def simple_tree(tmp_path: Path) -> Path:
    return build_simple_tree(tmp_path / "simple")


@pytest.fixture
def small_filesystem(tmp_path: Path):
    """A 3 MiB tmpfs mounted for the test (root), unmounted after it."""
    mountpoint = tmp_path / "small"
    mountpoint.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mountpoint)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs: {done.stderr.strip()}")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", str(mountpoint)], check=True)
