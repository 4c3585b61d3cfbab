"""The peer storage strategies (WebDataset, LitData): writers equal to ImageFolder sample by
sample, readers that deliver every sample exactly once per epoch, the harness and protocol
running them, and a one-line install hint without the extra. Skipped without the extra."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tarfile
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from lmdbio.study import peers
from lmdbio.errors import OutputExistsError

from tests.helpers import build_odd_tree, build_simple_tree


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _imagefolder(tree: Path) -> list[tuple[int, str]]:
    """(label, sha256 of the file) per ImageFolder index, from torchvision itself."""
    from torchvision.datasets import ImageFolder

    return [(label, _sha(Path(path).read_bytes())) for path, label in ImageFolder(tree).samples]


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    pytest.importorskip("webdataset")
    pytest.importorskip("litdata")

    base = tmp_path_factory.mktemp("peers")
    tree = build_odd_tree(base / "train")
    return tree, {fmt: peers.write(fmt, tree, shard_samples=4) if fmt == "webdataset"
                  else peers.write(fmt, tree, chunk_samples=4) for fmt in peers.PEER_FORMATS}


@pytest.mark.peers
def test_webdataset_shards_hold_imagefolder_samples(written):
    tree, paths = written
    found = {}
    for name in sorted(os.listdir(paths["webdataset"])):
        if not name.endswith(".tar"):
            continue
        with tarfile.open(os.path.join(paths["webdataset"], name)) as tar:
            for member in tar.getmembers():
                key, _, ext = member.name.partition(".")
                data = tar.extractfile(member).read()
                entry = found.setdefault(int(key), {})
                entry["cls" if ext == "cls" else "image"] = data
    expected = _imagefolder(tree)
    assert sorted(found) == list(range(len(expected)))
    assert [(int(found[i]["cls"]), _sha(found[i]["image"])) for i in sorted(found)] == expected
    manifest = peers.read_manifest(paths["webdataset"])
    assert manifest["num_samples"] == len(expected) and sum(manifest["shard_samples"]) == len(
        expected)


@pytest.mark.peers
def test_litdata_chunks_hold_imagefolder_samples(written):
    import litdata

    tree, paths = written
    stream = litdata.StreamingDataset(paths["litdata"], shuffle=False)
    found = {int(s["index"]): (int(s["label"]), _sha(s["image"])) for s in stream}
    expected = _imagefolder(tree)
    assert len(stream) == len(expected) and [found[i] for i in range(len(expected))] == expected
    assert peers.read_manifest(paths["litdata"])["classes"] == ["cat", "dog", "sea lion"]


@pytest.mark.peers
def test_writer_refuses_existing_output_and_leaves_no_partial(written, tmp_path):
    tree, paths = written
    for fmt in peers.PEER_FORMATS:
        with pytest.raises(OutputExistsError, match="overwrite"):
            peers.write(fmt, tree, paths[fmt])
        assert not os.path.exists(paths[fmt] + ".partial")
    small = build_simple_tree(tmp_path / "small", per_class=2)
    again = peers.write("webdataset", small, str(tmp_path / "out.wds"))
    assert peers.write("webdataset", small, again, overwrite=True) == again
    assert sorted(os.listdir(tmp_path)) == ["out.wds", "small"]  # no .partial left behind


def _identity(image) -> torch.Tensor:
    """The decoded pixels' hash as a tensor: which sample arrived, independent of order."""
    return torch.tensor(int(hashlib.sha1(np.asarray(image).tobytes()).hexdigest()[:12], 16))


@pytest.mark.peers
@pytest.mark.parametrize("fmt", peers.PEER_FORMATS)
def test_reader_yields_every_sample_once_per_epoch_with_two_workers(written, fmt):
    from torchvision.datasets import ImageFolder

    from lmdbio.study.peers.reading import open_peer

    tree, paths = written
    expected = Counter((_identity(image).item(), label) for image, label in ImageFolder(tree))
    dataset = open_peer(fmt, paths[fmt], _identity, seed=5, batch_size=3)
    assert len(dataset) == sum(expected.values()) and dataset.classes == ["cat", "dog", "sea lion"]
    orders = []
    for epoch in range(2):
        dataset.set_epoch(epoch)
        got = [(x, y) for images, labels in DataLoader(dataset, batch_size=3, num_workers=2)
               for x, y in zip(images.tolist(), labels.tolist())]
        assert Counter(got) == expected  # every sample, exactly once
        orders.append(got)
    assert orders[0] != orders[1]  # reshuffled per epoch


def test_require_without_the_extra_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "webdataset", None)  # import webdataset now fails
    with pytest.raises(ImportError, match=r"pip install 'lmdbio\[peers\]'") as info:
        peers.require("webdataset")
    assert len(str(info.value).splitlines()) == 1


def test_study_says_when_the_peers_are_left_out(monkeypatch, capsys):
    from lmdbio.study import runner as study

    monkeypatch.setattr(study.peers, "available", lambda: ())
    assert study._formats(study.StudyConfig()) == ("imagefolder", "lmdb")
    line = capsys.readouterr().out.strip()
    assert line == ('[study] peer strategies webdataset, litdata skipped: not installed; '
                    "pip install 'lmdbio[peers]' to include them")


def test_study_runs_the_peers_in_their_modes_and_measures_their_writers(monkeypatch):
    from lmdbio.study import runner as study

    calls = {}
    monkeypatch.setattr(study, "_execute", lambda notebook, output, parameters, *_:
                        calls.setdefault(os.path.basename(output), parameters) is not None)
    config = study.StudyConfig(modes=("train", "emulate", "load"), ddp_procs=0)
    formats = ("imagefolder", "lmdb", *peers.PEER_FORMATS)
    study._run_target(config, "ssd", "/data", "", "/results", study._Outcome(), formats)
    assert calls["convert.ipynb"]["writers"] == "lmdb,webdataset,litdata"
    assert calls["convert.ipynb"]["writers_csv"] == "/results/ssd/writers.csv"
    assert calls["bench-train.ipynb"]["formats"] == "imagefolder,lmdb"  # not a peer mode
    assert calls["bench-emulate.ipynb"]["formats"] == ",".join(formats)
    assert calls["bench-load.ipynb"]["formats"] == ",".join(formats)


@pytest.mark.peers
def test_run_bench_measures_the_peers_cold_and_warm(tmp_path):
    pytest.importorskip("webdataset")
    pytest.importorskip("litdata")
    pandas = pytest.importorskip("pandas")
    from lmdbio.study.protocol import FORMATS, run_bench
    from lmdbio.study.workspace import prepare

    assert set(peers.PEER_FORMATS) <= set(FORMATS)
    (tmp_path / "data").mkdir()
    work = prepare(os.fspath(tmp_path / "data"), n_images=20, seed=2,
                   formats=["lmdb", *peers.PEER_FORMATS])
    assert set(work.peer_paths) == set(peers.PEER_FORMATS)
    result = run_bench(data_dir=work.data_dir, split_dir=work.split_dir,
                       lmdb_path=work.lmdb_path, storage="local", mode="load",
                       formats=list(peers.PEER_FORMATS), epochs=2, batch_size=8, num_workers=2,
                       threads=1, warmup=False)
    runs, batches = result.runs, result.batches
    assert len(runs) == 2 * 2 and set(runs["format"]) == set(peers.PEER_FORMATS)
    assert (runs[runs["cache"] == "cold"]["resident_fraction"] <= 0.05).all()
    assert (runs[runs["cache"] == "warm"]["resident_fraction"] >= 0.95).all()
    per_epoch = batches.groupby(["run_id", "epoch"])["images"].sum()
    assert (per_epoch == 20).all() and len(per_epoch) == 4 * 2  # nothing dropped, every epoch
    assert isinstance(runs, pandas.DataFrame) and (runs["n_samples"] == 20).all()


@pytest.mark.slow
@pytest.mark.peers
def test_conversion_table_measures_every_writer(tmp_path):
    pytest.importorskip("webdataset")
    pytest.importorskip("litdata")
    from lmdbio.study.peers.timing import measure_writers

    tree = build_simple_tree(tmp_path / "train", per_class=3)
    csv_path = tmp_path / "writers.csv"
    rows = measure_writers(os.fspath(tree), ["lmdb", *peers.PEER_FORMATS],
                           csv_path=os.fspath(csv_path), storage="ssd")
    assert [r["format"] for r in rows] == ["lmdb", "webdataset", "litdata"]
    assert all(r["images"] == 6 and r["bytes_on_disk"] > 0 and r["peak_rss_mb"] > 0
               and r["seconds"] > 0 for r in rows)
    assert os.path.exists(tmp_path / "train.lmdb") and os.path.isdir(tmp_path / "train.wds")
    assert not any(name.endswith((".measure", ".partial")) for name in os.listdir(tmp_path))
    assert csv_path.read_text().splitlines()[0].startswith("storage,format,images")
    assert json.loads((tmp_path / "train.litdata" / peers.MANIFEST).read_text())["num_samples"] == 6


def test_the_writers_are_checked_before_the_first_is_written(tmp_path):
    from lmdbio.study.peers.timing import measure_writers

    tree = build_simple_tree(tmp_path / "train", per_class=1)
    with pytest.raises(ValueError, match="writers 'tar': not one of lmdb, webdataset"):
        measure_writers(os.fspath(tree), "lmdb, tar")
    assert sorted(os.listdir(tmp_path)) == ["train"]


@pytest.mark.peers
def test_prepare_refuses_a_peer_dataset_of_another_state_of_the_split(tmp_path):
    pytest.importorskip("webdataset")
    from lmdbio.study.workspace import StaleDataError, prepare

    (tmp_path / "data").mkdir()
    work = prepare(os.fspath(tmp_path / "data"), n_images=8, seed=1, formats=["webdataset"])
    dogs = os.path.join(work.split_dir, "dog")
    first = sorted(os.listdir(dogs))[0]
    os.rename(os.path.join(dogs, first), os.path.join(dogs, "z" + first))
    os.remove(work.lmdb_path)  # converted again: only the peer is left stale
    with pytest.raises(StaleDataError, match=f"{work.peer_paths['webdataset']}.*another state"):
        prepare(work.data_dir, n_images=8, seed=1, formats=["webdataset"])


@pytest.mark.peers
def test_litdata_writer_leaves_no_cache_in_the_temporary_folder(tmp_path, monkeypatch):
    """litdata.optimize keeps its caches in TMPDIR/chunks and TMPDIR/data and leaves them."""
    pytest.importorskip("litdata")
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setenv("TMPDIR", os.fspath(tmp))
    monkeypatch.setattr(tempfile, "tempdir", None)  # read TMPDIR again
    tree = build_simple_tree(tmp_path / "train", per_class=3)
    peers.write("litdata", tree, tmp_path / "out.litdata", chunk_samples=4)
    assert os.listdir(tmp) == []
    assert "DATA_OPTIMIZER_CACHE_FOLDER" not in os.environ
