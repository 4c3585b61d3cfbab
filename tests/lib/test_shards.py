"""Sharded conversion and reading: parity with the single database, determinism, bad sets,
independent resume, globs and lists, DataLoader workers. Real files, real processes."""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import lmdb
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import lmdbio
from lmdbio.dataset import ImageFolderLMDB
from lmdbio.format import SAMPLES_DB
from lmdbio.shard_set import ShardedDatabase
from lmdbio.shard_plan import shard_path

from tests.helpers import REPO, assert_one_line_error, run_cli


def pixel_digest(image) -> str:  # module level: spawn workers import it
    return hashlib.sha256(image.tobytes() + repr(image.size).encode()).hexdigest()


def shard_files(base: Path, name: str, count: int) -> list[Path]:
    return [Path(shard_path(os.fspath(base / name), i, count)) for i in range(count)]


@pytest.fixture(scope="module")
def sharded(odd_db, tmp_path_factory) -> dict[int, Path]:
    """The odd tree as 1, 2 and 3 shards (API), each set in its own folder."""
    sets = {}
    for count in (1, 2, 3):
        base = tmp_path_factory.mktemp(f"shards{count}")
        for index in range(count):
            report = lmdbio.convert(odd_db.tree, base / "train.lmdb", shard=(index, count),
                                    progress=False, workers=2)
            assert report.destination == os.fspath(shard_files(base, "train.lmdb", count)[index])
        sets[count] = base
    return sets


def assert_same_dataset(single: ImageFolderLMDB, sharded_set: ImageFolderLMDB) -> None:
    assert len(sharded_set) == len(single) == 23
    assert sharded_set.classes == single.classes
    assert sharded_set.class_to_idx == single.class_to_idx
    assert sharded_set.targets == single.targets
    assert sharded_set.samples == single.samples == single.imgs
    for index in range(len(single)):
        assert sharded_set.database.get(index) == single.database.get(index), index
        image, target = sharded_set[index]
        expected_image, expected_target = single[index]
        assert target == expected_target
        assert image.mode == expected_image.mode and image.size == expected_image.size
        assert np.array_equal(np.asarray(image), np.asarray(expected_image)), index
    assert sharded_set[-1][1] == single[-1][1]
    with pytest.raises(IndexError, match="out of range for 23 samples"):
        sharded_set.database.get(23)


@pytest.mark.parametrize("count", [1, 2, 3])
def test_sharded_dataset_equals_the_single_database(odd_db, sharded, count) -> None:
    single = ImageFolderLMDB(odd_db.db)
    pattern = os.fspath(sharded[count] / f"train-*-of-{count:05d}.lmdb")
    dataset = ImageFolderLMDB(pattern)
    assert isinstance(dataset.database, ShardedDatabase) and dataset.root == pattern
    assert_same_dataset(single, dataset)
    metas = [db.meta for db in dataset.database.shards]
    sizes = [m.shard_stop - m.shard_start for m in metas]
    assert max(sizes) - min(sizes) <= 1 and sum(sizes) == 23  # balanced, contiguous blocks
    assert [m.shard_start for m in metas] == [0] + [m.shard_stop for m in metas[:-1]]
    assert {m.source_fingerprint for m in metas} == {single.database.meta.source_fingerprint}
    assert all(m.listing_total == 23 and m.shard_count == count for m in metas)


def test_list_input_in_any_order_and_path_objects(odd_db, sharded) -> None:
    files = shard_files(sharded[3], "train.lmdb", 3)
    dataset = ImageFolderLMDB([files[2], os.fspath(files[0]), files[1]])
    assert dataset.root == [os.fspath(f) for f in (files[2], files[0], files[1])]
    assert_same_dataset(ImageFolderLMDB(odd_db.db), dataset)
    shown = run_cli("info", *files)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.count("shard ") == 3 + 1  # one line per shard, then the set
    assert shown.stdout.rstrip().endswith("shard set: 3 files, 23 samples of 3 classes, complete")


def test_shards_open_lazily_and_read_in_two_workers(odd_db, sharded) -> None:
    from torchvision.datasets import ImageFolder

    expected = collections.Counter(ImageFolder(os.fspath(odd_db.tree), transform=pixel_digest))
    dataset = ImageFolderLMDB(os.fspath(sharded[3] / "train-*.lmdb"), transform=pixel_digest)
    assert all(db._shared is None for db in dataset.database.shards)  # nothing mapped yet
    for context in ("fork", "spawn"):
        loader = DataLoader(dataset, batch_size=None, shuffle=True, num_workers=2,
                            multiprocessing_context=context,
                            generator=torch.Generator().manual_seed(1))
        assert collections.Counter((d, int(t)) for d, t in loader) == expected
    assert all(db._shared is None for db in dataset.database.shards)  # workers read, not us


def read_records(path: Path) -> list[tuple[bytes, bytes]]:
    env = lmdb.open(os.fspath(path), subdir=False, readonly=True, lock=False, max_dbs=2)
    try:
        with env.begin() as txn:
            return list(txn.cursor(db=env.open_db(SAMPLES_DB, txn=txn, create=False)))
    finally:
        env.close()


def test_num_shards_writes_the_same_as_separate_processes(odd_db, sharded, tmp_path) -> None:
    """--num-shards (sequential and --jobs 2) == one --shard I/N process per shard."""
    layouts = {"separate": [], "sequential": ["--num-shards", "3"],
               "jobs": ["--num-shards", "3", "--jobs", "2"]}
    for name, flags in layouts.items():
        folder = tmp_path / name
        folder.mkdir()
        runs = ([flags] if flags else [["--shard", f"{i}/3"] for i in range(3)])
        for extra in runs:
            proc = run_cli("convert", odd_db.tree, folder / "train.lmdb", "-q", *extra)
            assert proc.returncode == 0, proc.stderr
    for index, reference in enumerate(shard_files(sharded[3], "train.lmdb", 3)):
        with lmdbio.Database(reference) as ref:
            expected_meta = dataclasses.replace(ref.meta, created_utc="")
            expected = (ref.relative_paths(), ref.targets())
        for name in layouts:
            path = shard_files(tmp_path / name, "train.lmdb", 3)[index]
            assert read_records(path) == read_records(reference), (name, index)
            with lmdbio.Database(path) as db:
                assert dataclasses.replace(db.meta, created_utc="") == expected_meta
                assert (db.relative_paths(), db.targets()) == expected
    assert sorted(os.listdir(tmp_path / "jobs")) == [p.name for p in
                                                     shard_files(tmp_path, "train.lmdb", 3)]


def test_a_missing_shard_is_named(sharded, tmp_path) -> None:
    files = shard_files(sharded[3], "train.lmdb", 3)
    for file in (files[0], files[2]):
        shutil.copyfile(file, tmp_path / file.name)
    with pytest.raises(lmdbio.FormatError, match="1 of 3 shards missing") as caught:
        ImageFolderLMDB(os.fspath(tmp_path / "train-*.lmdb"))
    assert repr(os.fspath(tmp_path / files[1].name)) in str(caught.value)
    assert isinstance(caught.value, lmdbio.ShardSetError)
    assert_one_line_error(run_cli("info", tmp_path / "train-*.lmdb"), "1 of 3 shards missing",
                          files[1].name, "--shard I/3")
    # one shard on its own is a set with the others missing, not a smaller dataset
    with pytest.raises(lmdbio.ShardSetError, match="2 of 3 shards missing"):
        ImageFolderLMDB(files[0])
    assert "shard 0 of 3" in run_cli("info", files[0]).stdout  # but it can be inspected
    with pytest.raises(lmdbio.DatabaseNotFoundError, match="no database matches"):
        ImageFolderLMDB(os.fspath(tmp_path / "nothing-*.lmdb"))


def test_sets_that_do_not_belong_together_name_the_odd_file(odd_db, sharded, tmp_path) -> None:
    three, two = shard_files(sharded[3], "train.lmdb", 3), shard_files(sharded[2], "train.lmdb", 2)
    with pytest.raises(lmdbio.ShardSetError, match="does not belong with") as caught:
        ImageFolderLMDB([three[0], two[1], three[1], three[2]])
    assert str(caught.value).startswith(repr(os.fspath(two[1])))
    with pytest.raises(lmdbio.ShardSetError, match="does not belong with"):
        ImageFolderLMDB([odd_db.db, three[1]])  # a single database is shard 0 of 1
    copy = tmp_path / "copy-of-shard-1.lmdb"
    shutil.copyfile(three[1], copy)
    with pytest.raises(lmdbio.ShardSetError, match="are both shard 1 of 3") as caught:
        ImageFolderLMDB([*three, copy])
    assert os.fspath(copy) in str(caught.value)
    # the same shard index of a changed source: another listing fingerprint
    tree = tmp_path / "tree"
    shutil.copytree(odd_db.tree, tree)
    os.utime(tree / "cat" / "a.jpg", ns=(0, 10**9))
    changed = lmdbio.convert(tree, tmp_path / "train.lmdb", shard=(2, 3), progress=False)
    with pytest.raises(lmdbio.ShardSetError, match="fingerprint") as caught:
        ImageFolderLMDB([three[0], three[1], changed.destination])
    assert str(caught.value).startswith(repr(changed.destination))


def test_shard_requests_that_cannot_be_met_are_one_line_errors(odd_db, tmp_path) -> None:
    dst = tmp_path / "train.lmdb"
    for flags, needles in [
        (["--shard", "2/2"], ["'2/2'", "0 <= I < N"]),
        (["--shard", "x"], ["'x'"]),
        (["--num-shards", "24"], ["24 shards for 23 images", "at most 23"]),
        (["--shard", "0/2", "--num-shards", "3"], ["contradicts"]),
        (["--jobs", "2"], ["needs --num-shards"]),
    ]:
        assert_one_line_error(run_cli("convert", odd_db.tree, dst, "-q", *flags), *needles)
    named = tmp_path / "x-00001-of-00002.lmdb"
    assert_one_line_error(run_cli("convert", odd_db.tree, named, "--shard", "0/2"),
                          "named as shard 1 of 2, not 0 of 2")
    assert os.listdir(tmp_path) == []
    done = run_cli("convert", odd_db.tree, named, "--shard", "1/2", "-q")  # taken literally
    assert done.returncode == 0 and os.listdir(tmp_path) == [named.name], done.stderr


def test_errors_of_parallel_shard_jobs_reach_the_caller(simple_tree, tmp_path) -> None:
    (simple_tree / "b" / "00002.jpg").write_bytes(b"not a jpeg")  # in the second shard
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(lmdbio.SourceFileError, match="00002.jpg.*on_error=.skip"):
        lmdbio.convert_shards(simple_tree, out / "s.lmdb", 2, jobs=2, progress=False)
    assert os.listdir(out) == ["s-00000-of-00002.lmdb"]  # the good shard stays
    reports = lmdbio.convert_shards(simple_tree, out / "s.lmdb", 2, jobs=2, resume=True,
                                    on_error="skip")
    assert [r.num_samples for r in reports] == [2]  # shard 0 kept, shard 1 converted
    assert len(ImageFolderLMDB(os.fspath(out / "s-*.lmdb"))) == 5


# -- independent resume ---------------------------------------------------------------------------


def _signal_once_writing(proc: subprocess.Popen, partials: list[Path], signum: int,
                         past: int = 2 << 20) -> None:
    """Send ``signum`` to ``proc`` once one of ``partials`` has grown past ``past`` bytes (the
    conversion is under way), or give up after 60 s (the test's assertions then say why)."""
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline:
        if any(p.exists() and p.stat().st_size > past for p in partials):
            proc.send_signal(signum)
            return
        time.sleep(0.001)


def test_a_killed_shard_resumes_on_its_own(tmp_path) -> None:
    """kill -9 while --num-shards 2 writes shard 1: --resume keeps the finished shard 0,
    continues shard 1 from its checkpoint, and the set equals the single database (with bad
    files skipped in both shards)."""
    from tests.helpers import BIG_BAD as BAD, BIG_KEPT as KEPT, build_big_tree, read_progress

    tree = build_big_tree(tmp_path / "src")
    dst = tmp_path / "out.lmdb"
    first, second = shard_files(tmp_path, "out.lmdb", 2)
    partial = Path(f"{second}.partial")
    proc = subprocess.Popen([sys.executable, "-m", "lmdbio.cli", "convert", str(tree), str(dst),
                             "--num-shards", "2", "--commit-mb", "1", "--workers", "2", "-q",
                             "--on-error", "skip"], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    _signal_once_writing(proc, [partial], signal.SIGKILL, past=4 << 20)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, ("finished before the kill", out, err)
    assert first.exists() and not second.exists()
    written = read_progress(partial)["written"]
    assert 0 < written < KEPT // 2
    # the partial of shard 1 is no shard 0: resuming it as one is refused
    wrong = tmp_path / "wrong.lmdb"
    shutil.copyfile(partial, Path(f"{shard_path(os.fspath(wrong), 0, 2)}.partial"))
    assert_one_line_error(run_cli("convert", tree, wrong, "--shard", "0/2", "--resume", "-q"),
                          "holds shard 1 of 2, not 0 of 2")
    before = first.stat().st_mtime_ns
    resumed = run_cli("convert", tree, dst, "--num-shards", "2", "--resume", "--commit-mb", "1",
                      "-q", "--on-error", "skip")
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed after {written} images" in resumed.stdout
    assert resumed.stdout.count("wrote ") == 1 and first.stat().st_mtime_ns == before
    single = lmdbio.convert(tree, tmp_path / "single.lmdb", on_error="skip", progress=False)
    with lmdbio.Database(single.destination) as one, ShardedDatabase([second, first]) as two:
        assert len(one) == len(two) == KEPT
        assert one.targets() == two.targets() and one.relative_paths() == two.relative_paths()
        assert [p for p, _ in two.meta.skipped] == BAD  # one in each shard
        assert [len(db.meta.skipped) for db in two.shards] == [1, 1]
        for index in range(KEPT):
            assert one.get(index) == two.get(index), index


def test_sigterm_stops_parallel_shard_jobs_and_they_resume(tmp_path) -> None:
    """``kill`` of ``convert --num-shards 2 --jobs 2`` (a scheduler's time limit): exit 143,
    the shard processes stop with it (their partials stop growing), the message says how to
    continue, and --resume finishes the same set as an uninterrupted conversion."""
    from tests.helpers import BIG_KEPT as KEPT, build_big_tree

    tree = build_big_tree(tmp_path / "src")
    dst = tmp_path / "out.lmdb"
    partials = [Path(f"{path}.partial") for path in shard_files(tmp_path, "out.lmdb", 2)]
    proc = subprocess.Popen([sys.executable, "-m", "lmdbio.cli", "convert", str(tree), str(dst),
                             "--num-shards", "2", "--jobs", "2", "--commit-mb", "1",
                             "--workers", "1", "-q", "--on-error", "skip"], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _signal_once_writing(proc, partials, signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, ("finished before the kill", out, err)
    assert "Traceback" not in err and "--resume" in err, err
    sizes = [p.stat().st_size if p.exists() else -1 for p in partials]
    time.sleep(1.0)
    assert [p.stat().st_size if p.exists() else -1 for p in partials] == sizes, "still writing"
    resumed = run_cli("convert", tree, dst, "--num-shards", "2", "--jobs", "2", "--resume",
                      "--commit-mb", "1", "-q", "--on-error", "skip")
    assert resumed.returncode == 0, resumed.stderr
    with ShardedDatabase(shard_files(tmp_path, "out.lmdb", 2)) as two:
        assert len(two) == KEPT
    assert not any(p.exists() for p in partials)


def test_an_interrupted_parallel_conversion_leaves_the_callers_own_children(tmp_path) -> None:
    """``lmdbio.convert_shards(jobs=2)`` called from a program with a child process of its
    own: Ctrl-C stops the shard processes, not the caller's child."""
    from tests.helpers import build_big_tree

    tree = build_big_tree(tmp_path / "src")
    script = tmp_path / "caller.py"
    script.write_text(textwrap.dedent(f"""
        import multiprocessing, sys, time
        import lmdbio

        if __name__ == "__main__":
            own = multiprocessing.get_context("spawn").Process(target=time.sleep, args=(600,))
            own.start()
            print(own.pid, flush=True)
            try:
                lmdbio.convert_shards({str(tree)!r}, {str(tmp_path / "out.lmdb")!r}, 2, jobs=2,
                                      workers=1, commit_bytes=1 << 20, progress=False,
                                      on_error="skip")
            except KeyboardInterrupt:
                own.join(2)  # a terminated child takes a moment to be reaped
                print("alive" if own.is_alive() else "killed", flush=True)
            finally:
                own.kill()
    """))
    proc = subprocess.Popen([sys.executable, str(script)], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    proc.stdout.readline()  # the caller's child is running
    partials = [Path(f"{path}.partial") for path in shard_files(tmp_path, "out.lmdb", 2)]
    _signal_once_writing(proc, partials, signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert out.split() == ["alive"], (out, err)


# -- on_error="skip" judged over the whole set ----------------------------------------------------


def spoil(tree: Path, *names: str) -> None:
    for name in names:
        (tree / name).write_bytes(b"not a jpeg")


@pytest.mark.parametrize("jobs", [1, 2])
def test_a_shard_may_lose_its_part_of_a_class_or_everything(tmp_path, jobs) -> None:
    """8 files, 3 shards: a0 a1 | a2 a3 b0 | b1 b2 b3. With a2, a3 and b0 refused, shard 1
    stores nothing and holds none of either class: the tree is still a good ImageFolder (a
    has a0 a1, b has b1..b3), so the set converts and equals the single database."""
    from tests.helpers import build_simple_tree

    tree = build_simple_tree(tmp_path / "src", per_class=4)
    spoil(tree, "a/00002.jpg", "a/00003.jpg", "b/00000.jpg")
    (tmp_path / "out").mkdir()
    reports = lmdbio.convert_shards(tree, tmp_path / "out" / "s.lmdb", 3, jobs=jobs,
                                    on_error="skip", progress=False)
    assert [r.num_samples for r in reports] == [2, 0, 3]
    single = lmdbio.convert(tree, tmp_path / "single.lmdb", on_error="skip", progress=False)
    with lmdbio.Database(single.destination) as one, \
            ShardedDatabase(os.fspath(tmp_path / "out" / "s-*.lmdb")) as three:
        assert len(one) == len(three) == 5
        assert (one.targets(), one.relative_paths()) == (three.targets(), three.relative_paths())
        assert three.meta.skipped == one.meta.skipped and len(three.meta.skipped) == 3
        assert [one.get(i) for i in range(5)] == [three.get(i) for i in range(5)]


def test_every_file_refused_across_shards_is_one_error_for_the_tree(tmp_path) -> None:
    from tests.helpers import build_simple_tree

    tree = build_simple_tree(tmp_path / "src", per_class=4)
    spoil(tree, *(f"{c}/{i:05d}.jpg" for c in "ab" for i in range(4)))
    out = tmp_path / "out"
    out.mkdir()
    for allow_empty in (False, True):
        with pytest.raises(lmdbio.SourceError) as caught:
            lmdbio.convert_shards(tree, out / "s.lmdb", 2, on_error="skip", progress=False,
                                  allow_empty=allow_empty)
        text = str(caught.value)
        assert "every one of the 8 files" in text and repr(os.fspath(tree)) in text, text
        assert "fix or replace the files" in text and 'check="structure"' not in text, text
        assert os.listdir(out) == []  # no set of empty shards to open as a dataset
    line = assert_one_line_error(
        run_cli("convert", tree, out / "s.lmdb", "-q", "--num-shards", "2", "--on-error",
                "skip"), "every one of the 8 files", "fix or replace the files")
    assert "=" not in line.split("; ", 1)[1], line  # the remedy in CLI words


def test_a_class_refused_across_shards_needs_allow_empty(tmp_path) -> None:
    """4 shards of 2: a0 a1 | a2 a3 | b0 b1 | b2 b3, every b refused. No shard holds all of
    b, so only the set can tell that b is empty: an error unless allow_empty, as ImageFolder."""
    from tests.helpers import build_simple_tree

    tree = build_simple_tree(tmp_path / "src", per_class=4)
    spoil(tree, *(f"b/{i:05d}.jpg" for i in range(4)))
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(lmdbio.SourceError, match="every file of the classes b was refused "
                       r"\(the first, 'b/00000.jpg'.*allow_empty=True"):
        lmdbio.convert_shards(tree, out / "s.lmdb", 4, on_error="skip", progress=False)
    assert os.listdir(out) == []
    lmdbio.convert_shards(tree, out / "s.lmdb", 4, on_error="skip", progress=False,
                          allow_empty=True)
    dataset = ImageFolderLMDB(os.fspath(out / "s-*.lmdb"), prefetch=False)
    assert dataset.classes == ["a", "b"] and dataset.targets == [0] * 4
    # one shard on its own: it judges b only where it holds all of b
    assert lmdbio.convert(tree, tmp_path / "lone.lmdb", shard=(2, 4), on_error="skip",
                          progress=False).num_samples == 0
    with pytest.raises(lmdbio.SourceError, match="classes b was refused"):
        lmdbio.convert(tree, tmp_path / "half.lmdb", shard=(1, 2), on_error="skip",
                       progress=False)


def test_a_shard_sets_metadata_keeps_every_shards_warnings(tmp_path, monkeypatch) -> None:
    from PIL import Image

    for name in ("a", "b"):
        (tmp_path / "src" / name).mkdir(parents=True)
        Image.new("RGB", (40, 30), "red").save(tmp_path / "src" / name / "large.png")
        Image.new("RGB", (10, 10), "blue").save(tmp_path / "src" / name / "small.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 1 200 px: a warning, stored
    reports = lmdbio.convert_shards(tmp_path / "src", tmp_path / "s.lmdb", 2, progress=False)
    assert [[p for p, _ in r.warnings] for r in reports] == [["a/large.png"], ["b/large.png"]]
    with ShardedDatabase(os.fspath(tmp_path / "s-*.lmdb")) as shards:
        assert shards.meta.warnings == [w for r in reports for w in r.warnings]
        assert shards.meta.warnings == [w for db in shards.shards for w in db.meta.warnings]
