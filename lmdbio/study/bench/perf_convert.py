"""Target 4: the converter against the seed's and against the source's sequential read
bandwidth, cold; its peak RSS from 5 000 to 100 000 images (the synthetic JPEGs, hard-linked
over and over: real files, no extra disk).

Every converter runs in its own process (its peak RSS is its own) and writes to local disk;
the source is read from each storage, evicted before every run (both sides of sshfs).
"""

from __future__ import annotations

import os

from lmdbio.publish import staged
from lmdbio.study.bench import converters
from lmdbio.study.bench.perf_common import MB, Storage, banner, median, tree_sequential_mb_s

RSS_SIZES = (5_000, 20_000, 100_000)


def run_converter(name: str, src: str, dst: str) -> dict:
    """Converter ``name`` of ``converters.CONVERTERS`` in its own process; its output removed."""
    for leftover in (dst, dst + "-lock"):
        if os.path.exists(leftover):
            os.unlink(leftover)
    result = converters.run(name, src, dst)
    os.unlink(dst)
    return result


def bench_speed(storages: list[Storage], tree: str, out_dir: str, repeats: int) -> list[dict]:
    rows: list[dict] = []
    variants = [("seed converter", "seed"), ("lmdbio convert", "lmdbio")]
    for storage in storages:
        limits = []
        for repeat in range(repeats):
            limit = tree_sequential_mb_s(storage, tree)
            limits.append(limit)
            rows.append({"target": 4, "storage": storage.name, "variant":
                         "source read in order (limit)", "repeat": repeat, "mb_per_s": limit})
            for name, converter in variants if repeat % 2 == 0 else variants[::-1]:
                storage.evict(tree)
                r = run_converter(converter, storage.path(tree),
                                  os.path.join(out_dir, "out.lmdb"))
                rows.append({"target": 4, "storage": storage.name, "variant": name,
                             "repeat": repeat, "images": r["images"],
                             "per_s": r["images"] / r["seconds"],
                             "mb_per_s": r["bytes"] / MB / r["seconds"],
                             "peak_rss_mb": r["peak_rss"] / MB,
                             "ratio_to_source_read": r["bytes"] / MB / r["seconds"] / limit})
        ours = median(rows, "per_s", storage=storage.name, variant="lmdbio convert")
        seed = median(rows, "per_s", storage=storage.name, variant="seed converter")
        banner(f"[{storage.name}] target 4: converter, cold source",
               {"source tree read in order, cold (MB/s)": median(
                   rows, "mb_per_s", storage=storage.name, variant="source read in order (limit)")})
        print(f"   lmdbio {ours:.0f} img/s "
              f"({median(rows, 'mb_per_s', storage=storage.name, variant='lmdbio convert'):.0f}"
              f" MB/s = {median(rows, 'ratio_to_source_read', storage=storage.name, variant='lmdbio convert'):.2f}x"
              f" the source read), seed {seed:.0f} img/s: {ours / seed:.1f}x the seed; peak RSS "
              f"{median(rows, 'peak_rss_mb', storage=storage.name, variant='lmdbio convert'):.0f}"
              f" MB vs {median(rows, 'peak_rss_mb', storage=storage.name, variant='seed converter'):.0f} MB",
              flush=True)
    return rows


def linked_tree(work: str, jpeg: str, n: int) -> str:
    """``n`` real JPEGs: hard links to the synthetic tree's files, cycled (no extra disk)."""
    from lmdbio.folder import find_classes, make_dataset

    root = os.path.join(work, "rss", f"{os.path.basename(os.path.dirname(jpeg))}-{n}")
    if os.path.isdir(root):
        return root
    source = os.path.join(work, jpeg)
    files = make_dataset(source, find_classes(source)[1])
    with staged(root) as partial:
        for i in range(n):
            path = files[i % len(files)][0]
            folder = os.path.join(partial, os.path.basename(os.path.dirname(path)))
            if i < len(files):
                os.makedirs(folder, exist_ok=True)
            os.link(path, os.path.join(folder, f"{i:06d}.jpg"))
    return root


def bench_rss(work: str, jpeg: str, out_dir: str) -> list[dict]:
    rows = []
    for n in RSS_SIZES:
        tree = linked_tree(work, jpeg, n)
        r = run_converter("lmdbio", tree, os.path.join(out_dir, "rss.lmdb"))
        rows.append({"target": 4, "storage": "ssd", "variant": "lmdbio convert",
                     "images": n, "per_s": r["images"] / r["seconds"],
                     "peak_rss_mb": r["peak_rss"] / MB})
    banner("target 4: converter peak RSS over the number of images", {"RSS target (MB)": 300})
    for row in rows:
        print(f"   {row['images']:>7,} images: peak RSS {row['peak_rss_mb']:.0f} MB "
              f"({row['per_s']:.0f} img/s)", flush=True)
    return rows
