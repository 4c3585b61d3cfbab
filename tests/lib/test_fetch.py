"""Batch fetch: beside a prefetch on a network file system, a batch's records that are not in
the page cache yet are read together before the first is used. Checked for real on real LMDB
files and the real page cache: the records (and their leaves) are cached when the call returns
and nothing much else is, the reads are in flight together, fetching stops once a batch finds
everything cached, the tree's leaves are found without touching them, and a dataset that
fetches delivers the same batches as one that does not (fork and spawn workers)."""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import threading
import time
from pathlib import Path

import lmdb
import pytest
from torch.utils.data import DataLoader

import lmdbio
import lmdbio.dataset
from lmdbio import Database, EnvOptions, ImageFolderLMDB, fetch
from lmdbio.btree import ValueLocator
from lmdbio.database import FETCH_FIRST
from lmdbio.direct import DirectAccess, RecordFile
from lmdbio.format import encode_key
from lmdbio.lmdb_layout import HEADER_BYTES, P_LEAF
from lmdbio.locality import map_base
from lmdbio.residency import map_resident
from lmdbio.study import pagecache

from tests.helpers import pixel_digest

PAGE = 4096


def _evict(path: Path) -> None:
    for _ in range(2):  # readahead an earlier reader left in flight lands, then goes too
        pagecache.evict(path)
        time.sleep(0.2)


def _cached(db: Database, index: int) -> bool:
    """Whether record ``index``'s pages are all in the page cache (mincore on db's map)."""
    span = db._direct_access().locator.span(encode_key(index))  # type: ignore[union-attr]
    assert span is not None and db._map_start() is not None
    return map_resident(db._map_start() + span[0] - HEADER_BYTES,  # type: ignore[operator]
                        span[1] + HEADER_BYTES)


def test_map_resident_says_what_the_page_cache_holds(tmp_path: Path) -> None:
    path = tmp_path / "blob"
    path.write_bytes(os.urandom(16 * PAGE + 100))
    with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0,
                                                  access=mmap.ACCESS_COPY) as view:
        address = ctypes.addressof(ctypes.c_char.from_buffer(view))
        _evict(path)
        assert not map_resident(address, 16 * PAGE + 100)
        os.pread(handle.fileno(), 4 * PAGE, 2 * PAGE)  # pages 2-5, through the descriptor
        assert map_resident(address + 2 * PAGE, 4 * PAGE)
        assert map_resident(address + 2 * PAGE + 10, 4 * PAGE - 20)  # unaligned, inside
        assert not map_resident(address + 2 * PAGE, 5 * PAGE)  # one page more: not cached
        assert not map_resident(address + PAGE + PAGE - 1, 2)  # straddles page 1 and 2
        assert map_resident(address, 0)  # nothing asked: nothing missing
        assert pagecache.residency(path).bytes_resident <= 6 * PAGE  # looking read nothing
    assert map_resident(PAGE, PAGE)  # not mapped: the kernel cannot say, the caller reads


def test_leaves_are_found_through_the_branches(tmp_path: Path) -> None:
    """A tree of several levels: ``leaf(key)`` is the leaf page holding the key's node."""
    env = lmdb.open(str(tmp_path / "deep.lmdb"), subdir=False, max_dbs=2, map_size=64 << 20)
    db = env.open_db(b"x")
    with env.begin(write=True, db=db) as txn:
        for i in range(1500):  # 3 KB values: overflow pages; ~9 leaves, a branch above them
            txn.put(encode_key(i), i.to_bytes(4, "big") * 768)
    with env.begin() as txn:
        depth = txn.stat(db)["depth"]
        base = map_base(str(tmp_path / "deep.lmdb"), env.info()["map_size"])
        assert depth >= 2 and base is not None
        locator = ValueLocator.of_database(txn, b"x", base, PAGE, env.info()["last_pgno"])
    assert locator is not None
    leaves = set()
    for i in range(0, 1500, 7):
        key = encode_key(i)
        leaf = locator.leaf(key)
        assert leaf is not None
        page = locator._page(leaf, P_LEAF)
        assert page is not None and locator._value(page, key) == locator.span(key) is not None
        leaves.add(leaf)
    assert len(leaves) > 1
    env.close()  # its map holds the leaves read above: they could not be evicted
    # fetching cold keys reads their leaves and values, found from the branch alone
    path = str(tmp_path / "deep.lmdb")
    env = lmdb.open(path, subdir=False, max_dbs=2, readonly=True, lock=False)
    with env.begin() as txn:
        base = map_base(path, env.info()["map_size"])
        locator = ValueLocator.of_database(txn, b"x", base, PAGE, env.info()["last_pgno"])
    assert locator is not None and base is not None
    stat = os.stat(path)
    access = DirectAccess(locator, RecordFile(path, (stat.st_dev, stat.st_ino)))
    keys = [encode_key(i) for i in (700, 1000, 1499)]  # leaves far from the pages mapped
    leaf_pages = [locator.leaf(key) for key in keys]
    assert len(set(leaf_pages)) == 3
    _evict(tmp_path / "deep.lmdb")
    assert not any(map_resident(base + n * PAGE, PAGE) for n in leaf_pages)  # type: ignore
    assert not access.fetch(keys, lambda offset, length: map_resident(base + offset, length))
    assert all(map_resident(base + n * PAGE, PAGE) for n in leaf_pages)  # type: ignore
    for key in keys:
        offset, length = locator.span(key)  # type: ignore[misc]
        assert map_resident(base + offset - HEADER_BYTES, length + HEADER_BYTES)
    assert access.fetch(keys, lambda offset, length: map_resident(base + offset, length))
    access.close()
    env.close()


def test_a_cold_batch_and_its_leaves_are_cached_when_the_fetch_returns(big_db: Path) -> None:
    with Database(big_db, EnvOptions(readahead=True)) as db:
        db._direct_access()  # maps the file, confirms the layout (reads record 0)
        _evict(big_db)
        wanted = [41, 7, 23, 7]
        assert not any(_cached(db, i) for i in wanted)
        before = pagecache.residency(big_db).bytes_resident
        db.fetch_records(wanted + [len(db), -1, 10**9])  # out of range: skipped, no error
        assert all(_cached(db, i) for i in wanted)  # synchronous: there on return
        spans = [db._direct_access().locator.span(encode_key(i))  # type: ignore[union-attr]
                 for i in set(wanted)]
        fetched = sum(length + HEADER_BYTES for _, length in spans)  # type: ignore[misc]
        grown = pagecache.residency(big_db).bytes_resident - before
        # the records' pages and the leaf (and root) placing them; nothing else was read
        assert grown <= fetched + PAGE * (2 * len(spans) + 2), (grown, fetched)
        fetched_bytes = [db.get(i) for i in wanted]
    with Database(big_db, EnvOptions(readahead=False)) as direct:
        assert fetched_bytes == [direct.get(i) for i in wanted]


def test_only_the_first_records_a_process_asks_for_are_fetched(
        big_db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A cold start's batches are fetched; later ones are left to the prefetch's stream."""
    reads: list[int] = []
    original = RecordFile.fetch

    def counted(self: RecordFile, spans: list[tuple[int, int]]) -> None:
        reads.extend(length for _, length in spans)
        original(self, spans)

    monkeypatch.setattr(RecordFile, "fetch", counted)
    with Database(big_db, EnvOptions(readahead=True)) as db:
        db._direct_access()
        _evict(big_db)
        db.fetch_records([3, 50])
        assert len(reads) >= 2  # both records were cold: read
        reads.clear()
        db.fetch_records([50, 3])  # everything there: nothing read...
        assert not reads
        _evict(big_db)
        db.fetch_records([3, 50, len(db)])  # ...cold again, still among the first: read
        assert len(reads) >= 2 and _cached(db, 3)
        db.fetch_records([7] * (FETCH_FIRST - 6))  # 6 asked so far (out of range: not counted)
        reads.clear()
        _evict(big_db)
        db.fetch_records([3, 50])  # FETCH_FIRST asked: this process no longer fetches
        assert not reads and not _cached(db, 3)
        db.close()  # a reopened file may have been evicted meanwhile: a cold start again
        db.fetch_records([3, 50])
        assert len(reads) >= 2 and _cached(db, 3) and _cached(db, 50)


def test_the_reads_of_a_batch_are_in_flight_together(big_db: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Each read held for 50 ms, as a slow network would: together they take about one."""
    lock, in_flight, peak = threading.Lock(), [0], [0]
    original = fetch._read_span

    def slow(sink: fetch.Sink, offset: int, length: int) -> None:
        with lock:
            in_flight[0] += 1
            peak[0] = max(peak[0], in_flight[0])
        time.sleep(0.05)
        original(sink, offset, length)
        with lock:
            in_flight[0] -= 1

    monkeypatch.setattr(fetch, "_read_span", slow)
    with Database(big_db, EnvOptions(readahead=True)) as db:
        db._direct_access()
        _evict(big_db)
        wanted = list(range(10, 42))
        started = time.monotonic()
        db.fetch_records(wanted)
        took = time.monotonic() - started
        assert all(_cached(db, i) for i in wanted)
    assert peak[0] >= fetch.FETCH_THREADS // 2  # 32 records (after their leaf), 16 at a time
    assert took < 0.05 * len(wanted) / 2, took  # one after another: 1.6 s; together: ~0.15


def test_where_splicing_is_refused_threads_read_into_a_buffer(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file system that cannot splice answers EINVAL: every part is still read, with preadv,
    and the descriptor of /dev/null stays open (another thread may still be using it)."""
    def refused(out_fd: int, in_fd: int, offset: int, count: int) -> int:
        raise OSError(errno.EINVAL, "Invalid argument")

    monkeypatch.setattr(os, "sendfile", refused)
    path = tmp_path / "blob"
    path.write_bytes(os.urandom(64 * PAGE))
    _evict(path)
    fd = os.open(path, os.O_RDONLY)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)  # the parts asked and nothing around them
    sink = fetch.Sink(fd, 2 * PAGE)
    try:
        spans = [(offset, 3 * PAGE) for offset in range(0, 60 * PAGE, 6 * PAGE)]  # > buffer
        fetch.read_all(sink, spans)
        assert not sink.splices and sink.null is not None
        assert pagecache.residency(path).bytes_resident == 10 * 3 * PAGE
    finally:
        sink.close()
        os.close(fd)
    assert sink.null is None


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_a_fetching_dataset_gives_the_same_batches(big_db: Path, method: str,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lmdbio.dataset, "on_network_fs", lambda path: True)
    fetching = ImageFolderLMDB(big_db, transform=pixel_digest)
    assert fetching.batch_fetch and not fetching.batch_hints  # "auto" beside a prefetch
    plain = ImageFolderLMDB(big_db, transform=pixel_digest, batch_hints=False)
    assert not plain.batch_fetch and not plain.batch_hints
    asked: list[list[int]] = []
    original = Database.fetch_records
    monkeypatch.setattr(Database, "fetch_records",
                        lambda db, records: asked.append(records) or original(db, records))
    indices = [5, 0, 59, -1, -60, 5]
    assert fetching.__getitems__(indices) == [plain[i] for i in indices]
    assert asked == [[5, 0, 59, 59, 0, 5]]  # records, negative indices resolved
    with pytest.raises(IndexError):
        fetching.__getitems__([3, 60])

    def batches(dataset: ImageFolderLMDB) -> list[object]:
        loader = DataLoader(dataset, batch_size=7, num_workers=2, multiprocessing_context=method)
        return [(list(images), targets.tolist()) for images, targets in loader]

    assert batches(fetching) == batches(plain)
    fetching.close()
    plain.close()


def test_local_disks_and_explicit_settings_do_not_fetch(big_db: Path) -> None:
    for options in ({}, {"batch_hints": True}, {"prefetch": False}):
        dataset = ImageFolderLMDB(big_db, **options)
        assert not dataset.batch_fetch, options
        dataset.close()
