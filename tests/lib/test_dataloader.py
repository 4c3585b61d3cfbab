"""Real DataLoader workers (fork and spawn), pickling, sharing a file, read-only use."""

from __future__ import annotations

import collections
import multiprocessing
import os
import pickle
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import lmdbio
from lmdbio.dataset import ImageFolderLMDB

from tests.helpers import pixel_digest, seen


# Module-level callables: spawn workers import this module to unpickle the dataset.
def worker_pid(_: object) -> int:
    return os.getpid()


@pytest.mark.parametrize("context", ["fork", "spawn"])
@pytest.mark.parametrize("persistent", [True, False])
def test_two_workers_see_every_sample_once(odd_db, reference, context: str,
                                           persistent: bool) -> None:
    dataset = ImageFolderLMDB(odd_db.db, transform=pixel_digest)
    loader = DataLoader(dataset, batch_size=None, shuffle=True, num_workers=2,
                        multiprocessing_context=context, persistent_workers=persistent,
                        generator=torch.Generator().manual_seed(0))
    epochs = 2 if persistent else 1  # a second epoch reuses persistent workers
    for _ in range(epochs):
        assert seen(loader) == reference
    # the parent (which opened the file to read its header) still reads after the workers
    assert dataset[0] in reference and dataset.database._shared.pid == os.getpid()


def test_dataset_used_in_parent_then_in_forked_workers(odd_db, reference) -> None:
    dataset = ImageFolderLMDB(odd_db.db, transform=pixel_digest)
    parent = collections.Counter(dataset[i] for i in range(len(dataset)))
    assert parent == reference
    assert dataset.database._shared is not None and dataset.database._shared.pid == os.getpid()
    loader = DataLoader(dataset, batch_size=None, num_workers=2, multiprocessing_context="fork")
    for _ in range(2):
        assert seen(loader) == reference
    # and the parent's environment still works after the children closed their copies
    assert collections.Counter(dataset[i] for i in range(len(dataset))) == reference


def test_workers_really_are_separate_processes(odd_db) -> None:
    dataset = ImageFolderLMDB(odd_db.db, transform=worker_pid)
    loader = DataLoader(dataset, batch_size=None, num_workers=2, multiprocessing_context="fork")
    pids = {int(pid) for pid, _ in loader}
    assert len(pids) == 2 and os.getpid() not in pids


def test_pickle_round_trip_before_and_after_reading(odd_db, reference) -> None:
    dataset = ImageFolderLMDB(odd_db.db, transform=pixel_digest, target_transform=str)
    fresh = pickle.loads(pickle.dumps(dataset))
    assert fresh.database._shared is None
    assert fresh[3] == dataset[3]  # reading opens the environment in both
    assert dataset.database._shared is not None
    blob = pickle.dumps(dataset)
    assert b"Environment" not in blob
    clone = pickle.loads(blob)
    assert clone.database._shared is None and clone._samples is None
    assert clone.classes == dataset.classes and clone.targets == dataset.targets
    assert collections.Counter((d, int(t)) for d, t in (clone[i] for i in range(len(clone)))
                               ) == reference
    # the seed's failure: an lmdb.Environment itself cannot be pickled
    with pytest.raises(TypeError):
        pickle.dumps(dataset.database._shared.env)


def test_pickled_dataset_reads_in_a_spawned_process(odd_db) -> None:
    dataset = ImageFolderLMDB(odd_db.db, transform=pixel_digest)
    dataset[0]  # the parent has an open environment
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        remote = pool.apply(read_all, (dataset,))
    assert remote == [dataset[i] for i in range(len(dataset))]


def read_all(dataset: ImageFolderLMDB) -> list:
    return [dataset[i] for i in range(len(dataset))]


def test_two_datasets_on_one_file_in_one_process(odd_db, reference) -> None:
    first = ImageFolderLMDB(odd_db.db, transform=pixel_digest)
    second = ImageFolderLMDB(odd_db.db, transform=pixel_digest)
    assert first[0] == second[0]
    assert first.database._shared is second.database._shared  # one env per file per process
    first.close()
    assert collections.Counter(second[i] for i in range(len(second))) == reference
    assert first[5] == second[5]  # a closed dataset reopens on use
    second.close()
    first.close()
    assert first.database._shared is None


def test_same_file_with_other_options_is_refused_clearly(odd_db) -> None:
    first = ImageFolderLMDB(odd_db.db, readahead=True)
    first[0]
    try:
        with pytest.raises(lmdbio.OpenOptionsError, match="already open in this process"):
            ImageFolderLMDB(odd_db.db, readahead=False)[0]
        with pytest.raises(ValueError):  # what it is besides, not a FormatError (the file
            ImageFolderLMDB(odd_db.db, lock=True)[0]  # is fine)
        second = ImageFolderLMDB(odd_db.db)  # "auto": as it is open already, shared
        assert second.readahead is True and second[0] == first[0]
        assert second.database._shared is first.database._shared
        second.close()
    finally:
        first.close()
    off = ImageFolderLMDB(odd_db.db, readahead=False)
    off[0]
    assert ImageFolderLMDB(odd_db.db).readahead is False  # auto follows whichever is open
    off.close()


def test_tools_work_while_a_dataset_holds_the_file(odd_db, tmp_path: Path) -> None:
    """info/verify/extract prefer other readahead settings than a Dataset; they must share."""
    for readahead in (False, True):
        dataset = ImageFolderLMDB(odd_db.db, readahead=readahead)
        dataset[0]
        try:
            assert lmdbio.info(odd_db.db).num_samples == 23
            assert lmdbio.verify(odd_db.db).ok
            assert lmdbio.extract(odd_db.db, tmp_path / f"out{readahead}") == 23
            assert dataset.database._shared.options.readahead is readahead
            dataset[1]  # and the dataset's environment survived the tools closing theirs
        finally:
            dataset.close()


def test_read_only_file_and_no_lock_file(tmp_path: Path) -> None:
    from tests.helpers import build_simple_tree

    tree = build_simple_tree(tmp_path / "tree", per_class=2)
    folder = tmp_path / "ro"
    folder.mkdir()
    db = folder / "db.lmdb"
    lmdbio.convert(tree, db, progress=False)
    before = sorted(os.listdir(folder))
    assert before == ["db.lmdb"]  # the converter left no lock file and no partial
    os.chmod(db, 0o444)
    os.chmod(folder, 0o555)
    try:
        dataset = ImageFolderLMDB(db)
        images = [np.asarray(dataset[i][0]) for i in range(len(dataset))]
        assert len(images) == 4 and dataset.targets == [0, 0, 1, 1]
        assert lmdbio.verify(db).ok and lmdbio.info(db).num_samples == 4
        dataset.close()
        assert sorted(os.listdir(folder)) == before  # no "db.lmdb-lock"
        assert stat.S_IMODE(os.stat(db).st_mode) == 0o444
    finally:
        os.chmod(folder, 0o755)


def test_home_relative_paths_like_imagefolder(odd_db, monkeypatch: pytest.MonkeyPatch,
                                              tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(odd_db.db.parent))
    dataset = ImageFolderLMDB(f"~/{odd_db.db.name}")
    assert dataset.root == str(odd_db.db) and len(dataset) == 23
    assert dataset[0][1] == 0
    assert lmdbio.info(f"~/{odd_db.db.name}").num_samples == 23
    monkeypatch.setenv("HOME", str(tmp_path))
    assert lmdbio.extract(odd_db.db, "~/out") == 23 and (tmp_path / "out" / "cat").is_dir()
    dataset.close()
