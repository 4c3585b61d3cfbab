"""A cold batch's records decoded in the order storage delivers them, finished in batch order.

Why: while a prefetch streams a database file, the records of a batch in uniform random order
reach the page cache over the whole stream (a 66 MB file takes 0.44 s at 150 MB/s), so the
first batches of a cold epoch wait in batch order for their last record while the worker's
core idles on records already read. Decoding those first keeps the core busy while the stream
reads on. Only the decode (a pure function of the bytes) runs out of order: the transform of
each sample, which may draw random numbers, runs in batch order, so a seeded augmentation
draws what it draws in batch order and the batch is the one ``[ds[i] for i in indices]``
returns. The first error in batch order is raised after the samples before it are finished,
as there. Decoded images held ahead of batch order are bounded (``held_limit`` bytes): past
it the next sample in batch order is read, waiting for storage as the plain loop would.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

__all__ = ["HELD_LIMIT", "decoded_bytes", "in_arrival_order"]

Loaded = TypeVar("Loaded")
Finished = TypeVar("Finished")

HELD_LIMIT = 256 << 20  # decoded images held ahead of batch order, per worker


def decoded_bytes(sample: Any) -> int:
    """Memory a decoded sample holds: a tensor or array's ``nbytes``, a PIL image's pixels."""
    size = getattr(sample, "nbytes", None)
    if isinstance(size, int):
        return size
    try:
        return int(sample.width) * int(sample.height) * len(sample.getbands())
    except (AttributeError, TypeError, ValueError):
        return 0


def in_arrival_order(count: int, ready: Callable[[Sequence[int]], Sequence[bool]],
                     load: Callable[[int], Loaded], finish: Callable[[int, Loaded], Finished],
                     held_limit: int = HELD_LIMIT) -> list[Finished]:
    """``[finish(p, load(p)) for p in range(count)]``, the loads done in the order storage
    delivers their data: each round loads every pending position ``ready`` says is at hand
    (one call for all of them), or the first pending one when none is, and finishes each
    position as soon as it and every one before it are loaded."""
    finished: list[Finished] = []
    loaded: dict[int, tuple[Loaded | None, Exception | None, int]] = {}
    pending = list(range(count))
    held = 0
    while pending:
        at_hand = [p for p, now in zip(pending, ready(pending)) if now] \
            if held < held_limit else []
        for position in at_hand or pending[:1]:
            if held >= held_limit and position != len(finished):
                break  # enough ahead of batch order: the next in order, whatever it waits for
            try:
                sample = load(position)
            except Exception as exc:  # raised in batch order, once those before it are done
                loaded[position] = (None, exc, 0)
            else:
                size = decoded_bytes(sample)
                loaded[position] = (sample, None, size)
                held += size
            while len(finished) in loaded:
                sample, error, size = loaded.pop(len(finished))
                if error is not None:
                    raise error
                held -= size
                finished.append(finish(len(finished), sample))  # type: ignore[arg-type]
        pending = [p for p in pending if p >= len(finished) and p not in loaded]
    return finished
