"""The on-disk format: keys, records, metadata, and what a reader says about foreign files."""

from __future__ import annotations

import importlib.util
import json
import os
import struct
import sys
import zlib
from pathlib import Path

import lmdb
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lmdbio
from lmdbio import checksum
from lmdbio import format as fmt
from lmdbio.format import (RECORD_HEADER_SIZE, Metadata, decode_paths, decode_record,
                           decode_targets, encode_key, encode_paths, encode_record,
                           encode_targets)
from lmdbio.writer import LmdbWriter

from tests.helpers import assert_one_line_error, run_cli

BOUNDARIES = [0, 1, 9, 10, 11, 99, 100, 254, 255, 256, 257, 1000, 4095, 4096, 65534, 65535,
              65536, 65537, 2**24 - 1, 2**24, 2**32 - 1, 2**32, 2**40 + 3, 2**63, 2**64 - 1]


def test_key_order_is_numeric_order() -> None:
    keys = [encode_key(i) for i in BOUNDARIES]
    assert all(len(k) == 8 for k in keys)
    assert sorted(keys) == keys
    assert sorted(str(i).encode() for i in BOUNDARIES) != [str(i).encode() for i in BOUNDARIES]
    assert encode_key(256) == b"\0\0\0\0\0\0\1\0"
    with pytest.raises(struct.error):
        encode_key(-1)


def test_lmdb_cursor_returns_keys_in_index_order(tmp_path: Path) -> None:
    env = lmdb.open(str(tmp_path / "k.lmdb"), subdir=False, lock=False)
    shuffled = BOUNDARIES[::2] + BOUNDARIES[1::2]
    with env.begin(write=True) as txn:
        for i in shuffled:
            txn.put(encode_key(i), str(i).encode())
    with env.begin() as txn:
        assert [int(v) for _, v in txn.cursor()] == BOUNDARIES
    env.close()


@pytest.mark.parametrize("label,payload", [(0, b""), (1, b"x"), (2**32 - 1, b"\xff" * 5000),
                                           (7, os.urandom(70_000))])
def test_record_round_trip(label: int, payload: bytes) -> None:
    value = encode_record(label, payload)
    assert len(value) == RECORD_HEADER_SIZE + len(payload)
    assert value[:2] == b"LR" and value[RECORD_HEADER_SIZE:] == payload
    got_label, got_payload = decode_record(value, 3)
    assert got_label == label and bytes(got_payload) == payload
    assert isinstance(got_payload, memoryview)  # no copy of a large payload


def corrupt_header(value: bytes, **fields: int) -> bytes:
    """Rewrite header fields and recompute the checksum, so only the named check can fail."""
    magic, version, flags, label, length, _ = struct.unpack_from("<2sBBIII", value)
    parts = {"version": version, "flags": flags, "label": label, "length": length, **fields}
    head = struct.pack("<2sBBII", magic, parts["version"], parts["flags"], parts["label"],
                       parts["length"])
    payload = value[RECORD_HEADER_SIZE:]
    return head + struct.pack("<I", zlib.crc32(payload, zlib.crc32(head))) + payload


def test_decode_record_failures() -> None:
    value = encode_record(4, b"payload bytes")
    with pytest.raises(lmdbio.CorruptRecordError, match="record 9 is truncated"):
        decode_record(value[:RECORD_HEADER_SIZE - 1], 9)
    with pytest.raises(lmdbio.CorruptRecordError, match="record 9 has an unknown header"):
        decode_record(b"XX" + value[2:], 9)
    with pytest.raises(lmdbio.CorruptRecordError, match="unknown header.*upgrade lmdbio"):
        decode_record(corrupt_header(value, version=2), 9)
    with pytest.raises(lmdbio.CorruptRecordError, match="holds 12 payload bytes, header says 13"):
        decode_record(value[:-1], 9)
    with pytest.raises(lmdbio.CorruptRecordError, match="holds 14 payload bytes"):
        decode_record(value + b"!", 9)
    with pytest.raises(lmdbio.CorruptRecordError, match="record 9 fails its checksum"):
        decode_record(value[:-1] + b"X", 9)
    flipped_label = bytearray(value)
    flipped_label[4] ^= 1
    with pytest.raises(lmdbio.CorruptRecordError, match="fails its checksum"):
        decode_record(bytes(flipped_label), 9)
    assert decode_record(bytes(flipped_label), 9, verify=False)[0] == 5
    assert issubclass(lmdbio.CorruptRecordError, lmdbio.FormatError)
    assert issubclass(lmdbio.CorruptRecordError, ValueError)


@st.composite
def mutated(draw):
    label = draw(st.integers(0, 2**32 - 1))
    payload = draw(st.binary(max_size=300))
    value = bytearray(encode_record(label, payload))
    kind = draw(st.sampled_from(["flip", "set", "truncate", "extend", "insert", "delete",
                                 "many"]))
    if kind in ("flip", "many"):
        for _ in range(draw(st.integers(1, 1 if kind == "flip" else 8))):
            i = draw(st.integers(0, len(value) - 1))
            value[i] ^= 1 << draw(st.integers(0, 7))
    elif kind == "set":
        i = draw(st.integers(0, len(value) - 1))
        value[i] = draw(st.integers(0, 255))
    elif kind == "truncate":
        del value[draw(st.integers(0, len(value) - 1)):]
    elif kind == "extend":
        value += draw(st.binary(min_size=1, max_size=20))
    elif kind == "insert":
        i = draw(st.integers(0, len(value)))
        value[i:i] = draw(st.binary(min_size=1, max_size=4))
    else:
        i = draw(st.integers(0, len(value) - 1))
        del value[i:i + draw(st.integers(1, 4))]
    return label, payload, bytes(value)


@settings(max_examples=600, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_mutations_never_decode_to_something_else(case) -> None:
    label, payload, value = case
    try:
        got_label, got_payload = decode_record(value, 0)
    except lmdbio.CorruptRecordError:
        return
    assert (got_label, bytes(got_payload)) == (label, payload)


@settings(database=None)  # nothing written into the repository
@given(st.lists(st.text(alphabet=st.characters(blacklist_characters="\0",
                                                blacklist_categories=("Cs",)),
                        min_size=1), max_size=30),
       st.lists(st.integers(0, 2**32 - 1), max_size=30))
def test_paths_and_targets_round_trip(paths, targets) -> None:
    assert decode_paths(encode_paths(paths), len(paths)) == paths
    assert decode_targets(encode_targets(targets), len(targets)) == targets


def test_paths_and_targets_count_checks() -> None:
    with pytest.raises(lmdbio.FormatError, match="path list holds 2 entries, header says 3"):
        decode_paths(encode_paths(["a", "b"]), 3)
    with pytest.raises(lmdbio.FormatError, match="target list holds 2 entries, header says 3"):
        decode_targets(encode_targets([1, 2]), 3)
    assert decode_paths(encode_paths([]), 0) == []
    surrogate = os.fsdecode(b"caf\xe9.jpg")
    assert decode_paths(encode_paths([surrogate, "a\nb"]), 2) == [surrogate, "a\nb"]


# -- metadata -------------------------------------------------------------------------------------


def sample_meta(**changes) -> Metadata:
    fields = dict(num_samples=3, classes=["a", "b c"], source_root="/data/train",
                  source_fingerprint="abc", extensions=[".jpg"], payload_bytes=123,
                  skipped=[("a/x.jpg", "bad")], lmdbio_version="0.1.0", lmdb_version="0.9.31",
                  created_utc="2024-01-01T00:00:00+00:00")
    fields.update(changes)
    return Metadata(**fields)


def test_metadata_json_round_trip() -> None:
    meta = sample_meta()
    body = json.loads(meta.to_json())
    assert body["format"] == "lmdbio" and body["format_version"] == fmt.FORMAT_VERSION
    assert body["class_to_idx"] == {"a": 0, "b c": 1}
    assert Metadata.from_json(meta.to_json(), "x") == meta
    unicode_meta = sample_meta(classes=["ü", "猫"], source_root="/dätä")
    assert Metadata.from_json(unicode_meta.to_json(), "x") == unicode_meta


@pytest.mark.parametrize("blob", [b'{"hello": 1}', b"[1, 2]", b'{"format": "other"}', b"null"])
def test_metadata_refuses_foreign_json(blob: bytes) -> None:
    with pytest.raises(lmdbio.FormatError, match="where.lmdb is not an lmdbio database"):
        Metadata.from_json(blob, "where.lmdb")


def test_metadata_refuses_a_newer_format_with_upgrade_advice() -> None:
    body = json.loads(sample_meta().to_json())
    body["format_version"] = fmt.FORMAT_VERSION + 1
    with pytest.raises(lmdbio.FormatError, match="upgrade") as caught:
        Metadata.from_json(json.dumps(body).encode(), "db.lmdb")
    assert f"format version {fmt.FORMAT_VERSION + 1}" in str(caught.value)


@pytest.mark.parametrize("change", [
    {"format_version": None}, {"format_version": "1"}, {"format_version": True},
    {"format_version": 0}, {"num_samples": -1},
    {"classes": ["a", "a"]}, {"num_samples": None, "drop": "num_samples"},
])
def test_metadata_refuses_malformed_headers(change) -> None:
    body = json.loads(sample_meta().to_json())
    if "drop" in change:
        del body[change.pop("drop")]
        change = {}
    body.update(change)
    with pytest.raises(lmdbio.FormatError, match="malformed") as caught:
        Metadata.from_json(json.dumps(body).encode(), "db.lmdb")
    assert "upgrade" not in str(caught.value)


def test_metadata_refuses_invalid_json() -> None:
    with pytest.raises(lmdbio.FormatError, match="not valid JSON"):
        Metadata.from_json(b"\xff{", "db.lmdb")


# -- foreign and unfinished files -----------------------------------------------------------------


def test_plain_lmdb_file_is_not_an_lmdbio_database(tmp_path: Path) -> None:
    path = tmp_path / "plain.lmdb"
    env = lmdb.open(str(path), subdir=False, max_dbs=4)
    with env.begin(write=True) as txn:
        txn.put(b"key", b"value")
    env.open_db(b"other")
    env.close()
    with pytest.raises(lmdbio.FormatError, match="not an lmdbio database"):
        lmdbio.open_database(path)
    assert_one_line_error(run_cli("info", path), str(path), "not an lmdbio database")


def test_lmdb_with_our_table_names_but_no_header(tmp_path: Path) -> None:
    path = tmp_path / "fake.lmdb"
    env = lmdb.open(str(path), subdir=False, max_dbs=2)
    env.open_db(fmt.SAMPLES_DB)
    meta = env.open_db(fmt.META_DB)
    with env.begin(write=True, db=meta) as txn:
        txn.put(b"complete", b"1")
        txn.put(b"header", b'{"format": "something else"}')
    env.close()
    with pytest.raises(lmdbio.FormatError, match="not an lmdbio database"):
        lmdbio.open_database(path)


def test_incomplete_database_says_resume(tmp_path: Path) -> None:
    path = tmp_path / "half.lmdb"
    writer = LmdbWriter(str(path), 1 << 20)
    writer.commit(0, [(0, b"a"), (1, b"b")], {"written": 2, "position": 2})
    writer.close()
    with pytest.raises(lmdbio.FormatError, match="--resume") as caught:
        lmdbio.open_database(path)
    assert "unfinished conversion" in str(caught.value)
    assert_one_line_error(run_cli("verify", path), str(path), "--resume")
    empty = tmp_path / "empty.lmdb"
    LmdbWriter(str(empty), 1 << 20).close()  # created, nothing committed
    with pytest.raises(lmdbio.FormatError, match="unfinished conversion; re-convert"):
        lmdbio.open_database(empty)


def test_record_count_must_match_the_header(tmp_path: Path) -> None:
    path = tmp_path / "short.lmdb"
    writer = LmdbWriter(str(path), 1 << 20)
    writer.commit(0, [(0, b"a"), (0, b"b")], {"written": 2})
    writer.finish(sample_meta(num_samples=3, skipped=[]), ["a/1", "a/2", "a/3"], [0, 0, 0])
    with pytest.raises(lmdbio.FormatError, match="holds 2 records, header says 3"):
        lmdbio.open_database(path)


def test_non_lmdb_and_missing_files(tmp_path: Path) -> None:
    junk = tmp_path / "junk.lmdb"
    junk.write_bytes(os.urandom(10_000))
    with pytest.raises(lmdbio.FormatError, match="not an LMDB file"):
        lmdbio.open_database(junk)
    empty = tmp_path / "empty.lmdb"
    empty.write_bytes(b"")
    with pytest.raises(lmdbio.FormatError):
        lmdbio.open_database(empty)
    assert empty.read_bytes() == b""  # a reader never writes
    with pytest.raises(lmdbio.DatabaseNotFoundError, match="does not exist") as caught:
        lmdbio.open_database(tmp_path / "missing.lmdb")
    assert isinstance(caught.value, FileNotFoundError)


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=70_000), st.integers(0, 2**32 - 1))
def test_the_record_checksum_is_zlibs_crc32_whichever_module_computes_it(
        data: bytes, start: int) -> None:
    # the format is zlib's CRC-32: files written with zlib-ng must check with zlib and back
    assert checksum.crc32(data, start) == zlib.crc32(data, start)
    assert checksum.crc32(memoryview(data)[1:]) == zlib.crc32(data[1:])


def test_without_zlib_ng_the_standard_library_checks_the_same_records(
        monkeypatch: pytest.MonkeyPatch) -> None:
    record = encode_record(3, b"\xff\xd8 some jpeg bytes")
    monkeypatch.setattr(checksum, "_impl", None)
    monkeypatch.setitem(sys.modules, "zlib_ng", None)  # import zlib_ng now raises ImportError
    monkeypatch.setitem(sys.modules, "zlib_ng.zlib_ng", None)
    assert checksum.implementation() == "zlib"
    assert decode_record(record, 0)[0] == 3
    assert encode_record(3, b"\xff\xd8 some jpeg bytes") == record
    with pytest.raises(lmdbio.CorruptRecordError, match="checksum"):
        decode_record(record[:-1] + b"\x00", 0)


def test_where_zlib_ng_is_installed_it_computes_the_checksums() -> None:
    if importlib.util.find_spec("zlib_ng") is None:
        pytest.skip("zlib-ng has no wheel for this machine; the standard library checks")
    assert checksum.implementation() == "zlib_ng"


def test_a_flipped_bit_in_the_header_fails_its_checksum(tmp_path: Path) -> None:
    """The header's JSON still parses after most flips (a letter of a path, a digit of a shard
    position): only its checksum tells. A file without one (written before it) still opens."""
    path = tmp_path / "db.lmdb"
    writer = LmdbWriter(str(path), 1 << 20)
    writer.commit(0, [(0, b"a")], {"written": 1})
    writer.finish(sample_meta(num_samples=1, skipped=[]), ["a/1"], [0])
    assert lmdbio.open_database(path).meta.source_root == "/data/train"
    raw = bytearray(path.read_bytes())
    at = raw.index(b'"source_root": "') + len(b'"source_root": "')
    raw[at] ^= 1  # "/data/train" -> ".data/train": still valid JSON, another path
    damaged = tmp_path / "damaged.lmdb"
    damaged.write_bytes(raw)
    with pytest.raises(lmdbio.FormatError, match="header fails its checksum"):
        lmdbio.open_database(damaged)
    assert_one_line_error(run_cli("verify", damaged), str(damaged), "checksum", "re-convert")
    env = lmdb.open(str(damaged), subdir=False, max_dbs=2, lock=False)
    with env.begin(write=True, db=env.open_db(fmt.META_DB)) as txn:
        assert txn.delete(fmt.KEY_HEADER_CRC)  # as a file written before the checksum
    env.close()
    assert lmdbio.open_database(damaged).meta.source_root[0] == "."
