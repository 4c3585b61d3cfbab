"""Bytes in, bytes out: extract, Database.get, info and verify, and damage that verify must see."""

from __future__ import annotations

import collections
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import lmdbio
from lmdbio.dataset import ImageFolderLMDB
from lmdbio.format import RECORD_HEADER_SIZE

from tests.helpers import REPO, assert_one_line_error, build_simple_tree, image_files, run_cli


def tree_files(root: Path) -> dict[str, bytes]:
    """Every regular file under ``root`` (following nothing), by relative path."""
    found = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            found[os.path.relpath(path, root)] = Path(path).read_bytes()
    return found


def test_database_get_returns_the_source_bytes(odd_db) -> None:
    expected = lmdbio.make_dataset(odd_db.tree, lmdbio.find_classes(odd_db.tree)[1])
    with lmdbio.open_database(odd_db.db) as db:
        assert len(db) == len(expected) == 23
        assert db.relative_paths() == [os.path.relpath(p, odd_db.tree) for p, _ in expected]
        assert db.targets() == [t for _, t in expected]
        assert db.meta.source_root == str(odd_db.tree)
        assert db.meta.payload_bytes == sum(os.path.getsize(p) for p, _ in expected)
        for index, (path, target) in enumerate(expected):
            label, data = db.get(index)
            assert type(data) is bytes and data == Path(path).read_bytes(), path
            assert label == target
        with pytest.raises(IndexError, match="out of range"):
            db.get(len(expected))
        with pytest.raises(IndexError):
            db.get(-1)


def test_cli_extract_writes_the_tree_back_byte_for_byte(odd_db, tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = run_cli("extract", odd_db.db, out, "-q")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"extracted 23 files to {out}"
    assert tree_files(out) == image_files(odd_db.tree)  # names with \n, \\, unicode, latin-1
    assert (out / "dog" / "new\nline.jpg").is_file()
    assert (out / "dog" / "back\\slash.jpg").is_file()
    assert not list(out.rglob(".lmdbio-*"))  # no temporary file left
    assert all((p.stat().st_mode & 0o777) == 0o644 for p in out.rglob("*") if p.is_file())
    # and the extracted tree converts to the same database
    again = lmdbio.convert(out, tmp_path / "again.lmdb", progress=False)
    with lmdbio.open_database(odd_db.db) as a, lmdbio.open_database(again.destination) as b:
        assert a.relative_paths() == b.relative_paths()
        assert [a.get(i) for i in range(len(a))] == [b.get(i) for i in range(len(b))]


def test_extract_refuses_to_overwrite_unless_asked(odd_db, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert lmdbio.extract(odd_db.db, out) == 23
    victim = out / "cat" / "a.jpg"
    victim.write_bytes(b"changed")
    proc = run_cli("extract", odd_db.db, out, "-q")
    assert_one_line_error(proc, "already exists", "--overwrite")
    assert victim.read_bytes() == b"changed"
    assert lmdbio.extract(odd_db.db, out, overwrite=True) == 23
    assert victim.read_bytes() == (odd_db.tree / "cat" / "a.jpg").read_bytes()


def test_info_counts_classes(odd_db) -> None:
    expected = collections.Counter(t for _, t in lmdbio.make_dataset(
        odd_db.tree, lmdbio.find_classes(odd_db.tree)[1]))
    result = lmdbio.info(odd_db.db)
    assert result.num_samples == 23
    assert result.class_counts == {"cat": expected[0], "dog": expected[1],
                                   "sea lion": expected[2]} == {"cat": 10, "dog": 10,
                                                                "sea lion": 3}
    assert result.skipped == 0 and result.format_version == 1
    assert result.lmdbio_version == lmdbio.__version__
    assert result.file_bytes == os.path.getsize(odd_db.db)
    proc = run_cli("info", odd_db.db, "--json")
    assert proc.returncode == 0, proc.stderr
    body = json.loads(proc.stdout)
    assert body["num_samples"] == 23 and body["class_counts"]["sea lion"] == 3
    assert body["source_root"] == str(odd_db.tree)
    text = run_cli("info", odd_db.db)
    assert text.returncode == 0 and "samples: 23" in text.stdout
    assert "    sea lion: 3" in text.stdout.splitlines()


@pytest.mark.parametrize("check", ["decode", "full", "structure"])
def test_info_says_what_the_stored_files_were_checked_for(tmp_path: Path, check: str) -> None:
    """A DB written with --check structure may hold images that do not decode: info says so,
    and how to find out."""
    tree = build_simple_tree(tmp_path / "tree", per_class=1)
    db = lmdbio.convert(tree, tmp_path / "db.lmdb", check=check, progress=False).destination
    assert lmdbio.info(db).check == check and lmdbio.info(db).warnings == 0
    assert json.loads(run_cli("info", db, "--json").stdout)["check"] == check
    line = next(x for x in run_cli("info", db).stdout.splitlines() if "checked at" in x)
    assert line.startswith(f"  checked at conversion: {check} (")
    assert ("lmdbio verify --decode" in line) == (check == "structure")


def test_verify_ok(odd_db) -> None:
    report = lmdbio.verify(odd_db.db, decode=True)
    assert report.ok and report.checked == 23 and report.problems == []
    proc = run_cli("verify", odd_db.db, "--decode", "-q")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"{odd_db.db}: OK, 23 records verified"


# -- damage ---------------------------------------------------------------------------------------


@pytest.fixture
def damaged_copy(tmp_path: Path):
    """A fresh small database whose payloads are large enough to sit in their own pages."""
    tree = build_simple_tree(tmp_path / "tree", per_class=3, size=(96, 96), noise=40)
    db = Path(lmdbio.convert(tree, tmp_path / "db.lmdb", progress=False).destination)
    return tree, db


def locate(db: Path, payload: bytes) -> int:
    """Offset of ``payload`` in the file; it must occur exactly once."""
    raw = db.read_bytes()
    offset = raw.find(payload)
    assert offset > 0 and raw.find(payload, offset + 1) == -1
    return offset


def flip_bit(path: Path, offset: int, bit: int = 0) -> None:
    with open(path, "r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)[0]
        handle.seek(offset)
        handle.write(bytes([byte ^ (1 << bit)]))


def test_verify_takes_several_databases_or_a_glob_and_fails_if_any_is_damaged(
        damaged_copy, tmp_path: Path) -> None:
    tree, db = damaged_copy
    whole = run_cli("convert", tree, tmp_path / "shards.lmdb", "--num-shards", "2", "-q")
    assert whole.returncode == 0, whole.stderr
    shards = sorted(str(p) for p in tmp_path.glob("shards*.lmdb"))
    assert len(shards) == 2
    proc = run_cli("verify", "-q", str(tmp_path / "shards*.lmdb"), db)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [f"{p}: OK, {n} records verified"
                                        for p, n in zip(shards + [str(db)], (3, 3, 6))]
    with lmdbio.open_database(db) as handle:
        payload = handle.get(2)[1]
    flip_bit(db, locate(db, payload) + len(payload) // 2)
    proc = run_cli("verify", "-q", db, *shards)  # the damaged one first: the rest still run
    assert proc.returncode == 1
    assert "1 problem in 6 records" in proc.stdout
    assert proc.stdout.count("OK, 3 records verified") == 2


def test_extract_of_shards_one_at_a_time_into_one_folder(damaged_copy, tmp_path: Path) -> None:
    """A glob is refused with the remedy, and the remedy gives the whole tree back."""
    tree, _ = damaged_copy
    run_cli("convert", tree, tmp_path / "shards.lmdb", "--num-shards", "2", "-q")
    out = tmp_path / "out"
    assert_one_line_error(run_cli("extract", str(tmp_path / "shards*.lmdb"), out),
                          "extract takes one database", "each shard into the same OUTDIR")
    assert not out.exists()
    for shard in sorted(tmp_path.glob("shards*.lmdb")):
        proc = run_cli("extract", shard, out, "-q")
        assert proc.returncode == 0, proc.stderr
    assert tree_files(out) == image_files(tree)


@pytest.mark.parametrize("where", ["payload", "label"])
def test_one_flipped_bit_is_caught_everywhere(damaged_copy, where: str) -> None:
    tree, db = damaged_copy
    index = 4
    with lmdbio.open_database(db) as handle:
        label, payload = handle.get(index)
    offset = locate(db, payload)
    if where == "payload":
        flip_bit(db, offset + len(payload) // 2, bit=3)
    else:  # header: magic(2) version(1) flags(1) label(4, little-endian) length(4) crc(4)
        label_offset = offset - RECORD_HEADER_SIZE + 4
        assert int.from_bytes(db.read_bytes()[label_offset:label_offset + 4], "little") == label
        flip_bit(db, label_offset, bit=0)

    report = lmdbio.verify(db)
    assert not report.ok and report.checked == 6
    assert len(report.problems) == 1 and report.problems[0].startswith(f"record {index}:")
    assert "checksum" in report.problems[0]
    proc = run_cli("verify", db, "-q")
    assert proc.returncode == 1, proc.stdout
    assert "1 problem in 6 records" in proc.stdout and f"record {index}" in proc.stdout
    assert "Traceback" not in proc.stderr

    dataset = ImageFolderLMDB(db)
    with pytest.raises(lmdbio.CorruptRecordError, match=f"record {index} fails its checksum"):
        dataset[index]
    assert dataset[index - 1][1] == label  # the neighbours still read
    with lmdbio.open_database(db) as handle, pytest.raises(lmdbio.CorruptRecordError):
        handle.get(index)
    # without checksums the payload flip goes unnoticed, but a label flip is still bounded
    with lmdbio.open_database(db, verify_checksums=False) as handle:
        if where == "payload":
            assert handle.get(index)[1] != payload
        else:
            assert handle.get(index) == (label ^ 1, payload)


def test_verify_decode_catches_an_image_that_only_a_decode_rejects(tmp_path: Path) -> None:
    tree = build_simple_tree(tmp_path / "tree", per_class=2, size=(64, 64), noise=30)
    victim = tree / "b" / "00001.jpg"
    data = bytearray(victim.read_bytes())
    table = data.index(b"\xff\xc4")
    data[table + 5:table + 21] = b"\xff" * 16  # bogus Huffman table: headers still parse
    victim.write_bytes(bytes(data))
    # stored only by the structural opt-out (the default check decodes and refuses it)
    db = lmdbio.convert(tree, tmp_path / "db.lmdb", progress=False,
                        check="structure").destination
    assert lmdbio.verify(db).ok
    report = lmdbio.verify(db, decode=True)
    assert [p.split(":")[0] for p in report.problems] == ["record 3"]
    assert "broken data stream" in report.problems[0]
    assert report.path == str(db)  # the database, not the stored path of the damaged record
    assert str(report).startswith(f"{db}: 1 problem in")


def test_copy_of_a_database_reads_the_same(odd_db, tmp_path: Path) -> None:
    copy = tmp_path / "moved.lmdb"
    shutil.copyfile(odd_db.db, copy)
    with lmdbio.open_database(copy) as a, lmdbio.open_database(odd_db.db) as b:
        assert a.meta == b.meta
        assert [a.get(i) for i in range(len(a))] == [b.get(i) for i in range(len(b))]


@pytest.mark.parametrize("hostile", ["../escape.jpg", "/tmp/abs.jpg", "a/../../escape.jpg",
                                     "a/./b.jpg", "a//b.jpg"])
def test_extract_refuses_paths_that_escape(tmp_path: Path, hostile: str) -> None:
    from lmdbio.format import Metadata
    from lmdbio.writer import LmdbWriter

    path = tmp_path / "hostile.lmdb"
    writer = LmdbWriter(str(path), 1 << 20)
    writer.commit(0, [(0, b"fine"), (0, b"evil")], {"written": 2})
    writer.finish(Metadata(num_samples=2, classes=["a"], source_root="/x", source_fingerprint="",
                           extensions=[".jpg"], payload_bytes=8), ["a/ok.jpg", hostile], [0, 0])
    out = tmp_path / "deep" / "out"
    with pytest.raises(lmdbio.FormatError, match="refusing to extract"):
        lmdbio.extract(path, out)
    assert not out.exists()  # every path is checked before anything is written
    assert not (tmp_path / "deep" / "escape.jpg").exists()
    assert not (tmp_path / "escape.jpg").exists()
    proc = run_cli("extract", path, out, "-q")
    assert_one_line_error(proc, "refusing to extract")


def test_extract_writes_the_folders_of_classes_without_images(tmp_path: Path) -> None:
    """ImageFolder finds classes as folders: the extracted tree of a DB with an empty class
    must hold that folder, or converting it again renumbers every class after it."""
    tree = build_simple_tree(tmp_path / "tree", per_class=1)
    (tree / "0 empty").mkdir()  # sorts first: each other class's index depends on it
    db = lmdbio.convert(tree, tmp_path / "db.lmdb", allow_empty=True, progress=False)
    out = tmp_path / "out"
    assert lmdbio.extract(db.destination, out) == lmdbio.info(db.destination).num_samples > 0
    assert (out / "0 empty").is_dir() and not list((out / "0 empty").iterdir())
    again = lmdbio.convert(out, tmp_path / "again.lmdb", allow_empty=True, progress=False)
    first, second = ImageFolderLMDB(db.destination), ImageFolderLMDB(again.destination)
    assert second.class_to_idx == first.class_to_idx == lmdbio.find_classes(tree)[1]
    assert second.targets == first.targets


@pytest.mark.parametrize("hostile", ["..", "../escape", "a/b", "", "x\0y"])
def test_extract_refuses_class_names_that_are_not_one_folder(tmp_path: Path,
                                                             hostile: str) -> None:
    from lmdbio.format import Metadata
    from lmdbio.writer import LmdbWriter

    path = tmp_path / "hostile.lmdb"
    writer = LmdbWriter(str(path), 1 << 20)
    writer.commit(0, [(0, b"fine")], {"written": 1})
    writer.finish(Metadata(num_samples=1, classes=["a", hostile], source_root="/x",
                           source_fingerprint="", extensions=[".jpg"], payload_bytes=4),
                  ["a/ok.jpg"], [0])
    out = tmp_path / "deep" / "out"
    with pytest.raises(lmdbio.FormatError, match=r"class 1 .* refusing to extract"):
        lmdbio.extract(path, out)
    assert not out.exists() and not (tmp_path / "deep" / "escape").exists()


def test_extract_refuses_to_write_through_a_symlink(tmp_path: Path) -> None:
    tree = build_simple_tree(tmp_path / "tree", per_class=1)
    db = lmdbio.convert(tree, tmp_path / "db.lmdb", progress=False).destination
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    (out / "a").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(lmdbio.FormatError, match="through a symlink"):
        lmdbio.extract(db, out)
    assert list(elsewhere.iterdir()) == []


def test_damaged_path_list_is_reported_not_a_traceback(damaged_copy) -> None:
    from lmdbio.format import encode_paths

    _, db = damaged_copy
    with lmdbio.open_database(db) as handle:
        blob = encode_paths(handle.relative_paths())
    raw = db.read_bytes()
    offsets = [i for i in range(len(raw)) if raw.startswith(blob, i)]
    assert offsets  # the live copy and perhaps a stale one in a freed page: damage all
    for offset in offsets:
        flip_bit(db, offset + len(blob) // 2, bit=5)
    with lmdbio.open_database(db) as handle:
        with pytest.raises(lmdbio.FormatError, match="path list"):
            handle.relative_paths()
        assert handle.get(0)[0] == 0  # the records themselves are intact
    with pytest.raises(lmdbio.FormatError):
        ImageFolderLMDB(db).samples
    report = lmdbio.verify(db)
    assert not report.ok and report.problems[0].startswith("path list: ")
    proc = run_cli("verify", db, "-q")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "path list" in proc.stdout
    assert_one_line_error(run_cli("extract", db, db.parent / "out", "-q"), "path list")


# -- extract: the tree appears whole, or not at all --------------------------------------------


@pytest.fixture
def record_4_damaged(damaged_copy) -> Path:
    """``damaged_copy``'s database with a bit of record 4's payload (of 6) flipped."""
    _, db = damaged_copy
    with lmdbio.open_database(db) as handle:
        payload = handle.get(4)[1]
    flip_bit(db, locate(db, payload) + len(payload) // 2)  # the whole payload: unique
    return db


def test_extract_into_a_new_folder_leaves_nothing_when_it_fails(record_4_damaged: Path,
                                                                tmp_path: Path) -> None:
    db = record_4_damaged
    out = tmp_path / "deep" / "out"
    proc = run_cli("extract", db, out, "-q")
    assert_one_line_error(proc, "record 4", "checksum")
    assert not out.exists()
    assert os.listdir(tmp_path / "deep") == []  # nor the tree staged beside it
    out.mkdir()  # an empty folder is written whole too
    with pytest.raises(lmdbio.CorruptRecordError):
        lmdbio.extract(db, out)
    assert os.listdir(out) == [] and os.listdir(tmp_path / "deep") == ["out"]


def test_extract_into_a_folder_with_files_says_what_it_left(record_4_damaged: Path,
                                                             tmp_path: Path) -> None:
    db = record_4_damaged
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    line = assert_one_line_error(run_cli("extract", db, out, "-q"), "record 4")
    assert f"4 of 6 files were written to {str(out)!r}" in line
    assert (out / "notes.txt").read_text() == "mine"


def test_extract_errors_of_the_destination_are_one_line(odd_db, tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert_one_line_error(run_cli("extract", odd_db.db, afile, "-q"), str(afile),
                          "is a file, not a folder")


@pytest.mark.root
def test_extract_on_a_full_disk_is_one_line_and_leaves_nothing(tmp_path: Path,
                                                                small_filesystem: Path) -> None:
    tree = build_simple_tree(tmp_path / "src", per_class=50, size=(256, 256), noise=60)
    assert sum(p.stat().st_size for p in tree.rglob("*.jpg")) > 4 << 20
    db = lmdbio.convert(tree, tmp_path / "db.lmdb", progress=False).destination
    out = small_filesystem / "out"
    line = assert_one_line_error(run_cli("extract", db, out, "-q"), str(out), "disk full")
    assert "free space or choose another folder" in line
    assert os.listdir(small_filesystem) == []


def test_extract_into_an_empty_folder_keeps_that_folder(odd_db, tmp_path: Path) -> None:
    """The tree is staged beside it and its entries moved in: the folder keeps its inode
    (a shell standing in it still sees the files), owner and mode."""
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o2770)
    inode = out.stat().st_ino
    assert lmdbio.extract(odd_db.db, out) == 23
    assert out.stat().st_ino == inode and (out.stat().st_mode & 0o7777) == 0o2770
    assert tree_files(out) == image_files(odd_db.tree)
    assert os.listdir(tmp_path) == ["out"]  # nothing staged left beside it
    fresh = tmp_path / "link"
    fresh.symlink_to(tmp_path / "out")
    assert lmdbio.extract(odd_db.db, f"{fresh}/../new/") == 23  # '..' after a link, a '/'
    assert tree_files(tmp_path / "new") == image_files(odd_db.tree)


@pytest.mark.parametrize("below", ["", "sub"])
def test_extract_where_it_may_not_write_is_one_line(odd_db, tmp_path: Path, below: str) -> None:
    """Run without the capabilities that let root write anywhere, as any other user is."""
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv to drop the capabilities")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0)
    out = locked / below if below else locked
    try:
        proc = subprocess.run(["setpriv", "--bounding-set=-dac_override,-dac_read_search",
                               sys.executable, "-m", "lmdbio", "extract", str(odd_db.db),
                               str(out), "-q"], capture_output=True, text=True, timeout=120,
                              cwd=REPO)
    finally:
        locked.chmod(0o755)
    assert_one_line_error(proc, f"cannot write '{out}'", "Permission denied",
                          "choose a folder you can write")
