"""Arrival order: while a prefetch streams the file, a cold batch's records are decoded in the
order they reach the page cache and the batch is finished (transformed) in batch order. Checked
on the ordering itself (which load runs when, which finish, which error), on real LMDB files and
the real page cache (which records a database says are cached), and on the batches a dataset
delivers: the same as the plain loop's under seeded random transforms, in this process and in
fork and spawn workers."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import transforms

import lmdbio
from lmdbio import Database, EnvOptions, ImageFolderLMDB
from lmdbio.arrival import decoded_bytes, in_arrival_order
from lmdbio.decode import DraftDecoder, decode_pil, decode_tensor, pure_decoder
from lmdbio.shard_set import ShardedDatabase
from lmdbio.study import pagecache

from tests.helpers import build_simple_tree


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

    with pytest.raises(ValueError, match="record 2 is damaged"):  # 4 failed first, 2 comes first
        in_arrival_order(5, storage.cached, load, storage.finish)
    assert storage.events == [("load", 4), ("load", 0), ("finish", 0), ("load", 1),
                              ("finish", 1), ("load", 2)]


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


def test_only_lmdbios_decoders_count_as_pure() -> None:
    assert pure_decoder(decode_pil) and pure_decoder(decode_tensor)
    assert pure_decoder(DraftDecoder(64))
    assert not pure_decoder(lambda data: decode_pil(data))  # a caller's: may keep state


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


def test_a_cold_batch_decodes_what_is_cached_first_and_gives_the_plain_batch(
        big_db: Path) -> None:
    arriving = ImageFolderLMDB(big_db, transform=_seeded_transform(), prefetch=False,
                               readahead=False, batch_hints=False)
    arriving.arrival_order = True  # as beside a prefetch (no hints either), without its race
    plain = ImageFolderLMDB(big_db, transform=_seeded_transform(), prefetch=False,
                            readahead=False)  # one process opens a file with one set of options
    assert not plain.arrival_order  # no prefetch: records are read in batch order
    arriving.database.get(0)
    _evict(big_db)
    arriving.database.get(10), arriving.database.get(20)
    loaded: list[int] = []
    decoded = arriving._decoded
    arriving._decoded = lambda index: loaded.append(index) or decoded(index)  # type: ignore
    indices = [40, 10, 50, 20, 30, -1]
    torch.manual_seed(0)
    batch = arriving.__getitems__(indices)
    assert loaded[:2] == [10, 20] and sorted(loaded) == sorted(indices)
    torch.manual_seed(0)
    assert _same(batch, [plain[i] for i in indices])  # the same crops, flips and targets
    loaded.clear()
    torch.manual_seed(0)
    assert _same(arriving.__getitems__(indices), batch)  # all cached now: the plain loop
    assert loaded == indices
    arriving.close()
    plain.close()


def test_arrival_order_is_on_beside_a_prefetch_with_lmdbios_decoders(big_db: Path) -> None:
    for options, expected in (({}, True), ({"decode": DraftDecoder(32)}, True),
                              ({"prefetch": False}, False),
                              ({"decode": lambda data: decode_pil(data)}, False)):
        dataset = ImageFolderLMDB(big_db, **options)
        assert dataset.arrival_order is expected, options
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
