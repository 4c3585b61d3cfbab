"""The converters the benchmarks race, each in its own process so its peak RSS is its own:

    python -m lmdbio.study.bench.converters {seed,plain-loop,lmdbio} SRC DST

prints one JSON line: ``{"seconds", "images", "bytes", "peak_rss"}`` (peak RSS from
``lmdbio.system.peak_rss_bytes``: VmHWM since exec). ``run`` starts that process and parses it.

* ``seed``: pytorch-lmdb's folder2lmdb: ImageFolder with a raw-bytes loader through a DataLoader
  (batch size 1, default collate), pickle((image, label)), str keys, commit every 5 000;
* ``plain-loop``: one file at a time: read, put, commit every 5 000; no threads, no checks;
* ``lmdbio``: ``lmdbio.convert``.

Imports happen inside each converter, before its clock starts, as in a script of its own.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable

MODULE = "lmdbio.study.bench.converters"
SEED_MAP_SIZE = int(28.6 * 2**30)


def _raw_reader(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def seed(src: str, dst: str) -> dict:
    """pytorch-lmdb's folder2lmdb, as the seed wrote it."""
    import pickle
    import time

    import lmdb
    from torch.utils.data import DataLoader
    from torchvision.datasets import ImageFolder

    from lmdbio.system import peak_rss_bytes

    start = time.perf_counter()
    loader = DataLoader(ImageFolder(src, loader=_raw_reader), num_workers=2)
    env = lmdb.open(dst, subdir=False, map_size=SEED_MAP_SIZE, readonly=False, meminit=False,
                    map_async=True)
    txn = env.begin(write=True)
    total = n = 0
    for i, (image, label) in enumerate(loader):
        total += len(image[0])
        n += 1
        txn.put(str(i).encode("ascii"), pickle.dumps((image, label.numpy())))
        if i % 5000 == 0:
            txn.commit()
            txn = env.begin(write=True)
    txn.commit()
    with env.begin(write=True) as txn:
        keys = [str(i).encode("ascii") for i in range(n)]
        txn.put(b"__keys__", pickle.dumps(keys))
        txn.put(b"__len__", pickle.dumps(len(keys)))
    env.sync()
    env.close()
    return {"seconds": time.perf_counter() - start, "images": n, "bytes": total,
            "peak_rss": peak_rss_bytes()}


def plain_loop(src: str, dst: str) -> dict:
    """One file at a time: read, put, commit every 5 000; no threads, no checks."""
    import pickle
    import time

    import lmdb

    from lmdbio.folder import find_classes, make_dataset
    from lmdbio.system import peak_rss_bytes

    start = time.perf_counter()
    samples = make_dataset(src, find_classes(src)[1])
    env = lmdb.open(dst, subdir=False, map_size=SEED_MAP_SIZE, readonly=False, meminit=False,
                    map_async=True)
    txn = env.begin(write=True)
    total = 0
    for i, (path, label) in enumerate(samples):
        with open(path, "rb") as f:
            data = f.read()
        total += len(data)
        txn.put(str(i).encode("ascii"), pickle.dumps((data, label)))
        if i % 5000 == 0:
            txn.commit()
            txn = env.begin(write=True)
    txn.commit()
    with env.begin(write=True) as txn:
        keys = [str(i).encode("ascii") for i in range(len(samples))]
        txn.put(b"__keys__", pickle.dumps(keys))
        txn.put(b"__len__", pickle.dumps(len(keys)))
    env.sync()
    env.close()
    return {"seconds": time.perf_counter() - start, "images": len(samples), "bytes": total,
            "peak_rss": peak_rss_bytes()}


def lmdbio_convert(src: str, dst: str) -> dict:
    import lmdbio

    r = lmdbio.convert(src, dst, overwrite=True, progress=False)
    return {"seconds": r.seconds, "images": r.num_samples, "bytes": r.payload_bytes,
            "peak_rss": r.peak_rss_bytes}


CONVERTERS: dict[str, Callable[[str, str], dict]] = {
    "seed": seed, "plain-loop": plain_loop, "lmdbio": lmdbio_convert}


def run(name: str, src: str, dst: str) -> dict:
    """Convert ``src`` to ``dst`` with converter ``name`` in a fresh interpreter; its result."""
    if name not in CONVERTERS:
        raise ValueError(f"unknown converter {name!r}; choose from {sorted(CONVERTERS)}")
    out = subprocess.run([sys.executable, "-m", MODULE, name, src, dst], capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    """No argparse: the child imports nothing its converter would not (its RSS is measured)."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 3 or args[0] not in CONVERTERS:
        print(f"usage: python -m {MODULE} {{{','.join(CONVERTERS)}}} SRC DST\n\n"
              f"{__doc__.splitlines()[0]}", file=sys.stderr)
        return 0 if args[:1] in (["-h"], ["--help"]) else 2
    print(json.dumps(CONVERTERS[args[0]](args[1], args[2])), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
