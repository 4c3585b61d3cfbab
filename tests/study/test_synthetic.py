"""Tests for lmdbio.synthetic: layout, determinism, JPEG realism, and ensure_dataset's safety rules."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lmdbio.study import synthetic
from lmdbio.study.synthetic import ensure_dataset, generate_cats_dogs


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file and directory under root with its size and mtime, to prove nothing changed."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


def _file_bytes(split_dir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(split_dir)): p.read_bytes() for p in sorted(split_dir.rglob("*.jpg"))}


@pytest.fixture(scope="module")
def sample_split(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """300 images (150 per class), shared by the file-realism and separability tests."""
    return generate_cats_dogs(tmp_path_factory.mktemp("sample"), 300, seed=0, workers=2)


def test_determinism_across_runs_and_worker_counts(tmp_path: Path) -> None:
    serial = _file_bytes(generate_cats_dogs(tmp_path / "a", 12, seed=0, workers=1))
    parallel = _file_bytes(generate_cats_dogs(tmp_path / "b", 12, seed=0, workers=2))
    other_seed = _file_bytes(generate_cats_dogs(tmp_path / "c", 12, seed=1, workers=2))
    assert serial == parallel
    assert serial.keys() == other_seed.keys()
    assert all(serial[name] != other_seed[name] for name in serial)


def test_layout_and_kaggle_naming(tmp_path: Path) -> None:
    split_dir = generate_cats_dogs(tmp_path, 7, seed=3, split="val", workers=2, progress=True)
    assert split_dir == tmp_path / "val"
    assert sorted(p.name for p in split_dir.iterdir()) == ["cat", "dog"]
    assert sorted(p.name for p in (split_dir / "cat").iterdir()) == [f"cat.{i}.jpg" for i in range(4)]
    assert sorted(p.name for p in (split_dir / "dog").iterdir()) == [f"dog.{i}.jpg" for i in range(3)]
    # Only the split and the marker remain: the temporary build directory was renamed away.
    assert sorted(p.name for p in tmp_path.iterdir()) == [synthetic.MARKER_NAME, "val"]
    marker = json.loads((tmp_path / synthetic.MARKER_NAME).read_text())
    assert marker["splits"]["val"] == {"n_images": 7, "seed": 3, "version": synthetic.GENERATOR_VERSION}


def test_files_are_plausible_jpegs(sample_split: Path) -> None:
    files = sorted(sample_split.rglob("*.jpg"))
    assert len(files) == 300
    sizes_kb = np.array([f.stat().st_size / 1024 for f in files])
    for file in files:
        with Image.open(file) as image:
            assert image.format == "JPEG" and image.mode == "RGB"
            width, height = image.size
            assert 320 <= width <= 500 and 240 <= height <= 500
    assert sizes_kb.min() >= 10 and sizes_kb.max() <= 70
    assert 25 <= sizes_kb.mean() <= 35  # like Kaggle's Dogs vs. Cats, so decode costs are comparable


def test_classes_partly_separable_by_mean_colour(sample_split: Path) -> None:
    def warmth(path: Path) -> float:
        """Mean red minus blue of a 64x64 thumbnail: cats lean orange, dogs brown/grey."""
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("RGB").resize((64, 64)), dtype=np.float32)
        return float((pixels[..., 0] - pixels[..., 2]).mean())

    cats = np.array([warmth(sample_split / "cat" / f"cat.{i}.jpg") for i in range(150)])
    dogs = np.array([warmth(sample_split / "dog" / f"dog.{i}.jpg") for i in range(150)])
    threshold = (cats[:75].mean() + dogs[:75].mean()) / 2  # fit on the first half...
    accuracy = ((cats[75:] > threshold).sum() + (dogs[75:] <= threshold).sum()) / 150  # ...test on the rest
    # Well above chance, so there is a real class signal to learn, but colour alone must not be
    # perfect: the palettes overlap on purpose so a CNN also has to use ears, shape and texture.
    # (Measured: 0.79 for seed 0.)
    assert 0.65 <= accuracy < 1.0


def test_module_does_not_import_torch() -> None:
    # Load the module file alone, with torch blocked, so the check is independent of lmdbio/__init__.
    code = (
        "import importlib.util, sys\n"
        "sys.modules['torch'] = sys.modules['torchvision'] = None\n"
        f"spec = importlib.util.spec_from_file_location('synthetic', {synthetic.__file__!r})\n"
        "spec.loader.exec_module(importlib.util.module_from_spec(spec))\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_ensure_dataset_leaves_user_imagefolder_untouched(tmp_path: Path) -> None:
    (tmp_path / "train" / "bird").mkdir(parents=True)
    (tmp_path / "train" / "bird" / "robin.jpg").write_bytes(b"not really a jpeg")
    before = _snapshot(tmp_path)
    assert ensure_dataset(tmp_path, 10) == tmp_path / "train"
    assert _snapshot(tmp_path) == before


def test_ensure_dataset_generates_then_reuses_its_own_tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    split_dir = ensure_dataset(tmp_path, 6, seed=2, workers=1)
    assert len(list(split_dir.rglob("*.jpg"))) == 6
    before = _snapshot(tmp_path)

    def must_not_regenerate(*args: object, **kwargs: object) -> Path:
        raise AssertionError("ensure_dataset regenerated an existing matching tree")

    monkeypatch.setattr(synthetic, "generate_cats_dogs", must_not_regenerate)
    assert ensure_dataset(tmp_path, 6, seed=2) == split_dir
    assert _snapshot(tmp_path) == before


@pytest.mark.parametrize(("n_images", "seed", "differing"), [(8, 2, "n_images"), (6, 5, "seed")])
def test_ensure_dataset_rejects_parameter_mismatch(tmp_path: Path, n_images: int, seed: int, differing: str) -> None:
    ensure_dataset(tmp_path, 6, seed=2, workers=1)
    before = _snapshot(tmp_path)
    with pytest.raises(ValueError, match=differing) as error:
        ensure_dataset(tmp_path, n_images, seed=seed)
    assert "new data_dir" in str(error.value)
    assert _snapshot(tmp_path) == before


def test_ensure_dataset_fills_an_empty_split_and_refuses_non_imagefolders(tmp_path: Path) -> None:
    (tmp_path / "empty" / "train").mkdir(parents=True)
    assert len(list(ensure_dataset(tmp_path / "empty", 4, workers=1).rglob("*.jpg"))) == 4
    (tmp_path / "loose" / "train").mkdir(parents=True)
    (tmp_path / "loose" / "train" / "notes.txt").write_text("no class folders here")
    with pytest.raises(ValueError, match="not an ImageFolder"):
        ensure_dataset(tmp_path / "loose", 4)
    with pytest.raises(FileExistsError):
        generate_cats_dogs(tmp_path / "loose", 4)


def test_a_folder_of_other_splits_is_named_as_such(tmp_path: Path) -> None:
    (tmp_path / "train" / "cat").mkdir(parents=True)
    (tmp_path / "train" / "cat" / "0.jpg").write_bytes(b"")
    with pytest.raises(ValueError, match="it holds the splits 'train': pass one of them"):
        ensure_dataset(tmp_path, 4, split="val")
    with pytest.raises(ValueError, match=r"ImageFolder itself \(folders 'cat'\)"):
        ensure_dataset(tmp_path / "train", 4, split="val")


def test_crashed_generation_is_not_mistaken_for_complete(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Debris of a run that was killed outright: a half-filled temp dir from another process.
    stale = tmp_path / ".train.partial-999999" / "cat"
    stale.mkdir(parents=True)
    (stale / "cat.0.jpg").write_bytes(b"truncated")

    # A run that fails midway (in-process, so the patched writer is the one called).
    real_write_image = synthetic._write_image
    calls = []

    def crash_on_fourth_image(task: tuple[str, int, str, int]) -> int:
        calls.append(task)
        if len(calls) == 4:
            raise RuntimeError("simulated crash")
        return real_write_image(task)

    monkeypatch.setattr(synthetic, "_write_image", crash_on_fourth_image)
    with pytest.raises(RuntimeError, match="simulated crash"):
        ensure_dataset(tmp_path, 10, workers=1)
    assert not (tmp_path / "train").exists()
    assert not (tmp_path / synthetic.MARKER_NAME).exists()
    monkeypatch.undo()

    split_dir = ensure_dataset(tmp_path, 10, workers=1)
    assert sorted(p.name for p in split_dir.iterdir()) == ["cat", "dog"]
    assert len(list((split_dir / "cat").glob("*.jpg"))) == 5
    assert len(list((split_dir / "dog").glob("*.jpg"))) == 5
