"""Fuzzing damaged databases (hypothesis) and sweeping single-bit flips.

``fuzz``: hypothesis draws one damage per example from five families, applies it to a copy of
a small database, and reads the copy in a sandboxed worker (``probe.Sandbox``): ``verify``
first, then every reading entry point. The guarantees (``probe.violations``): only lmdbio's
typed errors; never a (label, image) pair that was not stored; ``verify`` never crashes and
never says OK when reading found damage; a crash or hang is allowed only in liblmdb, on a
file whose damaged B-tree ``verify`` reported (liblmdb trusts its page structure).

* ``record``: a record value (16-byte header + payload) mutated through LMDB itself;
* ``meta``: a metadata value (header JSON, paths, targets, completion flag, checkpoint)
  mutated as bytes or as JSON, deleted, or an unknown key added;
* ``file``: bytes of the file itself mutated (bit flip, byte, zeroed run, random run), at any
  offset or in the meta pages;
* ``truncate``: the file cut short or extended;
* ``records``: a record deleted or an extra one appended.

``bitflips``: every (or a seeded sample of) single-bit flip in record payloads and headers;
``verify`` must report exactly that record, and reading it must raise ``CorruptRecordError``.
"""

from __future__ import annotations

import collections
import json
import os
import random
import shutil
import time
from pathlib import Path
from typing import Any

import lmdb
import numpy as np

import lmdbio
from lmdbio.format import (KEY_COMPLETE, KEY_HEADER, KEY_HEADER_CRC, KEY_PATHS, KEY_PROGRESS,
                           KEY_TARGETS, META_DB, RECORD_HEADER_SIZE, SAMPLES_DB, encode_key,
                           header_checksum)

from tests.helpers import pixels_jpeg

from .probe import Sandbox, expected_of, violations

FAMILIES = ("record", "meta", "file", "truncate", "records")
META_KEYS = (KEY_HEADER, KEY_HEADER_CRC, KEY_PATHS, KEY_TARGETS, KEY_COMPLETE, KEY_PROGRESS)


def build_base(workdir: Path, seed: int = 0) -> Path:
    """A small database whose records sit both inline in leaf pages (~0.7 KB JPEGs) and in
    overflow pages (~2.2 KB), 3 classes, one skipped file, awkward names."""
    rng = np.random.default_rng(seed)
    src = workdir / "src"
    for i in range(12):
        side = 8 if i % 2 else 40
        folder = src / ["cat", "dog", "sea lion"][i % 3]
        folder.mkdir(parents=True, exist_ok=True)
        name = [f"{i:02d}.jpg", f"{i:02d} ünï\ncødé.jpg", f"{i:02d} space.jpg"][i % 3]
        pixels = rng.integers(0, 255, (side, side, 3), dtype=np.uint8)
        (folder / name).write_bytes(pixels_jpeg(pixels))
    (src / "dog" / "broken.jpg").write_bytes(b"not an image")
    db = workdir / "base.lmdb"
    lmdbio.convert(src, db, on_error="skip", progress=False, workers=2, overwrite=True)
    return db


# -- damage ---------------------------------------------------------------------------------------


def _mutate_bytes(data: bytes, rng: random.Random) -> bytes:
    value = bytearray(data)
    kind = rng.choice(["flip", "set", "truncate", "extend", "insert", "delete", "zero",
                       "random"])
    if not value and kind not in ("extend", "insert"):
        kind = "extend"
    if kind == "flip":
        i = rng.randrange(len(value))
        value[i] ^= 1 << rng.randrange(8)
    elif kind == "set":
        value[rng.randrange(len(value))] = rng.randrange(256)
    elif kind == "truncate":
        del value[rng.randrange(len(value)):]
    elif kind == "extend":
        value += rng.randbytes(rng.randint(1, 64))
    elif kind == "insert":
        i = rng.randint(0, len(value))
        value[i:i] = rng.randbytes(rng.randint(1, 8))
    elif kind == "delete":
        i = rng.randrange(len(value))
        del value[i:i + rng.randint(1, 8)]
    elif kind == "zero":
        i = rng.randrange(len(value))
        value[i:i + rng.randint(1, 16)] = bytes(len(value[i:i + 16]))[:rng.randint(1, 16)]
    else:
        i = rng.randrange(len(value))
        run = rng.randint(1, 16)
        value[i:i + run] = rng.randbytes(len(value[i:i + run]))
    return bytes(value)


_JSON_VALUES = [None, True, False, 0, -1, 1, 2**31, 2**64 + 1, 1.5, float("inf"), "", "x",
                "../../etc", [], [1], ["a", "a"], [["a"]], [["a", "b"]], {}, {"a": 1}]


def _mutate_header(blob: bytes, rng: random.Random) -> bytes:
    if rng.random() < 0.4:
        return _mutate_bytes(blob, rng)
    body = json.loads(blob)
    kind = rng.choice(["set", "delete", "deep", "swap-classes", "count"])
    field = rng.choice(sorted(body))
    if kind == "set":
        body[field] = rng.choice(_JSON_VALUES)
    elif kind == "delete":
        del body[field]
    elif kind == "deep":
        return blob.replace(b'"skipped": ', b'"skipped": ' + b"[" * 100_000, 1)
    elif kind == "swap-classes":
        body["classes"] = list(reversed(body["classes"]))
    else:
        body["num_samples"] += rng.choice([-1, 1, 1000])
    return json.dumps(body).encode()


def damage(base: Path, target: Path, family: str, rng: random.Random) -> str:
    """Write a damaged copy of ``base`` to ``target``, drawing from ``rng`` (hypothesis's);
    returns what was done."""
    shutil.copyfile(base, target)
    if family in ("record", "meta", "records"):
        env = lmdb.open(os.fspath(target), subdir=False, max_dbs=2, lock=False,
                        map_size=64 << 20)
        try:
            samples, meta = env.open_db(SAMPLES_DB), env.open_db(META_DB)
            with env.begin(write=True) as txn:
                count = txn.stat(samples)["entries"]
                if family == "record":
                    index = rng.randrange(count)
                    key = encode_key(index)
                    txn.put(key, _mutate_bytes(txn.get(key, db=samples), rng), db=samples)
                    return f"record {index} mutated"
                if family == "records":
                    if rng.random() < 0.5:
                        index = rng.randrange(count)
                        txn.delete(encode_key(index), db=samples)
                        return f"record {index} deleted"
                    extra = txn.get(encode_key(rng.randrange(count)), db=samples)
                    txn.put(encode_key(count), extra, db=samples)
                    return "a copy of a record appended"
                key = rng.choice(META_KEYS + (b"unknown",))
                old = txn.get(key, db=meta)
                if old is None or key == b"unknown":
                    txn.put(key, rng.randbytes(rng.randint(0, 64)), db=meta)
                    return f"meta {key.decode()} added"
                if rng.random() < 0.15:
                    txn.delete(key, db=meta)
                    return f"meta {key.decode()} deleted"
                new = _mutate_header(old, rng) if key == KEY_HEADER else _mutate_bytes(old, rng)
                txn.put(key, new, db=meta)
                if key == KEY_HEADER and rng.random() < 0.5:  # past the checksum: the
                    txn.put(KEY_HEADER_CRC, header_checksum(new), db=meta)  # fields' checks
                return f"meta {key.decode()} mutated"
        finally:
            env.close()
    raw = bytearray(target.read_bytes())
    if family == "truncate":
        if rng.random() < 0.8:
            cut = rng.randrange(len(raw))
            del raw[cut:]
            what = f"truncated to {cut} bytes"
        else:
            raw += bytes(rng.randint(1, 9000)) if rng.random() < 0.5 else rng.randbytes(5000)
            what = "extended"
    else:
        offset = rng.randrange(8192) if rng.random() < 0.2 else rng.randrange(len(raw))
        kind = rng.choice(["flip", "set", "zero", "random"])
        if kind == "flip":
            raw[offset] ^= 1 << rng.randrange(8)
        elif kind == "set":
            raw[offset] = rng.randrange(256)
        elif kind == "zero":
            raw[offset:offset + 16] = bytes(len(raw[offset:offset + 16]))
        else:
            raw[offset:offset + 8] = rng.randbytes(len(raw[offset:offset + 8]))
        what = f"file {kind} at {offset} (page {offset // 4096})"
    target.write_bytes(bytes(raw))
    return what


# -- drivers --------------------------------------------------------------------------------------


def _outcome(result: dict[str, Any]) -> str:
    if result.get("crash"):
        return "reader crashed in liblmdb (verify had reported the B-tree damage)"
    if result.get("verify") is False:
        return "verify reported damage"
    if result.get("open") or result.get("typed"):
        return "typed error"
    if result.get("identical") is not None and result.get("verify"):
        return "no effect (unused bytes) or undetectable header text"
    return "other"


def fuzz(workdir: Path, examples: int, seed: int = 0, log: Any = print) -> dict[str, Any]:
    """``examples`` hypothesis examples per family; returns a JSON-able summary."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import seed as hypothesis_seed
    from hypothesis import strategies as st

    workdir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    base = build_base(workdir)
    expected_file = workdir / "expected.json"
    expected = expected_of(base)
    expected_file.write_text(json.dumps(expected))
    target = workdir / "damaged.lmdb"
    tried: collections.Counter[str] = collections.Counter()
    outcomes: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    failures: list[dict[str, Any]] = []
    header_text_changes = 0

    with Sandbox(timeout=60) as sandbox:
        def campaign(family: str) -> None:
            @hypothesis_seed(seed)
            @settings(max_examples=examples, deadline=None, database=None,
                      suppress_health_check=list(HealthCheck))
            @given(st.randoms(use_true_random=False))
            def one(rng: random.Random) -> None:
                nonlocal header_text_changes
                what = damage(base, target, family, rng)
                result = sandbox.probe(target, expected_file)
                tried[family] += 1
                outcomes[family][_outcome(result)] += 1
                header_text_changes += bool(result.get("classes_differ")
                                            and result.get("verify"))
                found = violations(result, expected)
                if found and len(failures) < 20:
                    failures.append({"family": family, "damage": what, "violations": found})
                assert not found, (what, found)

            try:
                one()
            except AssertionError:
                pass  # recorded in failures (hypothesis re-raises the shrunk example)

        for family in FAMILIES:
            campaign(family)
    summary = {
        "examples": sum(tried.values()), "per_family": dict(tried),
        "outcomes": {family: dict(counts) for family, counts in outcomes.items()},
        "reader_crashes": sandbox.crashes, "hangs": sandbox.hangs,
        "undetected_class_name_changes": header_text_changes,
        "failures": failures, "seconds": round(time.monotonic() - started, 1),
    }
    log(f"fuzz: {summary['examples']} examples, {sandbox.crashes} reader crashes (all on "
        f"B-tree damage verify reported), {sandbox.hangs} hangs, {len(failures)} violations, "
        f"{summary['seconds']} s")
    return summary


def record_offsets(path: Path) -> list[tuple[int, int]]:
    """``(file offset, length)`` of each live record value. Searching the file for the bytes
    is ambiguous: unused space inside LMDB pages can hold stale copies (the writer does not
    zero it). So ask the memory map: a value's address minus the map's start."""
    real = os.path.realpath(path)
    env = lmdb.open(os.fspath(path), subdir=False, readonly=True, lock=False, max_dbs=2)
    try:
        with open("/proc/self/maps") as maps:
            starts = [int(line.split("-")[0], 16) for line in maps
                      if line.rstrip("\n").endswith(" " + real) and line.split()[2] == "00000000"]
        if len(starts) != 1:
            raise RuntimeError(f"cannot find the one mapping of {real}: {starts}")
        samples = env.open_db(SAMPLES_DB, create=False)
        with env.begin(db=samples, buffers=True) as txn:
            return [(np.frombuffer(value, np.uint8).ctypes.data - starts[0], len(value))
                    for _, value in txn.cursor()]
    finally:
        env.close()


def bitflips(workdir: Path, sample: int | None, seed: int = 0, log: Any = print
             ) -> dict[str, Any]:
    """Flip single bits of record headers and payloads; ``sample=None``: every bit of every
    record, else every header bit and a seeded sample of ``sample`` payload bits. Each flip must fail ``verify`` naming exactly
    that record, and reading it must raise ``CorruptRecordError``."""
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    base = build_base(workdir)
    bits: list[tuple[int, int, int, str]] = []  # (record, file offset, bit, where)
    for index, (offset, length) in enumerate(record_offsets(base)):
        for position in range(offset, offset + length):
            where = "header" if position < offset + RECORD_HEADER_SIZE else "payload"
            bits += [(index, position, bit, where) for bit in range(8)]
    if sample is None:
        chosen = bits
    else:  # every header bit (label, length, checksum...), a seeded sample of payload bits
        payload = [b for b in bits if b[3] == "payload"]
        chosen = [b for b in bits if b[3] == "header"] + random.Random(seed).sample(
            payload, min(sample, len(payload)))
    work = workdir / "flipped.lmdb"
    shutil.copyfile(base, work)
    detected = missed = 0
    counts: collections.Counter[str] = collections.Counter()
    failures = []
    with open(work, "r+b") as handle:
        for index, offset, bit, where in chosen:
            handle.seek(offset)
            byte = handle.read(1)[0]
            handle.seek(offset)
            handle.write(bytes([byte ^ (1 << bit)]))
            handle.flush()
            report = lmdbio.verify(work)
            named = [p for p in report.problems if p.startswith(f"record {index}:")]
            try:
                with lmdbio.open_database(work) as db:
                    db.get(index)
                read_refused = False
            except lmdbio.CorruptRecordError:
                read_refused = True
            ok = not report.ok and len(named) == len(report.problems) == 1 and read_refused
            detected += ok
            missed += not ok
            counts[where] += 1
            if not ok and len(failures) < 20:
                failures.append({"record": index, "offset": offset, "bit": bit, "where": where,
                                 "problems": report.problems, "read_refused": read_refused})
            handle.seek(offset)
            handle.write(bytes([byte]))
            handle.flush()
    summary = {"flips": len(chosen), "of_bits": len(bits), "detected": detected,
               "missed": missed, "where": dict(counts), "failures": failures,
               "seconds": round(time.monotonic() - started, 1)}
    log(f"bitflips: {detected} of {len(chosen)} single-bit flips detected "
        f"({dict(counts)}), {summary['seconds']} s")
    return summary
