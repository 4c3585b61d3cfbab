"""The study side: protocol order, harness figures, report tables, the papermill runner."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time

import pytest

import lmdbio
from lmdbio.study import netfs, peers
from lmdbio.study.protocol import run_bench, schedule
from lmdbio.study.workspace import prepare

from tests.helpers import REPO

pandas = pytest.importorskip("pandas")


def test_schedule_is_abba_counterbalanced():
    order = schedule(["imagefolder", "lmdb"], ["cold", "warm"], 2)
    first, second = order[:4], order[4:]
    assert [(f, c) for f, c, _ in first] == [(f, c) for f, c, _ in reversed(second)]
    assert {r for *_, r in first} == {0} and {r for *_, r in second} == {1}
    # every condition sits equally often in every position over a pair of repeats
    positions = {}
    for i, (f, c, _) in enumerate(order):
        positions.setdefault((f, c), []).append(i % 4)
    assert all(sorted(p) == sorted([p[0], 3 - p[0]]) for p in positions.values())


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return prepare(os.fspath(tmp_path_factory.mktemp("data")), n_images=24, seed=3)


def test_prepare_generates_and_converts_once(tiny):
    assert os.path.isdir(os.path.join(tiny.split_dir, "cat"))
    assert os.path.exists(tiny.lmdb_path) and tiny.converted
    again = prepare(tiny.data_dir, n_images=24, seed=3)
    assert not again.converted and again.lmdb_path == tiny.lmdb_path


def test_prepare_checks_a_database_this_process_holds_open(tiny):
    dataset = lmdbio.ImageFolderLMDB(tiny.lmdb_path, readahead=False)  # as "auto" opens a
    dataset[0]  # database larger than half the memory
    try:
        assert not prepare(tiny.data_dir, n_images=24, seed=3).converted
    finally:
        dataset.close()


def test_prepare_refuses_a_missing_data_dir_and_an_imagefolder_root(tmp_path):
    """A mistyped data_dir, or the ImageFolder itself given as data_dir (its split folder
    missing), must not get a synthetic set: nothing is written."""
    from PIL import Image

    with pytest.raises(FileNotFoundError, match="is not a folder"):
        prepare(os.fspath(tmp_path / "no" / "such"), n_images=4)
    assert not (tmp_path / "no").exists()
    mine = tmp_path / "mine"
    for name in ("apple", "pear"):
        (mine / name).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(mine / name / "0.png")
    before = sorted(mine.rglob("*"))
    with pytest.raises(ValueError, match=f"data_dir='{tmp_path}' and split='mine'"):
        prepare(os.fspath(mine), n_images=4)
    assert sorted(mine.rglob("*")) == before


def test_prepare_refuses_a_database_of_another_state_of_the_split(tmp_path):
    from lmdbio.study.workspace import StaleDataError

    (tmp_path / "data").mkdir()
    first = prepare(os.fspath(tmp_path / "data"), n_images=12, seed=1)
    cats = sorted(os.listdir(os.path.join(first.split_dir, "cat")))
    os.remove(os.path.join(first.split_dir, "cat", cats[0]))
    with pytest.raises(StaleDataError, match="another state of"):
        prepare(first.data_dir, n_images=12, seed=1)
    again = prepare(first.data_dir, n_images=12, seed=1, overwrite=True)
    assert again.converted and lmdbio.info(again.lmdb_path).num_samples == 11
    assert not prepare(first.data_dir, n_images=12, seed=1).converted  # current now


def test_prepare_sees_an_image_rewritten_under_its_name(tmp_path):
    """Same classes and file names, one image's bytes changed since the conversion: the
    database's fingerprint (size and modification time of every file) tells."""
    from lmdbio.study.workspace import StaleDataError

    (tmp_path / "data").mkdir()
    first = prepare(os.fspath(tmp_path / "data"), n_images=12, seed=1)
    victim = os.path.join(first.split_dir, "cat", sorted(os.listdir(
        os.path.join(first.split_dir, "cat")))[0])
    with open(victim, "ab") as handle:
        handle.write(b"\0")  # a JPEG still, one byte longer
    earlier = time.time_ns() - 10**10  # the conversion 10 s ago: not within a clock tick
    os.utime(first.lmdb_path, ns=(earlier, earlier))
    with pytest.raises(StaleDataError, match="another state of.*changed since"):
        prepare(first.data_dir, n_images=12, seed=1)
    ahead = time.time_ns() + 86_400 * 10**9  # a clock ahead: cannot tell, and converting
    os.utime(victim, ns=(ahead, ahead))      # again would not change that: used as it is
    assert not prepare(first.data_dir, n_images=12, seed=1).converted


def test_prepare_names_the_split_a_database_of_another_split_came_from(tmp_path):
    """lmdb_path pointing at the val split's database: converting it again from train (the
    general remedy) would replace that database, so the error says to pass this split's."""
    from lmdbio.study.workspace import StaleDataError

    (tmp_path / "data").mkdir()
    train = prepare(os.fspath(tmp_path / "data"), n_images=12, seed=1)
    shutil.copytree(train.split_dir, tmp_path / "data" / "val")
    os.remove(next((tmp_path / "data" / "val" / "cat").iterdir()))
    val = prepare(train.data_dir, split="val", n_images=12, seed=1)
    with pytest.raises(StaleDataError, match="was converted from .*val.*, not from .*train.*; "
                                             "pass the lmdb_path of this split") as raised:
        prepare(train.data_dir, lmdb_path=val.lmdb_path, n_images=12, seed=1)
    assert "--overwrite" not in str(raised.value)


@pytest.mark.parametrize("bad, match", [(dict(formats=["lmdb", "lmbd"]), "formats 'lmbd'"),
                                        (dict(n_images="many"), "n_images must be an int"),
                                        (dict(overwrite="yes"), "overwrite must be True or")])
def test_prepare_checks_its_parameters_before_generating_or_converting(tmp_path, bad, match):
    with pytest.raises(ValueError, match=match):
        prepare(os.fspath(tmp_path), **bad)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("spelled", ["false", "False", False, " FALSE "])
def test_prepare_takes_overwrite_false_as_papermill_passes_it(tmp_path, spelled):
    (tmp_path / "data").mkdir()
    first = prepare(os.fspath(tmp_path / "data"), n_images=12, seed=1)
    inode = os.stat(first.lmdb_path).st_ino
    again = prepare(first.data_dir, n_images=12, seed=1, overwrite=spelled)
    assert not again.converted and os.stat(first.lmdb_path).st_ino == inode
    with pytest.raises(ValueError, match="overwrite must be True or False, not 'auto'"):
        prepare(first.data_dir, n_images=12, seed=1, overwrite="auto")


def test_a_negative_parity_limit_is_refused(tiny):
    from lmdbio.study.parity import compare_with_imagefolder

    with pytest.raises(ValueError, match="parity_limit must be at least 0, not -1"):
        compare_with_imagefolder(tiny.split_dir, tiny.lmdb_path, limit=-1)


def test_check_conversion_stops_at_a_database_of_other_images(tiny, tmp_path, capsys):
    from lmdbio.study.parity import ParityError, check_conversion

    assert check_conversion(tiny.split_dir, tiny.lmdb_path).ok
    other = tmp_path / "other"
    shutil.copytree(tiny.split_dir, other)
    victim = sorted((other / "dog").iterdir())[0]
    victim.write_bytes(sorted((other / "cat").iterdir())[0].read_bytes())
    with pytest.raises(ParityError, match="does not read back as ImageFolder"):
        check_conversion(other, tiny.lmdb_path)
    assert "checksums OK: True" in capsys.readouterr().out


@pytest.mark.slow
def test_run_bench_rows_cache_state_and_parity(tiny, tmp_path):
    out = tmp_path / "out"
    result = run_bench(data_dir=tiny.data_dir, split_dir=tiny.split_dir,
                       lmdb_path=tiny.lmdb_path, storage="local", mode="train", epochs=2,
                       batch_size=8, num_workers=1, repeats=2, threads=1,
                       output_dir=os.fspath(out))
    runs, batches = result.runs, result.batches
    assert len(runs) == 1 + 2 * 2 * 2 and runs["warmup"].sum() == 1
    measured = runs[~runs["warmup"]]
    assert (measured[measured["cache"] == "cold"]["resident_fraction"] <= 0.05).all()
    assert (measured[measured["cache"] == "warm"]["resident_fraction"] >= 0.95).all()
    # 24 images, batch 8 -> 3 batches per epoch, 2 epochs
    assert set(batches.groupby("run_id").size()[measured["run_id"]]) == {6}
    assert (batches["data_time"] > 0).all() and (batches["batch_time"] >= batches["data_time"]).all()
    assert (measured["n_samples"] == 24).all() and (measured["fs_type"] != "").all()
    # same pixels, shuffle and augmentation -> identical losses for both formats
    pairs = measured.pivot_table(index=["cache", "repeat"], columns="format",
                                 values="last_epoch_loss")
    assert (pairs["lmdb"] == pairs["imagefolder"]).all()
    for name in ("batches.parquet", "runs.parquet", "runs.csv"):
        assert (out / name).exists()
    assert len(pandas.read_parquet(out / "runs.parquet")) == len(runs)


def test_emulate_mode_reports_utilisation(tiny):
    result = run_bench(data_dir=tiny.data_dir, split_dir=tiny.split_dir,
                       lmdb_path=tiny.lmdb_path, storage="local", mode="emulate",
                       caches=["warm"], batch_size=8, num_workers=1, step_ms=30, warmup=False)
    runs = result.runs
    assert (runs["utilisation"] > 0).all() and (runs["utilisation"] <= 1).all()
    assert (result.batches["step_time"] >= 0.029).all()


@pytest.mark.slow
def test_report_tables_and_figures(tiny, tmp_path):
    from lmdbio.study import report

    for storage in ("ssd", "other"):
        run_bench(data_dir=tiny.data_dir, split_dir=tiny.split_dir, lmdb_path=tiny.lmdb_path,
                  storage=storage, mode="load", batch_size=8, num_workers=1, repeats=2,
                  output_dir=os.fspath(tmp_path / storage / "load"))
    (tmp_path / "skipped.json").write_text(json.dumps([{"target": "nfs", "reason": "why"}]))
    runs, batches, skipped = report.load_results(os.fspath(tmp_path))
    assert not runs["warmup"].any() and len(runs) == 2 * 2 * 2 * 2
    speed = report.speedups(runs)
    assert len(speed) == 4 and (speed["pairs"] == 2).all() and (speed["speedup"] > 0).all()
    tables = report.write_tables(runs, os.fspath(tmp_path / "tables"))
    assert os.path.getsize(tables["speedups.csv"]) > 0
    figures = report.figures(runs, os.fspath(tmp_path / "figures"))
    names = sorted(os.path.basename(f) for f in figures)
    assert names == ["data_and_batch_time.png", "strategies.png", "throughput.png",
                     "time_to_first_batch.png", "when_lmdb_helps.png"]  # no emulate: no utilisation
    ratios = pandas.read_csv(tables["ratios.csv"])  # every format over ImageFolder
    assert set(ratios["format"]) == {"lmdb"} and (ratios["pairs"] == 2).all()
    assert list(pandas.read_csv(tables["strategies.csv"])["format"]) == [
        "imagefolder", "lmdb", "webdataset", "litdata"]
    assert all(open(f, "rb").read(8) == b"\x89PNG\r\n\x1a\n" for f in figures)
    assert "skipped target nfs: why" in report.describe(runs, skipped)

    # a report written over an earlier one shows only its own tables and figures; files no
    # report wrote stay
    out = tmp_path / "report"
    stale = ["tables/ddp_ranks.csv", "tables/ddp_ranks.parquet", "figures/utilisation.png"]
    mine = ["tables/notes.txt", "tables/hyperparameters.csv", "figures/architecture.png"]
    for rel in stale + mine:
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_bytes(b"x")
    (out / ".lmdbio-report.json").write_text(json.dumps({"files": stale + ["../outside.csv"]}))
    (tmp_path / "outside.csv").write_text("not the report's to remove")
    written = report.write_report(runs, os.fspath(out), results_dir=os.fspath(tmp_path))
    assert sorted(os.listdir(out / "figures")) == sorted(names + ["architecture.png"])
    assert sorted(os.listdir(out / "tables")) == sorted(
        [os.path.basename(p) for p in written.tables] + ["notes.txt", "hyperparameters.csv"])
    assert (tmp_path / "outside.csv").exists()
    listed = json.loads((out / ".lmdbio-report.json").read_text())["files"]
    assert len(listed) == len(written.tables) + len(written.figures)

    # runs made with other parameters are not repetitions of one condition: refused
    run_bench(data_dir=tiny.data_dir, split_dir=tiny.split_dir, lmdb_path=tiny.lmdb_path,
              storage="ssd", mode="load", batch_size=4, num_workers=1, caches=["warm"],
              formats=["lmdb"], warmup=False, output_dir=os.fspath(tmp_path / "bs4" / "load"))
    with pytest.raises(ValueError, match="ssd/.*/load/warm/lmdb: batch_size 4, 8"):
        report.load_results(os.fspath(tmp_path))
    assert report.results_location("") == os.fspath(REPO / "results" / "reference")


def test_report_tables_without_an_imagefolder_baseline_keep_their_headers(tiny, tmp_path):
    """Results of lmdbio alone: the tables comparing it with ImageFolder have no rows, but
    their CSVs still hold their header (a 1-byte CSV is pandas' EmptyDataError)."""
    from lmdbio.study import report

    run_bench(data_dir=tiny.data_dir, split_dir=tiny.split_dir, lmdb_path=tiny.lmdb_path,
              storage="ssd", mode="load", formats=["lmdb"], caches=["warm"], batch_size=8,
              num_workers=0, max_batches=1, output_dir=os.fspath(tmp_path / "ssd" / "load"))
    runs, _, _ = report.load_results(os.fspath(tmp_path))
    tables = report.write_tables(runs, os.fspath(tmp_path / "tables"))
    for name, column in (("speedups.csv", "speedup"), ("ratios.csv", "ratio"),
                         ("comparisons.csv", "verdict")):
        read = pandas.read_csv(tables[name])
        assert read.empty and column in read.columns and "storage" in read.columns, name
    # warm runs alone: the cold check has nothing to hold for (all() of none was True)
    assert report.cache_check(runs) == ("cold runs evicted (residency <= 5%): n/a (no cold "
                                         "runs); warm runs cached (residency >= 95%): True")


def test_run_bench_checks_its_conditions_before_the_first_run(tiny):
    for bad, match in ((dict(formats=["imagefolder", "lmbd"]), "formats 'lmbd'"),
                       (dict(caches=["cold", "hot"]), "cache 'hot'"),
                       (dict(mode="Load"), "mode 'Load'"),
                       (dict(readahead="maybe"), "readahead must be"),
                       (dict(epochs=0), "epochs must be at least 1"),
                       (dict(repeats=0), "repeats must be at least 1"),
                       (dict(max_batches=-1), "max_batches must be at least 0"),
                       (dict(step_ms=float("nan")), "step_ms must be at least 0"),
                       # as papermill passes -p epochs two, -p repeats 1.5
                       (dict(epochs="two"), "epochs must be an int, not 'two'"),
                       (dict(repeats=1.5), "repeats must be an int, not 1.5"),
                       (dict(step_ms="fast"), "step_ms must be a number, not 'fast'"),
                       (dict(batch_size=0), "batch_size must be at least 1"),
                       (dict(num_workers=-1), "num_workers must be at least 0"),
                       (dict(threads=-2), "threads must be at least 0"),
                       (dict(caches=["cold", "cold"]), "cache 'cold' given more than once"),
                       (dict(formats="lmdb,lmdb"), "formats 'lmdb' given more than once"),
                       (dict(backing_dir="/nonexistent-backing"), "backing_dir "
                        "'/nonexistent-backing' is not a folder")):
        options = dict(mode="load") | bad
        with pytest.raises(ValueError, match=match):
            run_bench(data_dir=tiny.data_dir, split_dir=tiny.split_dir,
                      lmdb_path=tiny.lmdb_path, storage="local", **options)
    result = run_bench(data_dir=tiny.data_dir, split_dir=tiny.split_dir,
                       lmdb_path=tiny.lmdb_path, storage="local", mode="load",
                       formats=[" lmdb"], caches=["warm "], readahead="false", batch_size=8,
                       num_workers=0, warmup=False, max_batches=1)  # as papermill passes them
    assert list(result.runs["format"]) == ["lmdb"] and list(result.runs["readahead"]) == [False]


@pytest.mark.parametrize("bad, match", [
    (dict(nproc=0), "nproc must be at least 1, not 0"),
    (dict(batch_size=0), "batch_size must be at least 1, not 0"),
    (dict(epochs="two"), "epochs must be an int, not 'two'"),
])
def test_the_ddp_notebooks_counts_are_checked_before_torchrun_starts(tmp_path, bad, match):
    """torchrun's own answer to --nproc_per_node 0 is a bare AssertionError in its traceback."""
    from lmdbio.study.ddp_launch import torchrun_command

    with pytest.raises(ValueError, match=match):
        torchrun_command(os.fspath(tmp_path), **bad)
    assert "--nproc_per_node" in torchrun_command(os.fspath(tmp_path))


def _study(tmp_path, *extra):
    cmd = [sys.executable, "-m", "lmdbio.cli", "study", "--images", "16", "--repeats", "1",
           "--batch-size", "8", "--num-workers", "1", "--work-dir", os.fspath(tmp_path / "w"),
           "--results-dir", os.fspath(tmp_path / "r"), *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
@pytest.mark.sshfs
@pytest.mark.skipif(not netfs.available()[0], reason=netfs.available()[1])
def test_study_runs_both_targets_and_tears_down(tmp_path):
    done = _study(tmp_path, "--modes", "load")
    assert done.returncode == 0, done.stdout + done.stderr
    results = tmp_path / "r"
    assert "plan: 7 notebooks" in done.stdout and "[study]   report.ipynb: " in done.stdout
    last = done.stdout.strip().splitlines()[-1]
    assert last.startswith("[study] 7 notebooks run, 0 reused, 0 failed, 0 targets skipped, in")
    assert f"results in {results} (the report: report.ipynb, tables/, figures/)" in last
    for target in ("ssd", "nfs"):
        assert (results / target / "convert.ipynb").exists()
        assert (results / target / "bench-load.ipynb").exists()
        runs = pandas.read_parquet(results / target / "load" / "runs.parquet")
        assert set(runs["storage"]) == {target}
        assert (results / target / "ddp.ipynb").exists()  # the torchrun cell, 2 ranks
        ddp = pandas.read_parquet(results / target / "ddp" / "runs.parquet")
        assert set(ddp["storage"]) == {target} and set(ddp["rank"]) == {0, 1}
        assert set(ddp["world_size"]) == {2} and set(ddp["mode"]) == {"load"}
    nfs_runs = pandas.read_parquet(results / "nfs" / "load" / "runs.parquet")
    assert set(nfs_runs["fs_type"]) == {"fuse.sshfs"}
    found = peers.available()  # the peers extra: its strategies join every target's matrix
    assert set(nfs_runs["format"]) == {"imagefolder", "lmdb", *found}
    for target in ("ssd", "nfs"):
        written = pandas.read_csv(results / target / "writers.csv")
        assert list(written["format"]) == ["lmdb", *found] and (written["images"] == 16).all()
    assert ("peer strategies included" if found else "skipped: not installed") in done.stdout
    assert (results / "figures" / "when_lmdb_helps.png").exists()
    assert (results / "figures" / "ddp_ranks.png").exists()
    speedups = pandas.read_csv(results / "tables" / "speedups.csv")
    assert set(speedups["mode"]) == {"load", "ddp2-load"}
    assert len(pandas.read_csv(results / "tables" / "ddp_ranks.csv")) == 2 * 2 * 2 * 2
    assert (results / "tables" / "speedups.csv").exists()
    assert json.loads((results / "skipped.json").read_text()) == []
    with open("/proc/self/mountinfo") as handle:
        assert "sshfs" not in handle.read()
    # a second run skips finished notebooks
    again = _study(tmp_path, "--modes", "load", "--no-nfs", "--no-peers")
    assert "done earlier, skipped" in again.stdout and again.returncode == 0
    assert re.search(r"\[study\] \d+ notebooks? run, [1-9]\d* reused, 0 failed", again.stdout)
    assert "left out (--no-peers)" in again.stdout


@pytest.mark.slow
def test_study_keeps_failed_notebook_and_exits_nonzero(tmp_path):
    # the study's data folder holds a split already (used as it is), one file not an image:
    # the convert notebook fails (its options are all checked before anything runs)
    split = tmp_path / "w" / "data" / "synthetic-16-s0" / "train"
    for name in ("cat", "dog"):
        (split / name).mkdir(parents=True)
        (split / name / "0.jpg").write_bytes(b"not a JPEG")
    done = _study(tmp_path, "--modes", "emulate", "--no-nfs", "--ddp-procs", "0",
                  "--no-peers")
    assert done.returncode == 1
    failed = tmp_path / "r" / "ssd" / "convert.failed.ipynb"
    assert failed.exists() and "not a readable image" in failed.read_text()
    assert not (tmp_path / "r" / "ssd" / "convert.ipynb").exists()
    # the summary says why, in one line (papermill's own message starts with a blank line)
    line = next(x for x in (done.stdout + done.stderr).splitlines()
                if "convert.failed.ipynb: " in x and "[study] failed:" in x)
    assert "SourceFileError: " in line and "cat/0.jpg" in line and "not a readable image" in line


def test_a_failed_cells_error_is_one_line_in_the_summary():
    from papermill.exceptions import PapermillExecutionError

    from lmdbio.study.runner import _reason

    worker = PapermillExecutionError(3, 4, "", "RuntimeError",
                                     "Caught ValueError in DataLoader worker process 0.\n"
                                     "Original Traceback (most recent call last):\n  ...", [])
    assert _reason(worker) == "RuntimeError: Caught ValueError in DataLoader worker process 0."
    assert _reason(OSError("\n\n  disk full\nmore")) == "OSError: disk full"


@pytest.mark.parametrize("argv, message", [
    (["--modes", "bogus"], "argument --modes: modes 'bogus': not one of"),
    (["--modes", "load, emulate"], None),  # spaces are stripped, not made into folder names
    (["--peer-modes", "load,"], "argument --peer-modes: modes ''"),
    (["--target", "foo"], "argument --target: 'foo' is not NAME=PATH"),
    (["--ddp-procs", "1"], "argument --ddp-procs: 1 rank is no distributed run"),
    (["--repeats", "0"], "argument --repeats: must be >= 1"),
    (["--batch-size", "0"], "argument --batch-size: must be >= 1"),
    (["--num-workers", "-1"], "argument --num-workers: must be >= 0"),
    (["--train-batches", "-1"], "argument --train-batches: must be >= 0"),
    (["--step-ms", "-1"], "argument --step-ms: must be a number >= 0"),
    (["--seed", "x"], "argument --seed: invalid int value: 'x'"),
    (["--target", "nfs=/nonexistent/dir"], "argument --target: '/nonexistent/dir' is not a "
                                           "folder; mount the storage first"),
])
def test_study_options_are_checked_before_anything_runs(argv, message):
    from lmdbio.study.cli import study_parser

    parser = study_parser("lmdbio study")
    if message is None:
        assert parser.parse_args(argv).modes == ("load", "emulate")
        return
    done = subprocess.run([sys.executable, "-m", "lmdbio.study", *argv], capture_output=True,
                          text=True, timeout=120, cwd=REPO)
    assert done.returncode == 2 and message in done.stderr, done.stderr


def test_study_without_papermill_says_so_before_writing_anything(tmp_path):
    """The study's notebooks need the notebooks extra: missing, the run stops in one line and
    leaves no work or results folders behind in the directory it was started from."""
    hide = ("import runpy, sys; sys.modules['papermill'] = None; sys.argv[1:] = ['--images', "
            "'10', '--no-nfs', '--ddp-procs', '0']; runpy.run_module('lmdbio.study', "
            "run_name='__main__')")  # python -m lmdbio.study, papermill not installed
    done = subprocess.run([sys.executable, "-c", hide], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path, env=os.environ | {"PYTHONPATH": REPO})
    assert done.returncode != 0
    assert done.stderr.strip().splitlines() == [
        "lmdbio: error: running the study's notebooks needs papermill: "
        "pip install 'lmdbio[notebooks]'"], done.stderr
    assert not list(tmp_path.iterdir())


def _papermill(tmp_path, *params):
    papermill = os.path.join(os.path.dirname(sys.executable), "papermill")
    out = tmp_path / "out.ipynb"
    cmd = [papermill, "notebooks/bench.ipynb", os.fspath(out), *params,
           "-p", "mode", "load", "-p", "cache", "warm"]  # keep it short; defaults otherwise
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                          cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    return out.read_text()


@pytest.mark.slow
def test_bench_notebook_as_documented_on_an_empty_dir(tmp_path):
    data = tmp_path / "empty"
    data.mkdir()
    text = _papermill(tmp_path, "-p", "data_dir", os.fspath(data))
    assert sorted(os.listdir(data / "train")) == ["cat", "dog"]
    assert (data / "train.lmdb").exists()
    assert "64 samples" in text and "lmdb/warm: 1" in text


@pytest.mark.slow
def test_bench_notebook_uses_an_existing_imagefolder_as_is(tmp_path):
    from PIL import Image

    data = tmp_path / "mine"
    for name, colour in (("apple", "red"), ("pear", "green")):
        (data / "train" / name).mkdir(parents=True)
        for i in range(5):
            Image.new("RGB", (40 + i, 30), colour).save(data / "train" / name / f"{i}.png")
    before = sorted(p.relative_to(data) for p in (data / "train").rglob("*"))
    text = _papermill(tmp_path, "-p", "data_dir", os.fspath(data))
    assert sorted(p.relative_to(data) for p in (data / "train").rglob("*")) == before
    assert "10 samples, classes {'apple': 5, 'pear': 5}" in text
