"""``convert --max-size N [--quality Q]``: sizes, aspect, untouched small images, formats,
metadata and ``info``, resume with another setting refused, order and labels unchanged, the
CLI's usage errors, and no torch in the command line."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import lmdbio
from lmdbio.decode import decode_pil
from lmdbio.format import Metadata
from lmdbio.resize import Resizer, fitted_size, make_resizer
from lmdbio.sources import list_source
from lmdbio.writer import LmdbWriter

from tests.helpers import (REPO, assert_one_line_error, encode, image_files, jpeg_bytes, make_image,
                      run_cli, write)

N = 64


def build_mixed_tree(root: Path) -> Path:
    """Images above, at and below N px, in every format and mode the resizer handles."""
    seed = iter(range(500, 600))

    def image(size: tuple[int, int]) -> Image.Image:
        return make_image(next(seed), size)

    a, b = root / "a", root / "b"
    write(a / "landscape.jpg", jpeg_bytes(next(seed), (400, 300)))
    write(a / "portrait.jpg", jpeg_bytes(next(seed), (150, 401)))
    write(a / "odd.jpg", jpeg_bytes(next(seed), (1001, 67)))     # shorter side -> 4 px
    write(a / "thin.jpg", jpeg_bytes(next(seed), (700, 3)))      # shorter side -> 1 px (min)
    write(a / "at_limit.jpg", jpeg_bytes(next(seed), (N, 50)))   # == N: untouched
    write(a / "small.jpg", jpeg_bytes(next(seed), (40, 30)))
    write(a / "gray.jpg", encode(image((200, 160)).convert("L"), "JPEG", quality=90))
    write(a / "cmyk.jpg", encode(image((180, 120)).convert("CMYK"), "JPEG", quality=90))
    write(a / "progressive.jpg", encode(image((300, 220)), "JPEG", quality=85,
                                        progressive=True))
    write(b / "big.png", encode(image((200, 100)), "PNG"))
    rgba = image((150, 150)).convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize((150, 150)))
    write(b / "rgba.png", encode(rgba, "PNG"))
    write(b / "palette.png", encode(image((120, 90)).convert(
        "P", palette=Image.Palette.ADAPTIVE, colors=16), "PNG"))
    write(b / "small.png", encode(image((30, 20)), "PNG"))
    write(b / "bitmap.bmp", encode(image((99, 70)), "BMP"))
    write(b / "web.webp", encode(image((130, 65)), "WEBP", lossless=True))
    return root


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("maxsize")
    tree = build_mixed_tree(base / "train")
    report = lmdbio.convert(tree, base / "train.lmdb", max_size=N, progress=False, workers=4)
    return tree, Path(report.destination)


def stored(db: Path) -> dict[str, bytes]:
    """``{relative path: payload}`` of every record."""
    with lmdbio.open_database(db) as database:
        return {rel: bytes(database.get(i)[1])
                for i, rel in enumerate(database.relative_paths())}


# -- what is stored -------------------------------------------------------------------------------


def test_sizes_fit_aspect_kept_and_small_images_untouched(mixed) -> None:
    tree, db = mixed
    sources, payloads = image_files(tree), stored(db)
    assert list(payloads) == list(sources)  # same files, same order
    untouched = []
    for rel, original in sources.items():
        width, height = Image.open(io.BytesIO(original)).size
        with Image.open(io.BytesIO(payloads[rel])) as result:
            size = result.size
        if max(width, height) <= N:
            assert payloads[rel] == original, rel  # byte for byte
            untouched.append(rel)
            continue
        assert max(size) == N and min(size) >= 1, (rel, size)
        assert size == fitted_size(width, height, N), rel
        long_, short = max(width, height), min(width, height)
        exact = short * N / long_
        assert abs(min(size) - max(exact, 1)) <= 0.5, rel  # aspect within rounding, >= 1 px
        assert (size[0] >= size[1]) == (width >= height), rel   # orientation kept
    assert sorted(untouched) == ["a/at_limit.jpg", "a/small.jpg", "b/small.png"]


def test_formats_and_modes_of_resized_images(mixed) -> None:
    tree, db = mixed
    payloads = stored(db)
    formats = {rel: Image.open(io.BytesIO(data)) for rel, data in payloads.items()}
    for rel, image in formats.items():
        expected = "JPEG" if rel.endswith(".jpg") else "PNG"
        if rel in ("a/at_limit.jpg", "a/small.jpg", "b/small.png"):
            continue
        assert image.format == expected, (rel, image.format)  # BMP, WebP -> PNG (lossless)
        assert image.mode == ("L" if rel == "a/gray.jpg" else "RGB"), (rel, image.mode)


def test_resized_pixels_are_the_resized_picture(mixed) -> None:
    tree, db = mixed
    sources, payloads = image_files(tree), stored(db)
    for rel, original in sources.items():
        full = decode_pil(original)
        if max(full.size) <= N:
            continue
        got = np.asarray(decode_pil(payloads[rel]), dtype=np.int16)
        resized = full.resize(got.shape[1::-1], Image.Resampling.LANCZOS)
        reference = np.asarray(resized, dtype=np.int16)
        difference = np.abs(got - reference).mean()
        if rel.endswith(".jpg"):  # lossy: as close as JPEG at that quality gets, give or take
            again = decode_pil(encode(resized, "JPEG", quality=90, subsampling=0))
            loss = np.abs(np.asarray(again, dtype=np.int16) - reference).mean()
            assert difference < loss + 1.0, (rel, difference, loss)
        else:  # lossless: only draft / reducing_gap against a plain LANCZOS from full size
            assert difference < 1.0, (rel, difference)


def test_quality_is_applied_and_recorded(tmp_path: Path) -> None:
    tree = tmp_path / "t"
    write(tree / "a" / "x.jpg", jpeg_bytes(1, (300, 200)))
    write(tree / "a" / "y.png", encode(make_image(2, (300, 200)), "PNG"))
    low = lmdbio.convert(tree, tmp_path / "low.lmdb", max_size=N, quality=30, progress=False)
    high = lmdbio.convert(tree, tmp_path / "high.lmdb", max_size=N, quality=95, progress=False)
    low_data, high_data = stored(Path(low.destination)), stored(Path(high.destination))
    assert len(low_data["a/x.jpg"]) < len(high_data["a/x.jpg"])
    assert low_data["a/y.png"] == high_data["a/y.png"]  # PNG is lossless: quality n/a
    assert lmdbio.info(low.destination).quality == 30


def test_resize_is_deterministic_and_resizer_rejects_undecodable_images() -> None:
    data = jpeg_bytes(3, (500, 300))
    assert Resizer(N)(data) == Resizer(N)(data)
    assert Resizer(600)(data) is data
    with pytest.raises(ValueError):
        Resizer(N)(data[: len(data) // 2])  # truncated: fails to decode, not silently padded


# -- metadata, info -------------------------------------------------------------------------------


def test_metadata_and_info_record_the_setting(mixed, tmp_path: Path) -> None:
    tree, db = mixed
    with lmdbio.open_database(db) as database:
        assert (database.meta.max_size, database.meta.quality) == (N, 90)
    proc = run_cli("info", db, "--json")
    assert proc.returncode == 0, proc.stderr
    body = json.loads(proc.stdout)
    assert (body["max_size"], body["quality"]) == (N, 90)
    text = run_cli("info", db).stdout
    assert f"downscaled to fit {N} px at conversion (JPEG quality 90)" in text

    plain = lmdbio.convert(tree, tmp_path / "plain.lmdb", progress=False)
    assert stored(Path(plain.destination)) == image_files(tree)  # default: original bytes
    with lmdbio.open_database(plain.destination) as database:
        assert (database.meta.max_size, database.meta.quality) == (None, None)
        header = json.loads(database.meta.to_json())
    assert header["max_size"] is None and header["quality"] is None
    assert "images: the source files' bytes" in run_cli("info", plain.destination).stdout


@pytest.mark.parametrize("fields, message", [
    ({"max_size": 0}, "max_size 0"), ({"max_size": "64"}, "max_size is str"),
    ({"quality": 101}, "quality 101"), ({"quality": True}, "quality is bool"),
])
def test_malformed_settings_in_a_header_are_format_errors(fields, message) -> None:
    body = json.loads(Metadata(1, ["a"], "/x", "f", [".jpg"], 10).to_json()) | fields
    with pytest.raises(lmdbio.FormatError, match=message):
        Metadata.from_json(json.dumps(body).encode(), "x.lmdb")
    older = {k: v for k, v in body.items() if k not in ("max_size", "quality")}
    meta = Metadata.from_json(json.dumps(older).encode(), "x.lmdb")  # before --max-size
    assert (meta.max_size, meta.quality) == (None, None)


# -- order and labels -----------------------------------------------------------------------------


def test_order_and_labels_match_imagefolder(mixed) -> None:
    from torchvision.datasets import ImageFolder

    tree, db = mixed
    reference = ImageFolder(str(tree))
    dataset = lmdbio.ImageFolderLMDB(db)
    assert dataset.classes == reference.classes
    assert dataset.samples == reference.samples and dataset.targets == reference.targets
    for i in range(len(reference)):
        image, target = dataset[i]
        original, expected = reference[i]
        assert target == expected and image.mode == "RGB"
        fit = original.size if max(original.size) <= N else fitted_size(*original.size, N)
        assert image.size == fit


# -- resume ---------------------------------------------------------------------------------------


def make_partial(tree: Path, dst: Path, count: int, resize: object) -> Path:
    """``DST.partial`` as a conversion killed after committing ``count`` records leaves it
    (``resize=None``: a checkpoint written before lmdbio knew --max-size)."""
    listing = list_source(tree)
    resizer = Resizer(*resize) if isinstance(resize, list) and resize[0] else None
    records = []
    for i in range(count):
        data = (tree / listing.relative_paths[i]).read_bytes()
        records.append((listing.targets[i], resizer(data) if resizer else data))
    checkpoint = {"fingerprint": listing.fingerprint, "position": count, "written": count,
                  "payload_bytes": sum(len(d) for _, d in records), "skipped": [],
                  "shard": [0, 1]}
    if resize is not None:
        checkpoint["resize"] = resize
    partial = Path(f"{dst}.partial")
    writer = LmdbWriter(str(partial))
    writer.commit(0, records, checkpoint)
    writer.close()
    return partial


@pytest.mark.parametrize("saved, argv, said", [
    ([N, 90], [], f"--max-size {N} --quality 90, not original images"),
    ([N, 90], ["--max-size", "32"], f"--max-size {N} --quality 90, not --max-size 32"),
    ([N, 90], ["--max-size", str(N), "--quality", "80"], "--quality 90, not --max-size"),
    ([None, None], ["--max-size", str(N)], "original images (no --max-size), not --max-size"),
    (None, ["--max-size", str(N)], "original images (no --max-size), not --max-size"),
    ("junk", [], "an unknown resize setting 'junk', not original images"),
])
def test_resume_with_another_setting_is_refused(mixed, tmp_path: Path, saved, argv,
                                                said) -> None:
    tree, _ = mixed
    dst = tmp_path / "out.lmdb"
    partial = make_partial(tree, dst, 5, saved)
    kept = partial.read_bytes()
    line = assert_one_line_error(run_cli("convert", tree, dst, "-q", "--resume", *argv),
                                 repr(str(partial)), said, "convert again without --resume")
    assert "ResumeError" not in line and not dst.exists()
    assert partial.read_bytes() == kept  # the resumable work is kept


def test_resume_with_the_same_setting_matches_an_uninterrupted_run(mixed,
                                                                   tmp_path: Path) -> None:
    tree, reference = mixed
    dst = tmp_path / "out.lmdb"
    make_partial(tree, dst, 7, [N, 90])
    proc = run_cli("convert", tree, dst, "-q", "--resume", "--max-size", str(N))
    assert proc.returncode == 0, proc.stderr
    assert "resumed after 7 images" in proc.stdout
    assert stored(dst) == stored(reference)
    with lmdbio.open_database(dst) as database:
        assert (database.meta.max_size, database.meta.quality) == (N, 90)


def test_finished_partial_with_another_setting_is_refused(mixed, tmp_path: Path) -> None:
    tree, reference = mixed
    dst = tmp_path / "out.lmdb"
    partial = Path(f"{dst}.partial")
    shutil.copyfile(reference, partial)  # killed after its last commit, before the rename
    assert_one_line_error(run_cli("convert", tree, dst, "-q", "--resume"), repr(str(partial)),
                          f"--max-size {N} --quality 90, not original images")
    assert partial.exists() and not dst.exists()
    proc = run_cli("convert", tree, dst, "-q", "--resume", "--max-size", str(N))
    assert proc.returncode == 0, proc.stderr  # the matching setting publishes it
    assert stored(dst) == stored(reference)


# -- shards ---------------------------------------------------------------------------------------


def test_shards_carry_the_setting_and_a_mixed_set_is_refused(mixed, tmp_path: Path) -> None:
    tree, reference = mixed
    reports = lmdbio.convert_shards(tree, tmp_path / "s.lmdb", 2, max_size=N, progress=False)
    paths = [r.destination for r in reports]
    with lmdbio.ShardedDatabase(paths) as shards:
        assert shards.meta.max_size == N
        assert [bytes(shards.get(i)[1]) for i in range(len(shards))] == list(
            stored(reference).values())
    os.unlink(paths[1])
    lmdbio.convert(tree, tmp_path / "s.lmdb", shard=(1, 2), progress=False)  # no --max-size
    with pytest.raises(lmdbio.ShardSetError, match="original images"):
        lmdbio.ShardedDatabase(paths)


# -- the command line -----------------------------------------------------------------------------


@pytest.mark.parametrize("argv", [["--max-size", "0"], ["--max-size", "-3"],
                                  ["--max-size", "x"], ["--quality", "0"],
                                  ["--quality", "101"]])
def test_bad_values_are_usage_errors(simple_tree: Path, tmp_path: Path, argv) -> None:
    dst = tmp_path / "out.lmdb"
    proc = run_cli("convert", simple_tree, dst, "--max-size", "32", *argv)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.splitlines()[-1].startswith("lmdbio convert: error: argument "
                                                   + argv[0])
    assert not dst.exists() and not Path(f"{dst}.partial").exists()


def test_quality_without_max_size_is_refused(simple_tree: Path, tmp_path: Path) -> None:
    dst = tmp_path / "out.lmdb"
    assert_one_line_error(run_cli("convert", simple_tree, dst, "--quality", "80"),
                          "quality 80", "--max-size")
    assert not dst.exists() and not Path(f"{dst}.partial").exists()
    with pytest.raises(lmdbio.ResizeOptionError, match="max_size must be an int >= 1"):
        make_resizer(0, None)
    with pytest.raises(lmdbio.ResizeOptionError, match="quality must be an int from 1 to 100"):
        lmdbio.convert(simple_tree, dst, max_size=N, quality=0)


def test_bad_image_with_max_size_follows_on_error(simple_tree: Path, tmp_path: Path) -> None:
    victim = simple_tree / "a" / "00001.jpg"
    whole = bytearray(jpeg_bytes(77, (200, 120), noise=30))
    start = whole.index(b"\xff\xc0")  # frame header: claim 12-bit samples libjpeg will refuse
    whole[start + 4] = 12
    victim.write_bytes(bytes(whole))
    assert run_cli("convert", simple_tree, tmp_path / "plain.lmdb", "-q", "--check",
                   "structure").returncode == 0  # headers and markers are sound
    assert_one_line_error(run_cli("convert", simple_tree, tmp_path / "x.lmdb", "-q",
                                  "--max-size", "32"), repr(str(victim)), "on-error skip")
    proc = run_cli("convert", simple_tree, tmp_path / "y.lmdb", "-q", "--max-size", "32",
                   "--on-error", "skip")
    assert proc.returncode == 0, proc.stderr
    assert "a/00001.jpg" in proc.stdout and lmdbio.info(tmp_path / "y.lmdb").skipped == 1


PROBE = """
import sys
import lmdbio.cli
assert lmdbio.cli.main(["convert", sys.argv[1], sys.argv[2], "-q", "--max-size", "16",
                        "--quality", "80"]) == 0
assert lmdbio.cli.main(["info", sys.argv[2]]) == 0
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "torchvision"))
print("HEAVY", heavy)
"""


def test_convert_with_max_size_does_not_import_torch(simple_tree: Path, tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-c", PROBE, str(simple_tree),
                           str(tmp_path / "o.lmdb")], capture_output=True, text=True, cwd=REPO,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY []" in proc.stdout
    assert "downscaled to fit 16 px" in proc.stdout


def test_full_decodes_in_flight_are_bounded_by_the_cpus(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Memory: 16 read threads, but at most one decoded image per CPU at any time."""
    import threading
    import time

    tree = tmp_path / "t"
    for i in range(96):  # 6 read tasks of 16 files
        write(tree / "a" / f"{i:03d}.jpg", jpeg_bytes(i, (300, 200)))
    lock, state = threading.Lock(), {"now": 0, "peak": 0}
    shrink = Resizer._shrink

    def counted(self: Resizer, image) -> bytes:
        with lock:
            state["now"] += 1
            state["peak"] = max(state["peak"], state["now"])
        try:
            time.sleep(0.002)  # let the other threads pile up
            return shrink(self, image)
        finally:
            with lock:
                state["now"] -= 1

    monkeypatch.setattr(Resizer, "_shrink", counted)
    report = lmdbio.convert(tree, tmp_path / "o.lmdb", max_size=32, workers=16,
                            progress=False)
    assert report.num_samples == 96
    assert 1 <= state["peak"] <= len(os.sched_getaffinity(0))
