"""LmdbWriter: map growth from a tiny map, a tight final map, checkpoints, disk full."""

from __future__ import annotations

import os
from pathlib import Path

import lmdb
import pytest

import lmdbio
from lmdbio.format import Metadata
from lmdbio.writer import LmdbWriter

from tests.helpers import assert_one_line_error, build_simple_tree, run_cli

MiB = 1 << 20


def recorded_map_size(path: Path) -> int:
    """The map size stored in the file's meta page (map_size=0 asks LMDB for exactly that)."""
    env = lmdb.open(str(path), subdir=False, readonly=True, lock=False, map_size=0, max_dbs=2)
    try:
        return env.info()["map_size"]
    finally:
        env.close()


def meta_for(count: int, payload: int) -> Metadata:
    return Metadata(num_samples=count, classes=["a", "b"], source_root="/src",
                    source_fingerprint="f", extensions=[".jpg"], payload_bytes=payload)


def test_tiny_map_grows_and_the_final_map_is_tight(tmp_path: Path) -> None:
    path = tmp_path / "grow.lmdb"
    writer = LmdbWriter(str(path), 1 * MiB)
    records = [(i % 2, os.urandom(150_000 + i)) for i in range(60)]  # ~9 MB
    for start in range(0, len(records), 7):  # ~1 MB transactions
        batch = records[start:start + 7]
        writer.commit(start, batch, {"written": start + len(batch)})
        assert writer.checkpoint() == {"written": start + len(batch)}
    assert writer.env.info()["map_size"] > 9 * MiB  # it grew
    payload = sum(len(p) for _, p in records)
    writer.finish(meta_for(len(records), payload), [f"a/{i}.jpg" for i in range(60)],
                  [label for label, _ in records])
    size = path.stat().st_size
    assert size > payload
    assert size <= recorded_map_size(path) <= size + 16 * MiB
    with lmdbio.open_database(path) as db:
        assert len(db) == 60 and db.meta.payload_bytes == payload
        for index, (label, data) in enumerate(records):
            assert db.get(index) == (label, data)
        assert db.targets() == [label for label, _ in records]
    assert lmdbio.verify(path).ok


def test_one_record_bigger_than_the_whole_map(tmp_path: Path) -> None:
    path = tmp_path / "big.lmdb"
    writer = LmdbWriter(str(path), 1 * MiB)
    blob = os.urandom(5 * MiB)
    writer.commit(0, [(1, blob)], {"written": 1})
    writer.finish(meta_for(1, len(blob)), ["b/x.jpg"], [1])
    with lmdbio.open_database(path) as db:
        assert db.get(0) == (1, blob)
    assert recorded_map_size(path) <= path.stat().st_size + 16 * MiB


def test_converter_map_is_sized_from_the_input(tmp_path: Path) -> None:
    tree = build_simple_tree(tmp_path / "src", per_class=5, size=(128, 128), noise=40)
    report = lmdbio.convert(tree, tmp_path / "out.lmdb", progress=False, commit_bytes=20_000)
    size = os.path.getsize(report.destination)
    assert size <= recorded_map_size(Path(report.destination)) <= size + 16 * MiB


def test_out_of_order_keys_are_refused_and_nothing_is_written(tmp_path: Path) -> None:
    writer = LmdbWriter(str(tmp_path / "x.lmdb"), MiB)
    writer.commit(0, [(0, b"a"), (0, b"b")], {"written": 2})
    with pytest.raises(RuntimeError, match="keys out of order"):
        writer.commit(1, [(0, b"c")], {"written": 3})
    assert writer.checkpoint() == {"written": 2}  # the failed transaction was aborted
    writer.close()


def test_fresh_and_damaged_checkpoints(tmp_path: Path) -> None:
    writer = LmdbWriter(str(tmp_path / "x.lmdb"), MiB)
    assert writer.checkpoint() is None
    writer.commit(0, [(0, b"a")], {"written": 5})  # the checkpoint disagrees with the records
    assert writer.checkpoint()["written"] == -1
    writer.close()


def test_writer_in_a_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(lmdbio.DestinationError, match="check that the folder exists"):
        LmdbWriter(str(tmp_path / "nope" / "x.lmdb"), MiB)


@pytest.mark.root
def test_disk_full_is_one_line_and_leaves_nothing(tmp_path: Path, small_filesystem: Path) -> None:
    tree = build_simple_tree(tmp_path / "src", per_class=50, size=(256, 256), noise=60)
    assert sum(p.stat().st_size for p in tree.rglob("*.jpg")) > 4 * MiB
    dst = small_filesystem / "out.lmdb"
    line = assert_one_line_error(run_cli("convert", tree, dst, "-q", "--commit-mb", "1"),
                                 str(dst), "disk full")
    assert "free space or choose another DST" in line
    assert os.listdir(small_filesystem) == []  # partial removed, space given back
