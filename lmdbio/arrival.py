"""A cold batch's records decoded in the order storage delivers them, finished in batch order.

Why: while a prefetch streams a database file, the records of a batch in uniform random order
reach the page cache over the whole stream (a 66 MB file takes 0.44 s at 150 MB/s), so the
first batches of a cold epoch wait in batch order for their last record while the worker's
core idles on records already read. Decoding those while the next record in batch order is
missing keeps the core busy while the stream reads on; as soon as that record is there, the
batch goes on in order again, so on fast storage little is held ahead. Only the decode (a
pure function of the bytes) runs out of order: the transform of each sample, which may draw
random numbers, runs in batch order, so a seeded augmentation draws what it draws in batch
order and the batch is the one ``[ds[i] for i in indices]`` returns. The first error in batch
order is raised after the samples before it are finished, as there: a load ahead that fails
is dropped, loaded again in its turn, and nothing more is loaded ahead. Decoded images held
ahead of batch order are bounded (about ``HELD_LIMIT`` bytes: the next in order is loaded
once they reach it). Looking costs a few microseconds per record; when storage delivers
nothing, the looks at the rest of the batch back off (after 1, 2, 4... loads), so a batch that
stays cold pays O(B log B) of them, not B².
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

__all__ = ["HELD_LIMIT", "decoded_bytes", "in_arrival_order"]

Loaded = TypeVar("Loaded")
Finished = TypeVar("Finished")

HELD_LIMIT = 256 << 20  # decoded images held ahead of batch order, per worker


def decoded_bytes(sample: Any) -> int:
    """Memory a decoded sample holds: a tensor or array's ``nbytes``, a PIL image's pixels
    (of the first item of a tuple, such as ``(image, target)``); 0 when it cannot be told."""
    if isinstance(sample, tuple) and sample:
        sample = sample[0]
    size = getattr(sample, "nbytes", None)
    if isinstance(size, int):
        return size
    try:
        return int(sample.width) * int(sample.height) * len(sample.getbands())
    except (AttributeError, TypeError, ValueError):
        return 0


def in_arrival_order(count: int, cached: Callable[[Sequence[int]], Sequence[bool]],
                     load: Callable[[int], Loaded], finish: Callable[[int, Loaded], Finished],
                     held_limit: int | None = None,
                     looked: Sequence[bool] | None = None) -> list[Finished]:
    """``[finish(p, load(p)) for p in range(count)]``, loading ahead of batch order only while
    the next position in order is not at hand: ``cached(positions)`` says which are (asked of
    the next position before each load; of all those not loaded when the ones found at hand
    last time are used up, backing off while that finds none; ``looked``: such an answer for
    every position, already had). Each position is finished as soon as it and every one
    before it are loaded. ``held_limit``: bytes of loaded samples held ahead (default
    ``HELD_LIMIT``; ``decoded_bytes`` counts them)."""
    limit = HELD_LIMIT if held_limit is None else held_limit
    finished: list[Finished] = []
    loaded: dict[int, tuple[Loaded | None, int]] = {}
    # found cached, in batch order; those since loaded in their turn are skipped at the head
    at_hand = collections.deque(p for p, now in enumerate(looked or ()) if now)
    held = 0
    look_in, backoff = 0, 1  # loads until the rest of the batch is looked at again
    while len(finished) < count:
        following = len(finished)  # never loaded yet: it would have been finished
        position = following  # in order: at hand, too much held ahead, or nothing else is
        if held < limit and not cached([following])[0]:
            while at_hand and (at_hand[0] <= following or at_hand[0] in loaded):
                at_hand.popleft()
            if not at_hand and look_in <= 0:
                rest = [p for p in range(following + 1, count) if p not in loaded]
                at_hand = collections.deque(
                    p for p, now in zip(rest, cached(rest) if rest else ()) if now)
                look_in, backoff = (0, 1) if at_hand else (backoff, backoff * 2)
            if at_hand:
                position = at_hand.popleft()
        look_in -= 1
        try:
            sample = load(position)
        except Exception:
            if position != following:  # the plain loop reads it in its turn: so will this,
                limit = -1  # and load nothing more ahead meanwhile
                continue
            loaded.clear()
            finished.clear()  # the traceback keeps this frame: let it hold no batch
            sample = None
            raise
        size = decoded_bytes(sample)
        loaded[position] = (sample, size)
        held += size
        while len(finished) in loaded:
            sample, size = loaded.pop(len(finished))
            held -= size
            finished.append(finish(len(finished), sample))  # type: ignore[arg-type]
    return finished
