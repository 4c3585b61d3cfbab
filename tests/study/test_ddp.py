"""The benchmark under a real ``torchrun --standalone --nproc_per_node 2`` (gloo on CPU):
per-rank rows gathered by rank 0, equal epoch lengths, disjoint samples, DDP training parity."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys

import pytest

from lmdbio.study import report
from lmdbio.study.protocol import run_bench
from lmdbio.study.workspace import prepare

from tests.helpers import REPO

pandas = pytest.importorskip("pandas")

pytestmark = pytest.mark.slow  # torchrun with 2 ranks: ~60 s for the module

N_IMAGES = 41  # odd: DistributedSampler(drop_last=True) leaves one out, 20 per rank
BATCH = 4


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return prepare(os.fspath(tmp_path_factory.mktemp("ddp-data")), n_images=N_IMAGES, seed=5)


def torchrun(out, workspace, *flags: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           "2", "-m", "lmdbio.study.ddp_bench", "--data-dir", workspace.data_dir,
           "--n-images", str(N_IMAGES), "--seed", "5", "--batch-size", str(BATCH),
           "--num-workers", "1", "--output-dir", os.fspath(out), *flags]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=REPO, env=env)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return done


@pytest.fixture(scope="module")
def load_run(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp-load")
    done = torchrun(out, tiny, "--mode", "load", "--epochs", "2", "--record-indices")
    return done, pandas.read_parquet(out / "runs.parquet"), pandas.read_parquet(
        out / "batches.parquet")


def test_two_ranks_write_one_table_with_a_rank_column(load_run):
    done, runs, batches = load_run
    assert "2 rank(s), backend gloo: 5 runs, 10 rank rows" in done.stdout
    assert len(runs) == 2 * (1 + 4)  # (warm-up + formats x caches) per rank
    assert set(runs["world_size"]) == {2} and set(runs["backend"]) == {"gloo"}
    per_run = runs.groupby("run_id")["rank"].apply(sorted)
    assert all(ranks == [0, 1] for ranks in per_run)  # one run id shared by both ranks
    assert set(batches.groupby("run_id")["rank"].nunique()) == {2}


def test_epochs_have_equal_lengths_and_disjoint_samples(load_run):
    _, runs, batches = load_run
    runs, batches = runs[~runs["warmup"]], batches[~batches["warmup"]]  # warm-up: 1 epoch
    per_rank = N_IMAGES // 2  # drop_last: both ranks the same length
    expected_batches = 2 * -(-per_rank // BATCH)  # 2 epochs of ceil(20 / 4)
    assert set(runs["batches"]) == {expected_batches}
    assert set(runs["images_total"]) == {2 * per_rank}
    for (run_id, epoch), group in batches.groupby(["run_id", "epoch"]):
        seen = {rank: list(itertools.chain(*g["indices"])) for rank, g in group.groupby("rank")}
        assert len(seen[0]) == len(seen[1]) == per_rank
        assert not set(seen[0]) & set(seen[1]), (run_id, epoch)  # no sample on both ranks
        assert len(set(seen[0]) | set(seen[1])) == 2 * per_rank
        assert set(seen[0]) | set(seen[1]) <= set(range(N_IMAGES))
    one_run = batches[(batches["run_id"] == batches["run_id"].iloc[0]) & (batches["rank"] == 0)]
    orders = [list(itertools.chain(*g["indices"])) for _, g in one_run.groupby("epoch")]
    assert orders[0] != orders[1]  # set_epoch: a new shuffle every epoch


def test_cache_state_is_prepared_once_and_seen_by_every_rank(load_run):
    _, runs, _ = load_run
    assert (runs[runs["cache"] == "cold"]["resident_fraction"] <= 0.05).all()
    assert (runs[runs["cache"] == "warm"]["resident_fraction"] >= 0.95).all()
    assert "True; warm" in report.cache_check(runs) and report.cache_check(runs).endswith("True")


def test_report_folds_ranks_and_keeps_per_rank_waits(load_run, tmp_path):
    _, runs, _ = load_run
    measured = runs[~runs["warmup"]]
    folded = report.per_run(measured)
    assert len(folded) == 4 and set(folded["mode"]) == {"ddp2-load"}
    assert set(folded["images_total"]) == {2 * 2 * (N_IMAGES // 2)}  # both ranks' images
    for _, row in folded.iterrows():
        ranks = measured[measured["run_id"] == row["run_id"]]
        assert row["wall_s"] == ranks["wall_s"].max()
        assert row["images_per_s"] == pytest.approx(ranks["images_total"].sum()
                                                    / ranks["wall_s"].max())
    assert report.per_run(folded).equals(folded)  # idempotent
    assert "4 measured runs + 1 warm-up" in report.run_counts(runs)
    per_rank = report.ranks(runs)
    assert sorted(set(per_rank["rank"])) == [0, 1] and len(per_rank) == 8
    assert set(report.speedups(runs)["mode"]) == {"ddp2-load"}
    tables = report.write_tables(measured, os.fspath(tmp_path / "tables"))
    assert "ddp_ranks.csv" in tables
    figures = report.figures(measured, os.fspath(tmp_path / "figures"))
    assert "ddp_ranks.png" in {os.path.basename(f) for f in figures}


def test_ddp_training_sees_the_same_losses_through_both_formats(tiny, tmp_path):
    done = torchrun(tmp_path, tiny, "--mode", "train", "--cache", "warm", "--max-batches", "2",
                    "--no-warmup")
    runs = pandas.read_parquet(tmp_path / "runs.parquet")
    assert len(runs) == 4 and set(runs["batches"]) == {2}
    wide = runs.pivot_table(index="rank", columns="format", values="last_epoch_loss")
    assert (wide["lmdb"] == wide["imagefolder"]).all()  # same pixels, shuffle, augmentation
    assert wide.loc[0, "lmdb"] != wide.loc[1, "lmdb"]  # but each rank its own samples
    assert "training loss identical across formats in 2 of 2" in report.format_parity(runs)
    assert "backend gloo" in done.stdout


def test_single_process_rows_are_rank_0_of_1(tiny):
    result = run_bench(data_dir=tiny.data_dir, split_dir=tiny.split_dir,
                       lmdb_path=tiny.lmdb_path, storage="local", mode="load",
                       formats=["lmdb"], caches=["warm"], batch_size=8, num_workers=0,
                       warmup=False)
    assert set(result.runs["rank"]) == {0} and set(result.runs["world_size"]) == {1}
    assert set(result.batches["rank"]) == {0} and set(result.runs["backend"]) == {"none"}
    assert report.per_run(result.runs).equals(result.runs)
    assert report.ranks(result.runs).empty
    # the ddp notebook's table with one rank: no rows, the columns it drops are there
    assert report.ranks(result.runs).drop(columns=["storage", "fs_type"]).empty


def test_one_rank_under_torchrun_and_no_temporary_folder_left(tiny, tmp_path):
    import glob
    import tempfile

    from lmdbio.study.ddp_launch import run_torchrun

    with pytest.raises(ValueError, match="mode 'Load': not one of"):  # before torchrun starts
        run_torchrun(nproc=1, data_dir=tiny.data_dir, mode="Load")
    patterns = [os.path.join(tempfile.gettempdir(), name)
                for name in ("lmdbio-ddp-*", "lmdbio-torchrun-*", "torchelastic_*")]
    before = {p: set(glob.glob(p)) for p in patterns}
    result = run_torchrun(nproc=1, data_dir=tiny.data_dir, n_images=N_IMAGES, seed=5,
                          mode="load", formats="imagefolder, lmdb", cache="warm",
                          batch_size=BATCH, num_workers=0, max_batches=2)
    assert set(result.runs["world_size"]) == {1} and result.output_dir is None
    assert {p: set(glob.glob(p)) for p in patterns} == before  # tables read back, logs gone
    assert report.ranks(result.runs).empty
