"""ImageFolderLMDB is a drop-in for torchvision's ImageFolder: torchvision's folder-test pattern,
every assertion run against both classes (``make`` builds either from the same tree)."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.datasets import (
    ImageFolder,
    VisionDataset,
    wrap_dataset_for_transforms_v2,
)
from torchvision.datasets.folder import IMG_EXTENSIONS, pil_loader
from torchvision.datasets.vision import StandardTransform

import lmdbio
from tests.lib import corpus

KINDS = ["ImageFolder", "ImageFolderLMDB"]


def make(kind: str, root: str, tmp: Path, transform=None, target_transform=None,
         **listing) -> VisionDataset:
    """``ImageFolder(root, ...)``, or ``ImageFolderLMDB(convert(root, ...))`` with the same
    listing options (``is_valid_file``, ``allow_empty``, ``extensions``)."""
    if kind == "ImageFolder":
        if "extensions" in listing:  # ImageFolder has no extensions=: DatasetFolder's
            from torchvision.datasets import DatasetFolder
            return DatasetFolder(root, pil_loader, transform=transform,
                                 target_transform=target_transform, **listing)
        return ImageFolder(root, transform=transform, target_transform=target_transform,
                           **listing)
    dst = tmp / f"db-{len(os.listdir(tmp))}.lmdb"
    lmdbio.convert(root, dst, progress=False, **listing)
    return lmdbio.ImageFolderLMDB(dst, transform=transform, target_transform=target_transform)


@pytest.fixture
def tree(tmp_path: Path, monkeypatch) -> str:
    """The good half of the corpus in three classes, one of them nested; returned as a
    relative path, the way users pass it (``ImageFolder("data/train")``)."""
    root = tmp_path / "data" / "train"
    goods = [e for e in corpus.entries() if e.reason is None]
    for i, entry in enumerate(goods):
        name = entry.name.split("/", 1)[1]
        folder = root / ("cat", "dog", "eel/deep")[i % 3]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(entry.data)
    (root / "dog" / "notes.txt").write_text("not an image")
    (tmp_path / "out").mkdir()
    monkeypatch.chdir(tmp_path)
    return "data/train"


@pytest.fixture
def out(tmp_path: Path) -> Path:
    return tmp_path / "out"


@pytest.mark.parametrize("kind", KINDS)
def test_is_a_vision_dataset_and_an_image_folder(kind, tree, out) -> None:
    dataset = make(kind, tree, out)
    assert isinstance(dataset, VisionDataset) and isinstance(dataset, ImageFolder)
    assert isinstance(dataset, torch.utils.data.Dataset)


@pytest.mark.parametrize("kind", KINDS)
def test_listing_attributes_equal_imagefolders(kind, tree, out) -> None:
    dataset, reference = make(kind, tree, out), ImageFolder(tree)
    assert dataset.classes == reference.classes == ["cat", "dog", "eel"]
    assert dataset.class_to_idx == reference.class_to_idx
    assert dataset.samples == reference.samples and dataset.imgs == reference.imgs
    assert dataset.targets == reference.targets and len(dataset) == len(reference)
    assert dataset.samples[0][0].startswith("data/train/cat/")  # the root as given
    assert dataset.extensions == IMG_EXTENSIONS == tuple(lmdbio.IMG_EXTENSIONS)


@pytest.mark.parametrize("kind", KINDS)
def test_every_image_has_imagefolders_pixels(kind, tree, out) -> None:
    dataset = make(kind, tree, out)
    for index, (path, target) in enumerate(ImageFolder(tree).samples):
        image, label = dataset[index]
        assert label == target and image.mode == "RGB"
        assert np.array_equal(np.asarray(image), np.asarray(pil_loader(path))), path
        loaded = dataset.loader(path)  # loader(path) as ImageFolder's: no transform
        assert np.array_equal(np.asarray(loaded), np.asarray(image))


def image_size(image: Image.Image) -> tuple[int, int]:
    return image.size


def as_text(target: int) -> str:
    return str(target)


@pytest.mark.parametrize("kind", KINDS)
def test_transforms_repr_and_standard_transform(kind, tree, out) -> None:
    dataset = make(kind, tree, out, transform=image_size, target_transform=as_text)
    reference = ImageFolder(tree, transform=image_size, target_transform=as_text)
    assert isinstance(dataset.transforms, StandardTransform)
    assert dataset[0] == reference[0] and isinstance(dataset[0][1], str)
    ours = repr(dataset).splitlines()
    theirs = repr(reference).splitlines()
    assert ours[0] == f"Dataset {type(dataset).__name__}"
    assert [ln for ln in ours if "Root location" not in ln][1:] == \
           [ln for ln in theirs if "Root location" not in ln][1:]
    assert dataset.extra_repr() == reference.extra_repr()
    assert "StandardTransform" in repr(dataset)


@pytest.mark.parametrize("kind", KINDS)
def test_wrap_dataset_for_transforms_v2(kind, tree, out) -> None:
    dataset = make(kind, tree, out, transform=lambda im: im.size)
    wrapped = wrap_dataset_for_transforms_v2(dataset)
    assert len(wrapped) == len(dataset) and wrapped[0] == ImageFolder(
        tree, transform=lambda im: im.size)[0]
    assert wrapped.classes == dataset.classes


def only_jpegs(path: str) -> bool:  # module level: picklable
    return path.endswith(".jpg") and "deep" not in path


@pytest.mark.parametrize("kind", KINDS)
def test_is_valid_file(kind, tree, out) -> None:
    seen: list[str] = []

    def valid(path: str) -> bool:
        seen.append(path)
        return only_jpegs(path)

    dataset = make(kind, tree, out, is_valid_file=valid, allow_empty=True)
    reference = ImageFolder(tree, is_valid_file=only_jpegs, allow_empty=True)
    assert dataset.samples == reference.samples and dataset.classes == reference.classes
    assert all(p.startswith("data/train/") for p in seen)  # the paths torchvision passes
    assert dataset.extensions is None
    assert dataset.class_to_idx["eel"] == 2 and 2 not in dataset.targets  # kept, empty


@pytest.mark.parametrize("kind", KINDS)
def test_extensions_and_is_valid_file_are_exclusive(kind, tree, out) -> None:
    message = "Both extensions and is_valid_file cannot be None or not None at the same time"
    with pytest.raises(ValueError, match=re.escape(message)):
        make(kind, tree, out, extensions=(".jpg",), is_valid_file=only_jpegs)
    with pytest.raises(ValueError, match=re.escape(message)):
        make(kind, tree, out, extensions=None)


@pytest.mark.parametrize("kind", KINDS)
def test_empty_class_message_and_allow_empty(kind, tree, out) -> None:
    os.makedirs(os.path.join(tree, "fox"))
    os.makedirs(os.path.join(tree, "ant"))
    message = (f"Found no valid file for the classes ant, fox. Supported extensions are: "
               f"{', '.join(IMG_EXTENSIONS)}")
    with pytest.raises(FileNotFoundError, match=re.escape(message)):
        make(kind, tree, out)
    dataset = make(kind, tree, out, allow_empty=True)
    assert dataset.classes == ["ant", "cat", "dog", "eel", "fox"]
    assert dataset.samples == ImageFolder(tree, allow_empty=True).samples
    with pytest.raises(FileNotFoundError, match=re.escape(
            "Found no valid file for the classes ant, eel, fox. ")):
        make(kind, tree, out, is_valid_file=only_jpegs)


@pytest.mark.parametrize("kind", KINDS)
def test_out_of_range_index_is_an_index_error(kind, tree, out) -> None:
    dataset = make(kind, tree, out)
    with pytest.raises(IndexError):
        dataset[len(dataset)]
    assert dataset[-1][1] == dataset[len(dataset) - 1][1]


def to_array(image: Image.Image) -> torch.Tensor:  # module level: picklable under spawn
    return torch.from_numpy(np.asarray(image.resize((8, 8))).copy())


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_dataloader_workers_give_imagefolders_batches(context, tree, out) -> None:
    ours = make("ImageFolderLMDB", tree, out, transform=to_array)
    theirs = ImageFolder(tree, transform=to_array)
    kwargs: dict[str, object] = dict(batch_size=4, num_workers=2,
                                     multiprocessing_context=context)
    for (a, ta), (b, tb) in zip(torch.utils.data.DataLoader(ours, **kwargs),
                                torch.utils.data.DataLoader(theirs, **kwargs), strict=True):
        assert torch.equal(a, b) and torch.equal(ta, tb)
    wrapped = wrap_dataset_for_transforms_v2(ours)  # pickled through __reduce__ under spawn
    batches = list(torch.utils.data.DataLoader(wrapped, **kwargs))
    assert sum(len(t) for _, t in batches) == len(theirs)


def test_old_files_show_their_absolute_source_root(tree, out) -> None:
    """A header without source_as_given (files before it): samples join source_root."""
    import dataclasses

    from lmdbio.format import Metadata
    meta = Metadata(num_samples=1, classes=["a"], source_root="/abs/train",
                    source_fingerprint="", extensions=[".jpg"], payload_bytes=0)
    assert meta.samples_root == "/abs/train"
    assert dataclasses.replace(meta, source_as_given="train").samples_root == "train"
    body = Metadata.from_json(meta.to_json().replace(b', "source_as_given": ""', b""), "x")
    assert body.samples_root == "/abs/train"


def test_cli_allow_empty_and_extensions(tree, out) -> None:
    import subprocess
    import sys
    os.makedirs(os.path.join(tree, "fox"))
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    run: Callable[..., subprocess.CompletedProcess[str]] = lambda *a: subprocess.run(
        [sys.executable, "-m", "lmdbio.cli", "convert", tree, *a], capture_output=True,
        text=True, env=env)
    proc = run(str(out / "a.lmdb"), "-q")
    assert proc.returncode == 1 and "Found no valid file for the classes fox" in proc.stderr
    assert "--allow-empty" in proc.stderr and "allow_empty" not in proc.stderr
    assert run(str(out / "a.lmdb"), "-q", "--allow-empty").returncode == 0
    assert lmdbio.info(out / "a.lmdb").class_counts["fox"] == 0
    assert run(str(out / "p.lmdb"), "-q", "--allow-empty", "--extensions", ".png").returncode == 0
    assert lmdbio.ImageFolderLMDB(out / "p.lmdb").extensions == (".png",)
