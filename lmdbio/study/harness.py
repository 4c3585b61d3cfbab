"""One measured run: iterate a DataLoader for some epochs, timing every batch.

Three modes, as the study needs them:

* ``train``: ResNet-18 (``weights=None``, 2-class head) on the seed's transform, SGD.
* ``emulate``: the step is a sleep of ``step_ms`` (an accelerator's step time, as MLPerf
  Storage does), so storage differences are not drowned by CPU training; accelerator
  utilisation = compute time / wall time.
* ``load``: the DataLoader alone.

Under torchrun (a ``DistContext`` with world size > 1) each rank reads its part of every epoch
through ``DistributedSampler`` (``drop_last=True``: equal epoch lengths on every rank) and the
model is wrapped in ``DistributedDataParallel``; rows are per rank.

Map-style datasets are shuffled by the DataLoader (a seeded ``RandomSampler``); an
``IterableDataset`` (the WebDataset and LitData peers) shuffles itself: it gets no sampler, its
workers are never persistent (each epoch's workers receive the dataset after ``set_epoch``,
so every epoch is reshuffled), and an epoch is whatever the loader yields.

Per batch: data time (waiting for the batch, ``perf_counter``) and batch time (the whole step).
The first batch of each epoch also pays for worker start-up; it is kept (as time to first
batch) but left out of the steady-state figures. Nothing is printed per batch.
"""

from __future__ import annotations

import contextlib
import signal
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, IterableDataset

from lmdbio.interrupts import Terminated, raise_terminated
from lmdbio.study.conditions import MODES
from lmdbio.study.distributed import DistContext

__all__ = ["RunSpec", "measure", "seed_transform", "seed_transform_tensor",
           "shuffle_seed"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class RunSpec:
    """One condition of the study, plus the knobs that stay fixed across conditions."""

    fmt: str                # "imagefolder" | "lmdb" | a peer ("webdataset" | "litdata")
    mode: str               # one of MODES
    cache: str              # "cold" | "warm"
    repeat: int
    epochs: int = 1
    batch_size: int = 128
    num_workers: int = 2
    step_ms: float = 50.0
    seed: int = 0
    warmup: bool = False    # discarded warm-up run
    device: str = "cpu"
    max_batches: int = 0    # 0: whole epochs
    record_indices: bool = False  # distributed runs: each batch row lists its sample indices


def seed_transform(image_size: int = 64) -> Callable[[Any], torch.Tensor]:
    """The pytorch-lmdb seed's training transform: RandomResizedCrop, flip, normalize."""
    from torchvision import transforms

    return transforms.Compose([
        transforms.RandomResizedCrop(image_size),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])


def seed_transform_tensor(image_size: int = 64) -> Callable[[torch.Tensor], torch.Tensor]:
    """The seed's training transform (``seed_transform``) for the uint8 CHW
    tensors of ``decode_tensor``, in ``torchvision.transforms.v2``: the same crop, flip and
    ImageNet normalisation, resizing with antialiasing as the PIL path does."""
    from torchvision.transforms import v2

    return v2.Compose([
        v2.RandomResizedCrop(image_size, antialias=True),
        v2.RandomHorizontalFlip(),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])


def shuffle_seed(spec: RunSpec) -> int:
    """The run's shuffle seed: its own per repetition, the same for every format."""
    return spec.seed * 1_000_003 + spec.repeat


def _model(num_classes: int, device: str) -> torch.nn.Module:
    from torchvision.models import resnet18

    return resnet18(weights=None, num_classes=num_classes).to(device)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()  # the clock must not run ahead of queued GPU work


def measure(dataset: Dataset, spec: RunSpec, num_classes: int,
            multiprocessing_context: str | None = None,
            dist: DistContext | None = None,
            sampler: Any = None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Run ``spec`` on ``dataset`` (this rank's share of it under ``dist``); returns (one row
    per batch, one summary row). ``sampler``: an order of one's own (with ``set_epoch``, e.g.
    ``BlockShuffleSampler``) instead of the DataLoader's seeded uniform shuffle."""
    if spec.mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, not {spec.mode!r}")
    torch.manual_seed(spec.seed)  # a fresh, identically initialised model per condition
    dist = dist or DistContext()
    model = _model(num_classes, spec.device) if spec.mode == "train" else None
    if model is not None and dist.enabled:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[dist.local_rank] if spec.device.startswith("cuda") else None)
    optimizer = (torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
                 if model is not None else None)
    loss_fn = torch.nn.CrossEntropyLoss()
    seed = shuffle_seed(spec)
    iterable = isinstance(dataset, IterableDataset)  # shuffles itself (the peer formats)
    if iterable and dist.enabled:
        raise ValueError("distributed runs take map-style datasets (imagefolder, lmdb); "
                         f"{type(dataset).__name__} is iterable")
    if sampler is not None and (iterable or dist.enabled):
        raise ValueError("an own sampler takes a map-style dataset in a single-process run")
    if dist.enabled:
        sampler = DistributedSampler(dataset, num_replicas=dist.world_size, rank=dist.rank,
                                     shuffle=True, seed=seed, drop_last=True)
    # the generator also seeds the workers' augmentation: its own stream per rank
    shuffle = torch.Generator().manual_seed(seed + 7919 * dist.rank)
    loader = DataLoader(dataset, batch_size=spec.batch_size,
                        shuffle=sampler is None and not iterable, sampler=sampler,
                        generator=shuffle, num_workers=spec.num_workers,
                        persistent_workers=(spec.num_workers > 0 and spec.epochs > 1
                                            and not iterable),
                        multiprocessing_context=multiprocessing_context if spec.num_workers
                        else None)
    rows: list[dict[str, Any]] = []
    with _interrupts_kept():
        wall = _epochs(spec, loader, sampler, dataset, iterable, model, optimizer, loss_fn, rows)
    return rows, summarize(rows, wall) | {k: v for k, v in asdict(spec).items()}


@contextlib.contextmanager
def _interrupts_kept() -> Iterator[None]:
    """Ctrl-C (or SIGTERM) must stop the run even when it lands while the DataLoader's iterator
    shuts its workers down: that happens in ``__del__``, where Python prints a
    KeyboardInterrupt and drops it. So the signal is remembered and raised again once the block
    is left."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    hit: list[type[KeyboardInterrupt]] = []

    def handler(signum: int, frame: Any) -> None:
        hit.append(Terminated if signum == signal.SIGTERM else KeyboardInterrupt)
        if signum == signal.SIGTERM:
            raise_terminated(signum, frame)  # raises; in a forked worker ends it, as before
        raise KeyboardInterrupt

    # SIGTERM only where the program made it an interrupt (``lmdbio.interrupts``): elsewhere (a
    # notebook's kernel, a trainer's own handler) it keeps its own meaning.
    caught = (signal.SIGINT,) + ((signal.SIGTERM,)
                                 if signal.getsignal(signal.SIGTERM) is raise_terminated else ())
    previous = {signum: signal.signal(signum, handler) for signum in caught}
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, signal.SIG_DFL if old is None else old)
    if hit:  # reached only when the interrupt itself was swallowed
        raise hit[-1]


def _epochs(spec: RunSpec, loader: Any, sampler: Any, dataset: Any, iterable: bool,
            model: torch.nn.Module | None, optimizer: Any, loss_fn: Any,
            rows: list[dict[str, Any]]) -> float:
    """Every epoch of ``spec`` through ``loader``, one row per batch into ``rows``; the wall
    seconds."""
    started = time.perf_counter()
    for epoch in range(spec.epochs):
        if model is not None:
            model.train()
        if sampler is not None:
            sampler.set_epoch(epoch)  # a new shuffle per epoch, the same on every rank
        if iterable and hasattr(dataset, "set_epoch"):
            dataset.set_epoch(epoch)  # reaches the workers: they are started after this
        order = list(sampler) if sampler is not None and spec.record_indices else None
        tick = time.perf_counter()
        iterator = iter(loader)  # counted in batch 0: worker start-up is part of the wait
        batch = 0
        while not spec.max_batches or batch < spec.max_batches:
            try:  # an epoch is what the loader yields (an iterable's length is its own)
                images, targets = next(iterator)
            except StopIteration:
                break
            got = time.perf_counter()
            loss, correct = _step(spec, model, optimizer, loss_fn, images, targets)
            _sync(spec.device)
            done = time.perf_counter()
            rows.append({"epoch": epoch, "batch": batch, "images": len(targets),
                         "data_time": got - tick, "step_time": done - got,
                         "batch_time": done - tick, "loss": loss, "correct": correct})
            if order is not None:
                rows[-1]["indices"] = order[batch * spec.batch_size:
                                            (batch + 1) * spec.batch_size]
            tick = done
            batch += 1
        del iterator
    return time.perf_counter() - started


def _step(spec: RunSpec, model: torch.nn.Module | None, optimizer: Any, loss_fn: Any,
          images: torch.Tensor, targets: torch.Tensor) -> tuple[float, int]:
    if spec.mode == "emulate":
        time.sleep(spec.step_ms / 1000)
        return float("nan"), -1
    if model is None:
        return float("nan"), -1
    images = images.to(spec.device, non_blocking=True)
    targets = targets.to(spec.device, non_blocking=True)
    optimizer.zero_grad(set_to_none=True)
    logits = model(images)
    loss = loss_fn(logits, targets)
    loss.backward()
    optimizer.step()
    return float(loss.detach()), int((logits.argmax(1) == targets).sum())


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def summarize(rows: list[dict[str, Any]], wall: float) -> dict[str, Any]:
    """Run-level figures; steady state leaves out each epoch's first batch."""
    steady = [r for r in rows if r["batch"] > 0]
    first = [r["data_time"] for r in rows if r["batch"] == 0]
    images = sum(r["images"] for r in rows)
    steady_images = sum(r["images"] for r in steady)
    steady_time = sum(r["batch_time"] for r in steady)
    data = [r["data_time"] for r in steady]
    last_epoch = [r for r in rows if r["epoch"] == rows[-1]["epoch"]] if rows else []
    seen = sum(r["images"] for r in last_epoch)
    correct = sum(r["correct"] for r in last_epoch)
    losses = [r["loss"] for r in last_epoch if r["loss"] == r["loss"]]
    return {
        "batches": len(rows), "images_total": images, "wall_s": wall,
        "images_per_s": images / wall if wall else float("nan"),
        "steady_images_per_s": steady_images / steady_time if steady_time else float("nan"),
        "ttfb_s": first[0] if first else float("nan"),
        "ttfb_mean_s": statistics.fmean(first) if first else float("nan"),
        # mean wait per batch: robust to the sawtooth (period num_workers) a median can flip on
        "data_mean_s": statistics.fmean(data) if data else float("nan"),
        "data_median_s": statistics.median(data) if data else float("nan"),
        "data_p95_s": _percentile(data, 0.95),
        "batch_mean_s": steady_time / len(steady) if steady else float("nan"),
        "batch_median_s": (statistics.median(r["batch_time"] for r in steady) if steady
                           else float("nan")),
        "data_share": (sum(r["data_time"] for r in rows) / sum(r["batch_time"] for r in rows)
                       if rows else float("nan")),
        "utilisation": (sum(r["step_time"] for r in rows) / wall) if wall else float("nan"),
        "last_epoch_loss": statistics.fmean(losses) if losses else float("nan"),
        "last_epoch_accuracy": correct / seen if seen and correct >= 0 else float("nan"),
    }
