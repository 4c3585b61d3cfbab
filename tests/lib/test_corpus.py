"""convert on a corpus of odd and broken images (tests/lib/corpus.py): what it reports as done
always decodes, exactly as torchvision's loader would, and every refusal says why."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.datasets.folder import pil_loader

import lmdbio
from lmdbio.dataset import ImageTooLargeError
from tests.lib import corpus


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> tuple[Path, list[corpus.Entry]]:
    root = tmp_path_factory.mktemp("corpus") / "src"
    return root, corpus.build(root)


@pytest.fixture(scope="module")
def default_db(tree, tmp_path_factory) -> lmdbio.ConvertReport:
    root, _ = tree
    return lmdbio.convert(root, tmp_path_factory.mktemp("db") / "default.lmdb",
                          on_error="skip", progress=False, allow_empty=True)  # bad/: empty


@pytest.fixture(scope="module")
def structural_db(tree, tmp_path_factory) -> lmdbio.ConvertReport:
    root, _ = tree
    return lmdbio.convert(root, tmp_path_factory.mktemp("db") / "structure.lmdb",
                          on_error="skip", progress=False, check="structure")


def loads(path: Path) -> bool:
    try:
        pil_loader(path)
    except Exception:  # noqa: BLE001 - whatever ImageFolder's loader raises
        return False
    return True


def test_the_corpus_is_small_and_covers_each_failure_class(tree) -> None:
    _, entries = tree
    assert sum(len(e.data) for e in entries) < 2_000_000
    names = {e.name for e in entries}
    assert {"bad/bomb_20000.png", "bad/bomb_30000.jpg", "bad/precision12.jpg",
            "bad/compression1.png", "bad/truncated.jpg", "bad/bad_palette.png",
            "good/animated.png", "good/cmyk.jpg", "good/gray16.png", "good/palette_trns.png",
            "good/exif_rotated.jpg", "good/progressive.jpg", "good/rgb.tif", "good/rgb.bmp",
            "good/rgb.webp"} <= names
    assert all(e.name.lower().endswith(lmdbio.IMG_EXTENSIONS) for e in entries)


def test_default_convert_stores_exactly_what_the_loader_loads(tree, default_db) -> None:
    root, entries = tree
    for entry in entries:  # the corpus's own labels agree with torchvision's loader
        assert loads(root / entry.name) == (entry.reason is None), entry.name
    dataset = lmdbio.ImageFolderLMDB(default_db.destination)
    stored = {os.path.relpath(path, root) for path, _ in dataset.samples}
    assert stored == {e.name for e in entries if e.reason is None}
    assert dataset.classes == ["bad", "good"] and default_db.check == "decode"
    dataset.close()


def test_every_bad_file_is_refused_with_its_reason(tree, default_db) -> None:
    _, entries = tree
    reasons = dict(default_db.skipped)
    bad = [e for e in entries if e.reason is not None]
    assert sorted(reasons) == sorted(e.name for e in bad)
    for entry in bad:
        assert entry.reason.lower() in reasons[entry.name].lower(), (entry.name, reasons)
    assert "MAX_IMAGE_PIXELS" in reasons["bad/bomb_20000.png"]
    with lmdbio.Database(default_db.destination) as db:  # and the metadata keeps them
        assert dict(db.meta.skipped) == reasons and db.meta.check == "decode"
    assert str(len(bad)) in str(default_db) and "bad/bomb_30000.jpg" in str(default_db)


def test_good_images_have_imagefolders_pixels(default_db) -> None:
    dataset = lmdbio.ImageFolderLMDB(default_db.destination)
    for index, (path, target) in enumerate(dataset.samples):
        image, label = dataset[index]
        expected = pil_loader(path)
        assert label == target and image.mode == expected.mode == "RGB"
        assert np.array_equal(np.asarray(image), np.asarray(expected)), path
    dataset.close()


def test_full_check_agrees_with_the_default(tree, tmp_path) -> None:
    root, entries = tree
    report = lmdbio.convert(root, tmp_path / "full.lmdb", on_error="skip", progress=False,
                            check="full", allow_empty=True)
    assert sorted(p for p, _ in report.skipped) == sorted(
        e.name for e in entries if e.reason is not None)


def test_the_structural_opt_out_stores_only_what_its_guarantee_allows(tree,
                                                                      structural_db) -> None:
    root, entries = tree
    dataset = lmdbio.ImageFolderLMDB(structural_db.destination)
    stored = [os.path.relpath(path, root) for path, _ in dataset.samples]
    assert set(stored) == {e.name for e in entries if e.structural}
    assert structural_db.check == "structure"
    broken = [i for i, name in enumerate(stored) if not loads(root / name)]
    assert broken  # what the opt-out may let through: it fails when read, and says where
    for index in broken:
        with pytest.raises(lmdbio.ImageDecodeError) as caught:
            dataset[index]
        message = str(caught.value)
        assert f"record {index} ({stored[index]!r})" in message and "re-convert" in message
        assert isinstance(caught.value, OSError)
    bomb = stored.index("bad/bomb_20000.png")
    with pytest.raises(Image.DecompressionBombError):  # Pillow's own type, as ImageFolder
        dataset[bomb]
    with pytest.raises(ImageTooLargeError, match="bomb_20000.png"):
        dataset[bomb]
    dataset.close()


def test_an_unidentifiable_stored_image_raises_pillows_type_as_imagefolder(tmp_path) -> None:
    """A PNG of colour type 9 passes the structural check; Pillow cannot identify it, and
    ``except UnidentifiedImageError`` written for ImageFolder catches lmdbio's error too."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    root = tmp_path / "src"
    (root / "a").mkdir(parents=True)
    (root / "a" / "x.png").write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 4, 4, 8, 9, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))
    with pytest.raises(Image.UnidentifiedImageError):
        pil_loader(root / "a" / "x.png")
    lmdbio.convert(root, tmp_path / "x.lmdb", progress=False, check="structure")
    dataset = lmdbio.ImageFolderLMDB(tmp_path / "x.lmdb")
    with pytest.raises(Image.UnidentifiedImageError) as caught:
        dataset[0]
    assert isinstance(caught.value, lmdbio.ImageDecodeError)
    assert "record 0 ('a/x.png')" in str(caught.value) and "\n" not in str(caught.value)
    dataset.close()


def test_verify_decode_names_the_stored_paths(structural_db) -> None:
    report = lmdbio.verify(structural_db.destination, decode=True)
    assert not report.ok
    assert any(p.startswith("record ") and "'bad/bomb_30000.jpg'" in p
               for p in report.problems), report.problems
    assert all(re.match(r"record \d+: '(bad|good)/", p) for p in report.problems)
    assert lmdbio.verify(structural_db.destination).ok  # the bytes themselves are intact


def test_read_errors_name_the_record_in_dataloader_workers(tree, structural_db) -> None:
    root, _ = tree
    dataset = lmdbio.ImageFolderLMDB(structural_db.destination)
    stored = [os.path.relpath(path, root) for path, _ in dataset.samples]
    index = stored.index("bad/zlib_garbage.png")
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, [index]),
                                         num_workers=1, multiprocessing_context="fork",
                                         collate_fn=lambda batch: batch)
    with pytest.raises(lmdbio.ImageDecodeError, match=rf"record {index} \('bad/zlib_garbage"):
        next(iter(loader))
    dataset.close()


def test_pillow_warnings_go_to_the_report_not_stderr(tmp_path, monkeypatch, capfd) -> None:
    root = tmp_path / "src"
    (root / "a").mkdir(parents=True)
    Image.new("RGB", (40, 30), "red").save(root / "a" / "large.png")  # 1 200 px
    Image.new("RGB", (10, 10), "blue").save(root / "a" / "small.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # over it, under twice it: a warning
    with warnings.catch_warnings(record=True) as escaped:
        warnings.simplefilter("always")
        report = lmdbio.convert(root, tmp_path / "w.lmdb", progress=False)
    assert report.num_samples == 2 and not escaped
    assert [path for path, _ in report.warnings] == ["a/large.png"]
    assert "DecompressionBombWarning" in report.warnings[0][1]
    assert "warnings" in str(report) and capfd.readouterr().err == ""
    with lmdbio.Database(report.destination) as db:
        assert db.meta.warnings == report.warnings


def run_cli(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "lmdbio.cli", *map(str, args)],
                          capture_output=True, text=True)


def test_cli_quiet_failure_is_one_line_in_cli_words(tree, tmp_path) -> None:
    root, _ = tree
    proc = run_cli("convert", root, tmp_path / "x.lmdb", "-q")
    assert proc.returncode == 1 and proc.stdout == ""
    assert len(proc.stderr.splitlines()) == 1, proc.stderr
    line = proc.stderr.strip()
    assert "bad_crc.png" in line and "--on-error skip" in line and "on_error=" not in line
    assert not (tmp_path / "x.lmdb").exists()
    proc = run_cli("convert", root, tmp_path / "s.lmdb", "-q", "--check", "structure")
    assert proc.returncode == 1 and len(proc.stderr.splitlines()) == 1  # empty.png, text.jpg


def test_api_errors_speak_api(tree, tmp_path) -> None:
    root, _ = tree
    with pytest.raises(lmdbio.SourceFileError) as caught:
        lmdbio.convert(root, tmp_path / "x.lmdb", progress=False)
    assert 'on_error="skip"' in str(caught.value) and "--on-error" not in str(caught.value)


def test_an_all_broken_tree_is_an_error_not_an_empty_database(tmp_path) -> None:
    root = tmp_path / "src"
    for name, entry in (("a", corpus.entries()[-1]), ("b", corpus.entries()[-2])):
        (root / name).mkdir(parents=True)
        (root / name / "x.png").write_bytes(entry.data)
    with pytest.raises(lmdbio.SourceError, match="every one of the 2 files") as caught:
        lmdbio.convert(root, tmp_path / "out.lmdb", on_error="skip", progress=False)
    assert not (tmp_path / "out.lmdb").exists()
    assert not (tmp_path / "out.lmdb.partial").exists()
    # the remedy: never the opt-out that would store files which fail to decode
    remedy = str(caught.value).rsplit("; ", 1)[1]
    assert remedy == "nothing to store: fix or replace the files, or convert the folder that " \
                     "holds the images", remedy
    for check in ("structure", "full"):
        with pytest.raises(lmdbio.SourceError, match="every one of the 2 files.*fix or replace"):
            lmdbio.convert(root, tmp_path / "out.lmdb", on_error="skip", check=check,
                           progress=False)


def test_a_class_that_loses_every_file_needs_allow_empty(tmp_path) -> None:
    root = tmp_path / "src"
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    Image.new("RGB", (8, 8), "red").save(root / "a" / "ok.png")
    (root / "b" / "junk.jpg").write_bytes(b"junk")
    with pytest.raises(lmdbio.SourceError, match="classes b was refused.*allow_empty=True"):
        lmdbio.convert(root, tmp_path / "out.lmdb", on_error="skip", progress=False)
    report = lmdbio.convert(root, tmp_path / "out.lmdb", on_error="skip", progress=False,
                            allow_empty=True)
    assert lmdbio.info(report.destination).class_counts == {"a": 1, "b": 0}
    proc = run_cli("convert", root, tmp_path / "cli.lmdb", "-q", "--on-error", "skip")
    assert proc.returncode == 1 and "--allow-empty" in proc.stderr
