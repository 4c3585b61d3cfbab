"""BlockShuffleSampler: a permutation per epoch, seeded, local, and DistributedSampler-shaped."""

from __future__ import annotations

import pytest

from lmdbio.samplers import BlockShuffleSampler


def test_each_epoch_is_a_permutation_and_epochs_differ():
    sampler = BlockShuffleSampler(1000, block_size=32, buffer_size=100, seed=1)
    first = list(sampler)
    assert sorted(first) == list(range(1000)) and len(sampler) == 1000
    sampler.set_epoch(1)
    second = list(sampler)
    assert sorted(second) == list(range(1000)) and second != first
    sampler.set_epoch(0)
    assert list(sampler) == first  # seeded: reproducible


def test_order_is_shuffled_but_local():
    n, block = 4096, 64
    order = list(BlockShuffleSampler(n, block_size=block, buffer_size=256, seed=0))
    assert order != sorted(order)
    # a window of buffer_size consecutive samples spans few blocks (locality) ...
    blocks_touched = len({i // block for i in order[:256]})
    assert blocks_touched <= 2 * 256 // block + 2
    # ... while plain random order (block 1) touches almost one block per sample
    random_order = list(BlockShuffleSampler(n, block_size=1, buffer_size=1, seed=0))
    assert len({i // block for i in random_order[:256]}) > 40


@pytest.mark.parametrize("n,replicas", [(130, 2), (1000, 3), (7, 4)])
def test_ranks_get_equal_lengths_and_cover_everything(n, replicas):
    samplers = [BlockShuffleSampler(n, block_size=64, buffer_size=50, seed=3,
                                    num_replicas=replicas, rank=r) for r in range(replicas)]
    orders = [list(s) for s in samplers]
    assert len({len(o) for o in orders}) == 1 and len(orders[0]) == len(samplers[0])
    assert set().union(*map(set, orders)) == set(range(n))


def test_drop_last_gives_disjoint_equal_slices():
    orders = [list(BlockShuffleSampler(130, block_size=16, num_replicas=2, rank=r,
                                       drop_last=True)) for r in range(2)]
    assert [len(o) for o in orders] == [65, 65]
    assert not set(orders[0]) & set(orders[1])


def test_works_as_a_dataloader_sampler():
    from torch.utils.data import DataLoader

    data = list(range(100))
    loader = DataLoader(data, batch_size=10, sampler=BlockShuffleSampler(data, block_size=8))
    seen = [int(x) for batch in loader for x in batch]
    assert sorted(seen) == data


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="block_size"):
        BlockShuffleSampler(10, block_size=0)
    with pytest.raises(ValueError, match="rank"):
        BlockShuffleSampler(10, num_replicas=2, rank=2)
