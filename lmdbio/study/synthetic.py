"""Deterministic synthetic cats-vs-dogs ImageFolder tree for benchmarks without real data.

The data-loading benchmarks need a dataset shaped like Kaggle's "Dogs vs. Cats": ~25k JPEGs
of roughly 500x375, ~30 KB each, in ``<split>/cat`` and ``<split>/dog``.  Random pixel noise
would be a poor stand-in (incompressible, slow to decode, unlearnable), so each image is
painted from smooth fields -- multi-octave upsampled noise, soft ellipses for body and head,
lighting gradients and mild fur texture -- giving natural-image-like JPEG sizes and decode
costs.  Cats and dogs differ in palette, ear shape and texture scale, with enough per-image
randomness that a small CNN has to learn the difference rather than read it off one pixel.

Each image is seeded by ``(seed, class, index)``, so the files are byte-identical for a given
seed (and numpy/Pillow build) whatever the number of worker processes.  Only numpy, Pillow and
the standard library are imported: torch start-up cost stays out of the way.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import re
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

__all__ = ["ensure_dataset", "generate_cats_dogs"]

GENERATOR_VERSION = 1  # bump whenever the pixels change, so old trees are not mistaken for new
MARKER_NAME = ".lmdbio-synthetic.json"
CLASS_NAMES = ("cat", "dog")
_WORK_SCALE = 2  # paint at half resolution, then upsample: ~4x cheaper and naturally smooth
_BICUBIC = Image.Resampling.BICUBIC

# RGB fur base colours.  Cats lean orange, dogs brown/grey, but both classes have grey, black
# and cream coats so that colour alone separates them only partially.
_FUR_PALETTES = {
    "cat": [(0.88, 0.50, 0.18), (0.80, 0.44, 0.16), (0.93, 0.66, 0.34), (0.90, 0.78, 0.58),
            (0.86, 0.56, 0.26), (0.55, 0.53, 0.50), (0.18, 0.16, 0.15)],
    "dog": [(0.48, 0.34, 0.22), (0.30, 0.22, 0.16), (0.70, 0.60, 0.45), (0.40, 0.39, 0.38),
            (0.62, 0.61, 0.60), (0.16, 0.15, 0.14), (0.84, 0.82, 0.76)],
}


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cells: int) -> np.ndarray:
    """Unit-variance random field with about ``cells`` blobs across, via bicubic upsampling."""
    grid = rng.standard_normal((max(2, cells * height // width), cells), dtype=np.float32)
    return np.asarray(Image.fromarray(grid, "F").resize((width, height), _BICUBIC))


def _fractal_noise(rng: np.random.Generator, height: int, width: int, cells: int, octaves: int) -> np.ndarray:
    """Octaves whose amplitude halves as frequency doubles: a 1/f-like natural spectrum.

    Summed on the finest octave's small grid and upsampled once: full-size resizes are costly.
    """
    finest = cells * 2 ** (octaves - 1)
    total = np.zeros((max(2, finest * height // width), finest), np.float32)
    for octave in range(octaves):
        total += 0.5**octave * _smooth_noise(rng, *total.shape, cells * 2**octave)
    return np.asarray(Image.fromarray(total, "F").resize((width, height), _BICUBIC))


def _box(x: np.ndarray, y: np.ndarray, xs: list[float], ys: list[float], margin: float) -> tuple[slice, ...]:
    """Row and column slices around some points, so a shape only costs its own area."""
    rows = np.clip([min(ys) - margin, max(ys) + margin + 2], 0, y.shape[0]).astype(int)
    cols = np.clip([min(xs) - margin, max(xs) + margin + 2], 0, x.shape[1]).astype(int)
    return slice(*rows), slice(*cols)


def _soft_ellipse(x: np.ndarray, y: np.ndarray, cx: float, cy: float, rx: float, ry: float,
                  angle: float = 0.0, edge: float = 1.5,
                  wobble: np.ndarray | None = None) -> np.ndarray:
    """Anti-aliased ellipse coverage in [0, 1]; ``wobble`` roughens the outline like fur.

    ``x`` is a (1, w) row of column coordinates and ``y`` an (h, 1) column of row coordinates.
    """
    mask = np.zeros((y.shape[0], x.shape[1]), np.float32)
    rows, cols = _box(x, y, [cx], [cy], max(rx, ry) * 1.3 + edge)
    xs, ys, cos, sin = x[:, cols] - cx, y[rows] - cy, float(np.cos(angle)), float(np.sin(angle))
    radius = np.sqrt(((xs * cos + ys * sin) / rx) ** 2 + ((ys * cos - xs * sin) / ry) ** 2)
    if wobble is not None:
        radius -= wobble[rows, cols]
    mask[rows, cols] = np.clip((1.0 - radius) * (min(rx, ry) / edge), 0.0, 1.0)
    return mask


def _soft_triangle(x: np.ndarray, y: np.ndarray, corners: list[tuple[float, float]],
                   edge: float = 1.5) -> np.ndarray:
    """Anti-aliased triangle coverage from the distance to its nearest side (corners clockwise)."""
    mask = np.zeros((y.shape[0], x.shape[1]), np.float32)
    rows, cols = _box(x, y, [cx for cx, _ in corners], [cy for _, cy in corners], edge)
    inside: np.ndarray | None = None
    for (ax, ay), (bx, by) in zip(corners, corners[1:] + corners[:1]):
        norm = 1.0 / float(np.hypot(bx - ax, by - ay))
        distance = (bx - ax) * norm * (y[rows] - ay) - (by - ay) * norm * (x[:, cols] - ax)
        inside = distance if inside is None else np.minimum(inside, distance)
    mask[rows, cols] = np.clip(inside / edge, 0.0, 1.0)
    return mask


def _render(seed: int, class_name: str, index: int) -> tuple[Image.Image, int]:
    """Paint one image; return it with its JPEG quality.  A pure function of the arguments."""
    is_cat = class_name == "cat"
    rng = np.random.default_rng([seed, CLASS_NAMES.index(class_name), index])
    if rng.random() < 0.7:  # Kaggle is mostly landscape, with a fair share of portraits
        width = int(rng.integers(400, 501)); height = int(width * rng.uniform(0.6, 0.85))
    else:
        height = int(rng.integers(430, 501)); width = int(height * rng.uniform(0.75, 0.9))
    h, w = height // _WORK_SCALE, width // _WORK_SCALE
    x, y = np.arange(w, dtype=np.float32)[None, :], np.arange(h, dtype=np.float32)[:, None]
    size = float(min(h, w))

    # Background: a muted scene colour, a lighting gradient and 1/f clutter.
    light = rng.uniform(0, 2 * np.pi)
    gradient = (x - w / 2) * float(np.cos(light) / size) + (y - h / 2) * float(np.sin(light) / size)
    clutter = rng.uniform(0.1, 0.35) * gradient + rng.uniform(0.06, 0.14) * _fractal_noise(rng, h, w, 3, 4)
    tint = _smooth_noise(rng, h, w, 3)[..., None] * rng.normal(0.0, 0.03, 3).astype(np.float32)
    image = rng.uniform(0.2, 0.8) + rng.normal(0.0, 0.03, 3).astype(np.float32) + clutter[..., None] + tint

    # Animal: body ellipse with the head above one end, jittered in scale and place.
    scale = size * rng.uniform(0.25, 0.36)
    facing = float(rng.choice([-1.0, 1.0]))
    body_x, body_y = w / 2 + rng.uniform(-0.15, 0.15) * w, h / 2 + rng.uniform(0.0, 0.2) * h
    body_rx, body_ry = scale * rng.uniform(1.1, 1.6), scale * rng.uniform(0.7, 0.95)
    head_r = scale * (rng.uniform(0.55, 0.7) if is_cat else rng.uniform(0.62, 0.8))
    head_x = body_x + facing * body_rx * rng.uniform(0.55, 0.85)
    head_y = body_y - body_ry * rng.uniform(0.6, 1.0)
    outline = 0.06 * _fractal_noise(rng, h, w, 8, 2)
    animal = np.maximum(
        _soft_ellipse(x, y, body_x, body_y, body_rx, body_ry, rng.uniform(-0.3, 0.3), wobble=outline),
        _soft_ellipse(x, y, head_x, head_y, head_r, head_r * rng.uniform(0.85, 1.0), wobble=outline))
    ears = np.zeros_like(animal)
    for side in (-1.0, 1.0):
        if is_cat:  # pointy upright ears
            base_x, base_y = head_x + side * head_r * 0.55, head_y - head_r * 0.5
            tip = (base_x + side * head_r * rng.uniform(0.0, 0.3), head_y - head_r * rng.uniform(1.35, 1.7))
            corners = [(base_x - head_r * 0.35, base_y), tip, (base_x + head_r * 0.35, base_y)]
            ears = np.maximum(ears, _soft_triangle(x, y, corners))
        else:  # floppy ears hanging beside the head
            ears = np.maximum(ears, _soft_ellipse(
                x, y, head_x + side * head_r * 0.85, head_y + head_r * 0.35, head_r * 0.28,
                head_r * 0.62, side * rng.uniform(0.1, 0.4), wobble=outline))
    if not is_cat:  # a long snout
        animal = np.maximum(animal, _soft_ellipse(
            x, y, head_x + facing * head_r * 0.75, head_y + head_r * 0.25, head_r * 0.6, head_r * 0.42))
    alpha = np.maximum(animal, ears)[..., None]

    # Fur: class palette, lighting and texture -- fine stripes for cats, coarse patches for dogs.
    palette = _FUR_PALETTES[class_name]
    jitter = rng.uniform(0.8, 1.15) * (1.0 + rng.normal(0.0, 0.05, 3))  # relative: dark coats stay neutral
    fur_colour = np.clip(np.array(palette[rng.integers(len(palette))]) * jitter, 0, 1).astype(np.float32)
    if is_cat:
        stripe_angle, frequency = rng.uniform(0, np.pi), rng.uniform(0.6, 0.9)
        phase = x * float(np.cos(stripe_angle) * frequency) + y * float(np.sin(stripe_angle) * frequency)
        texture = 0.08 * np.sin(phase + 50.0 * outline) + 0.06 * _smooth_noise(rng, h, w, w // 3)
        ear_darkening = 0.0
    else:
        texture = 0.12 * _fractal_noise(rng, h, w, 6, 2) + 0.04 * _smooth_noise(rng, h, w, w // 5)
        ear_darkening = rng.uniform(0.25, 0.5)  # dog ears are usually darker than the face
    brightness = 1.0 - 0.2 * gradient + texture - ear_darkening * ears
    image = image * (1.0 - alpha) + fur_colour * (brightness[..., None] * alpha)

    # Eyes on the side the animal faces: yellow-green for cats, dark for dogs.
    eye_colour = np.array([0.55, 0.6, 0.15] if is_cat else [0.12, 0.08, 0.05], np.float32)
    eye_height = head_r * (0.17 if is_cat else 0.12)
    eyes = np.maximum(*(
        _soft_ellipse(x, y, head_x + facing * head_r * (offset + 0.25), head_y - head_r * 0.1,
                      head_r * 0.13, eye_height, edge=1.0) for offset in (-0.35, 0.3)))[..., None]
    image = image * (1.0 - eyes) + eye_colour * eyes

    # Mild sensor-like grain (it also brings JPEG sizes up to photo-like levels), then upsample.
    image += rng.standard_normal((h, w, 1), dtype=np.float32) * 0.025
    pixels = np.clip(image * 255.0, 0, 255).astype(np.uint8)
    picture = Image.fromarray(pixels, "RGB").resize((width, height), _BICUBIC)
    return picture, int(rng.integers(82, 94))


@contextlib.contextmanager
def _pool(workers: int) -> Any:
    """A process pool of ``workers`` (None for one: the caller's own process). Done, it is
    closed and joined: the workers leave on their own. ``Pool.__exit__`` would terminate them
    with SIGTERM instead, and one that did not die of it (a forked worker inheriting the
    caller's SIGTERM handler) hung a run of the storage sweep at exit. Interrupted, they are
    terminated, and each has SIGTERM's default (die) from its start."""
    if workers <= 1:
        yield None
        return
    pool = multiprocessing.Pool(workers, initializer=_die_on_sigterm)
    try:
        yield pool
        pool.close()
        pool.join()
    finally:
        pool.terminate()  # after a join: nothing left to signal


def _die_on_sigterm() -> None:
    import signal

    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _write_image(task: tuple[str, int, str, int]) -> int:
    """Pool worker: render one image and save it; returns the file size in bytes."""
    split_dir, seed, class_name, index = task
    picture, quality = _render(seed, class_name, index)
    path = os.path.join(split_dir, class_name, f"{class_name}.{index}.jpg")
    picture.save(path, "JPEG", quality=quality)
    return os.path.getsize(path)


def _class_folders(split_dir: Path) -> list[str]:
    """Sub-directories: what torchvision's ImageFolder would treat as classes."""
    return [entry.name for entry in os.scandir(split_dir) if entry.is_dir()] if split_dir.is_dir() else []


def _holds_only_folders(folder: Path) -> bool:
    """A split (``train/`` of class folders), not a class (whose images are files); stops at
    the first file, so a class of a million images costs one entry."""
    found = False
    with os.scandir(folder) as entries:
        for entry in entries:
            if not entry.is_dir():
                return False
            found = True
    return found


def _refuse_a_foreign_folder(data_dir: Path, split: str) -> None:
    """Generate only into a folder that is new, empty (but for an empty ``split`` folder and
    the debris of a killed generation) or this module's own: a user's ImageFolder root passed
    as ``data_dir`` has no ``split`` folder, and must not get a synthetic class beside its own."""
    if data_dir.exists() and not data_dir.is_dir():
        raise NotADirectoryError(f"data_dir {str(data_dir)!r} is a file; pass the folder that "
                                 f"holds {split}/ (an empty folder: a synthetic set)")
    if not data_dir.is_dir() or (data_dir / MARKER_NAME).is_file():
        return
    debris = re.compile(rf"^\.{re.escape(split)}\.partial-\d+$")
    foreign = [entry.name for entry in os.scandir(data_dir)
               if entry.name != split and not debris.match(entry.name)]
    if not foreign:
        return
    classes = sorted(_class_folders(data_dir))
    splits = [name for name in classes if _holds_only_folders(data_dir / name)]
    hint = (f"it holds the splits {', '.join(map(repr, splits[:3]))}"
            f"{'...' if len(splits) > 3 else ''}: pass one of them as split" if splits else
            f"if it is the ImageFolder itself (folders {', '.join(map(repr, classes[:3]))}"
            f"{'...' if len(classes) > 3 else ''}), pass data_dir={str(data_dir.parent)!r} and "
            f"split={data_dir.name!r}" if classes else "pass the folder that holds it")
    raise ValueError(f"{str(data_dir)!r} holds no {split!r} folder and is not empty "
                     f"({len(foreign)} entries), so no synthetic set is generated there; "
                     f"{hint}, or an empty folder for a synthetic set")


def _marker(data_dir: Path) -> dict[str, Any]:
    """The marker's content, or an empty one if this module never generated into data_dir."""
    path = data_dir / MARKER_NAME
    return json.loads(path.read_text()) if path.is_file() else {"generator": __name__, "splits": {}}


def generate_cats_dogs(data_dir: str | os.PathLike[str], n_images: int = 25_000, *, seed: int = 0,
                       split: str = "train", workers: int | None = None, progress: bool = False) -> Path:
    """Write ``data_dir/<split>/{cat,dog}/{cat,dog}.<i>.jpg`` and return ``data_dir/<split>``.

    Half the images are cats (plus the odd one), named like Kaggle's Dogs vs. Cats.  Files are
    byte-identical for a given ``seed`` whatever ``workers`` is (default: every CPU).  They are
    written to ``data_dir/.<split>.partial-<pid>`` and renamed into place only when complete, so
    an interrupted run never looks finished.  A non-empty ``<split>`` is never overwritten.
    """
    if n_images < 2:
        raise ValueError(f"n_images must be at least 2 (one per class), got {n_images}")
    data_dir = Path(data_dir)
    split_dir = data_dir / split
    if split_dir.is_dir() and any(split_dir.iterdir()):
        raise FileExistsError(f"{split_dir} is not empty; refusing to overwrite it")
    partial_dir = data_dir / f".{split}.partial-{os.getpid()}"
    shutil.rmtree(partial_dir, ignore_errors=True)  # debris of an interrupted call in this process
    for class_name in CLASS_NAMES:
        (partial_dir / class_name).mkdir(parents=True)
    n_cats = (n_images + 1) // 2  # Kaggle order: all cats (the odd one included), then all dogs
    tasks = [(str(partial_dir), seed, name, index)
             for name, count in (("cat", n_cats), ("dog", n_images - n_cats)) for index in range(count)]
    workers = min((os.cpu_count() or 1) if workers is None else workers, n_images)
    chunksize = max(1, min(64, n_images // (workers * 8)))  # amortise IPC, keep workers busy to the end
    try:
        with _pool(workers) as pool:
            sizes: Iterable[int] = (map(_write_image, tasks) if pool is None
                                    else pool.imap(_write_image, tasks, chunksize))
            if progress:
                from tqdm.auto import tqdm  # lazy: only interactive use pays for it

                sizes = tqdm(sizes, total=n_images, unit="img", desc=f"synthetic {split}")
            for _ in sizes:
                pass
    except BaseException:
        shutil.rmtree(partial_dir, ignore_errors=True)
        raise
    marker = _marker(data_dir)
    marker["splits"][split] = {"n_images": n_images, "seed": seed, "version": GENERATOR_VERSION}
    scratch = data_dir / f"{MARKER_NAME}.{os.getpid()}.tmp"
    scratch.write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n")
    os.replace(scratch, data_dir / MARKER_NAME)  # atomic, so the marker is never half-written
    try:
        if split_dir.is_dir():
            split_dir.rmdir()  # empty (checked above); renaming onto a directory is not portable
        os.rename(partial_dir, split_dir)
    except OSError:
        if not _class_folders(split_dir):
            raise
        shutil.rmtree(partial_dir)  # a concurrent process finished first; its files equal ours
    return split_dir


def ensure_dataset(data_dir: str | os.PathLike[str], n_images: int = 25_000, *, seed: int = 0,
                   split: str = "train", workers: int | None = None, progress: bool = False) -> Path:
    """Return ``data_dir/<split>``, generating the synthetic dataset only if it is missing or empty.

    A split with class folders but no marker entry from this module is the user's own
    ImageFolder and is returned untouched.  A synthetic split made with other parameters raises
    ValueError rather than being silently regenerated or deleted.
    """
    data_dir = Path(data_dir)
    split_dir = data_dir / split
    if not (split_dir.is_dir() and any(split_dir.iterdir())):
        _refuse_a_foreign_folder(data_dir, split)
        return generate_cats_dogs(data_dir, n_images, seed=seed, split=split, workers=workers,
                                  progress=progress)
    if not _class_folders(split_dir):
        raise ValueError(f"{split_dir} is not empty but has no class folders: not an ImageFolder")
    recorded = _marker(data_dir)["splits"].get(split)
    if recorded is None:
        return split_dir
    wanted = {"n_images": n_images, "seed": seed, "version": GENERATOR_VERSION}
    differing = [f"{key}={recorded.get(key)!r} there, {value!r} requested"
                 for key, value in wanted.items() if recorded.get(key) != value]
    if differing:
        raise ValueError(f"{split_dir} holds synthetic data generated with different parameters "
                         f"({'; '.join(differing)}); pass a new data_dir (or delete that one yourself)")
    return split_dir
