"""Guarantee: many readers (processes and DataLoader workers) share one database while another
conversion writes elsewhere; readers killed with SIGKILL do not use up LMDB's reader table.

With the default ``lock=False`` there is no reader table (nothing to exhaust); these tests
also cover the opt-in ``lock=True``. ``make torture`` runs longer versions.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import lmdbio
from lmdbio.envs import EnvOptions

from tests.helpers import build_numbered_tree
from tests.torture import concurrency


def test_16_reader_processes_while_a_conversion_writes_elsewhere(tmp_path: Path) -> None:
    """8 processes reading in random order + a DataLoader with 8 workers: 16 readers of one
    file at once, every record compared with what was stored."""
    summary = concurrency.readers(tmp_path, plain=8, workers=8, passes=1, images=300,
                                  log=lambda _: None)
    assert summary["problems"] == []
    assert summary["reader_processes"] == 16
    assert summary["records_read"] == 9 * 300  # 8 processes + the DataLoader, one pass each
    assert summary["wrong_records"] == 0
    assert summary["conversions_meanwhile"] >= 1


@pytest.mark.slow
def test_killed_readers_do_not_exhaust_the_reader_table(tmp_path: Path) -> None:
    """lock=True with 8 slots while one process keeps the database open: 4 rounds of 4
    processes killed while holding a read transaction, then 3 rounds of 4 DataLoader workers
    killed mid-epoch: 28 dead readers. Every new reader still gets a slot (lmdbio reaps dead
    readers' slots when it opens the environment; without that round 2 fails)."""
    summary = concurrency.stale_slots(tmp_path, max_readers=8, rounds=4, per_round=4,
                                      loader_rounds=3, images=150, log=lambda _: None)
    assert summary["problems"] == []
    assert summary["readers_killed"] == 4 * 4 + 3 * 4
    assert summary["new_readers_ok"] == 4


def test_dataloader_workers_with_a_lock_file(tmp_path: Path) -> None:
    """lock=True and several fork workers used to fail with MDB_BAD_RSLOT: each worker closed
    its inherited environment, whose spare read transaction freed the parent's slot in the
    shared reader table, which a sibling then took."""
    db = lmdbio.convert(build_numbered_tree(tmp_path / "src", 64, side=32), tmp_path / "db.lmdb",
                        progress=False).destination
    expected = tmp_path / "expected.json"
    expected.write_text(json.dumps(concurrency.expected_of(Path(db))))
    result = concurrency._result(concurrency._spawn("loader", db, expected, 4, 2, 1, 126, 0),
                                 300)
    assert result == {"read": 128, "bad": 0, "workers_killed": 0, "expected": 128}


def test_a_full_reader_table_is_one_typed_error(tmp_path: Path) -> None:
    db = lmdbio.convert(build_numbered_tree(tmp_path / "src", 8, side=32), tmp_path / "db.lmdb",
                        progress=False).destination
    holders = [concurrency._spawn("holder", db, 1, 2) for _ in range(2)]
    try:
        assert [h.stdout.readline().strip() for h in holders] == ["holding", "holding"]
        with pytest.raises(lmdbio.FormatError, match="reader slots are taken"):
            lmdbio.open_database(db, EnvOptions(lock=True, max_readers=2))
        with lmdbio.open_database(db) as handle:  # lock=False: no table to fill
            assert handle.get(0)[0] == 0
    finally:
        for holder in holders:
            holder.kill()
            holder.wait()
