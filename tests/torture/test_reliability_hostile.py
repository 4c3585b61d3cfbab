"""Guarantee: hostile input is refused with a clear message, and opening a database never runs
code: decompression bombs (Pillow's pixel limit kept), symlink loops, stored paths that escape
``extract``'s folder, pickled (seed) databases, and file names with newlines, unicode and
spaces, which must round-trip exactly.
"""

from __future__ import annotations

import os
import pickle
import struct
import subprocess
import zlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import lmdbio
from lmdbio.dataset import ImageFolderLMDB
from lmdbio.format import Metadata
from lmdbio.writer import LmdbWriter

from tests.helpers import assert_one_line_error, jpeg_bytes, run_cli, write
from tests.helpers import EvilPopen, seed_images, seed_value, write_seed_db

PILLOW_LIMIT = Image.MAX_IMAGE_PIXELS


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def bomb_png(side: int = 30_000) -> bytes:
    """A ~100-byte PNG whose header claims side x side RGB pixels (2.7 GB for 30 000)."""
    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    rows = zlib.compress(b"\0" * (3 * 64 + 1) * 4)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", rows)
            + png_chunk(b"IEND", b""))


@pytest.fixture
def bomb_tree(tmp_path: Path) -> Path:
    root = tmp_path / "src"
    write(root / "a" / "0.jpg", jpeg_bytes(1))
    write(root / "a" / "bomb.png", bomb_png())
    write(root / "b" / "1.jpg", jpeg_bytes(2))
    return root


def test_a_decompression_bomb_keeps_pillows_limit_and_says_so(bomb_tree: Path,
                                                              tmp_path: Path) -> None:
    dst = tmp_path / "bomb.lmdb"
    line = assert_one_line_error(run_cli("convert", bomb_tree, dst, "-q", "--verify-images"),
                                 "bomb.png", "decompression bomb", "MAX_IMAGE_PIXELS")
    assert "900000000 pixels" in line  # Pillow's own words, with our remedy appended
    assert not dst.exists() and not Path(f"{dst}.partial").exists()
    # The default check opens it as ImageFolder's loader would, and refuses it too
    assert_one_line_error(run_cli("convert", bomb_tree, dst, "-q"), "bomb.png",
                          "decompression bomb")
    # The structural opt-out stores it, as ImageFolder would list it; reading it raises
    # Pillow's own error, at the same place ImageFolder's loader would.
    assert run_cli("convert", bomb_tree, dst, "-q", "--check", "structure").returncode == 0
    dataset = ImageFolderLMDB(dst)
    assert dataset[0][1] == 0 and dataset[2][1] == 1  # the neighbours read
    with pytest.raises(Image.DecompressionBombError, match="decompression bomb"):
        dataset[1]
    assert Image.MAX_IMAGE_PIXELS == PILLOW_LIMIT  # lmdbio never raises the limit
    report = lmdbio.verify(dst, decode=True)
    assert [p.split(":")[0] for p in report.problems] == ["record 1"]
    assert "decompression bomb" in report.problems[0]
    assert lmdbio.verify(dst).ok  # the bytes are intact: only decoding is refused
    dataset.close()


def test_symlink_loops_are_refused(tmp_path: Path) -> None:
    root = tmp_path / "src"
    write(root / "a" / "0.jpg", jpeg_bytes(1))
    (root / "a" / "again").symlink_to(root / "a", target_is_directory=True)
    dst = tmp_path / "loop.lmdb"
    assert_one_line_error(run_cli("convert", root, dst, "-q"), "symlink loop", "again")
    assert sorted(os.listdir(tmp_path)) == ["src"]  # no DST, no partial


@pytest.mark.parametrize("mode", ["fail", "skip"])
def test_a_self_referencing_file_link(tmp_path: Path, mode: str) -> None:
    root = tmp_path / "src"
    write(root / "a" / "0.jpg", jpeg_bytes(1))
    (root / "a" / "self.jpg").symlink_to(root / "a" / "self.jpg")
    dst = tmp_path / "out.lmdb"
    proc = run_cli("convert", root, dst, "-q", "--on-error", mode)
    if mode == "fail":
        assert_one_line_error(proc, "self.jpg", "Too many levels of symbolic links")
        assert sorted(os.listdir(tmp_path)) == ["src"]
    else:
        assert proc.returncode == 0, proc.stderr
        with lmdbio.open_database(dst) as db:
            assert len(db) == 1 and [p for p, _ in db.meta.skipped] == ["a/self.jpg"]


SEGMENTS = st.sampled_from(["..", ".", "", "a", "b c", "ü", "new\nline", "x.jpg", "\\",
                            "..\\..", "~", "-"])


@settings(max_examples=60, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(st.lists(st.tuples(st.booleans(), st.lists(SEGMENTS, min_size=1, max_size=5)),
                min_size=1, max_size=4))
def test_extract_never_writes_outside_its_folder(tmp_path_factory, stored) -> None:
    """Stored paths assembled from '..', '.', empty parts, a leading '/': extract refuses the
    database (FormatError, before writing anything) or writes every file inside OUTDIR."""
    base = tmp_path_factory.mktemp("extract")
    paths = [("/" if absolute else "") + "/".join(parts) for absolute, parts in stored]
    db = base / "hostile.lmdb"
    writer = LmdbWriter(str(db), 1 << 20)
    writer.commit(0, [(0, b"x%d" % i) for i in range(len(paths))], {"written": len(paths)})
    writer.finish(Metadata(num_samples=len(paths), classes=["a"], source_root="/x",
                           source_fingerprint="", extensions=[".jpg"],
                           payload_bytes=sum(len(b"x%d" % i) for i in range(len(paths)))),
                  paths, [0] * len(paths))
    jail = base / "jail"
    out = jail / "deep" / "out"
    jail.mkdir()
    before = set(base.rglob("*"))
    try:
        lmdbio.extract(db, out)
    except lmdbio.FormatError as exc:
        assert "refusing to extract" in str(exc)
        assert set(base.rglob("*")) == before  # nothing written anywhere
        return
    except lmdbio.DestinationError:  # two stored paths name one file: refused, inside OUTDIR
        pass
    written = set(base.rglob("*")) - before
    real_out = os.path.realpath(out)
    for path in written:
        assert os.path.realpath(path) == real_out or os.path.realpath(path).startswith(
            real_out + os.sep) or path in (jail / "deep", out), (paths, path)


def test_opening_a_database_never_runs_code(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = pickle.dumps(EvilPopen(marker))
    values = [seed_value(image, 0, "seed", 4) for image in seed_images()]
    values[0] = evil
    seed_db = write_seed_db(tmp_path / "seed.lmdb", values, subdir=False, length=evil)
    # an lmdbio-shaped file whose every value is a hostile pickle
    shaped = tmp_path / "shaped.lmdb"
    writer = LmdbWriter(str(shaped), 1 << 20)
    writer.commit(0, [(0, evil)], {"written": 1})
    with writer.env.begin(write=True) as txn:
        for key in (b"header", b"paths", b"targets", b"complete"):
            txn.put(key, evil if key != b"complete" else b"1", db=writer.meta)
    writer.close()
    entry_points = [
        lambda p: lmdbio.open_database(p), lambda p: ImageFolderLMDB(p),
        lambda p: lmdbio.info(p), lambda p: lmdbio.verify(p, decode=True),
        lambda p: lmdbio.extract(p, tmp_path / "out"),
    ]
    for path in (seed_db, shaped):
        for entry in entry_points:
            with pytest.raises(lmdbio.FormatError):  # LegacyFormatError is one
                entry(path)
        for command in (["info"], ["verify", "--decode"], ["extract", tmp_path / "o"]):
            assert_one_line_error(run_cli(*command[:1], path, *command[1:]))
    with pytest.raises(lmdbio.LegacyFormatError, match="refuses to load"):
        ImageFolderLMDB(seed_db, allow_pickle=True)  # opted in: still NumPy types only
    subprocess.run(["sleep", "0.2"])  # a Popen would have had time to run
    assert not marker.exists()


NAME = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="/\0"),
               min_size=1, max_size=30).filter(lambda n: len(os.fsencode(n + ".jpg")) < 250)
RAW_NAMES = [os.fsdecode(b"caf\xe9"), os.fsdecode(b"\xff\xfe"), " ", "\n", "\t tab",
             "trailing ", " leading", "\\back", "-dash", "..dots", "日本語 の 名前", "emoji 🐈"]


@settings(max_examples=40, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(st.lists(st.one_of(NAME, st.sampled_from(RAW_NAMES)), min_size=1, max_size=6,
                unique_by=lambda n: n.lower()))
def test_file_names_round_trip_exactly(tmp_path_factory, names) -> None:
    base = tmp_path_factory.mktemp("names")
    root = base / "src"
    files = {}
    for i, name in enumerate(names):
        rel = os.path.join(["cat", "sea lion"][i % 2], name + ".jpg")
        files[os.fsencode(rel)] = jpeg_bytes(i, (9, 7))
        write(root / rel, files[os.fsencode(rel)])
    for folder in ("cat", "sea lion"):
        (root / folder).mkdir(parents=True, exist_ok=True)
        if not any(True for _ in (root / folder).iterdir()):
            write(root / folder / "filler.jpg", jpeg_bytes(99, (9, 7)))
            files[os.fsencode(os.path.join(folder, "filler.jpg"))] = jpeg_bytes(99, (9, 7))
    db = lmdbio.convert(root, base / "db.lmdb", progress=False, workers=2).destination
    out = base / "out"
    assert lmdbio.extract(db, out) == len(files)
    back = {os.fsencode(os.path.relpath(p, out)): p.read_bytes()
            for p in out.rglob("*") if p.is_file()}
    assert back == files
