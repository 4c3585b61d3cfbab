"""Shared test helpers (plain functions, no fixtures; those are in ``conftest.py``): real
images and ImageFolder trees written with Pillow, seed-style (pytorch-lmdb) databases, and the
CLI run in a real subprocess. Used by the tests and by the drivers in ``tests/torture/``.

Tree builders, and how they differ:

* ``build_odd_tree``: every kind of image and file name torchvision accepts (23 images);
* ``build_simple_tree``: ``per_class`` distinct smooth+noise RGB JPEGs per named class
  (``a/00000.jpg``...), sizes and noise as asked;
* ``build_numbered_tree``: ``count`` JPEGs numbered globally and dealt round-robin over
  ``class0..classN`` (``class1/00004.jpg``), heavier noise (~8 KB at 64 px), optional bad files
  at given indices: the torture drivers' tree;
* ``build_big_tree``: ``BIG_COUNT`` (3000) ~10 KB JPEGs cut from one noisy gradient, with the two
  bad files ``BIG_BAD``: big enough to kill a conversion after a few commits.
"""

from __future__ import annotations

import collections
import hashlib
import io
import json
import os
import pickle
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import lmdb
import numpy as np
from PIL import Image

import lmdbio
from lmdbio.format import KEY_PROGRESS, META_DB, SAMPLES_DB

if TYPE_CHECKING:
    from torch.utils.data import DataLoader

REPO = Path(__file__).resolve().parent.parent  # the repository root

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


def pixels_jpeg(pixels: np.ndarray, quality: int = 90) -> bytes:
    """A uint8 HxWx3 array as JPEG bytes."""
    return encode(Image.fromarray(pixels), "JPEG", quality=quality)


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


def build_numbered_tree(root: Path, count: int, *, classes: int = 3, side: int = 64,
                        seed: int = 0, bad: Sequence[int] = ()) -> Path:
    """``count`` distinct noisy JPEGs (``side``² px; ~8 KB at 64) round-robin over ``classes``
    folders; the indices in ``bad`` hold non-image bytes instead. Deterministic in ``seed``."""
    y, x = np.mgrid[0:side, 0:side].astype(np.float32)
    for i in range(count):
        folder = root / f"class{i % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{i:05d}.jpg"
        if i in bad:
            path.write_bytes(b"not a jpeg, index %d" % i)
            continue
        rng = np.random.default_rng([seed, i])
        phase = rng.uniform(0, 6.28, 3)
        field = np.stack([127 + 100 * np.sin(x / (5 + c) + y / (9 + c) + phase[c])
                          for c in range(3)], axis=-1)
        pixels = np.clip(field + rng.normal(0, 30, field.shape), 0, 255).astype(np.uint8)
        path.write_bytes(pixels_jpeg(pixels))
    return root


BIG_COUNT = 3000
BIG_BAD = ["class0/00030.jpg", "class2/02999.jpg"]
BIG_KEPT = BIG_COUNT - len(BIG_BAD)


def build_big_tree(root: Path) -> Path:
    """BIG_COUNT distinct ~10 KB JPEGs in 3 classes: windows of one noisy gradient image."""
    rng = np.random.default_rng(7)
    y, x = np.mgrid[0:400, 0:400]
    base = np.stack([x * 0.6, y * 0.6, (x + y) * 0.3], axis=-1) + rng.normal(0, 40, (400, 400, 3))
    base = np.clip(base, 0, 255).astype(np.uint8)
    for i in range(BIG_COUNT):
        top, left = divmod(i, 300)
        crop = base[top:top + 72, left:left + 72]
        folder = root / f"class{i % 3}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{i:05d}.jpg").write_bytes(encode(Image.fromarray(crop), "JPEG", quality=92))
    for rel in BIG_BAD:  # one bad file early (before the kill), one last (after it)
        (root / rel).write_bytes(b"not a jpeg")
    return root


@dataclass(frozen=True)
class Converted:
    tree: Path
    db: Path


# -- databases ------------------------------------------------------------------------------------


def read_progress(partial: Path) -> dict:
    """The checkpoint of an unfinished ``DST.partial``, with its record count as ``entries``."""
    env = lmdb.open(str(partial), subdir=False, readonly=True, lock=False, max_dbs=2)
    try:
        meta = env.open_db(META_DB, create=False)
        samples = env.open_db(SAMPLES_DB, create=False)
        with env.begin() as txn:
            progress = json.loads(txn.get(KEY_PROGRESS, db=meta))
            progress["entries"] = txn.stat(samples)["entries"]
        return progress
    finally:
        env.close()


SEED_LABELS = [0, 2, 1, 1, 0, 2]


def seed_images() -> list[bytes]:
    """Images for a seed-style database, one per ``SEED_LABELS`` entry (the last a gray PNG)."""
    images = [jpeg_bytes(300 + i, (30 + i, 20 + i)) for i in range(len(SEED_LABELS) - 1)]
    images.append(encode(make_image(399, (12, 14)).convert("L"), "PNG"))
    return images


def write_seed_db(path: Path, values: list[bytes], *, subdir: bool,
                  length: bytes | None = None) -> Path:
    """As the seed's folder2lmdb does: str(idx) keys, pickled __keys__ and __len__."""
    env = lmdb.open(str(path), subdir=subdir, map_size=64 << 20, readonly=False,
                    meminit=False, map_async=True)
    with env.begin(write=True) as txn:
        for idx, value in enumerate(values):
            txn.put("{}".format(idx).encode("ascii"), value)
        keys = ["{}".format(k).encode("ascii") for k in range(len(values))]
        txn.put(b"__keys__", pickle.dumps(keys))
        txn.put(b"__len__", length if length is not None else pickle.dumps(len(keys)))
    env.sync()
    env.close()
    return path


def seed_value(image: bytes, label: int, style: str, protocol: int) -> bytes:
    if style == "seed":  # what the seed's batch-size-1 DataLoader hands its writer
        return pickle.dumps(([image], np.array([label])), protocol=protocol)
    return pickle.dumps((image, label), protocol=protocol)


class EvilPopen:
    """Unpickling this runs ``touch MARKER`` through ``subprocess.Popen``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (subprocess.Popen, (["touch", str(self.marker)],))


# -- datasets -------------------------------------------------------------------------------------


# Module level: spawn workers import this module to unpickle a dataset using them.
def pixel_digest(image) -> str:
    assert image.mode == "RGB"
    return hashlib.sha256(image.tobytes() + repr(image.size).encode()).hexdigest()


def expected_digests(tree: Path) -> collections.Counter[tuple[str, int]]:
    """``(pixel digest, target)`` counts of ``tree`` as torchvision's ImageFolder loads it."""
    from torchvision.datasets import ImageFolder

    reference = ImageFolder(str(tree), transform=pixel_digest)
    return collections.Counter(reference[i] for i in range(len(reference)))


def seen(loader: DataLoader) -> collections.Counter[tuple[str, int]]:
    """``(digest, target)`` counts a loader of ``transform=pixel_digest`` yields."""
    found: collections.Counter[tuple[str, int]] = collections.Counter()
    for digest, target in loader:
        assert isinstance(digest, str)
        found[(digest, int(target))] += 1
    return found


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
