"""Record byte ranges and block hints: the offsets LMDB's map gives are the file's real bytes,
a hint really brings them into the page cache, the sampler hints every block before any
of its records is drawn, and hints are sent from a background thread, in order, without
the caller waiting, and are all sent before a closed database can be evicted."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from torch.utils.data import DataLoader

import lmdbio
from lmdbio import Database, EnvOptions, locality
from lmdbio.study import pagecache
from lmdbio.dataset import ImageFolderLMDB
from lmdbio.format import RECORD_HEADER_SIZE
from lmdbio.samplers import BlockShuffleSampler

from tests.helpers import build_simple_tree


@pytest.fixture(scope="module")
def big_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """120 records of ~10-20 KB: overflow pages, like real JPEGs."""
    root = tmp_path_factory.mktemp("locality")
    tree = build_simple_tree(root / "tree", per_class=60, size=(160, 120))
    lmdbio.convert(tree, root / "db.lmdb", progress=False)
    return root / "db.lmdb"


def test_byte_ranges_point_at_the_records_in_the_file(big_db: Path) -> None:
    with Database(big_db, EnvOptions(readahead=False)) as db, open(big_db, "rb") as handle:
        for index in range(len(db)):
            offset, length = db.byte_range(index, index + 1)
            _, payload = db.get(index)
            assert length == RECORD_HEADER_SIZE + len(payload)
            handle.seek(offset + RECORD_HEADER_SIZE)
            assert handle.read(len(payload)) == payload
        low, length = db.byte_range(10, 20)
        assert low == db.byte_range(10, 11)[0]
        assert low + length == sum(db.byte_range(19, 20))
        assert db.byte_range(5, 5) is None and db.byte_range(len(db), len(db) + 3) is None
        assert db.byte_range(len(db) - 2, len(db) + 5) == db.byte_range(len(db) - 2, len(db))


def test_will_need_brings_a_block_into_the_page_cache(big_db: Path) -> None:
    with Database(big_db, EnvOptions(readahead=False)) as db:
        pagecache.evict(big_db)  # mapped but never touched: nothing of it stays resident
        before = pagecache.residency(big_db).bytes_resident
        db.will_need(0, len(db))
        deadline = time.monotonic() + 10
        while pagecache.residency(big_db).fraction < 0.9 and time.monotonic() < deadline:
            time.sleep(0.05)  # WILLNEED is asynchronous
        assert pagecache.residency(big_db).fraction >= 0.9 > before / os.path.getsize(big_db)


class Recorder:
    """A data source that records the hints it gets and which indices were hinted."""

    def __init__(self, n: int) -> None:
        self.n, self.calls, self.hinted = n, [], set()

    def __len__(self) -> int:
        return self.n

    def will_need(self, start: int, stop: int) -> None:
        self.calls.append((start, stop))
        self.hinted.update(range(start, stop))


@pytest.mark.parametrize("replicas,rank", [(1, 0), (3, 2)])
def test_sampler_hints_each_block_before_its_records_are_drawn(replicas: int, rank: int) -> None:
    source = Recorder(1000)
    sampler = BlockShuffleSampler(source, block_size=64, buffer_size=128, seed=3,
                                  num_replicas=replicas, rank=rank, hint_ahead=2)
    drawn = []
    for index in sampler:
        assert index in source.hinted  # asked for before it was yielded
        drawn.append(index)
    assert set(drawn) == source.hinted  # and nothing this rank never reads
    for start, stop in source.calls:  # each hint is one contiguous run inside one block
        assert 0 < stop - start <= 64 and start // 64 == (stop - 1) // 64
    assert len(source.calls) < len(drawn) / 10  # one request per block, not per record
    quiet = Recorder(1000)
    assert len(list(BlockShuffleSampler(quiet, block_size=64, hint_blocks=False))) == 1000
    assert quiet.calls == []


def test_dataset_with_the_sampler_in_a_dataloader(big_db: Path) -> None:
    dataset = ImageFolderLMDB(big_db, transform=lambda image: image.size, readahead=False,
                              prefetch=False)
    sampler = BlockShuffleSampler(dataset, block_size=16, buffer_size=32, seed=0)
    loader = DataLoader(dataset, batch_size=8, sampler=sampler, num_workers=2,
                        collate_fn=lambda batch: batch)
    targets = sorted(target for batch in loader for _, target in batch)
    assert targets == sorted(dataset.targets)
    dataset.close()


def test_byte_ranges_stay_right_after_the_environment_is_reopened(big_db: Path) -> None:
    db = Database(big_db, EnvOptions(readahead=False))
    first = db.byte_range(3, 4)
    db.close()  # the next read maps the file again, perhaps at another address
    with open(big_db, "rb") as handle:
        offset, length = db.byte_range(3, 4)
        handle.seek(offset + RECORD_HEADER_SIZE)
        assert handle.read(length - RECORD_HEADER_SIZE) == db.get(3)[1]
    assert (offset, length) == first  # the same bytes of the file
    db.close()


def test_hints_run_in_the_background_in_order_and_never_raise() -> None:
    gate, ran = threading.Event(), []
    locality.in_background(gate.wait, 10)  # the hint thread is busy: later hints queue up
    locality.in_background(ran.append, 1)
    locality.in_background(int, "not a number")  # a failing hint is dropped, quietly
    locality.in_background(ran.append, 2)
    assert ran == []  # the caller did not wait for any of them
    gate.set()
    locality.settle()
    assert ran == [1, 2]


def test_closing_a_database_waits_for_its_queued_hints(big_db: Path) -> None:
    """Otherwise a hint still queued could read the file back in after it was evicted."""
    gate, ran = threading.Event(), []
    with Database(big_db, EnvOptions(readahead=False)) as db:
        db.get(0)
        locality.in_background(gate.wait, 10)
        db.will_need(0, len(db))
        locality.in_background(ran.append, "after the hint")
        threading.Timer(0.3, gate.set).start()
        started = time.monotonic()
    assert ran == ["after the hint"] and time.monotonic() - started >= 0.25


def _hint_in_child(queue: multiprocessing.Queue) -> None:
    ran: list[int] = []
    locality.in_background(ran.append, os.getpid())
    locality.settle()
    queue.put(ran)


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_a_child_process_sends_hints_from_its_own_thread(method: str) -> None:
    """The parent's hint thread does not exist in a forked child: the child makes its own."""
    locality.in_background(int, "0")
    locality.settle()  # the parent's pool exists and has run
    context = multiprocessing.get_context(method)
    queue = context.Queue()
    child = context.Process(target=_hint_in_child, args=(queue,), daemon=True)
    child.start()
    try:
        child.join(60)
        assert child.exitcode == 0 and queue.get(timeout=5) == [child.pid]
    finally:
        if child.is_alive():
            child.kill()


def test_where_no_thread_can_be_started_the_hint_is_dropped(
        monkeypatch: pytest.MonkeyPatch) -> None:
    ran: list[int] = []

    def refuse(self: threading.Thread) -> None:
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(locality, "_hints", None)  # as in a process that has sent none yet
    monkeypatch.setattr(threading.Thread, "start", refuse)
    locality.in_background(ran.append, 1)  # no error, nothing queued
    locality.settle()
    monkeypatch.undo()
    monkeypatch.setattr(locality, "_hints", None)
    locality.in_background(ran.append, 2)  # the next hint starts the thread: 1 is not run
    locality.settle()
    assert ran == [2]


def test_a_hint_never_reopens_a_closed_database(big_db: Path) -> None:
    from lmdbio import envs

    db = Database(big_db, EnvOptions(readahead=False))
    db.get(0)
    db.close()
    db._will_need_now(0, len(db))  # what a hint queued before the close would run after it
    assert db._shared is None and db._direct is None
    assert envs._identity(str(big_db)) not in envs._envs  # nothing of it is open again


_FINALIZED_DURING = """
import gc, sys
from lmdbio import Database, locality
garbage = Database(sys.argv[1])
garbage.get(0)
garbage.cycle = garbage  # only the cyclic collector can finalize it
del garbage

def collect_inside(frame, event, arg):  # the collector runs at an allocation in there
    if event == "call" and frame.f_code.co_name == sys.argv[2]:
        sys.setprofile(None)
        gc.collect()

sys.setprofile(collect_inside)
if sys.argv[2] == "start":  # the hint thread's, started holding the hint queue's lock
    locality.in_background(print, "hint ran")
    locality.settle()
else:  # "_open": another file's environment opened, holding the environments' lock
    Database(sys.argv[3]).close()
print("done")
"""


@pytest.mark.parametrize("holding", ["start", "_open"])
def test_a_database_finalized_while_a_lock_is_held_does_not_hang(big_db: Path,
                                                                  holding: str) -> None:
    """The collector can finalize a Database (in a reference cycle) at any allocation, also
    while this thread holds the hint queue's or the environments' lock: its finalizer must
    not wait for either."""
    other = big_db.with_name("other.lmdb")
    other.write_bytes(big_db.read_bytes())
    out = subprocess.run([sys.executable, "-c", _FINALIZED_DURING, str(big_db), holding,
                          str(other)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.splitlines()[-1] == "done", out.stderr[-2000:]
