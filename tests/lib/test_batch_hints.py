"""Batch hints: a DataLoader batch's records are asked of storage together before the first is
read. Checked for real: the hinted records (and only they) arrive in the page cache of a real
LMDB file, a batch is exactly ``[ds[i] for i in indices]`` (negative indices, an assigned
``samples``, shards, errors), and DataLoader workers under fork and spawn deliver the same
batches with hints on and off."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

import lmdbio
from lmdbio import Database, EnvOptions, ImageFolderLMDB
from lmdbio.format import encode_key
from lmdbio.study import pagecache

from tests.helpers import build_simple_tree, pixel_digest


def _spans(db: Database, indices: list[int]) -> list[tuple[int, int]]:
    locator = db._direct_access().locator  # type: ignore[union-attr]
    return [locator.span(encode_key(i)) for i in indices]  # type: ignore[misc]


def test_hinted_records_and_only_they_arrive_in_the_page_cache(big_db: Path) -> None:
    wanted = [41, 7, 23]
    with Database(big_db, EnvOptions(readahead=False)) as db:
        db.get(0)  # opens the map and checks the leaf layout once (reads record 0)
        spans = _spans(db, wanted)
        for _ in range(2):  # what the map holds stays; the rest (and readahead an earlier
            pagecache.evict(big_db)  # reader left in flight, once it lands) leaves the cache
            time.sleep(0.2)
        before = pagecache.residency(big_db).bytes_resident
        hinted = sum(length for _, length in spans)
        db.will_need_records(wanted + [len(db), -1, 10**9])  # out of range: skipped, no error
        deadline = time.monotonic() + 10
        while pagecache.residency(big_db).bytes_resident - before < hinted:
            assert time.monotonic() < deadline, "the hinted records never arrived"
            time.sleep(0.02)
        grown = pagecache.residency(big_db).bytes_resident - before
        page = 4096
        # the records' pages, give or take a page at each end of each: nothing else was read
        assert grown <= hinted + 2 * page * len(wanted), (grown, hinted)
        hinted_bytes = [db.get(i) for i in wanted]
    with Database(big_db) as through_map:
        assert hinted_bytes == [through_map.get(i) for i in wanted]


@pytest.mark.parametrize("options,hints", [({}, False),  # prefetched: hints "auto" = off
                                           ({"batch_hints": True, "readahead": False}, True)],
                         ids=["defaults", "hints"])
def test_a_batch_is_what_indexing_gives(big_db: Path, options: dict, hints: bool) -> None:
    dataset = ImageFolderLMDB(big_db, transform=pixel_digest, **options)
    assert dataset.batch_hints is hints
    indices = [5, 0, 59, -1, -60, 5]
    assert dataset.__getitems__(indices) == [dataset[i] for i in indices]
    with pytest.raises(IndexError):  # ImageFolder's error for a bad index, hints or not
        dataset.__getitems__([3, 60])
    dataset.samples = dataset.samples[10:20][::-1]  # torchvision-style subset: paths decide
    assert dataset.__getitems__([0, 9, -2]) == [dataset[0], dataset[9], dataset[-2]]
    whole = ImageFolderLMDB(big_db, transform=pixel_digest, **options)
    assert dataset.__getitems__([0])[0] == whole[19]
    whole.close()
    dataset.samples = [("nowhere.jpg", 0)]
    with pytest.raises(lmdbio.SampleNotFoundError):
        dataset.__getitems__([0])
    dataset.close()


def test_hints_over_a_shard_set_reach_each_shard(big_db: Path, tmp_path: Path) -> None:
    tree = build_simple_tree(tmp_path / "tree", per_class=30, size=(160, 120))
    lmdbio.convert_shards(tree, tmp_path / "s.lmdb", num_shards=3, progress=False)
    whole = ImageFolderLMDB(big_db, transform=pixel_digest)
    sharded = ImageFolderLMDB(str(tmp_path / "s-*-of-00003.lmdb"), transform=pixel_digest,
                              readahead=False, batch_hints=True)
    indices = [0, 19, 20, 39, 40, 59, 25]
    assert sharded.__getitems__(indices) == whole.__getitems__(indices)
    hinted = []
    for shard in sharded.database.shards:  # type: ignore[attr-defined]
        shard.will_need_records = hinted.append  # type: ignore[method-assign]
    sharded.__getitems__(indices)
    assert sorted(map(sorted, hinted)) == [[0, 5, 19], [0, 19], [0, 19]]


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_workers_deliver_the_same_batches_with_hints_on_and_off(big_db: Path,
                                                                context: str) -> None:
    batches = {}
    for hints in (True, False):
        dataset = ImageFolderLMDB(big_db, transform=pixel_digest, batch_hints=hints,
                                  readahead=False)
        pagecache.evict(big_db)
        loader = DataLoader(dataset, batch_size=8, shuffle=True, num_workers=2,
                            multiprocessing_context=context, collate_fn=list,
                            generator=torch.Generator().manual_seed(3))
        batches[hints] = list(loader)
        dataset.close()
    assert batches[True] == batches[False] and sum(map(len, batches[True])) == 60


def test_auto_hints_where_no_prefetch_reads_the_file(big_db: Path) -> None:
    """Beside a prefetch (which reads the file in order anyway) random hints would only slow
    its stream; without one (prefetch off, or a DB too large for it) batches are hinted."""
    prefetched = ImageFolderLMDB(big_db, prefetch=True)
    assert prefetched.batch_hints is False
    prefetched.close()
    for options in ({"prefetch": False}, {"prefetch": False, "readahead": False},
                    {"prefetch": True, "batch_hints": True}):
        dataset = ImageFolderLMDB(big_db, **options)  # type: ignore[arg-type]
        assert dataset.batch_hints is True, options
        dataset.close()
    with pytest.raises(ValueError, match="batch_hints must be True, False or 'auto'"):
        ImageFolderLMDB(big_db, batch_hints="yes")
