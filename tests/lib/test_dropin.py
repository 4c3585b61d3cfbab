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
    too_low = -len(dataset) - 5
    with pytest.raises(IndexError) as raised:
        dataset[too_low]
    if kind == "ImageFolderLMDB":  # the message names the index given, not one shifted by len
        assert f"index {too_low} out of range" in str(raised.value)


@pytest.mark.parametrize("kind", KINDS)
def test_indices_are_what_a_list_takes(kind, tree, out) -> None:
    dataset = make(kind, tree, out)
    for bad in ("1", 1.9, 1.0):
        with pytest.raises(TypeError):
            dataset[bad]
    for good in (np.int64(1), torch.tensor(1), True):
        assert dataset[good][1] == dataset[1][1]


@pytest.mark.parametrize("kind", KINDS)
def test_a_source_through_a_link_and_up_is_the_folder_the_os_finds(kind, tmp_path,
                                                                    monkeypatch) -> None:
    """``link/../train`` is the *link target's* sibling ``train`` (the OS walks the link
    first), not ``./train`` as a textual normalization makes it."""
    (tmp_path / "real" / "deep").mkdir(parents=True)
    (tmp_path / "link").symlink_to("real/deep")
    for folder, colour in (("train", (255, 0, 0)), ("real/train", (0, 0, 255))):
        (tmp_path / folder / "a").mkdir(parents=True)
        Image.new("RGB", (4, 4), colour).save(tmp_path / folder / "a" / "0.png")
    (tmp_path / "out").mkdir()
    monkeypatch.chdir(tmp_path)
    dataset = make(kind, "link/../train", tmp_path / "out")
    assert dataset.samples == [(os.path.join("link/../train", "a", "0.png"), 0)]
    assert np.asarray(dataset[0][0])[0, 0].tolist() == [0, 0, 255]
    default = lmdbio.convert("link/../train", progress=False).destination
    assert os.path.samefile(default, tmp_path / "real" / "train.lmdb")
    from lmdbio.converter import default_destination  # a shell's completion adds the "/"
    assert default_destination("link/../train/") == default_destination("link/../train")


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
    """A real file whose header lacks source_as_given (written before lmdbio recorded it):
    its samples join the absolute source_root, as ImageFolder(that root) lists them, while a
    file that has it shows the root as given."""
    import json

    import lmdb
    from lmdbio.format import KEY_HEADER, KEY_HEADER_CRC, META_DB

    dst = out / "old.lmdb"
    lmdbio.convert(tree, dst, progress=False)
    dataset = lmdbio.ImageFolderLMDB(dst, prefetch=False)
    assert dataset.samples == ImageFolder(tree).samples  # "data/train/...": as given
    dataset.close()
    env = lmdb.open(os.fspath(dst), subdir=False, max_dbs=2, lock=False)
    try:  # the header as files before source_as_given have it: no such key
        with env.begin(write=True, db=env.open_db(META_DB)) as txn:
            body = json.loads(txn.get(KEY_HEADER))
            assert body.pop("source_as_given") == tree
            txn.put(KEY_HEADER, json.dumps(body).encode())
            assert txn.delete(KEY_HEADER_CRC)  # nor its checksum, which came later still
    finally:
        env.close()
    old = lmdbio.ImageFolderLMDB(dst, prefetch=False)
    absolute = os.path.abspath(tree)
    assert old.database.meta.source_as_given == "" and old.database.meta.source_root == absolute
    assert old.samples == old.imgs == ImageFolder(absolute).samples
    assert all(p.startswith(absolute + os.sep) for p, _ in old.samples)
    path, target = old.samples[-1]
    assert old[-1][1] == target and np.array_equal(np.asarray(old.loader(path)),
                                                   np.asarray(pil_loader(path)))
    old.close()


# -- assigning the listing attributes, as torchvision users do ----------------------------------


def assign_alike(dataset: VisionDataset, reference: ImageFolder, name: str, value) -> None:
    """``dataset.<name> = value(dataset)`` and the same on the reference ImageFolder."""
    setattr(dataset, name, value(dataset))
    setattr(reference, name, value(reference))


def assert_same_items(dataset: VisionDataset, reference: ImageFolder) -> None:
    assert len(dataset) == len(reference)
    for index in [*range(len(reference)), -1]:
        (image, target), (expected, label) = dataset[index], reference[index]
        assert target == label, index
        assert np.array_equal(np.asarray(image), np.asarray(expected)), index
    with pytest.raises(IndexError):
        dataset[len(reference)]


@pytest.mark.parametrize("kind", KINDS)
def test_assigned_samples_subset_reorder_and_relabel_as_imagefolder(kind, tree, out) -> None:
    dataset, reference = make(kind, tree, out), ImageFolder(tree)
    stored = dataset.samples
    assert dataset.imgs is dataset.samples  # one list, as ImageFolder's imgs = samples
    assign_alike(dataset, reference, "samples", lambda d: d.samples[:5])  # subsetting
    assert dataset.samples == reference.samples and len(dataset) == 5
    assert (dataset.imgs is dataset.samples) == (reference.imgs is reference.samples)
    assert dataset.imgs == reference.imgs and dataset.imgs is stored  # imgs: the list before
    assert dataset.targets == reference.targets  # targets: as before, not recomputed
    assert_same_items(dataset, reference)
    # reordered, relabelled (the target is the list's, the image the stored file's)
    assign_alike(dataset, reference, "samples",
                 lambda d: [(p, (t + 1) % 3) for p, t in reversed(stored[3:])])
    assert_same_items(dataset, reference)
    # the other attributes are plain ones: assigned, read back, no item changes
    assign_alike(dataset, reference, "targets", lambda d: [t for _, t in d.samples])
    assign_alike(dataset, reference, "classes", lambda d: ["x", "y", "z"])
    assign_alike(dataset, reference, "class_to_idx", lambda d: {"x": 0, "y": 1, "z": 2})
    assign_alike(dataset, reference, "imgs", lambda d: d.samples)
    for name in ("targets", "classes", "class_to_idx", "imgs", "samples"):
        assert getattr(dataset, name) == getattr(reference, name), name
    assert dataset.imgs is dataset.samples
    assert_same_items(dataset, reference)
    assert repr(dataset).splitlines()[1] == repr(reference).splitlines()[1]  # datapoints
    path = dataset.samples[0][0]
    assert np.array_equal(np.asarray(dataset.loader(path)), np.asarray(pil_loader(path)))


@pytest.mark.parametrize("edit", ["shuffle", "reverse-then-rebind", "pop", "via-imgs"])
@pytest.mark.parametrize("kind", KINDS)
def test_samples_edited_in_place_are_followed_as_imagefolder(kind, edit, tree, out) -> None:
    """ImageFolder's ``[i]`` reads its ``samples`` list: shuffled, reversed or shortened in
    place, and a later rebinding of it, every path still loads its own image."""
    import random

    dataset, reference = make(kind, tree, out), ImageFolder(tree)
    for d in (dataset, reference):
        if edit == "shuffle":
            random.Random(0).shuffle(d.samples)
            d.samples = d.samples[:7]
        elif edit == "reverse-then-rebind":
            d.samples.reverse()
            d.samples = list(d.samples)
        elif edit == "pop":
            d.samples.pop(0)
        else:
            d.imgs.reverse()  # imgs is samples until samples is rebound
    assert dataset.samples == reference.samples
    assert_same_items(dataset, reference)
    path = dataset.samples[0][0]
    assert np.array_equal(np.asarray(dataset.loader(path)), np.asarray(pil_loader(path)))


def test_reading_samples_costs_an_item_no_index_of_every_path(tree, out) -> None:
    """Only a list that no longer holds the database's path at a position needs the paths'
    index (a dict of every path, built in each worker)."""
    dataset = make("ImageFolderLMDB", tree, out)
    assert len(dataset.samples) == len(dataset) > 3
    dataset[1], dataset[-1], dataset.__getitems__([0, 2, -2])
    assert dataset._index_of is None
    dataset.samples.reverse()
    assert dataset[0][1] == dataset.samples[0][1] and dataset._index_of is not None


@pytest.mark.parametrize("kind", KINDS)
def test_listing_attributes_are_the_datasets_own_objects(kind, tree, out) -> None:
    """Edited in place, none changes another, an item, or the database; each read is the same
    object; a shallow copy's rebinding leaves the original alone."""
    import copy

    dataset, reference = make(kind, tree, out), ImageFolder(tree)
    for d in (dataset, reference):
        for name in ("classes", "class_to_idx", "targets", "samples", "imgs", "extensions"):
            assert getattr(d, name) is getattr(d, name), name
        d.targets[0] = 2
        d.class_to_idx["fox"] = 3
        d.classes[0] = "CAT"
        d.classes.pop()
    for name in ("classes", "class_to_idx", "targets", "samples"):
        assert getattr(dataset, name) == getattr(reference, name), name
    assert_same_items(dataset, reference)  # the last class's items load, their targets stand
    for d in (dataset, reference):
        other = copy.copy(d)
        other.classes, other.targets, other.imgs, other.extensions = ["x"], [], [], (".x",)
        other.samples = other.samples[:1]
        assert d.classes == ["CAT", "dog"] and len(d.targets) == len(d) > 1
        assert d.imgs is d.samples and d.extensions == IMG_EXTENSIONS and len(other) == 1
    if kind == "ImageFolderLMDB":  # the database's own lists are untouched
        fresh = lmdbio.ImageFolderLMDB(dataset.root)
        assert fresh.classes == ["cat", "dog", "eel"] and fresh.samples == ImageFolder(tree).samples


@pytest.mark.parametrize("kind", KINDS)
def test_an_assigned_loader_is_called_with_each_path(kind, tree, out) -> None:
    dataset = make(kind, tree, out)
    called: list[str] = []

    def gray(path: str) -> Image.Image:
        called.append(path)
        return pil_loader(path).convert("L")

    dataset.loader = gray
    dataset.extensions = (".jpg",)
    assert dataset.loader is gray and dataset.extensions == (".jpg",)
    batch = dataset.__getitems__([2, 0]) if kind == "ImageFolderLMDB" else [dataset[2], dataset[0]]
    assert [image.mode for image, _ in batch] == ["L", "L"]
    assert called == [dataset.samples[2][0], dataset.samples[0][0]]
    assert [t for _, t in batch] == [dataset.samples[2][1], dataset.samples[0][1]]


def test_assigned_samples_reach_dataloader_workers(tree, out) -> None:
    import pickle

    ours = make("ImageFolderLMDB", tree, out, transform=to_array)
    theirs = ImageFolder(tree, transform=to_array)
    for dataset in (ours, theirs):
        dataset.samples = [(p, 2 - t) for p, t in dataset.samples[1::2]]
    clone = pickle.loads(pickle.dumps(ours))  # what spawn workers receive
    assert clone.samples == theirs.samples and len(clone) == len(theirs)
    kwargs: dict[str, object] = dict(batch_size=3, num_workers=2, multiprocessing_context="fork")
    for (a, ta), (b, tb) in zip(torch.utils.data.DataLoader(ours, **kwargs),
                                torch.utils.data.DataLoader(theirs, **kwargs), strict=True):
        assert torch.equal(a, b) and torch.equal(ta, tb)


def test_will_need_hints_the_records_behind_assigned_samples(tree, out) -> None:
    dataset = make("ImageFolderLMDB", tree, out)
    asked: list[tuple[int, int]] = []
    dataset.database.will_need = lambda start, stop: asked.append((start, stop))
    dataset.will_need(0, 4)
    stored = dataset.samples
    dataset.samples = [stored[6], stored[2], stored[5], stored[9]]
    dataset.will_need(0, 3)  # records 6, 2, 5: two runs, in file order
    dataset.will_need(3, 10)
    assert asked == [(0, 4), (2, 3), (5, 7), (9, 10)]


@pytest.mark.parametrize("kind", KINDS)
def test_an_assigned_path_not_in_the_database_is_a_typed_one_line_error(kind, tree,
                                                                        out) -> None:
    dataset = make(kind, tree, out)
    missing = os.path.join(tree, "cat", "not-converted.jpg")
    dataset.samples = [*dataset.samples[:2], (missing, 0)]
    assert dataset[1][1] == dataset.samples[1][1]  # the others still load
    with pytest.raises(FileNotFoundError) as caught:  # as ImageFolder's loader raises
        dataset[2]
    if kind == "ImageFolderLMDB":
        from lmdbio.errors import SampleNotFoundError

        text = str(caught.value)
        assert isinstance(caught.value, SampleNotFoundError) and "\n" not in text
        for needle in ("samples[2]", repr(missing), repr(os.fspath(dataset.root)),
                       "re-convert"):
            assert needle in text, (needle, text)
        with pytest.raises(SampleNotFoundError, match="loader path"):
            dataset.loader(missing)


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
