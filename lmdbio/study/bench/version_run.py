"""One process of ``python -m lmdbio.study.bench versions``: a cold epoch, then a warm one, of
``ImageFolderLMDB(DB, seed transform)`` through a DataLoader (2 workers, batch 128, seeded
shuffle), iterated only (``load``). Prints one JSON line.

Run by path, with the library version under test first on ``PYTHONPATH``; it imports nothing
of ``lmdbio.study`` (an older library tree has none of it), only what every version offers.

    PYTHONPATH=TREE python version_run.py DB SEED
"""

from __future__ import annotations

import json
import os
import sys
import time

if sys.path and os.path.abspath(sys.path[0] or ".") == os.path.dirname(os.path.abspath(__file__)):
    del sys.path[0]  # run by path, this folder came first: its modules are not top-level ones


def epoch(dataset: object, seed: int) -> tuple[float, float]:
    """(images/s, seconds to the first batch) of one pass."""
    import torch
    from torch.utils.data import DataLoader

    loader = DataLoader(dataset, batch_size=128, shuffle=True,  # type: ignore[arg-type]
                        num_workers=2, generator=torch.Generator().manual_seed(seed))
    started, images, first = time.perf_counter(), 0, float("nan")
    for _, targets in loader:
        if not images:
            first = time.perf_counter() - started
        images += len(targets)
    return images / (time.perf_counter() - started), first


def main(argv: list[str]) -> int:
    from torchvision import transforms

    import lmdbio
    from lmdbio.dataset import ImageFolderLMDB

    path, seed = argv[0], int(argv[1])
    transform = transforms.Compose([  # the seed's (lmdbio.study.harness.seed_transform)
        transforms.RandomResizedCrop(64), transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    dataset = ImageFolderLMDB(path, transform)  # the caller evicted the file just before
    cold, cold_first = epoch(dataset, seed)
    warm, warm_first = epoch(dataset, seed + 1)
    getattr(dataset, "close", lambda: None)()
    print(json.dumps({"library": os.path.dirname(os.path.dirname(lmdbio.__file__)),
                      "cold": cold, "cold_ttfb_s": cold_first,
                      "warm": warm, "warm_ttfb_s": warm_first}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
