"""Faults around the commands rather than in the source tree: damaged LMDB pages that liblmdb
would trust (SIGBUS), a resume from a damaged partial file, stdout and stderr closed or on a
full disk, a C locale, empty and special paths, shard destinations taken."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

import lmdbio
from lmdbio.format import KEY_HEADER, META_DB
from lmdbio.lmdb_layout import DB_RECORD, META_DBS, NODE, P_LEAF, PAGE
from lmdbio.lmdbcheck import _meta

from tests.helpers import REPO, assert_one_line_error, build_simple_tree, run_cli


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return build_simple_tree(tmp_path / "src", per_class=4, classes=("cat", "dög"))


@pytest.fixture
def db(tree: Path, tmp_path: Path) -> Path:
    lmdbio.convert(tree, tmp_path / "db.lmdb", progress=False)
    return tmp_path / "db.lmdb"


def shell(command: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """``command`` through sh (for redirections such as ``>&-``), lmdbio importable."""
    return subprocess.run(["sh", "-c", command], capture_output=True, text=True, cwd=cwd,
                          errors="backslashreplace",
                          env=os.environ | {"PYTHONPATH": str(REPO)} | env)


def metadata_leaf(path: Path) -> int:
    """The leaf page of the metadata's tree, followed from the newer meta page as liblmdb does:
    each commit rewrites that leaf elsewhere (copy on write), so a freed earlier copy holding
    the header's key may lie before it in the file, depending on how many commits the
    conversion made."""
    data, size = path.read_bytes(), 4096
    fd = os.open(path, os.O_RDONLY)
    try:  # (txnid, last page, free tree, main tree) of each; liblmdb reads the newer one
        main_root = max(_meta(fd, 0), _meta(fd, size))[3][-1]  # type: ignore[type-var]
    finally:
        os.close(fd)
    page = data[main_root * size:(main_root + 1) * size]
    _, _, kind, lower, _ = PAGE.unpack_from(page)
    assert kind == P_LEAF  # a database this small: the main tree is one leaf
    for offset in struct.unpack_from(f"<{(lower - PAGE.size) // 2}H", page, PAGE.size):
        key_size = NODE.unpack_from(page, offset)[3]
        key_end = offset + NODE.size + key_size
        if page[offset + NODE.size:key_end] == META_DB:
            leaf = DB_RECORD.unpack_from(page, key_end)[-1]  # the metadata tree's root
            found = data[leaf * size:(leaf + 1) * size]
            assert PAGE.unpack_from(found)[2] == P_LEAF and KEY_HEADER in found
            return leaf
    raise AssertionError("no metadata tree in the main tree")


def test_a_damaged_metadata_page_is_an_error_not_a_crash(db: Path, tmp_path: Path) -> None:
    """A flipped bit in a node offset sends liblmdb past the end of the map (SIGBUS); what
    opening a database reads through it is walked with plain reads first."""
    data = bytearray(db.read_bytes())
    pgno = metadata_leaf(db)
    # the first node's offset, past the page: flipping one bit of it could land on another
    # node (a different layout per run: the header holds the time of the conversion)
    data[pgno * 4096 + 16:pgno * 4096 + 18] = (0xFFF0).to_bytes(2, "little")
    bad = tmp_path / "bad.lmdb"
    bad.write_bytes(data)
    for command in (["info", bad], ["extract", bad, tmp_path / "out"]):
        assert_one_line_error(run_cli(*command), repr(str(bad)), "is damaged",
                              f"page {pgno}", "re-convert")
    assert not (tmp_path / "out").exists()
    with pytest.raises(lmdbio.FormatError, match="is damaged"):
        lmdbio.ImageFolderLMDB(bad)
    # the main tree's entry count is read from the meta pages, which liblmdb checks no more
    # than the rest: a larger one must not turn the walk off
    entries = META_DBS + DB_RECORD.size + 32  # the main tree's MDB_db record, its entries
    for meta in (0, 4096):
        data[meta + entries:meta + entries + 8] = (3).to_bytes(8, "little")
    bad.write_bytes(data)
    assert_one_line_error(run_cli("info", bad), "is damaged", f"page {pgno}")


def test_resuming_a_damaged_partial_file_says_what_to_do(tree: Path, db: Path,
                                                         tmp_path: Path) -> None:
    partial = tmp_path / "new.lmdb.partial"
    partial.write_bytes(db.read_bytes()[:3 * 4096])  # truncated: its pages end further on
    assert_one_line_error(run_cli("convert", tree, tmp_path / "new.lmdb", "--resume", "-q"),
                          "truncated", "delete it, or convert again without --resume")
    assert partial.exists()  # said "delete it": not deleted behind the user's back
    partial.write_bytes(os.urandom(50_000))  # not LMDB at all
    assert_one_line_error(run_cli("convert", tree, tmp_path / "new.lmdb", "--resume", "-q"),
                          "not a partial conversion", "without --resume")
    assert not (tmp_path / "new.lmdb").exists() and partial.exists()  # the user decides


def test_closed_or_full_standard_streams(tree: Path, db: Path, tmp_path: Path) -> None:
    cli = f"{sys.executable} -m lmdbio.cli"
    closed = shell(f"{cli} convert src a.lmdb 2>&- >&-", tmp_path)
    assert closed.returncode == 0 and lmdbio.info(tmp_path / "a.lmdb").num_samples == 8
    full = shell(f"{cli} convert src b.lmdb 2>/dev/full", tmp_path)  # the bar cannot be drawn
    assert full.returncode == 0 and lmdbio.info(tmp_path / "b.lmdb").num_samples == 8
    assert shell(f"{cli} info db.lmdb >&-", tmp_path).returncode == 0
    assert_one_line_error(shell(f"{cli} info db.lmdb >/dev/full", tmp_path),
                          "could not be written to stdout", "stdout somewhere writable")
    # a conversion whose report cannot be printed is still done: rerunning it would refuse
    done = shell(f"{cli} convert src c.lmdb >/dev/full", tmp_path)
    assert done.returncode == 0 and "warning: the report could not be written" in done.stderr
    assert "c.lmdb is complete" in done.stderr
    assert lmdbio.info(tmp_path / "c.lmdb").num_samples == 8
    # a plugin's plain print into a closed pipe: SIGPIPE's status, no "Exception ignored"
    piped = shell(f"{cli} generate g --images 4 -q | true", tmp_path,
                  PYTHONUNBUFFERED="")
    assert "Exception ignored" not in piped.stderr and "Traceback" not in piped.stderr


def test_a_c_locale_prints_non_ascii_class_names_escaped(db: Path, tmp_path: Path) -> None:
    proc = shell(f"{sys.executable} -m lmdbio.cli info db.lmdb", tmp_path, LC_ALL="C",
                 PYTHONUTF8="0", PYTHONIOENCODING="")
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert "d\\xf6g: 4" in proc.stdout


def test_an_empty_path_is_refused_not_the_current_folder(tree: Path, db: Path,
                                                         tmp_path: Path) -> None:
    assert_one_line_error(run_cli("convert", "", "-q", cwd=tree), "source is an empty path")
    assert_one_line_error(run_cli("convert", tree, "", "-q"), "destination is an empty path")
    assert_one_line_error(run_cli("extract", db, "", "-q", cwd=tmp_path),
                          "output folder is an empty path")
    assert sorted(os.listdir(tmp_path)) == ["db.lmdb", "src"]
    assert not (tree.parent / "src.lmdb").exists()


def test_overwrite_never_replaces_a_device_or_fifo(tree: Path, tmp_path: Path) -> None:
    fifo = tmp_path / "f.lmdb"
    os.mkfifo(fifo)
    assert_one_line_error(run_cli("convert", tree, fifo, "--overwrite", "-q"),
                          "not a regular file")
    assert_one_line_error(run_cli("convert", tree, os.devnull, "--overwrite", "-q"),
                          "not a regular file")
    assert fifo.is_fifo() and Path(os.devnull).is_char_device()


def test_extensions_are_stripped_and_an_empty_one_refused(tree: Path, tmp_path: Path) -> None:
    assert run_cli("convert", tree, tmp_path / "a.lmdb", "-q", "--extensions",
                   ".jpg, .png").returncode == 0
    assert lmdbio.info(tmp_path / "a.lmdb").num_samples == 8  # " .png" did not drop the rest
    proc = run_cli("convert", tree, tmp_path / "b.lmdb", "-q", "--extensions", ".jpg,")
    assert proc.returncode == 2 and "empty item" in proc.stderr
    assert not (tmp_path / "b.lmdb").exists()


def test_destinations_lmdbio_cannot_create_are_named_with_the_cause(tree: Path,
                                                                    tmp_path: Path) -> None:
    assert_one_line_error(run_cli("convert", tree, "/proc/x.lmdb", "-q"),
                          "cannot create '/proc/x.lmdb.partial'", "writable file system")
    long = tmp_path / ("n" * 250 + ".lmdb")  # a legal name, but not with ".partial" after it
    assert_one_line_error(run_cli("convert", tree, long, "-q"), "File name too long",
                          "shorter destination name")


def test_every_shard_destination_is_checked_before_the_first_is_written(
        tree: Path, tmp_path: Path) -> None:
    lmdbio.convert(tree, tmp_path / "t.lmdb", shard=(2, 4), progress=False)
    assert_one_line_error(run_cli("convert", tree, tmp_path / "t.lmdb", "--num-shards", "4",
                                  "-q"), "t-00002-of-00004.lmdb", "already exists")
    assert sorted(os.listdir(tmp_path)) == ["src", "t-00002-of-00004.lmdb"]
