"""ImageFolderLMDB(convert(tree)) is ImageFolder(tree): same listing, same pixels, same targets."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.datasets.folder as tv_folder
from torch.utils.data import DataLoader
from torchvision.datasets import ImageFolder

import lmdbio
from lmdbio import folder
from lmdbio.dataset import ImageFolderLMDB

from tests.helpers import NEWLINE_NAME, build_simple_tree, jpeg_bytes, write


def to_tensor_8x8(image):  # module level: DataLoader-friendly and picklable
    return torch.from_numpy(np.asarray(image.resize((8, 8)), dtype=np.uint8).copy())


def test_extensions_match_torchvision() -> None:
    assert folder.IMG_EXTENSIONS == tv_folder.IMG_EXTENSIONS
    assert lmdbio.IMG_EXTENSIONS is folder.IMG_EXTENSIONS


def test_find_classes_and_make_dataset_match_torchvision(odd_tree: Path) -> None:
    ours = folder.find_classes(odd_tree)
    theirs = tv_folder.find_classes(odd_tree)
    assert ours == theirs
    assert ours[0] == ["cat", "dog", "sea lion"]
    for root in (odd_tree, str(odd_tree)):
        mine = folder.make_dataset(root, ours[1])
        assert mine == tv_folder.make_dataset(root, theirs[1], extensions=tv_folder.IMG_EXTENSIONS)
    names = {os.path.relpath(p, odd_tree) for p, _ in mine}
    # the awkward ones are really listed, the non-images and the root-level file are not
    assert {"cat/upper.JPEG", "cat/.hidden.jpg", "cat/looks.jpg/inside.jpg",
            f"dog/{NEWLINE_NAME}", "dog/back\\slash.jpg", "dog/SHOUT.PNG",
            "cat/sub/deeper/palette.png"} <= names
    assert not any(n.endswith((".txt", ".json")) or "/" not in n for n in names)
    assert len(mine) == 23


def test_make_dataset_with_a_class_subset_and_custom_extensions(odd_tree: Path) -> None:
    subset = {"dog": 0, "sea lion": 1}
    assert folder.make_dataset(odd_tree, subset, (".png",)) == tv_folder.make_dataset(
        str(odd_tree), subset, extensions=(".png",))


@pytest.mark.parametrize("extensions,classes", [
    (".png", {"cat": 0, "dog": 1}), ((".png", ".webp"), {"cat": 0, "dog": 1}),
    (".jpeg", {"cat": 0}), (".JPEG", {"cat": 0})])
def test_extensions_given_as_a_string_or_tuple_match_torchvision(odd_tree: Path, extensions,
                                                                 classes) -> None:
    if extensions == ".JPEG":  # extensions are matched lower-case: both find nothing
        with pytest.raises(FileNotFoundError, match="no valid file"):
            folder.make_dataset(odd_tree, classes, extensions)
        with pytest.raises(FileNotFoundError, match="no valid file"):
            tv_folder.make_dataset(str(odd_tree), classes, extensions=extensions)
        return
    theirs = tv_folder.make_dataset(str(odd_tree), classes, extensions=extensions)
    assert folder.make_dataset(odd_tree, classes, extensions) == theirs
    assert folder.has_file_allowed_extension("x.png", ".png")
    assert not folder.has_file_allowed_extension("x.jpg", ".png")  # not "ends with p, n or g"


def test_custom_extensions_reach_the_database(odd_tree: Path, tmp_path: Path) -> None:
    report = lmdbio.convert(odd_tree, tmp_path / "png.lmdb", extensions=".png", progress=False)
    with lmdbio.open_database(report.destination) as db:
        assert db.meta.extensions == [".png"]
        assert all(p.lower().endswith(".png") for p in db.relative_paths())
        assert len(db) == 5


def test_dataset_matches_imagefolder_sample_by_sample(odd_db) -> None:
    ours = ImageFolderLMDB(odd_db.db)
    theirs = ImageFolder(str(odd_db.tree))
    assert ours.classes == theirs.classes == ["cat", "dog", "sea lion"]
    assert ours.class_to_idx == theirs.class_to_idx
    assert ours.samples == theirs.samples
    assert ours.imgs == theirs.imgs
    assert ours.targets == theirs.targets
    assert len(ours) == len(theirs) == 23
    assert all(type(t) is int for t in ours.targets)
    for index in range(len(theirs)):
        image, target = ours[index]
        expected_image, expected_target = theirs[index]
        assert image.mode == "RGB" and expected_image.mode == "RGB"
        assert image.size == expected_image.size
        assert np.array_equal(np.asarray(image), np.asarray(expected_image)), theirs.samples[index]
        assert type(target) is int and target == expected_target
    # negative indices behave like a list
    assert np.array_equal(np.asarray(ours[-1][0]), np.asarray(theirs[len(theirs) - 1][0]))
    with pytest.raises(IndexError):
        ours[len(ours)]


def test_transforms_are_applied_like_imagefolder(odd_db) -> None:
    ours = ImageFolderLMDB(odd_db.db, transform=to_tensor_8x8, target_transform=str)
    theirs = ImageFolder(str(odd_db.tree), transform=to_tensor_8x8, target_transform=str)
    for index in (0, 7, len(theirs) - 1):
        assert torch.equal(ours[index][0], theirs[index][0])
        assert ours[index][1] == theirs[index][1] and isinstance(ours[index][1], str)
    assert "Number of datapoints: 23" in repr(ours) and "Transform" in repr(ours)


def test_dataloader_batches_have_flat_targets(odd_db) -> None:
    dataset = ImageFolderLMDB(odd_db.db, transform=to_tensor_8x8)
    images, targets = next(iter(DataLoader(dataset, batch_size=5, shuffle=False)))
    assert images.shape == (5, 8, 8, 3)
    assert targets.shape == (5,)
    assert targets.dtype == torch.int64
    assert targets.tolist() == dataset.targets[:5]


def test_symlinked_class_and_files_follow_torchvision(tmp_path: Path) -> None:
    outside = build_simple_tree(tmp_path / "outside", per_class=2, classes=("real",), seed=500)
    root = build_simple_tree(tmp_path / "root", per_class=2, classes=("b", "c"), seed=700)
    (root / "a_link").symlink_to(outside / "real", target_is_directory=True)
    (root / "c" / "linked_file.jpg").symlink_to(outside / "real" / "00000.jpg")
    (root / "b" / "subdir_link").symlink_to(outside / "real", target_is_directory=True)
    theirs = ImageFolder(str(root))
    assert "a_link" in theirs.classes  # torchvision follows the links...
    assert any("subdir_link" in p for p, _ in theirs.samples)
    report = lmdbio.convert(root, tmp_path / "out.lmdb", progress=False)
    ours = ImageFolderLMDB(report.destination)
    assert (ours.classes, ours.samples, ours.targets) == (
        theirs.classes, theirs.samples, theirs.targets)  # ...and so do we
    for index in range(len(theirs)):
        assert np.array_equal(np.asarray(ours[index][0]), np.asarray(theirs[index][0]))
    with lmdbio.open_database(report.destination) as db:
        index = [p for p, _ in theirs.samples].index(str(root / "c" / "linked_file.jpg"))
        assert db.get(index)[1] == (outside / "real" / "00000.jpg").read_bytes()


def test_symlink_loop_is_refused_with_a_source_error(tmp_path: Path) -> None:
    root = build_simple_tree(tmp_path / "root", per_class=1)
    (root / "a" / "loop").symlink_to(root / "a", target_is_directory=True)
    with pytest.raises(lmdbio.SourceError, match="symlink loop"):
        lmdbio.convert(root, tmp_path / "out.lmdb", progress=False)
    assert not (tmp_path / "out.lmdb").exists()
    assert not (tmp_path / "out.lmdb.partial").exists()


def test_errors_subclass_what_imagefolder_raises(tmp_path: Path) -> None:
    """Code written for ImageFolder catches FileNotFoundError; ours must be caught by it."""
    (tmp_path / "empty_class").mkdir()
    write(tmp_path / "full" / "x.jpg", jpeg_bytes(1))
    with pytest.raises(FileNotFoundError):
        ImageFolder(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="empty_class"):
        folder.make_dataset(tmp_path, folder.find_classes(tmp_path)[1])
    with pytest.raises(FileNotFoundError, match="no class folder"):
        folder.find_classes(tmp_path / "full")


def test_non_utf8_class_names_and_numpy_indices(tmp_path: Path) -> None:
    root = tmp_path / "root"
    write(root / os.fsdecode(b"caf\xe9") / "x.jpg", jpeg_bytes(11))
    write(root / "ok" / "y.jpg", jpeg_bytes(12))
    theirs = ImageFolder(str(root))
    ours = ImageFolderLMDB(lmdbio.convert(root, tmp_path / "out.lmdb",
                                          progress=False).destination)
    assert ours.classes == theirs.classes and ours.samples == theirs.samples
    assert ours.class_to_idx == theirs.class_to_idx
    for index in (np.int64(1), torch.tensor(1), 1):
        assert np.array_equal(np.asarray(ours[index][0]), np.asarray(theirs[1][0]))
        assert ours[index][1] == theirs[1][1] == 1
