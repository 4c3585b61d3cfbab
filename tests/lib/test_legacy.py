"""Databases written the way pytorch-lmdb (the seed) writes them: refused unless allow_pickle,
then read, and a hostile pickle refused even then, with its side effect never happening."""

from __future__ import annotations

import io
import os
import pickle
import subprocess
import sys
from pathlib import Path

import lmdb
import numpy as np
import pytest
from PIL import Image

import lmdbio
from lmdbio.dataset import ImageFolderLMDB

from tests.helpers import SEED_LABELS as LABELS
from tests.helpers import (EvilPopen, assert_one_line_error, run_cli, seed_images, seed_value,
                           write_seed_db)


@pytest.mark.parametrize("subdir", [False, True], ids=["file", "directory"])
@pytest.mark.parametrize("style", ["seed", "plain"])
@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_seed_database_needs_allow_pickle_then_reads(tmp_path: Path, subdir: bool, style: str,
                                                     protocol: int) -> None:
    images = seed_images()
    path = write_seed_db(tmp_path / "seed.lmdb",
                         [seed_value(im, lb, style, protocol) for im, lb in zip(images, LABELS)],
                         subdir=subdir)
    assert path.is_dir() is subdir
    with pytest.raises(lmdbio.LegacyFormatError, match="allow_pickle=True") as caught:
        ImageFolderLMDB(path)
    assert str(path) in str(caught.value)
    assert isinstance(caught.value, lmdbio.FormatError)

    dataset = ImageFolderLMDB(path, allow_pickle=True)
    assert len(dataset) == len(LABELS)
    assert dataset.targets == LABELS and all(type(t) is int for t in dataset.targets)
    assert dataset.classes == ["0", "1", "2"]
    for index, (data, label) in enumerate(zip(images, LABELS)):
        image, target = dataset[index]
        assert type(target) is int and target == label
        expected = Image.open(io.BytesIO(data)).convert("RGB")
        assert image.mode == "RGB" and np.array_equal(np.asarray(image), np.asarray(expected))
    with lmdbio.open_database(path, allow_pickle=True) as db:
        assert db.get(2) == (LABELS[2], images[2])
    dataset.close()


def test_seed_database_through_the_cli_is_a_one_line_error(tmp_path: Path) -> None:
    images = seed_images()
    path = write_seed_db(tmp_path / "seed.lmdb",
                         [seed_value(im, lb, "seed", 4) for im, lb in zip(images, LABELS)],
                         subdir=False)
    assert_one_line_error(run_cli("info", path), str(path), "allow_pickle=True",
                          "lmdbio convert")


class Evil:
    """Unpickling this runs ``touch MARKER``: what a hostile database would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


class EvilEval:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (eval, (f"open({str(self.marker)!r}, 'w')",))


@pytest.mark.parametrize("attack", [Evil, EvilPopen, EvilEval])
@pytest.mark.parametrize("where", ["image", "label", "whole", "len"])
def test_hostile_pickle_is_refused_even_with_allow_pickle(tmp_path: Path, attack,
                                                          where: str) -> None:
    marker = tmp_path / "pwned"
    evil = attack(marker)
    good = [seed_value(im, lb, "seed", 4) for im, lb in zip(seed_images(), LABELS)]
    if where == "image":
        good[3] = pickle.dumps(([evil], np.array([1])))
    elif where == "label":
        good[3] = pickle.dumps(([b"\xff\xd8"], evil))
    elif where == "whole":
        good[3] = pickle.dumps(evil)
    path = write_seed_db(tmp_path / "evil.lmdb", good, subdir=False,
                         length=pickle.dumps(evil) if where == "len" else None)
    # the proof that the payload works when unpickled naively
    proof = tmp_path / "proof"
    pickle.loads(pickle.dumps(attack(proof)))
    for _ in range(50):  # Popen returns before the child has run
        if proof.exists():
            break
        subprocess.run(["sleep", "0.02"])
    assert proof.exists()

    with pytest.raises(lmdbio.LegacyFormatError, match="refuses to load"):
        dataset = ImageFolderLMDB(path, allow_pickle=True)
        dataset[3]
    if where != "len":
        dataset = ImageFolderLMDB(path, allow_pickle=True)
        assert dataset[2][1] == LABELS[2]  # honest records still read
        with pytest.raises(lmdbio.LegacyFormatError):
            dataset.targets  # reads every label, including the hostile one
        with pytest.raises(lmdbio.LegacyFormatError):
            dataset.classes
    subprocess.run(["sleep", "0.1"])  # a Popen would have had time to run
    assert not marker.exists()


def test_garbage_records_are_corrupt_not_crashes(tmp_path: Path) -> None:
    values = [seed_value(im, lb, "seed", 4) for im, lb in zip(seed_images(), LABELS)]
    values[1] = b"\x80\x04garbage"
    values[2] = pickle.dumps(("only one",))
    values[4] = pickle.dumps(([b"img"], "not a number"))
    dataset = ImageFolderLMDB(write_seed_db(tmp_path / "bad.lmdb", values, subdir=False),
                              allow_pickle=True)
    for index in (1, 2, 4):
        with pytest.raises(lmdbio.CorruptRecordError):
            dataset[index]
    assert dataset[0][1] == LABELS[0]
    with pytest.raises(IndexError):
        dataset[len(LABELS)]


def test_allow_pickle_does_not_change_how_lmdbio_files_read(odd_db) -> None:
    plain = ImageFolderLMDB(odd_db.db)
    permissive = ImageFolderLMDB(odd_db.db, allow_pickle=True)
    assert type(permissive.database) is type(plain.database) is lmdbio.Database
    assert permissive.targets == plain.targets


def test_plain_lmdb_file_is_not_mistaken_for_a_seed_database(tmp_path: Path) -> None:
    path = tmp_path / "plain.lmdb"
    env = lmdb.open(str(path), subdir=False)
    with env.begin(write=True) as txn:
        txn.put(b"0", b"something")
    env.close()
    for allow in (False, True):
        with pytest.raises(lmdbio.FormatError, match="not an lmdbio database") as caught:
            ImageFolderLMDB(path, allow_pickle=allow)
        assert not isinstance(caught.value, lmdbio.LegacyFormatError)


def test_seed_dataset_pickles_for_workers(tmp_path: Path) -> None:
    images = seed_images()
    path = write_seed_db(tmp_path / "seed.lmdb",
                         [seed_value(im, lb, "seed", 4) for im, lb in zip(images, LABELS)],
                         subdir=True)
    dataset = ImageFolderLMDB(path, allow_pickle=True)
    dataset[0]
    clone = pickle.loads(pickle.dumps(dataset))
    assert clone.database._shared is None
    assert [clone[i][1] for i in range(len(clone))] == LABELS
    assert sys.modules.get("lmdbio.legacy") is not None
