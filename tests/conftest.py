"""Shared fixtures: real ImageFolder trees with awkward images and names, real LMDB files.

Nothing is mocked. Trees are written with Pillow, converted with the real converter, and the
CLI runs in real subprocesses.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import lmdbio

REPO = Path(__file__).resolve().parent.parent

# -- images ---------------------------------------------------------------------------------------


def make_image(seed: int, size: tuple[int, int] = (40, 30), noise: int = 12) -> Image.Image:
    """A smooth colour field plus some noise: compresses like a photo, unique per ``seed``."""
    width, height = size
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    phase = rng.uniform(0, 6.28, size=3)
    channels = [127 + 100 * np.sin(x / (7 + 3 * c) + y / (11 + c) + phase[c]) for c in range(3)]
    arr = np.stack(channels, axis=-1) + rng.normal(0, noise, size=(height, width, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


def encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def jpeg_bytes(seed: int, size: tuple[int, int] = (40, 30), noise: int = 12,
               quality: int = 90) -> bytes:
    return encode(make_image(seed, size, noise), "JPEG", quality=quality)


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


# -- trees ----------------------------------------------------------------------------------------

# Relative paths of the image files of the odd tree that an ImageFolder must list.
NEWLINE_NAME = "new\nline.jpg"


def build_odd_tree(root: Path) -> Path:
    """An ImageFolder tree with every kind of image and name torchvision accepts.

    Three classes (one with a space), RGB JPEGs of several sizes, PNG (RGB, RGBA, palette),
    grayscale and CMYK JPEGs, BMP/TIFF/WebP, upper-case extensions, nested sub-folders, names
    with spaces, unicode, a newline, a backslash, a non-UTF-8 byte, a hidden file, a folder whose
    name looks like an image, and files that must be ignored (``notes.txt``, a root-level image).
    """
    seed = iter(range(1000, 2000))
    cat, dog, lion = root / "cat", root / "dog", root / "sea lion"
    write(cat / "a.jpg", jpeg_bytes(next(seed), (40, 30)))
    write(cat / "b_big.jpg", jpeg_bytes(next(seed), (160, 120)))
    write(cat / "upper.JPEG", jpeg_bytes(next(seed), (33, 17)))
    write(cat / "with space.jpg", jpeg_bytes(next(seed), (24, 24)))
    write(cat / "ünïcødé 猫.png", encode(make_image(next(seed), (20, 28)), "PNG"))
    rgba = make_image(next(seed), (30, 20)).convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize((30, 20)))
    write(cat / "rgba.png", encode(rgba, "PNG"))
    write(cat / "sub" / "nested.jpg", jpeg_bytes(next(seed), (50, 40)))
    write(cat / "sub" / "deeper" / "palette.png",
          encode(make_image(next(seed), (26, 26)).convert("P", palette=Image.Palette.ADAPTIVE,
                                                          colors=16), "PNG"))
    write(cat / "looks.jpg" / "inside.jpg", jpeg_bytes(next(seed), (16, 16)))  # a folder
    write(cat / ".hidden.jpg", jpeg_bytes(next(seed), (18, 18)))
    write(cat / "notes.txt", b"not an image, must be ignored\n")
    write(dog / "gray.jpg", encode(make_image(next(seed), (40, 30)).convert("L"), "JPEG"))
    write(dog / "cmyk.jpg", encode(make_image(next(seed), (36, 28)).convert("CMYK"), "JPEG"))
    write(dog / NEWLINE_NAME, jpeg_bytes(next(seed), (22, 30)))
    write(dog / "back\\slash.jpg", jpeg_bytes(next(seed), (21, 21)))
    write(dog / "SHOUT.PNG", encode(make_image(next(seed), (25, 15)), "PNG"))
    write(dog / "progressive.jpg", encode(make_image(next(seed), (64, 48)), "JPEG",
                                          progressive=True, quality=80))
    write(dog / "bitmap.bmp", encode(make_image(next(seed), (19, 13)), "BMP"))
    write(dog / "tiff.tif", encode(make_image(next(seed), (17, 11)), "TIFF"))
    write(dog / "web.webp", encode(make_image(next(seed), (23, 19)), "WEBP", lossless=True))
    write(dog / "data.json", b"{}")
    latin1 = os.fsdecode(b"caf\xe9.jpg")  # not UTF-8: a surrogate-escaped str in Python
    write(dog / latin1, jpeg_bytes(next(seed), (20, 20)))
    write(lion / "one.jpg", jpeg_bytes(next(seed), (120, 80)))
    write(lion / "two.jpg", jpeg_bytes(next(seed), (80, 120)))
    write(lion / "three.png", encode(make_image(next(seed), (31, 31)), "PNG"))
    write(root / "root-level.jpg", jpeg_bytes(next(seed)))  # not in a class: ignored
    return root


def image_files(root: Path) -> dict[str, bytes]:
    """``{relative path: bytes}`` of every file an ImageFolder on ``root`` lists."""
    found = {}
    for path, _ in lmdbio.make_dataset(root, lmdbio.find_classes(root)[1]):
        found[os.path.relpath(path, root)] = Path(path).read_bytes()
    return found


def build_simple_tree(root: Path, per_class: int = 3, classes: tuple[str, ...] = ("a", "b"),
                      size: tuple[int, int] = (32, 24), noise: int = 12,
                      seed: int = 0) -> Path:
    """A plain tree of distinct RGB JPEGs, ``per_class`` per class."""
    for c, name in enumerate(classes):
        for i in range(per_class):
            write(root / name / f"{i:05d}.jpg", jpeg_bytes(seed + 10_000 * c + i, size, noise))
    return root


@dataclass(frozen=True)
class Converted:
    tree: Path
    db: Path


@pytest.fixture
def odd_tree(tmp_path: Path) -> Path:
    return build_odd_tree(tmp_path / "train")


@pytest.fixture(scope="session")
def odd_db(tmp_path_factory: pytest.TempPathFactory) -> Converted:
    """The odd tree converted once per session; tests must not modify either."""
    base = tmp_path_factory.mktemp("odd")
    tree = build_odd_tree(base / "train")
    report = lmdbio.convert(tree, base / "train.lmdb", progress=False, workers=4)
    return Converted(tree, Path(report.destination))


@pytest.fixture
def simple_tree(tmp_path: Path) -> Path:
    return build_simple_tree(tmp_path / "simple")


# -- subprocesses ---------------------------------------------------------------------------------


def run_cli(*args: object, timeout: float = 120, cwd: Path | None = None,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m lmdbio.cli ARGS`` in a fresh interpreter; text output, never raises."""
    return subprocess.run([sys.executable, "-m", "lmdbio.cli", *map(os.fspath, args)],
                          capture_output=True, text=True, errors="backslashreplace",
                          timeout=timeout, cwd=cwd or REPO, env=env)


def assert_one_line_error(proc: subprocess.CompletedProcess[str], *needles: str) -> str:
    """The CLI failed with exit code 1 and exactly one ``lmdbio: error:`` line naming needles."""
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and proc.stderr.endswith("\n"), proc.stderr
    line = lines[0]
    assert line.startswith("lmdbio: error: "), line
    for needle in needles:
        assert needle in line, (needle, line)
    return line
