"""What each storage strategy of the study is, and how it shuffles.

Speed bought with weaker shuffling is not the same product, so every table of the study that
compares strategies states their shuffle next to them. The peer descriptions follow the code
of webdataset 1.0.2 and litdata 0.2.76 as the study drives them (``lmdbio.peer_readers``), with
the study's shard/chunk size of 256 samples (``lmdbio.peers.SHARD_SAMPLES``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

from lmdbio.study.conditions import LOCALITY_FORMATS
from lmdbio.study.peers import SHARD_SAMPLES, SHUFFLE_BUFFER

__all__ = ["STRATEGIES", "Strategy", "order_randomness", "shuffle_table"]


@dataclass(frozen=True)
class Strategy:
    format: str
    layout: str       # what sits on disk
    shuffle: str      # what the reader's shuffle is, per epoch
    uniform: bool     # is every permutation of the epoch equally likely?


STRATEGIES: dict[str, Strategy] = {s.format: s for s in (
    Strategy("imagefolder", "one file per image (torchvision ImageFolder)",
             "per-sample uniform permutation (DataLoader RandomSampler)", True),
    Strategy("lmdb", "one LMDB file, original bytes (lmdbio ImageFolderLMDB)",
             "per-sample uniform permutation (DataLoader RandomSampler); random reads by key",
             True),
    Strategy("lmdb-block", "one LMDB file, original bytes (lmdbio ImageFolderLMDB)",
             "lmdbio.BlockShuffleSampler (defaults): blocks of 64 neighbouring records in "
             "permuted order, each block asked of storage in one read ahead of use, mixed "
             "through a buffer of 1024 records: a batch draws from ~16 blocks", False),
    Strategy("webdataset", f"tar shards of {SHARD_SAMPLES} samples, original bytes",
             "shard order permuted, shards dealt round-robin to the DataLoader workers, each "
             f"worker streams its shards through a shuffle buffer of {SHUFFLE_BUFFER} samples "
             "(filled before the first sample): each sample yielded is a random pick among "
             f"the <= {SHUFFLE_BUFFER} that worker has read and not yet yielded", False),
    Strategy("litdata", f"LitData chunks of {SHARD_SAMPLES} samples (litdata.optimize), "
             "original bytes",
             "StreamingDataset(shuffle=True): chunk order permuted, cut into one contiguous "
             "share per worker; each worker reads its chunks one after another, the items of "
             "a chunk shuffled in blocks of 256 (block order, then order within each block: "
             f"with {SHARD_SAMPLES}-sample chunks a full in-chunk permutation), so a batch "
             "holds samples of one or two chunks. (On kernel NFS/Lustre/GPFS mounts litdata "
             "uses a window of 16 chunks per worker instead; ext4 and fuse.sshfs get the "
             "permutation above.)", False),
)}


def shuffle_table(formats: list[str] | None = None) -> list[dict[str, object]]:
    """One row per strategy (``formats`` in that order; default the study's four, without
    the sweep's ``lmdb-block`` variant): format, layout, shuffle, uniform."""
    chosen = formats or [f for f in STRATEGIES if f not in LOCALITY_FORMATS]
    return [asdict(STRATEGIES[f]) for f in chosen if f in STRATEGIES]


def order_randomness(order: Sequence[int], block: int = 64, batch: int = 128) -> dict[str, float]:
    """How random an order is: neighbours that were neighbours on disk (~0 for a uniform
    shuffle) and distinct ``block``-record blocks per batch of ``batch`` (~``batch`` for a
    uniform shuffle of a large dataset, 1 for sequential order)."""
    adjacent = sum(abs(a - b) == 1 for a, b in zip(order, order[1:])) / max(1, len(order) - 1)
    per_batch = [len({i // block for i in order[s:s + batch]})
                 for s in range(0, len(order) - batch + 1, batch)]
    return {"adjacent_pairs": adjacent,
            "blocks_per_batch": sum(per_batch) / max(1, len(per_batch))}
