"""Target 3: the end-to-end loader on the seed transform, 2 workers, cold, against the
in-memory ceiling (the same decode + transform over bytes already in RAM), plus the fast decode
paths and a short training run showing what they do to accuracy.

Conditions (each one epoch, ``lmdbio.harness.measure`` in "load" mode, ABBA order):
* ceiling: bytes in a list, forked workers share them; standard (PIL) decode, and draft decode;
* ImageFolder (torchvision), lmdbio (defaults), lmdbio without prefetch, a seed-style LMDB
  reader (pickled records, readahead off);
* fast paths on lmdbio: ``DraftDecoder`` (PIL reduced-size JPEG decode), ``decode_tensor``
  (torchvision.io) with the same transform in ``transforms.v2``, and a DB converted with
  ``--max-size``.

Every run also records the CPU the whole machine spent per image, and each storage what a cold
sequential read of the DB costs per image (``STORAGE_READ``): no cold loader avoids getting
the bytes in once, the in-memory ceiling never pays for it. On cores the decode keeps busy that
CPU comes out of the decode's, so ``perf_common.storage_bound`` (the ceiling slowed by it) is
what a cold loader can reach on that storage.
"""

from __future__ import annotations

import os
import random
import statistics
from collections.abc import Callable
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

import lmdbio
from lmdbio import Database
from lmdbio.dataset import ImageFolderLMDB
from lmdbio.decode import DraftDecoder, decode_pil, decode_tensor
from lmdbio.study.harness import IMAGENET_MEAN, IMAGENET_STD, RunSpec, measure, seed_transform
from lmdbio.study.synthetic import ensure_dataset
from lmdbio.study.bench.perf_common import (CEILING, PAIRS, STORAGE_READ, Storage, banner,
                                            median, paired_ratios, sequential_read,
                                            storage_bound, write_seed_db)
from lmdbio.study.profiling import machine_cpu_s

MAX_SIZE = 160   # longer side kept by the --max-size DB: 2.5x the 64-pixel crop


def storage_read_rows(storage: Storage, relative: str, repeats: int) -> list[dict]:
    """The cold sequential read of the DB file on ``storage``, as images/s and machine CPU
    milliseconds per image."""
    with Database(storage.path(relative)) as db:
        images, size = len(db), os.path.getsize(storage.path(relative))
    rows = []
    for repeat in range(repeats):
        mb_s, cpu_s = sequential_read(storage, relative)
        rows.append({"target": 3, "storage": storage.name, "variant": STORAGE_READ,
                     "repeat": repeat, "images_per_s": images * mb_s * 1e6 / size,
                     "cpu_ms_per_image": cpu_s * 1e3 / images})
    return rows


def tensor_transform(size: int = 64) -> Callable[[torch.Tensor], torch.Tensor]:
    """The seed transform in ``transforms.v2``, on uint8 CHW tensors from ``decode_tensor``."""
    from torchvision.transforms import v2

    return v2.Compose([v2.RandomResizedCrop(size, antialias=True), v2.RandomHorizontalFlip(),
                       v2.ToDtype(torch.float32, scale=True),
                       v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


class InMemory(Dataset):
    """The ceiling: every record's bytes already in RAM, the same decode and transform."""

    def __init__(self, path: str, decode: Callable[[bytes], Any], transform: Any) -> None:
        with Database(path) as db:
            self.items = [db.get(i) for i in range(len(db))]
            self.classes = db.meta.classes
        self.decode, self.transform = decode, transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        label, data = self.items[index]
        return self.transform(self.decode(data)), label


class SeedLMDB(Dataset):
    """The pytorch-lmdb seed's reader: readahead off, one pickled ``(bytes, label)`` record per
    sample, read through lmdbio's opt-in legacy reader (NumPy-only unpickler; its environment
    opens in each worker)."""

    def __init__(self, path: str, transform: Any) -> None:
        self.transform = transform
        self.db = lmdbio.open_database(path, lmdbio.EnvOptions(readahead=False),
                                       allow_pickle=True)
        self.classes = ["cat", "dog"]

    def __len__(self) -> int:
        return len(self.db)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        label, image = self.db.get(index)
        return self.transform(decode_pil(image)), label

    def close(self) -> None:
        self.db.close()


def prepare(work: str, jpeg: str) -> dict[str, str]:
    """The DBs this section reads, beside the JPEG tree (relative paths)."""
    split = os.path.join(work, jpeg)
    if not os.path.exists(f"{split}.seed.lmdb"):
        write_seed_db(split, f"{split}.seed.lmdb")
    small = f"{split}.max{MAX_SIZE}.lmdb"
    if not os.path.exists(small):
        lmdbio.convert(split, small, max_size=MAX_SIZE, progress=False)
    rel = os.path.relpath(split, work)
    return {"tree": rel, "lmdb": f"{rel}.lmdb", "seed": f"{rel}.seed.lmdb",
            "small": f"{rel}.max{MAX_SIZE}.lmdb"}


def conditions(storage: Storage, files: dict[str, str]) -> list[tuple[str, str, Callable[[], Any]]]:
    """(name, file evicted before the run, dataset factory)."""
    from torchvision.datasets import ImageFolder

    std, path = seed_transform(), storage.path(files["lmdb"])
    return [
        # lmdbio right after the ceiling: target 3a is their ratio within a repetition, and
        # in ABBA order the two then run back to back, as close in time as the VM's drift allows
        (CEILING, "", lambda: InMemory(path, decode_pil, std)),
        ("lmdbio", files["lmdb"], lambda: ImageFolderLMDB(path, std)),
        ("ImageFolder", files["tree"], lambda: ImageFolder(storage.path(files["tree"]), std)),
        ("lmdbio, prefetch off", files["lmdb"],
         lambda: ImageFolderLMDB(path, std, prefetch=False)),
        ("seed-style LMDB", files["seed"], lambda: SeedLMDB(storage.path(files["seed"]), std)),
        ("ceiling: in memory, draft decode", "",
         lambda: InMemory(path, DraftDecoder(64), std)),
        ("lmdbio, DraftDecoder(64)", files["lmdb"],
         lambda: ImageFolderLMDB(path, std, decode=DraftDecoder(64))),
        ("lmdbio, DraftDecoder(128)", files["lmdb"],
         lambda: ImageFolderLMDB(path, std, decode=DraftDecoder(128))),
        ("lmdbio, decode_tensor + v2", files["lmdb"],
         lambda: ImageFolderLMDB(path, tensor_transform(), decode=decode_tensor)),
        (f"lmdbio, --max-size {MAX_SIZE} DB", files["small"],
         lambda: ImageFolderLMDB(storage.path(files["small"]), std)),
    ]


def bench_loader(storages: list[Storage], files: dict[str, str], repeats: int,
                 pair_repeats: int = 20, workers: int = 2,
                 batch_size: int = 128) -> list[dict]:
    """Every condition ``repeats`` times in ABBA order, then the ceiling and lmdbio alone
    ``pair_repeats`` times (target 3a: a gap of a few per cent, which 8 repetitions of a
    VM that drifts by several per cent between them do not place)."""
    rows: list[dict] = []
    for storage in storages:
        variants = conditions(storage, files)
        rows += storage_read_rows(storage, files["lmdb"], repeats)
        # repeat -1: a discarded warm-up of every variant (the imports and first-use code of
        # each: a variant first run inside a timed repetition paid them there); the pairs
        # phase comes after it, warm already
        for phase, chosen, first, count in (("every condition", variants, -1, repeats),
                                            (PAIRS, variants[:2], 0, pair_repeats)):
            for repeat in range(first, count):
                for name, evict, factory in chosen if repeat % 2 == 0 else chosen[::-1]:
                    row = _run_one(storage, name, evict, factory, repeat, workers, batch_size)
                    if repeat >= 0:
                        rows.append(row | {"phase": phase})
        _print_loader(rows, storage.name, [name for name, _, _ in variants], workers)
    return rows


def _run_one(storage: Storage, name: str, evict: str, factory: Callable[[], Any], repeat: int,
             workers: int, batch_size: int) -> dict:
    """One cold epoch of one condition: its row of ``loader.csv``."""
    spec = RunSpec(fmt=name, mode="load", cache="cold", repeat=repeat,
                   batch_size=batch_size, num_workers=workers)
    return {"target": 3, "storage": storage.name, "variant": name, "repeat": repeat,
            "workers": workers, "batch_size": batch_size} | cold_epoch(storage, evict, factory,
                                                                      spec)


def cold_epoch(storage: Storage, evict: str, factory: Callable[[], Any],
               spec: RunSpec) -> dict:
    """One epoch of ``spec`` over ``factory()`` after evicting ``evict`` (both sides of a
    network FS): images/s over the epoch and after its first batch, time to first batch, wall
    time, and what the whole machine did meanwhile (CPU milliseconds per image; idle
    core-seconds, which a cold loader leaves while it waits for storage)."""
    if evict:
        storage.evict(evict)
    dataset = factory()
    busy, idle = machine_cpu_s()
    try:
        _, summary = measure(dataset, spec, num_classes=2)
    finally:
        if hasattr(dataset, "close"):
            dataset.close()
    busy_after, idle_after = machine_cpu_s()
    return {"images_per_s": summary["images_per_s"],
            "steady_images_per_s": summary["steady_images_per_s"],
            "cpu_ms_per_image": (busy_after - busy) * 1e3 / summary["images_total"],
            "idle_core_s": idle_after - idle, "wall_s": summary["wall_s"],
            "ttfb_s": summary["ttfb_s"]}


def _print_loader(rows: list[dict], storage: str, variants: list[str], workers: int) -> None:
    every = [row for row in rows if row.get("phase") != PAIRS]

    def rate(variant: str, key: str = "images_per_s") -> float:
        return median(every, key, storage=storage, variant=variant)

    ceiling, folder = rate(CEILING), rate("ImageFolder")
    bound = storage_bound(ceiling, rate(CEILING, "cpu_ms_per_image"),
                          rate(STORAGE_READ, "cpu_ms_per_image"))
    banner(f"[{storage}] target 3: end-to-end loader, seed transform, {workers} workers, cold",
           {"in-memory ceiling, PIL decode (img/s)": ceiling,
            "the same, slowed by the storage's CPU to read the DB once (img/s)": bound,
            "in-memory ceiling, draft decode (img/s)": rate("ceiling: in memory, draft decode")})
    print(f"   (a cold sequential read of the DB costs {rate(STORAGE_READ, 'cpu_ms_per_image'):.3f}"
          f" ms of CPU per image; the ceiling spends {rate(CEILING, 'cpu_ms_per_image'):.3f})",
          flush=True)
    for name in variants:
        value = rate(name)
        print(f"   {name}: {value:.0f} img/s = {value / ceiling:.2f}x ceiling, "
              f"{value / bound:.2f}x the storage's bound, {value / folder:.2f}x ImageFolder, "
              f"{rate(name, 'cpu_ms_per_image'):.3f} ms CPU/image", flush=True)
    for key, what in (("images_per_s", "epoch"), ("steady_images_per_s", "after the first batch")):
        pairs = paired_ratios(rows, "lmdbio", CEILING, key, storage=storage, phase=PAIRS)
        if pairs:
            print(f"   target 3a, {PAIRS}, {len(pairs)} repetitions, {what}: lmdbio / ceiling "
                  f"{statistics.median(pairs):.3f}x ({min(pairs):.3f}-{max(pairs):.3f})",
                  flush=True)


# -- accuracy: does the fast path hurt a short training run? -------------------------------

class SmallCNN(torch.nn.Module):
    """Four conv blocks, enough to learn the synthetic cats vs dogs at 64 px in a few epochs."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[torch.nn.Module] = []
        channels = 3
        for width in (32, 64, 96, 128):
            layers += [torch.nn.Conv2d(channels, width, 3, padding=1),
                       torch.nn.BatchNorm2d(width), torch.nn.ReLU(), torch.nn.MaxPool2d(2)]
            channels = width
        self.features = torch.nn.Sequential(*layers)
        self.head = torch.nn.Linear(channels, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean((2, 3)))


def _evaluate(model: torch.nn.Module, loader: DataLoader) -> float:
    model.eval()
    correct = seen = 0
    with torch.no_grad():
        for images, targets in loader:
            correct += int((model(images).argmax(1) == targets).sum())
            seen += len(targets)
    return correct / seen


def bench_accuracy(work: str, files: dict[str, str], val_images: int, epochs: int,
                   seeds: int = 1) -> list[dict]:
    """Train SmallCNN on each decode path; evaluate all on the same held-out split, decoded
    the standard way (Resize + CenterCrop 64), so only training-time decoding differs."""
    from torchvision import transforms
    from torchvision.datasets import ImageFolder

    val_split = ensure_dataset(os.path.join(work, "jpeg-val"), val_images, seed=1)
    val = ImageFolder(val_split, transforms.Compose([
        transforms.Resize(64), transforms.CenterCrop(64), transforms.ToTensor(),
        transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)]))
    val_loader = DataLoader(val, batch_size=256, num_workers=2)
    std, path = seed_transform(), os.path.join(work, files["lmdb"])
    variants = {
        "PIL decode (standard)": lambda: ImageFolderLMDB(path, std),
        "DraftDecoder(64)": lambda: ImageFolderLMDB(path, std, decode=DraftDecoder(64)),
        "DraftDecoder(128)": lambda: ImageFolderLMDB(path, std, decode=DraftDecoder(128)),
        "decode_tensor + v2": lambda: ImageFolderLMDB(path, tensor_transform(),
                                                      decode=decode_tensor),
        f"--max-size {MAX_SIZE} DB": lambda: ImageFolderLMDB(
            os.path.join(work, files["small"]), std),
    }
    rows = []
    print("\n== target 3: accuracy of a short training run per decode path", flush=True)
    for seed in range(seeds):
        for name, factory in variants.items():
            torch.manual_seed(seed)
            random.seed(seed)
            model = SmallCNN()
            optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
            dataset = factory()
            loader = DataLoader(dataset, batch_size=64, shuffle=True, num_workers=2,
                                generator=torch.Generator().manual_seed(seed))
            for _ in range(epochs):
                model.train()
                for images, targets in loader:
                    optimizer.zero_grad()
                    torch.nn.functional.cross_entropy(model(images), targets).backward()
                    optimizer.step()
            dataset.close()
            rows.append({"target": 3, "variant": name, "seed": seed, "epochs": epochs,
                         "train_images": len(dataset), "val_images": len(val),
                         "val_accuracy": _evaluate(model, val_loader)})
            print(f"   {name}, seed {seed}: held-out accuracy {rows[-1]['val_accuracy']:.3f}",
                  flush=True)
    return rows
