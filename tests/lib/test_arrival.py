"""Arrival order: while a prefetch streams the file, a cold batch's records are decoded in the
order they reach the page cache and the batch is finished (transformed) in batch order. Checked
on the ordering itself (which load runs when, which finish, which error), on real LMDB files and
the real page cache (which records a database says are cached), and on the batches a dataset
delivers: the same as the plain loop's under seeded random transforms, in this process and in
fork and spawn workers."""

from __future__ import annotations

import os
import time
from pathlib import Path

import lmdb
import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import transforms

import lmdbio
import lmdbio.arrival
import lmdbio.dataset
from lmdbio import Database, EnvOptions, ImageFolderLMDB
from lmdbio.arrival import decoded_bytes, in_arrival_order
from lmdbio.btree import ValueLocator
from lmdbio.direct import DirectAccess, RecordFile
from lmdbio.errors import CorruptRecordError
from lmdbio.format import encode_key
from lmdbio.lmdb_layout import HEADER_BYTES
from lmdbio.locality import map_base
from lmdbio.residency import map_resident
from lmdbio.decode import DraftDecoder, decode_pil, decode_tensor, pure_decoder
from lmdbio.shard_set import ShardedDatabase
from lmdbio.study import pagecache

from tests.helpers import build_simple_tree

PAGE = 4096


def _evict(*paths: Path) -> None:
    for _ in range(2):  # readahead an earlier reader left in flight lands, then goes too
        for path in paths:
            pagecache.evict(path)
        time.sleep(0.2)


class Scripted:
    """Storage as a script: position -> how many loads must be done before it is cached; and
    what was asked and done, in order."""

    def __init__(self, arrives_after: dict[int, int]) -> None:
        self.arrives_after = arrives_after
        self.loads = 0
        self.looks: list[list[int]] = []
        self.events: list[tuple[str, int]] = []

    def cached(self, positions: list[int]) -> list[bool]:
        self.looks.append(list(positions))
        return [self.loads >= self.arrives_after[p] for p in positions]

    def load(self, position: int) -> str:
        self.events.append(("load", position))
        self.loads += 1
        return f"image{position}"

    def finish(self, position: int, image: str) -> tuple[str, int]:
        self.events.append(("finish", position))
        return image, position


def test_loads_go_ahead_only_while_the_next_in_order_is_missing() -> None:
    storage = Scripted({0: 2, 1: 0, 2: 3, 3: 0, 4: 4})
    out = in_arrival_order(5, storage.cached, storage.load, storage.finish)
    assert out == [(f"image{p}", p) for p in range(5)]
    assert storage.events == [
        ("load", 1), ("load", 3),           # 0 is missing: what is at hand, in batch order
        ("load", 0),                        # there now
        ("finish", 0), ("finish", 1),       # finished as soon as everything before is loaded
        ("load", 2), ("finish", 2), ("finish", 3),
        ("load", 4), ("finish", 4)]
    # the next position before each load; the rest only when nothing found earlier is left
    assert storage.looks == [[0], [1, 2, 3, 4], [0], [0], [2], [4]]


def test_with_nothing_at_hand_the_next_in_order_is_waited_for() -> None:
    storage = Scripted({0: 9, 1: 9, 2: 9})
    in_arrival_order(3, storage.cached, storage.load, storage.finish)
    assert [p for what, p in storage.events if what == "load"] == [0, 1, 2]


def test_an_earlier_look_is_used_first() -> None:
    storage = Scripted({0: 1, 1: 0, 2: 0})
    in_arrival_order(3, storage.cached, storage.load, storage.finish,
                     looked=[False, True, False])  # 2 arrived since: not known yet
    assert [p for what, p in storage.events if what == "load"] == [1, 0, 2]
    assert storage.looks == [[0], [0], [2]]  # no look at the rest: 1 was known at hand


def test_the_first_error_in_batch_order_is_raised_after_those_before_it() -> None:
    storage = Scripted({0: 1, 1: 2, 2: 3, 3: 9, 4: 0})

    def load(position: int) -> str:
        image = storage.load(position)
        if position in (2, 4):
            raise ValueError(f"record {position} is damaged")
        return image

    with pytest.raises(ValueError, match="record 2 is damaged") as raised:  # 4 failed first
        in_arrival_order(5, storage.cached, load, storage.finish)
    # 4's failure is dropped and nothing more goes ahead; 2 is the plain loop's first error
    assert storage.events == [("load", 4), ("load", 0), ("finish", 0), ("load", 1),
                              ("finish", 1), ("load", 2)]
    frame = raised.tb.tb_next.tb_frame  # type: ignore[union-attr]  # in_arrival_order's
    assert frame.f_code.co_name == "in_arrival_order"
    assert not frame.f_locals["finished"] and not frame.f_locals["loaded"]  # holds no batch


def test_when_nothing_arrives_the_rest_is_looked_at_less_and_less_often() -> None:
    storage = Scripted({p: 10**6 for p in range(16)})
    in_arrival_order(16, storage.cached, storage.load, storage.finish)
    assert [p for what, p in storage.events if what == "load"] == list(range(16))
    rests = [look[0] for look in storage.looks if len(look) > 1]
    assert rests == [1, 2, 4, 8]  # after 1, 2, 4, 8 loads: O(B log B) checks, not B^2
    assert len(storage.looks) == 16 + 4


def test_past_the_limit_samples_are_loaded_in_batch_order() -> None:
    big = np.zeros((100, 100, 3), np.uint8)  # 30 000 bytes held each
    storage = Scripted({0: 10**6, 1: 0, 2: 0, 3: 0})  # everything but the first is at hand

    def load(position: int) -> np.ndarray:
        storage.load(position)
        return big

    in_arrival_order(4, storage.cached, load, lambda p, image: p, held_limit=50_000)
    assert [p for _, p in storage.events] == [1, 2, 0, 3]  # 2 ahead (60 000), then in order
    assert storage.looks == [[0], [1, 2, 3], [0], [3]]  # past the limit: no look
    storage.events.clear()
    storage.looks.clear()
    in_arrival_order(4, storage.cached, load, lambda p, image: p, held_limit=0)
    assert [p for _, p in storage.events] == [0, 1, 2, 3] and storage.looks == []


def test_decoded_bytes_counts_pixels() -> None:
    assert decoded_bytes(Image.new("RGB", (30, 20))) == 1800
    assert decoded_bytes(Image.new("L", (30, 20))) == 600
    assert decoded_bytes(np.zeros((2, 3), np.float32)) == 24
    assert decoded_bytes(torch.zeros(3, 4, 5, dtype=torch.uint8)) == 60
    assert decoded_bytes("neither") == 0
    assert decoded_bytes((Image.new("RGB", (30, 20)), 3)) == 1800  # (image, target)


def test_only_lmdbios_decoders_count_as_pure() -> None:
    assert pure_decoder(decode_pil) and pure_decoder(decode_tensor)
    assert pure_decoder(DraftDecoder(64))
    assert not pure_decoder(lambda data: decode_pil(data))  # a caller's: may keep state

    class Noisy(DraftDecoder):
        def __call__(self, data: bytes) -> object:
            return super().__call__(data)

    assert not pure_decoder(Noisy(64))  # a subclass may call what it likes


@pytest.fixture(scope="module")
def sharded_big(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("arrival-shards")
    tree = build_simple_tree(root / "tree", per_class=20, size=(160, 120))
    return [Path(lmdbio.convert(tree, root / "train.lmdb", shard=(index, 2),
                                progress=False).destination) for index in range(2)]


def test_a_database_says_which_records_are_cached(big_db: Path) -> None:
    with Database(big_db, EnvOptions(readahead=False)) as db:
        db.get(0)  # maps the file, confirms the layout
        _evict(big_db)
        assert db.records_cached([7, 30, 52]) == [False, False, False]
        db.get(30)  # one pread of its pages: its neighbours stay cold
        before = pagecache.residency(big_db).bytes_resident
        assert db.records_cached([7, 30, 52]) == [False, True, False]
        assert db.records_cached([-1, 60, 10**9]) == [True, True, True]  # the read will say
        assert pagecache.residency(big_db).bytes_resident == before  # looking read nothing


def test_a_shard_set_asks_each_shard(sharded_big: list[Path]) -> None:
    with ShardedDatabase(sharded_big, EnvOptions(readahead=False)) as db:
        first = len(db.shards[0])
        db.get(0), db.get(first)
        _evict(*sharded_big)
        db.get(first + 13)
        assert db.records_cached([12, first + 13, first + 16, -5]) == [False, True, False, True]


def _seeded_transform() -> transforms.Compose:
    return transforms.Compose([transforms.RandomResizedCrop(24), transforms.RandomHorizontalFlip(),
                               transforms.PILToTensor()])


def _same(batch: list[tuple[torch.Tensor, int]], other: list[tuple[torch.Tensor, int]]) -> bool:
    return len(batch) == len(other) and all(
        torch.equal(a, b) and t == u for (a, t), (b, u) in zip(batch, other))


def _random_target(target: int) -> int:
    return target * 1000 + int(torch.randint(0, 1000, ()))


def _cold_pair(big_db: Path) -> tuple[ImageFolderLMDB, ImageFolderLMDB]:
    """A dataset forced to arrival order (as beside a prefetch, with no hints either, but
    without its race) and a plain one, both with seeded random transforms, over big_db cold
    but for records 10, 20 and 59 (read with pread: their neighbours stay cold)."""
    arriving = ImageFolderLMDB(big_db, transform=_seeded_transform(),
                               target_transform=_random_target, prefetch=False,
                               readahead=False, batch_hints=False)
    arriving.arrival_order = True
    plain = ImageFolderLMDB(big_db, transform=_seeded_transform(),
                            target_transform=_random_target, prefetch=False,
                            readahead=False)  # one process opens a file with one set of options
    arriving.database.get(0)
    _evict(big_db)
    arriving.database.get(10), arriving.database.get(20), arriving.database.get(59)
    return arriving, plain


def _logging_loads(dataset: ImageFolderLMDB) -> list[int]:
    loaded: list[int] = []
    decoded = dataset._decoded
    dataset._decoded = lambda index: loaded.append(index) or decoded(index)  # type: ignore
    return loaded


def _counting_looks(dataset: ImageFolderLMDB) -> list[int]:
    looks: list[int] = []
    asked = dataset.database.records_cached
    dataset.database.records_cached = (  # type: ignore[method-assign]
        lambda records: looks.append(len(records)) or asked(records))
    return looks


def test_a_cold_batch_decodes_what_is_cached_first_and_gives_the_plain_batch(
        big_db: Path) -> None:
    arriving = ImageFolderLMDB(big_db, transform=_seeded_transform(),
                               target_transform=_random_target, prefetch=False,
                               readahead=False, batch_hints=False)
    arriving.arrival_order = True  # as beside a prefetch (no hints either), without its race
    plain = ImageFolderLMDB(big_db, transform=_seeded_transform(),
                            target_transform=_random_target, prefetch=False,
                            readahead=False)  # one process opens a file with one set of options
    assert not plain.arrival_order  # no prefetch: records are read in batch order
    arriving.database.get(0)
    _evict(big_db)
    arriving.database.get(10), arriving.database.get(20), arriving.database.get(59)
    loaded = _logging_loads(arriving)
    looks = _counting_looks(arriving)
    indices = [40, 10, 50, 20, 30, -1]
    torch.manual_seed(0)
    batch = arriving.__getitems__(indices)
    assert loaded[:2] == [10, 20] and sorted(loaded) == sorted(indices)
    # the batch's look, then the next record's before each load; the three found cached in
    # the first look are not asked again with the rest
    assert looks[:5] == [6, 1, 1, 1, 1]
    torch.manual_seed(0)
    assert _same(batch, [plain[i] for i in indices])  # the same crops, flips and targets
    loaded.clear()
    looks.clear()
    torch.manual_seed(0)
    assert _same(arriving.__getitems__(indices), batch)  # all cached now: the plain loop
    assert loaded == indices and looks == [6]  # one look finds it all cached...
    torch.manual_seed(0)
    assert _same(arriving.__getitems__(iter(indices)), batch)  # (an iterator of indices too)
    assert looks == [6]  # ...and this process looks no more
    arriving.close()
    assert not arriving.arrival_order  # no stream any more
    plain.close()


def test_the_held_limit_counts_decoded_images(big_db: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    arriving, plain = _cold_pair(big_db)
    monkeypatch.setattr(lmdbio.arrival, "HELD_LIMIT", 1)  # one image is over it
    loaded = _logging_loads(arriving)
    indices = [40, 10, 50, 20, 30, -1]  # 10, 20 and -1 (59) are cached
    torch.manual_seed(0)
    batch = arriving.__getitems__(indices)
    assert loaded == [10, 40, 20, 50, -1, 30]  # never more than one image ahead
    torch.manual_seed(0)
    assert _same(batch, [plain[i] for i in indices])
    arriving.close()
    plain.close()


def test_a_damaged_record_read_ahead_fails_in_its_turn(big_db: Path, tmp_path: Path) -> None:
    damaged = tmp_path / "damaged.lmdb"
    damaged.write_bytes(big_db.read_bytes())
    with Database(damaged, EnvOptions(readahead=False)) as db:
        db.get(0)
        offset, length = db._direct_access().locator.span(encode_key(10))  # type: ignore
    with open(damaged, "r+b") as handle:  # one byte of record 10's image: its CRC fails
        handle.seek(offset + length // 2)
        byte = handle.read(1)
        handle.seek(offset + length // 2)
        handle.write(bytes([byte[0] ^ 0xFF]))
    errors = []
    for arrival in (True, False):
        dataset = ImageFolderLMDB(damaged, transform=_seeded_transform(), prefetch=False,
                                  readahead=False, batch_hints=False)
        dataset.arrival_order = arrival
        dataset.database.get(0)
        _evict(damaged)
        os.pread(os.open(damaged, os.O_RDONLY), length, offset)  # 10's pages cached (fd leaks
        loaded = _logging_loads(dataset)                        # until exit: fine in a test)
        with pytest.raises(CorruptRecordError) as raised:
            dataset.__getitems__([40, 10, 50])
        errors.append(str(raised.value))
        assert loaded == ([10, 40, 10] if arrival else [40, 10])  # 50 never read
        dataset.close()
    assert errors[0] == errors[1] and "record 10" in errors[0]


def test_a_cold_batch_asked_with_an_iterator(big_db: Path) -> None:
    arriving, plain = _cold_pair(big_db)
    torch.manual_seed(0)
    batch = arriving.__getitems__(iter([40, 10, 50]))
    torch.manual_seed(0)
    assert _same(batch, [plain[i] for i in (40, 10, 50)])
    arriving.close()
    plain.close()


def test_a_reassigned_decoder_is_read_in_order(big_db: Path) -> None:
    arriving, plain = _cold_pair(big_db)
    arriving.decode = lambda data: decode_pil(data)  # a caller's: may draw random numbers
    loaded = _logging_loads(arriving)
    arriving.__getitems__([40, 10, 50])
    assert loaded == [40, 10, 50]
    arriving.close()
    plain.close()


def test_a_leaf_page_out_of_the_cache_makes_its_records_cold(tmp_path: Path) -> None:
    """A tree of several levels (LMDB's own, 3 KB values): a record whose value is cached but
    whose leaf is not would still wait for storage."""
    path = str(tmp_path / "deep.lmdb")
    env = lmdb.open(path, subdir=False, max_dbs=2, map_size=64 << 20)
    with env.begin(write=True, db=env.open_db(b"x")) as txn:
        for i in range(1500):
            txn.put(encode_key(i), i.to_bytes(4, "big") * 768)
    env.close()

    def opened() -> tuple[lmdb.Environment, ValueLocator, int]:
        env = lmdb.open(path, subdir=False, max_dbs=2, readonly=True, lock=False)
        with env.begin() as txn:
            base = map_base(path, env.info()["map_size"])
            assert base is not None
            locator = ValueLocator.of_database(txn, b"x", base, PAGE, env.info()["last_pgno"])
        assert locator is not None
        return env, locator, base

    key = encode_key(1000)
    env, locator, _ = opened()  # where the value and its leaf lie (this map touches the leaf,
    leaf, (offset, length) = locator.leaf(key), locator.span(key)  # type: ignore[misc]
    env.close()                 # which keeps it cached while mapped: closed before the evict)
    env, locator, base = opened()
    assert leaf is not None and leaf == locator.leaf(key) != locator.root
    stat = os.stat(path)
    access = DirectAccess(locator, RecordFile(path, (stat.st_dev, stat.st_ino)))
    _evict(Path(path))

    def resident(start: int, size: int) -> bool:
        return map_resident(base + start, size)  # type: ignore[operator]

    fd = os.open(path, os.O_RDONLY)
    try:
        os.pread(fd, length + HEADER_BYTES, offset - HEADER_BYTES)  # the value, not its leaf
        assert not resident(leaf * PAGE, PAGE)
        assert access.cached([key], resident) == [False]
        os.pread(fd, PAGE, leaf * PAGE)
        assert access.cached([key], resident) == [True]
    finally:
        os.close(fd)
        access.close()
        env.close()


def test_arrival_order_is_on_beside_a_prefetch_with_lmdbios_decoders(big_db: Path) -> None:
    for options, expected in (({}, True), ({"decode": DraftDecoder(32)}, True),
                              ({"prefetch": False}, False),
                              ({"decode": lambda data: decode_pil(data)}, False)):
        dataset = ImageFolderLMDB(big_db, **options)
        assert dataset.arrival_order is expected, options
        dataset.close()


def test_files_that_do_not_fit_are_read_in_order(big_db: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """``prefetch=True`` streams them anyway; a batch there is never all cached, so looking
    would never stop."""
    monkeypatch.setattr(lmdbio.dataset, "_fits_in_memory", lambda root: False)
    dataset = ImageFolderLMDB(big_db, prefetch=True)
    assert dataset.prefetching or dataset._prefetchers
    assert not dataset.arrival_order
    dataset.close()


def test_a_subclass_with_its_own_getitem_keeps_it(big_db: Path) -> None:
    class Tagged(ImageFolderLMDB):
        def __getitem__(self, index: int) -> tuple[object, int]:
            return "tagged", super().__getitem__(index)[1]

    dataset = Tagged(big_db, prefetch=False, readahead=False, batch_hints=False)
    dataset.arrival_order = True
    dataset.database.get(0)
    _evict(big_db)
    assert [image for image, _ in dataset.__getitems__([5, 40, 3])] == ["tagged"] * 3
    dataset.close()


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_workers_on_a_cold_file_deliver_the_plain_batches(big_db: Path, method: str) -> None:
    arriving = ImageFolderLMDB(big_db, transform=_seeded_transform(), prefetch=False,
                               readahead=False, batch_hints=False)
    arriving.arrival_order = True
    plain = ImageFolderLMDB(big_db, transform=_seeded_transform(), prefetch=False,
                            readahead=False)  # one process opens a file with one set of options

    def batches(dataset: ImageFolderLMDB) -> list[tuple[torch.Tensor, list[int]]]:
        torch.manual_seed(0)
        loader = DataLoader(dataset, batch_size=8, shuffle=True, num_workers=2,
                            multiprocessing_context=method)
        return [(images, targets.tolist()) for images, targets in loader]

    _evict(big_db)
    cold = batches(arriving)
    warm = batches(plain)
    assert len(cold) == len(warm) == 8
    assert all(torch.equal(a, b) and t == u for (a, t), (b, u) in zip(cold, warm))
    arriving.close()
    plain.close()
