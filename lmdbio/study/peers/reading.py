"""Readers for the peer storage strategies: WebDataset shards and a LitData optimized dataset,
read the way their users would read them: each image decoded as torchvision's ``pil_loader``
decodes a file (``Image.open(...).convert("RGB")``, not lmdbio's ``decode_pil``, which skips
that idiom's copy of an RGB image), then the study's transform.

Both are ``IterableDataset``s: the order comes from the format's own shuffle, not from a
sampler. Each yields ``(transform(image), label)`` like ImageFolder, has
``classes``/``class_to_idx`` and ``__len__`` from the writer's manifest, and reshuffles per
epoch through ``set_epoch`` (DataLoader workers receive a fresh copy of the dataset at every
epoch unless workers are persistent, so the harness keeps them non-persistent for these).
Every sample is delivered exactly once per epoch across the DataLoader's workers.
"""

from __future__ import annotations

import io
import os
import random
from collections.abc import Callable, Iterator
from typing import Any

from PIL import Image
from torch.utils.data import IterableDataset, get_worker_info

from lmdbio.study.peers import SHUFFLE_BUFFER, read_manifest, require

__all__ = ["LitDataImages", "WebDatasetImages", "open_peer"]


class _PeerImages(IterableDataset):
    """What both readers share: manifest, length, classes, epoch, decode + transform."""

    def __init__(self, root: str | os.PathLike[str], transform: Callable[[Any], Any] | None,
                 seed: int, fmt: str) -> None:
        self.root = os.path.abspath(os.fspath(root))
        manifest = read_manifest(self.root)
        if manifest.get("format") != fmt:
            raise ValueError(f"{self.root!r} holds {manifest.get('format')!r}, not {fmt!r}")
        self.classes: list[str] = list(manifest["classes"])
        self.class_to_idx = {name: index for index, name in enumerate(self.classes)}
        self.num_samples = int(manifest["num_samples"])
        self.manifest = manifest
        self.transform = transform
        self.seed = seed
        self.epoch = 0
        require(fmt)  # fail here, in the main process, with the install hint

    def __len__(self) -> int:
        return self.num_samples

    def set_epoch(self, epoch: int) -> None:
        """A new shuffle per epoch; call before ``iter(loader)``."""
        self.epoch = epoch

    def _item(self, data: bytes, label: int) -> tuple[Any, int]:
        with Image.open(io.BytesIO(data)) as opened:  # pil_loader, on the bytes
            image = opened.convert("RGB")
        return (self.transform(image) if self.transform else image), int(label)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.root!r}, {self.num_samples} samples, seed={self.seed})"


class WebDatasetImages(_PeerImages):
    """WebDataset tar shards: shard list shuffled per epoch (the same permutation in every
    worker, so ``split_by_worker`` hands each shard to exactly one worker), then a shuffle
    buffer of ``buffer`` samples per worker, filled before the first sample is yielded."""

    def __init__(self, root: str | os.PathLike[str], transform: Callable[[Any], Any] | None = None,
                 *, seed: int = 0, buffer: int = SHUFFLE_BUFFER) -> None:
        super().__init__(root, transform, seed, "webdataset")
        self.shards = [os.path.join(self.root, name) for name in self.manifest["shards"]]
        self.buffer = buffer

    def __iter__(self) -> Iterator[tuple[Any, int]]:
        wds = require("webdataset")
        info = get_worker_info()
        worker = info.id if info is not None else 0
        epoch_seed = self.seed * 1_000_003 + self.epoch
        pipeline = wds.DataPipeline(
            wds.SimpleShardList(self.shards, seed=epoch_seed),  # same order in every worker
            wds.split_by_worker,
            wds.tarfile_to_samples(),
            # per-worker stream of its own: workers must not draw the same positions
            wds.shuffle(self.buffer, initial=self.buffer,
                        rng=random.Random(epoch_seed * 131 + worker)),
        )
        for sample in pipeline:
            label = int(sample["cls"])
            data = next(value for key, value in sample.items()
                        if not key.startswith("__") and key != "cls")
            yield self._item(data, label)


class LitDataImages(_PeerImages):
    """LitData ``StreamingDataset(shuffle=True)``, read in place (no cache copy on a POSIX
    path). Its shuffle: chunks permuted per epoch and cut into per-worker item budgets, items
    of each chunk shuffled in blocks of 256 (block order and order within blocks)."""

    def __init__(self, root: str | os.PathLike[str], transform: Callable[[Any], Any] | None = None,
                 *, seed: int = 0, batch_size: int = 1) -> None:
        super().__init__(root, transform, seed, "litdata")
        # litdata cuts each worker's share into whole batches when it knows the batch size
        # (as StreamingDataLoader tells it): one short batch per epoch, not one per worker
        self.batch_size = batch_size

    def __iter__(self) -> Iterator[tuple[Any, int]]:
        litdata = require("litdata")
        # built in the worker: its reader mmaps chunks, which must not cross a fork
        stream = litdata.StreamingDataset(self.root, shuffle=True, seed=self.seed,
                                          drop_last=False)
        stream.set_batch_size(self.batch_size)
        stream.set_epoch(self.epoch + 1)  # litdata counts epochs from 1
        for sample in stream:
            yield self._item(sample["image"], sample["label"])


def open_peer(fmt: str, root: str | os.PathLike[str], transform: Callable[[Any], Any] | None,
              *, seed: int = 0, batch_size: int = 1) -> _PeerImages:
    """The reader for ``fmt`` ("webdataset" or "litdata") over ``root``."""
    if fmt == "webdataset":
        return WebDatasetImages(root, transform, seed=seed)
    if fmt == "litdata":
        return LitDataImages(root, transform, seed=seed, batch_size=batch_size)
    raise ValueError(f"peer format must be 'webdataset' or 'litdata', not {fmt!r}")
