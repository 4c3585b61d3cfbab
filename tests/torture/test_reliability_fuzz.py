"""Guarantee: a damaged database gives lmdbio's typed errors or a verify failure: never an
untyped exception, a silently wrong record or label, a crash of ``verify``, or a hang; and
``lmdbio verify`` reports every single-bit flip in a record.

Damaged files are read in a sandboxed worker process (probe.py), since liblmdb can die
of SIGBUS on a damaged B-tree. ``make torture`` runs 3 000 examples per family and every bit.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

import lmdbio
from lmdbio.format import Metadata, decode_paths
from lmdbio.lmdbcheck import check_structure

from tests.torture import fuzz
from tests.torture.fuzz import record_offsets

from tests.helpers import build_simple_tree


@pytest.mark.slow
def test_fuzzed_damage_gives_only_typed_errors_or_verify_failures(tmp_path: Path) -> None:
    """200 hypothesis examples in each of five families: record values, metadata values
    (bytes and JSON), bytes of the file, truncation/extension, deleted/extra records."""
    summary = fuzz.fuzz(tmp_path, examples=200, seed=0, log=lambda _: None)
    assert summary["failures"] == []
    assert summary["hangs"] == 0
    assert summary["per_family"] == {family: 200 for family in fuzz.FAMILIES}
    assert summary["outcomes"]["record"] == {"verify reported damage": 200}
    assert summary["outcomes"]["records"].get("typed error") == 200


def test_verify_reports_every_single_bit_flip(tmp_path: Path) -> None:
    """Every bit of all 12 record headers (1 536) and a seeded 1 000 payload bits: verify
    names exactly that record, and reading it raises CorruptRecordError. (make torture flips
    every bit of every record: 141 872.)"""
    summary = fuzz.bitflips(tmp_path, sample=1000, seed=0, log=lambda _: None)
    assert summary["failures"] == []
    assert summary["missed"] == 0 and summary["detected"] == summary["flips"] == 2536
    assert summary["where"] == {"header": 1536, "payload": 1000}


def _valid_databases(tmp_path: Path, odd_db) -> list[Path]:
    from tests.helpers import seed_images, seed_value, write_seed_db

    tree = build_simple_tree(tmp_path / "tree", per_class=40, size=(64, 64), noise=40)
    big = Path(lmdbio.convert(tree, tmp_path / "big.lmdb", progress=False,
                              commit_bytes=20_000).destination)
    legacy = [seed_value(image, 0, "seed", 4) for image in seed_images()]
    return [odd_db.db, big, write_seed_db(tmp_path / "seed.lmdb", legacy, subdir=False),
            write_seed_db(tmp_path / "seeddir", legacy, subdir=True)]


def test_the_structure_check_passes_sound_files(tmp_path: Path, odd_db) -> None:
    """No false alarm: lmdbio files (one and many commits), seed databases (file, folder)."""
    for path in _valid_databases(tmp_path, odd_db):
        assert check_structure(path) == [], path
    assert check_structure(tmp_path / "missing.lmdb") == []  # left to the opener's message
    (tmp_path / "junk").write_bytes(b"junk" * 5000)
    assert check_structure(tmp_path / "junk") == []


def test_verify_reports_b_tree_damage_that_crashes_liblmdb(tmp_path: Path) -> None:
    """A leaf node whose data size says 4 GB: liblmdb reads past the end of the mapping and
    the process dies of SIGBUS. verify walks the B-tree itself first and reports it."""
    db = fuzz.build_base(tmp_path)
    big = [i for i, (_, length) in enumerate(record_offsets(db)) if length > 2040][0]
    raw = bytearray(db.read_bytes())
    hits = 0
    for page in range(2, len(raw) // 4096):  # every leaf page, stale copies too
        base = page * 4096
        pgno, _, flags, lower, _ = struct.unpack_from("<QHHHH", raw, base)
        if pgno != page or flags != 0x02:
            continue
        for offset in struct.unpack_from(f"<{(lower - 16) // 2}H", raw, base + 16):
            node = base + offset  # node header: size lo, size hi, flags, key size; then key
            _, _, node_flags, ksize = struct.unpack_from("<HHHH", raw, node)
            if node_flags == 1 and raw[node + 8:node + 8 + ksize] == big.to_bytes(8, "big"):
                struct.pack_into("<HH", raw, node, 0xFFFF, 0xFFFF)  # "4 GB of data"
                hits += 1
    assert hits >= 1
    damaged = tmp_path / "damaged.lmdb"
    damaged.write_bytes(bytes(raw))
    assert check_structure(damaged) and "does not fit" in check_structure(damaged)[0]
    proc = subprocess.run([sys.executable, "-m", "lmdbio.cli", "verify", "-q",
                           os.fspath(damaged)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, (proc.returncode, proc.stderr)
    assert "LMDB structure" in proc.stdout and "Traceback" not in proc.stderr


def test_verify_notices_a_record_holding_another_records_data(tmp_path: Path) -> None:
    """Record 4's value replaced by record 1's (same label, another size): each checksum holds
    and the labels match the targets, but the payload total no longer matches the header."""
    import lmdb

    from lmdbio.format import SAMPLES_DB, encode_key

    db = fuzz.build_base(tmp_path)
    with lmdbio.open_database(db) as handle:
        targets = handle.targets()
        first, second = next((i, j) for i in range(len(targets)) for j in range(i + 1, len(
            targets)) if targets[i] == targets[j] and len(handle.get(i)[1]) != len(
                handle.get(j)[1]))
    env = lmdb.open(os.fspath(db), subdir=False, max_dbs=2, lock=False)
    samples = env.open_db(SAMPLES_DB)
    with env.begin(write=True, db=samples) as txn:
        txn.put(encode_key(second), txn.get(encode_key(first)))
    env.close()
    report = lmdbio.verify(db)
    assert not report.ok and len(report.problems) == 1
    assert "payload bytes, the header says" in report.problems[0]


@pytest.mark.parametrize("field,value", [
    ("num_samples", 2.0), ("num_samples", True), ("num_samples", "2"), ("classes", "ab"),
    ("classes", [1, 2]), ("classes", [["a"], ["b"]]), ("source_root", 5), ("extensions", 3),
    ("skipped", [["a"]]), ("skipped", ["ab"]), ("payload_bytes", "x"), ("created_utc", 7),
])
def test_header_fields_of_the_wrong_type_are_a_format_error(field: str, value) -> None:
    """They used to be accepted and surface later as TypeError or struct.error (e.g. a float
    count reached struct.unpack) inside a DataLoader worker."""
    body = json.loads(Metadata(num_samples=2, classes=["a", "b"], source_root="/x",
                               source_fingerprint="f", extensions=[".jpg"],
                               payload_bytes=3).to_json())
    body[field] = value
    with pytest.raises(lmdbio.FormatError, match="header is malformed"):
        Metadata.from_json(json.dumps(body).encode(), "db")


@pytest.mark.parametrize("change", ["rename", "reorder"])
def test_a_damaged_class_name_or_order_is_caught_by_class_to_idx(change: str) -> None:
    """Labels are covered by each record's CRC; class names only by the header. to_json has
    always written class_to_idx beside classes, so the reader now compares the two."""
    body = json.loads(Metadata(num_samples=2, classes=["cat", "dog"], source_root="/x",
                               source_fingerprint="f", extensions=[".jpg"],
                               payload_bytes=3).to_json())
    body["classes"] = ["cat", "dof"] if change == "rename" else ["dog", "cat"]
    with pytest.raises(lmdbio.FormatError, match="classes and class_to_idx disagree"):
        Metadata.from_json(json.dumps(body).encode(), "db")
    del body["class_to_idx"]  # a header without it (hand-written) still reads
    assert Metadata.from_json(json.dumps(body).encode(), "db").classes == body["classes"]


def test_a_deeply_nested_header_is_a_format_error_not_recursion_error() -> None:
    with pytest.raises(lmdbio.FormatError, match="not valid JSON"):
        Metadata.from_json(b"[" * 100_000 + b"]" * 100_000, "db")


def test_a_path_list_zlib_bomb_is_refused_before_it_inflates() -> None:
    """200 KB that inflate to 200 MB, claiming 2 paths: refused after ~8 KB of output."""
    bomb = zlib.compress(b"a" * (200 << 20), 9)
    assert len(bomb) < 250_000
    with pytest.raises(lmdbio.FormatError, match="inflates beyond"):
        decode_paths(bomb, 2)
    with pytest.raises(lmdbio.FormatError, match="truncated"):
        decode_paths(zlib.compress(b"a\0b")[:-3], 2)
    assert decode_paths(zlib.compress(b"a\0b"), 2) == ["a", "b"]
