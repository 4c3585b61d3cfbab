"""A locality-aware shuffling sampler for databases larger than the page cache.

Plain random order touches one record here, the next one anywhere: once the file no longer
fits in RAM, every record costs a random read, and readahead fetches neighbours that are
evicted before they are used. ``BlockShuffleSampler`` reads contiguous blocks of neighbouring
records (lmdbio stores record *i* next to *i + 1*), visits the blocks in a random order, and
mixes the records of several blocks through a shuffle buffer. Each epoch is still a
permutation of the whole dataset; what weakens is only the independence of neighbours: two
samples close in a batch are more likely to come from the same few blocks.

Given a dataset with ``will_need`` (``ImageFolderLMDB``), the sampler also tells storage what
comes next: each block is requested in one asynchronous read a few blocks before it enters
the buffer (``lmdbio.locality``). With a database 4x the page cache this is what makes block
order pay: ~0.5x the sequential bandwidth against 0.06x for the same order left to the
kernel's readahead and 0.04x for plain random order (README, "Performance targets").

Randomness knobs: ``block_size`` (records per block; 1 = plain random order) and
``buffer_size`` (records mixed at once; ``>= len(dataset)`` = a full shuffle of the block
stream). It is seedable, has ``set_epoch`` and ``num_replicas``/``rank`` like
``torch.utils.data.DistributedSampler``: the epoch's block order is cut into equal contiguous
slices, one per rank, so every rank yields the same number of samples.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Sized

__all__ = ["BlockShuffleSampler"]


class BlockShuffleSampler:
    """Shuffled blocks of neighbouring indices, mixed through a shuffle buffer.

    Args:
        data_source: the dataset (only its length is used) or a length.
        block_size: neighbouring records read together.
        buffer_size: records held for mixing; memory is ``buffer_size`` ints.
        seed: base seed; the epoch (``set_epoch``) is mixed in, as DistributedSampler does.
        num_replicas, rank: split the blocks between distributed ranks.
        drop_last: drop the tail instead of repeating blocks to make ranks equal.
        hint_blocks: when a block enters the buffer, call ``data_source.will_need(start,
            stop)`` if it has one (``ImageFolderLMDB`` does): the block is read from storage
            in one request, well before its records are drawn (``lmdbio.locality``).
        hint_ahead: blocks requested ahead of the one entering the buffer.
    """

    def __init__(self, data_source: Sized | int, block_size: int = 64,
                 buffer_size: int = 1024, *, seed: int = 0, num_replicas: int = 1,
                 rank: int = 0, drop_last: bool = False, hint_blocks: bool = True,
                 hint_ahead: int = 4) -> None:
        length = data_source if isinstance(data_source, int) else len(data_source)
        if block_size < 1 or buffer_size < 1:
            raise ValueError(f"block_size and buffer_size must be >= 1, not {block_size}, "
                             f"{buffer_size}")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in [0, {num_replicas}), not {rank}")
        self.length, self.block_size, self.buffer_size = length, block_size, buffer_size
        self.seed, self.num_replicas, self.rank, self.drop_last = seed, num_replicas, rank, drop_last
        self.epoch = 0
        self._hint = getattr(data_source, "will_need", None) if hint_blocks else None
        self.hint_ahead = max(1, hint_ahead)
        if drop_last:
            self.num_samples = length // num_replicas
        else:
            self.num_samples = math.ceil(length / num_replicas)

    def set_epoch(self, epoch: int) -> None:
        """A different order every epoch (call before iterating, as with DistributedSampler)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def _epoch_order(self, rng: random.Random) -> list[int]:
        """This rank's slice of the block-shuffled order, padded or cut like
        DistributedSampler so every rank yields ``num_samples``."""
        blocks = [range(start, min(start + self.block_size, self.length))
                  for start in range(0, self.length, self.block_size)]
        rng.shuffle(blocks)  # same seed on every rank: one global order, sliced below
        order = [index for block in blocks for index in block]
        total = self.num_samples * self.num_replicas
        if total > len(order) and order:
            order += (order * math.ceil(total / len(order)))[:total - len(order)]
        # contiguous slices keep whole blocks together on each rank
        return order[self.rank * self.num_samples:(self.rank + 1) * self.num_samples]

    def _runs(self, order: list[int]) -> list[tuple[int, int, int]]:
        """``(start, stop, position in order)`` of each run of consecutive indices inside one
        block: what one storage request can fetch."""
        runs: list[tuple[int, int, int]] = []
        for position, index in enumerate(order):
            if runs and index == runs[-1][1] and index % self.block_size:
                runs[-1] = (runs[-1][0], index + 1, runs[-1][2])
            else:
                runs.append((index, index + 1, position))
        return runs

    def __iter__(self) -> Iterator[int]:
        rng = random.Random(self.seed * 1_000_003 + self.epoch)
        buffer: list[int] = []
        order = self._epoch_order(rng)
        runs = self._runs(order) if self._hint is not None else []
        for start, stop, _ in runs[:self.hint_ahead]:
            self._hint(start, stop)
        hinted = min(len(runs), self.hint_ahead)
        for position, index in enumerate(order):
            if hinted < len(runs) and runs[hinted - self.hint_ahead][2] <= position:
                # a block enters the buffer: ask for the one hint_ahead blocks later, so its
                # read overlaps the draws from the blocks before it
                self._hint(runs[hinted][0], runs[hinted][1])
                hinted += 1
            buffer.append(index)
            if len(buffer) >= self.buffer_size:
                slot = rng.randrange(len(buffer))
                buffer[slot], buffer[-1] = buffer[-1], buffer[slot]
                yield buffer.pop()
        rng.shuffle(buffer)
        yield from buffer
