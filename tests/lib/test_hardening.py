"""Issue #13, "Hardening: hostile files and unlucky users": each attack of the security review,
reproduced with its crafted input made here by code (py-lmdb directly, following
docs/FORMAT.md and lmdbio.format's encoders), and the refusal it now meets: a typed one-line
error, nothing written outside its place, nothing hanging.

Self-contained (its crafting helpers are below), so it reads without the shared fixtures.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import resource
import shutil
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lmdb
import numpy as np
import pytest
from PIL import Image

import lmdbio
from lmdbio.format import (KEY_COMPLETE, KEY_HEADER, KEY_PATHS, KEY_TARGETS, META_DB,
                           SAMPLES_DB, Metadata, encode_key, encode_paths, encode_record,
                           encode_targets)
from lmdbio import ImageDecodeError
from lmdbio.publish import create_exclusive, staged
from lmdbio.writer import LmdbWriter

REPO = Path(__file__).resolve().parents[2]

# -- crafting ----------------------------------------------------------------------------------


def jpeg(seed: int, size: tuple[int, int] = (24, 16)) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 255, size=(size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buffer, "JPEG", quality=80)
    return buffer.getvalue()


def craft(path: Path, records: Sequence[tuple[int, bytes]], classes: Sequence[str],
          paths: Sequence[str] | None = None, targets: Sequence[int] | None = None,
          map_size: int = 1 << 22, **header: Any) -> Path:
    """An lmdbio file written by hand as docs/FORMAT.md describes it: records with valid CRCs,
    then ``header`` fields overriding what ``Metadata`` would write (JSON, as stored)."""
    paths = list(paths) if paths is not None else [
        f"{classes[min(label, len(classes) - 1)]}/{i}.jpg" for i, (label, _) in
        enumerate(records)]
    targets = list(targets) if targets is not None else [label for label, _ in records]
    meta = Metadata(num_samples=len(records), classes=list(classes), source_root="/src",
                    source_fingerprint="f" * 64, extensions=[".jpg"],
                    payload_bytes=sum(len(p) for _, p in records), lmdbio_version="0.1.0",
                    created_utc="2026-01-01T00:00:00+00:00")
    body = json.loads(meta.to_json())
    body.update(header)
    env = lmdb.open(os.fspath(path), subdir=False, max_dbs=2, map_size=map_size, lock=False)
    try:
        samples, meta_db = env.open_db(SAMPLES_DB), env.open_db(META_DB)
        with env.begin(write=True) as txn:
            for index, (label, payload) in enumerate(records):
                txn.put(encode_key(index), encode_record(label, payload), db=samples)
            txn.put(KEY_HEADER, json.dumps(body).encode(), db=meta_db)
            txn.put(KEY_PATHS, encode_paths(paths), db=meta_db)
            txn.put(KEY_TARGETS, encode_targets(targets), db=meta_db)
            txn.put(KEY_COMPLETE, b"1", db=meta_db)
    finally:
        env.close()
    return path


def good_records(count: int = 3, classes: int = 2) -> list[tuple[int, bytes]]:
    return [(i % classes, jpeg(i)) for i in range(count)]


def cli(*args: object, timeout: float = 60, limit_bytes: int | None = None
        ) -> subprocess.CompletedProcess[str]:
    """``python -m lmdbio.cli ARGS``; ``limit_bytes`` caps its address space, so a fix that
    regresses into building a 10**15 list fails fast instead of eating the machine."""
    def cap() -> None:
        if limit_bytes:
            resource.setrlimit(resource.RLIMIT_AS, (limit_bytes, limit_bytes))
    return subprocess.run([sys.executable, "-m", "lmdbio.cli", *map(os.fspath, args)],
                          capture_output=True, text=True, errors="backslashreplace",
                          timeout=timeout, cwd=REPO, preexec_fn=cap)


def one_line_error(proc: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("lmdbio: error: "), proc.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def one_line(exc: BaseException, *needles: str) -> str:
    text = str(exc)
    assert "\n" not in text, text
    for needle in needles:
        assert needle in text, (needle, text)
    return text


@pytest.fixture
def source(tmp_path: Path) -> Path:
    root = tmp_path / "src"
    for i in range(4):
        (root / ("ab"[i % 2])).mkdir(parents=True, exist_ok=True)
        (root / "ab"[i % 2] / f"{i}.jpg").write_bytes(jpeg(i))
    return root


# -- 1. a planted DST.partial never redirects the write -----------------------------------------


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_planted_partial_symlink_never_redirects_the_write(source: Path, tmp_path: Path,
                                                            overwrite: bool) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    dst = tmp_path / "out.lmdb"
    if overwrite:
        lmdbio.convert(source, dst, progress=False)
    Path(f"{dst}.partial").symlink_to(victim)
    lmdbio.convert(source, dst, progress=False, overwrite=overwrite)
    assert victim.read_bytes() == b"precious"
    assert not dst.is_symlink() and dst.is_file() and lmdbio.verify(dst).ok
    assert not os.path.lexists(f"{dst}.partial")


@pytest.mark.parametrize("kind", ["fifo", "foreign", "hardlink", "folder"])
def test_anything_but_our_own_regular_partial_is_never_written(source: Path, tmp_path: Path,
                                                              kind: str) -> None:
    dst = tmp_path / "out.lmdb"
    partial = Path(f"{dst}.partial")
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    if kind == "fifo":
        os.mkfifo(partial)
    elif kind == "foreign":  # a file someone else owns (and may hold open to read along)
        partial.write_bytes(b"theirs")
        os.chown(partial, 65534, 65534)
        held = os.open(partial, os.O_RDONLY)
    elif kind == "hardlink":
        os.link(victim, partial)
    else:
        partial.mkdir()
    if kind == "folder":
        with pytest.raises(lmdbio.DestinationError, match="is a folder") as caught:
            lmdbio.convert(source, dst, progress=False)
        one_line(caught.value, str(partial), "remove it")
        return
    done: list[object] = []
    worker = threading.Thread(target=lambda: done.append(
        lmdbio.convert(source, dst, progress=False)), daemon=True)
    worker.start()
    worker.join(60)
    assert done, "convert hung or failed on a planted partial"
    assert victim.read_bytes() == b"precious" and lmdbio.verify(dst).ok
    if kind == "foreign":
        assert os.pread(held, 100, 0) == b"theirs"  # their inode was never written
        os.close(held)


def test_lmdb_writes_the_inode_that_was_checked_not_what_the_name_became(tmp_path: Path
                                                                          ) -> None:
    """The window between lmdbio's check of DST.partial and liblmdb's own open(): a symlink
    swapped in there is not followed, liblmdb writes the checked inode."""
    partial, victim = tmp_path / "x.lmdb.partial", tmp_path / "victim"
    victim.write_bytes(b"precious")
    fd = os.open(partial, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
    os.rename(partial, tmp_path / "checked")
    partial.symlink_to(victim)  # the swap
    writer = LmdbWriter(os.fspath(partial), fd=fd)
    writer.commit(0, [(0, b"x")], {"written": 1})
    writer.close()
    os.close(fd)
    assert victim.read_bytes() == b"precious"
    assert (tmp_path / "checked").stat().st_size > 0  # the pages went to the checked file


def test_staged_outputs_are_created_exclusively(tmp_path: Path) -> None:
    final, victim = tmp_path / "table.csv", tmp_path / "victim"
    victim.write_bytes(b"precious")
    Path(f"{final}.partial").symlink_to(victim)  # planted before: staged removes it
    with staged(final) as partial:
        os.symlink(victim, partial)  # planted between the removal and the creation
        with pytest.raises(FileExistsError):
            create_exclusive(partial, "w")
        os.unlink(partial)
        with create_exclusive(partial, "w") as handle:
            handle.write("a,b\n")
    assert final.read_text() == "a,b\n" and victim.read_bytes() == b"precious"


# -- 2. a FIFO (or an empty file) given as the database -----------------------------------------


@pytest.mark.parametrize("command", ["info", "verify", "extract"])
def test_a_fifo_as_the_database_is_refused_not_a_hang(tmp_path: Path, command: str) -> None:
    fifo = tmp_path / "db.lmdb"
    os.mkfifo(fifo)
    args = [command, fifo] + ([tmp_path / "out"] if command == "extract" else [])
    one_line_error(cli(*args, timeout=60), str(fifo), "FIFO", "not a database file")
    assert not (tmp_path / "out").exists()


def test_a_fifo_or_an_empty_file_through_the_api(tmp_path: Path) -> None:
    fifo, empty = tmp_path / "fifo.lmdb", tmp_path / "empty.lmdb"
    os.mkfifo(fifo)
    empty.write_bytes(b"")
    with pytest.raises(lmdbio.FormatError, match="FIFO"):
        lmdbio.open_database(fifo)
    with pytest.raises(lmdbio.FormatError, match="not an LMDB file") as caught:
        lmdbio.Database(empty)
    assert "Bad file descriptor" not in str(caught.value)
    one_line_error(cli("info", empty), "not an LMDB file", "empty")


# -- 3. counts read from a file bound the work they cause ---------------------------------------


def test_a_header_claiming_10_to_the_15_shards(tmp_path: Path) -> None:
    from lmdbio.dataset import ImageFolderLMDB

    path = craft(tmp_path / "train-00000-of-99999.lmdb", good_records(), ["a", "b"],
                 shard_count=10**15, listing_total=10**15 + 3, shard_stop=3)
    # First in a capped process: the unfixed reader built a 10**15 list of missing shards.
    one_line_error(cli("info", tmp_path / "train-*.lmdb", limit_bytes=1 << 30),
                   "of 1000000000000000 shards missing", "...")
    for opener in (lmdbio.open_database, ImageFolderLMDB):
        with pytest.raises(lmdbio.ShardSetError, match="shards missing") as caught:
            opener(os.fspath(path))
        one_line(caught.value)


def test_more_shards_than_listed_files_is_a_malformed_header(tmp_path: Path) -> None:
    path = craft(tmp_path / "x.lmdb", good_records(), ["a", "b"], shard_count=5,
                 listing_total=3, shard_stop=3)
    with pytest.raises(lmdbio.FormatError, match="header is malformed"):
        lmdbio.Database(path)


# -- 4. stored paths are validated before anything is written -----------------------------------


@pytest.mark.parametrize("bad", ["/".join(["d"] * 2000) + "/x.jpg", "a/" + "n" * 300 + ".jpg",
                                 "a/" + "/".join(["long" * 60] * 20) + ".jpg", "a/../../x.jpg",
                                 "/etc/x.jpg", "a//x.jpg", ""],
                         ids=["2000-deep", "long-name", "past-PATH_MAX", "dotdot", "absolute",
                              "empty-part", "empty"])
def test_a_hostile_stored_path_is_refused_before_anything_is_written(tmp_path: Path, bad: str
                                                                     ) -> None:
    db = craft(tmp_path / "x.lmdb", good_records(3), ["a", "b"],
               paths=["a/0.jpg", "b/1.jpg", bad])
    out = tmp_path / "out"
    line = one_line_error(cli("extract", db, out), "stored path 2", "refusing to extract")
    assert len(line) < 600  # the path is named, shortened: not 4 KB echoed
    assert not out.exists()  # nothing, not even the folder: the check runs first
    report = lmdbio.verify(db)
    assert not report.ok and any("stored path 2" in p for p in report.problems)


# -- 5. labels and targets outside the class list -----------------------------------------------


def test_a_label_outside_the_class_list_is_named_everywhere(tmp_path: Path) -> None:
    from lmdbio.dataset import ImageFolderLMDB

    records = [(0, jpeg(0)), (7, jpeg(1)), (1, jpeg(2))]  # valid CRC, label 7 of 2 classes
    db = craft(tmp_path / "x.lmdb", records, ["a", "b"], paths=["a/0.jpg", "b/evil.jpg",
                                                               "b/2.jpg"])
    report = lmdbio.verify(db)
    assert not report.ok and any("record 1" in p and "outside the 2 classes" in p
                                 for p in report.problems), report.problems
    assert cli("verify", db, "-q").returncode == 1
    with lmdbio.Database(db) as handle:
        with pytest.raises(lmdbio.CorruptRecordError) as caught:
            handle.get(1)
        one_line(caught.value, "record 1", "b/evil.jpg", "label 7", "re-convert")
        with pytest.raises(lmdbio.FormatError) as caught:
            handle.targets()
        one_line(caught.value, "sample 1", "b/evil.jpg", "target 7")
    dataset = ImageFolderLMDB(db, prefetch=False)
    with pytest.raises(lmdbio.CorruptRecordError, match="b/evil.jpg"):
        dataset[1]
    with pytest.raises(lmdbio.FormatError, match="target 7"):
        dataset.targets
    dataset.close()
    one_line_error(cli("info", db), "sample 1", "outside the 2 classes")  # not a silent count
    one_line_error(cli("extract", "-q", db, tmp_path / "out"), "record 1", "b/evil.jpg")


def test_out_of_range_targets_alone_are_found(tmp_path: Path) -> None:
    db = craft(tmp_path / "x.lmdb", good_records(3), ["a", "b"], targets=[0, 1, 9])
    with lmdbio.open_database(db) as handle, pytest.raises(lmdbio.FormatError,
                                                          match="sample 2 .* target 9"):
        handle.targets()
    report = lmdbio.verify(db)
    assert any("target list: sample 2 has target 9" in p for p in report.problems)


# -- 6. a valid-CRC record that is not an image -------------------------------------------------


@pytest.mark.parametrize("payload", [b"", b"hello, not an image at all"], ids=["empty", "text"])
def test_a_record_that_is_not_an_image_is_a_typed_error_naming_it(tmp_path: Path,
                                                                   payload: bytes) -> None:
    from lmdbio.dataset import ImageFolderLMDB

    db = craft(tmp_path / "x.lmdb", [(0, jpeg(0)), (1, payload), (1, jpeg(2))], ["a", "b"],
               paths=["a/0.jpg", "b/odd.jpg", "b/2.jpg"])
    dataset = ImageFolderLMDB(db, prefetch=False)
    assert dataset[0][1] == 0 and dataset[2][1] == 1
    with pytest.raises(ImageDecodeError) as caught:
        dataset[1]
    assert isinstance(caught.value, OSError)  # what ImageFolder's UnidentifiedImageError is
    assert isinstance(caught.value, lmdbio.CorruptRecordError)
    one_line(caught.value, "record 1", "b/odd.jpg", str(db), "verify --decode")
    assert "BytesIO" not in str(caught.value)
    dataset.close()
    for decode in (False, True):
        report = lmdbio.verify(db, decode=decode)
        assert [p.split(":")[0] for p in report.problems] == ["record 1"], report.problems
        assert ("is empty" if not payload else "cannot identify image") in report.problems[0]


def test_plain_verify_still_passes_every_real_format(tmp_path: Path) -> None:
    image = Image.new("RGB", (9, 7), (10, 200, 30))
    payloads = []
    for fmt in ("JPEG", "PNG", "BMP", "TIFF", "WEBP", "PPM", "GIF"):
        buffer = io.BytesIO()
        image.save(buffer, fmt)
        payloads.append(buffer.getvalue())
    db = craft(tmp_path / "x.lmdb", [(0, p) for p in payloads], ["a"])
    report = lmdbio.verify(db)
    assert report.ok, report.problems


# -- 7. a database rewritten in place while open ------------------------------------------------


def test_a_database_rewritten_in_place_while_open_is_detected(tmp_path: Path) -> None:
    a = craft(tmp_path / "a.lmdb", good_records(3), ["cat", "dog"], map_size=1 << 22)
    b = craft(tmp_path / "b.lmdb", [(1 - i % 2, jpeg(100 + i)) for i in range(3)],
              ["x", "y"], map_size=1 << 22, created_utc="2026-02-02T00:00:00+00:00")
    inode = a.stat().st_ino
    with lmdbio.Database(a) as db:
        assert db.get(0)[0] == 0
        shutil.copyfile(b, a)  # what 'cp b.lmdb a.lmdb' does: the same inode, rewritten
        assert a.stat().st_ino == inode
        with pytest.raises(lmdbio.FormatError, match="changed while open") as caught:
            db.get(0)
        one_line(caught.value, str(a), "reopen it")
        with pytest.raises(lmdbio.FormatError, match="changed while open"):
            db.targets()
    with lmdbio.Database(a) as db:  # reopened: B, consistently
        assert db.meta.classes == ["x", "y"] and db.get(0)[0] == 1


def test_a_database_rewritten_larger_while_open_is_changed_not_damaged(tmp_path: Path) -> None:
    """A rewrite beyond the map taken at open: liblmdb refuses every read transaction
    (MDB_MAP_RESIZED) before the header check can run. Same error as the header check's,
    never "damaged", through every reader, and a reopen after closing reads B."""
    from lmdbio.dataset import ImageFolderLMDB
    from lmdbio.errors import DatabaseChangedError

    a = craft(tmp_path / "a.lmdb", good_records(3), ["cat", "dog"], map_size=1 << 20)
    # 12 MiB of records: past the 10 MiB py-lmdb maps at least, so past A's map
    b = craft(tmp_path / "b.lmdb", [(i % 2, os.urandom(1 << 20)) for i in range(12)],
              ["x", "y"], map_size=1 << 25, created_utc="2026-02-02T00:00:00+00:00")
    inode = a.stat().st_ino
    dataset = ImageFolderLMDB(a, prefetch=False)
    with lmdbio.Database(a) as db:
        assert db.get(0)[0] == 0 and dataset[0][1] == 0
        mapped = db._handles()[0].info()["map_size"]
        shutil.copyfile(b, a)  # 'cp b.lmdb a.lmdb': the same inode, rewritten larger
        assert a.stat().st_ino == inode and a.stat().st_size > mapped
        for read in (lambda: db.get(0), db.targets, db.relative_paths, lambda: dataset[0]):
            with pytest.raises(DatabaseChangedError) as caught:
                read()
            text = one_line(caught.value, repr(str(a)), "changed while open", "reopen it")
            assert "damaged" not in text and "re-convert" not in text, text
            assert isinstance(caught.value, lmdbio.FormatError)
        # reopened while another reader still maps the old size: the same error, which says
        # to close every reader first
        with pytest.raises(DatabaseChangedError, match="every other reader"):
            lmdbio.Database(a)
    dataset.close()
    with lmdbio.Database(a) as db:  # all closed, reopened: B, consistently
        assert db.meta.classes == ["x", "y"] and len(db) == 12 and db.get(1)[0] == 1


def test_a_refused_header_leaves_no_environment_open(tmp_path: Path) -> None:
    """Database() refusing a malformed header releases the LMDB environment it opened to read
    it at once, not when the half-built object is collected: while the error is kept (its
    traceback holds that object), the refused file must not stay mapped in this process."""
    from lmdbio import envs

    bad = craft(tmp_path / "x.lmdb", good_records(2), ["a", "b"], format_version="x")
    kept = []
    for _ in range(2):  # and refused the same way again, not through a stale environment
        with pytest.raises(lmdbio.FormatError, match="header is malformed") as caught:
            lmdbio.Database(bad)
        kept.append(caught.value)  # as a caller logging its errors keeps them
        assert envs._identity(os.fspath(bad)) not in envs._envs


# -- 8. extract never writes through a symlink swapped into OUTDIR ------------------------------

_SWAP: dict[str, Any] = {}


def _swap_on_create(event: str, args: tuple[Any, ...]) -> None:
    """Audit hook: just before extract creates its temporary file in ``OUTDIR/b``, replace
    that folder by a symlink to ``elsewhere`` (the race, won deterministically)."""
    if event != "open" or not _SWAP.get("armed"):
        return
    name = os.fsdecode(args[0]) if isinstance(args[0], (str, bytes)) else ""
    if ".lmdbio-" in os.path.basename(name) and _SWAP["count"] == _SWAP["at"]:
        _SWAP["armed"] = False
        folder = _SWAP["folder"]
        os.rename(folder, f"{folder}.real")
        os.symlink(_SWAP["elsewhere"], folder)
    elif ".lmdbio-" in os.path.basename(name):
        _SWAP["count"] += 1


sys.addaudithook(_swap_on_create)  # audit hooks cannot be removed: inert unless armed


def test_a_symlink_swapped_into_outdir_mid_extract_is_never_written_through(tmp_path: Path
                                                                          ) -> None:
    db = craft(tmp_path / "x.lmdb", good_records(4), ["a", "b"],
               paths=["a/0.jpg", "b/1.jpg", "b/2.jpg", "b/3.jpg"])
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    elsewhere.mkdir()
    out.mkdir()  # holding a file already: extracted in place (a new folder is staged beside
    (out / "notes.txt").write_text("mine")  # it, in a folder only its owner may enter)
    _SWAP.update(armed=True, count=0, at=2, folder=os.fspath(out / "b"),
                 elsewhere=os.fspath(elsewhere))
    try:
        lmdbio.extract(db, out)
    except lmdbio.LmdbioError as exc:  # stopping is fine too; writing elsewhere is not
        one_line(exc)
    finally:
        _SWAP["armed"] = False
    assert not _SWAP["armed"], "the swap never happened"
    assert list(elsewhere.iterdir()) == []
    assert sorted(p.name for p in (out / "b.real").iterdir()) == ["1.jpg", "2.jpg", "3.jpg"]


def test_extract_replaces_a_planted_file_link_instead_of_following_it(tmp_path: Path) -> None:
    db = craft(tmp_path / "x.lmdb", good_records(2), ["a", "b"])
    out, victim = tmp_path / "out", tmp_path / "victim"
    victim.write_bytes(b"precious")
    (out / "a").mkdir(parents=True)
    (out / "a" / "0.jpg").symlink_to(victim)
    with pytest.raises(lmdbio.DestinationError, match="already exists"):
        lmdbio.extract(db, out)
    assert lmdbio.extract(db, out, overwrite=True) == 2
    assert victim.read_bytes() == b"precious" and not (out / "a" / "0.jpg").is_symlink()


# -- 9. duplicate stored paths ------------------------------------------------------------------


@pytest.mark.parametrize("paths", [["a/x.jpg", "b/y.jpg", "a/x.jpg"],
                                   ["a/x.jpg", "a/x.jpg/inner.jpg", "b/y.jpg"]],
                         ids=["duplicate", "file-as-folder"])
def test_duplicate_stored_paths_are_refused_and_reported(tmp_path: Path, paths: list[str]
                                                         ) -> None:
    db = craft(tmp_path / "x.lmdb", good_records(3), ["a", "b"], paths=paths)
    out = tmp_path / "out"
    for extra in ([], ["--overwrite"]):  # was: "extracted 3 files" with 2 on disk
        line = one_line_error(cli("extract", db, out, *extra), "stored path", "refusing")
        assert "already exists" not in line
        assert not out.exists()
    report = lmdbio.verify(db)
    assert not report.ok and any("stored path" in p for p in report.problems)


# -- 10. terminal escapes in stored text --------------------------------------------------------


def test_terminal_escapes_in_stored_names_never_reach_the_terminal(tmp_path: Path) -> None:
    classes = ["\x1b[2J\x1b[H", "ok\n    fake: 999", "b\u202eevil"]
    db = craft(tmp_path / "x.lmdb", good_records(3, 3), classes,
               paths=["c/0.jpg", "c/1.jpg", "c/\x1b]0;owned\x07.jpg"],
               source_root="/data\x1b[31m\rsource: /trusted")
    for args in (("info", db), ("info", "--json", db), ("verify", "-q", db)):
        proc = cli(*args)
        assert proc.returncode == 0, proc.stderr
        assert "\x1b" not in proc.stdout and "\r" not in proc.stdout
        assert "\u202e" not in proc.stdout and "fake: 999\n" not in proc.stdout
    text = cli("info", db).stdout
    assert text.count("\n") == 6 + len(classes)  # no line faked by a stored newline
    assert "\\x1b[2J" in text and "\\n" in text
    # and an error that quotes stored text stays one line, escapes included
    dup = craft(tmp_path / "dup.lmdb", good_records(2), ["a", "b"],
                paths=["a/\x1b[2Jx.jpg", "a/\x1b[2Jx.jpg"])
    line = one_line_error(cli("extract", dup, tmp_path / "out"), "duplicate")
    assert "\x1b" not in line


# -- 11. legacy (seed) databases with odd allow-listed values -----------------------------------


def craft_seed(path: Path, length: Any, labels: Sequence[Any], protocol: int = 4) -> Path:
    env = lmdb.open(os.fspath(path), subdir=False, map_size=1 << 22, lock=False)
    with env.begin(write=True) as txn:
        keys = [str(i).encode() for i in range(len(labels))]
        for key, label in zip(keys, labels):
            txn.put(key, pickle.dumps((jpeg(int(key)), np.array([label])), protocol))
        txn.put(b"__keys__", pickle.dumps(keys, protocol))
        txn.put(b"__len__", pickle.dumps(length, protocol))
    env.close()
    return path


@pytest.mark.parametrize("length", ["3", [1, 2], -1, 10**30, 3.0, True],
                         ids=["str", "list", "negative", "1e30", "float", "bool"])
def test_an_odd_seed_length_is_a_typed_one_line_error(tmp_path: Path, length: Any) -> None:
    path = craft_seed(tmp_path / "seed.lmdb", length, [0, 1, 0])
    with pytest.raises(lmdbio.FormatError) as caught:
        lmdbio.open_database(path, allow_pickle=True)
    one_line(caught.value, "__len__", "re-convert" if length != 3.0 else "integer")


@pytest.mark.parametrize("label", [10**12, -5, 2**70], ids=["1e12", "negative", "2^70"])
def test_an_odd_seed_label_is_a_typed_error_with_bounded_work(tmp_path: Path, label: int) -> None:
    labels = [0, label if abs(label) < 2**62 else 1, 1]
    path = craft_seed(tmp_path / "seed.lmdb", 3, labels)
    if abs(label) >= 2**62:  # beyond int64: a Python int pickled without NumPy
        env = lmdb.open(os.fspath(path), subdir=False, map_size=1 << 22, lock=False)
        with env.begin(write=True) as txn:
            txn.put(b"1", pickle.dumps((jpeg(1), label), 4))
        env.close()
    db = lmdbio.open_database(path, allow_pickle=True)
    assert db.get(0)[0] == 0
    with pytest.raises(lmdbio.CorruptRecordError) as caught:
        db.get(1)
    one_line(caught.value, "record 1", "label")
    with pytest.raises(lmdbio.CorruptRecordError):
        db.meta  # the class list of max(label) + 1 names is never built
    db.close()


# -- minor: --resume with another --on-error ----------------------------------------------------


def test_resume_refuses_another_on_error_than_the_interrupted_run(source: Path,
                                                                   tmp_path: Path) -> None:
    from lmdbio.folder import IMG_EXTENSIONS
    from lmdbio.sources import list_source

    dst = tmp_path / "out.lmdb"
    listing = list_source(source, IMG_EXTENSIONS, 1)
    first = (source / listing.relative_paths[0]).read_bytes()
    writer = LmdbWriter(f"{dst}.partial")  # what a run killed after its first commit leaves
    writer.commit(0, [(listing.targets[0], first)],
                  {"fingerprint": listing.fingerprint, "position": 1, "written": 1,
                   "payload_bytes": len(first), "skipped": [], "shard": [0, 1],
                   "resize": [None, None], "on_error": "skip"})
    writer.close()
    line = one_line_error(cli("convert", source, dst, "--resume", "-q"), "--on-error 'skip'",
                          "not 'fail'")
    assert "resume with --on-error skip" in line and not dst.exists()
    assert cli("convert", source, dst, "--resume", "--on-error", "skip", "-q").returncode == 0
    assert lmdbio.verify(dst).ok


# -- hostile pass: a planted lock file with lock=True -------------------------------------------


def test_a_planted_lock_file_link_is_refused_with_lock_true(tmp_path: Path) -> None:
    db = craft(tmp_path / "x.lmdb", good_records(2), ["a", "b"])
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    Path(f"{db}-lock").symlink_to(victim)
    with pytest.raises(lmdbio.FormatError, match="lock file") as caught:
        lmdbio.Database(db, lmdbio.EnvOptions(lock=True))
    one_line(caught.value, "lock=False")
    assert victim.read_bytes() == b"precious"
    with lmdbio.Database(db) as handle:  # lock=False never touches it
        assert handle.get(0)[0] == 0
