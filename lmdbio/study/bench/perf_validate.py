"""What validating every image at conversion costs (issue #12): ``lmdbio convert`` with its
default ``check="decode"`` (each file loaded as ImageFolder's loader would, JPEGs at 1/8 DCT
scale), with ``check="full"`` (full-size decode) and with the structural opt-out
``check="structure"``, against the seed converter and a cold sequential read of the source.

    python -m lmdbio.study.bench validate [--work DIR] [--images 3000] [--repeats 3]

writes ``results/perf/convert_validation.csv``. Each converter runs in its own interpreter on
the synthetic JPEG tree, the source's pages evicted before every run, the variants' order
alternating per repetition; the output goes to local disk and is deleted after each run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from lmdbio.study.bench import converters
from lmdbio.study.bench.perf_common import (
    MB,
    Storage,
    median,
    tree_sequential_mb_s,
    write_rows,
)
from lmdbio.study.synthetic import ensure_dataset

CHECKS = ("decode", "full", "structure")
MODULE = "lmdbio.study.bench.perf_validate"


def _child(check: str, src: str, dst: str) -> dict:
    import lmdbio

    r = lmdbio.convert(src, dst, overwrite=True, progress=False, check=check)
    return {"seconds": r.seconds, "images": r.num_samples, "bytes": r.payload_bytes,
            "peak_rss": r.peak_rss_bytes}


def run_variant(variant: str, src: str, dst: str) -> dict:
    """``seed`` or ``lmdbio-<check>`` in a fresh interpreter; its output removed."""
    if variant == "seed":
        result = converters.run("seed", src, dst)
    else:
        out = subprocess.run([sys.executable, "-m", MODULE, "--child", variant.split("-", 1)[1],
                              src, dst], capture_output=True, text=True, check=True)
        result = json.loads(out.stdout.strip().splitlines()[-1])
    for leftover in (dst, dst + "-lock"):
        if os.path.exists(leftover):
            os.unlink(leftover)
    return result


def bench_validation(work: str, images: int = 3000, repeats: int = 3,
                     out: str = "results/perf/convert_validation.csv") -> list[dict]:
    """Images/s of each variant and its ratio to the cold sequential read of the source."""
    split = os.fspath(ensure_dataset(os.path.join(work, f"jpeg-{images}"), images))
    storage = Storage("ssd", work, work)
    tree = os.path.relpath(split, work)
    variants = ["seed"] + [f"lmdbio-{c}" for c in CHECKS]
    rows: list[dict] = []
    for repeat in range(repeats):
        limit = tree_sequential_mb_s(storage, tree)  # evicts first
        rows.append({"storage": "ssd", "variant": "source read in order (limit)",
                     "repeat": repeat, "mb_per_s": limit})
        for variant in variants if repeat % 2 == 0 else variants[::-1]:
            storage.evict(tree)
            r = run_variant(variant, split, os.path.join(work, "validate-out.lmdb"))
            rows.append({"storage": "ssd", "variant": variant, "repeat": repeat,
                         "images": r["images"], "per_s": r["images"] / r["seconds"],
                         "mb_per_s": r["bytes"] / MB / r["seconds"],
                         "ratio_to_source_read": r["bytes"] / MB / r["seconds"] / limit,
                         "peak_rss_mb": r["peak_rss"] / MB})
            print(f"   repeat {repeat} {variant:<18} {rows[-1]['per_s']:7.0f} img/s "
                  f"({rows[-1]['ratio_to_source_read']:.2f}x the source read)", flush=True)
    seed = median(rows, "per_s", variant="seed")
    for variant in variants:
        values = sorted(r["per_s"] for r in rows if r["variant"] == variant)
        print(f"{variant:<18} median {median(rows, 'per_s', variant=variant):7.0f} img/s "
              f"[{values[0]:.0f}-{values[-1]:.0f}], "
              f"{median(rows, 'ratio_to_source_read', variant=variant):.2f}x the source read, "
              f"{median(rows, 'per_s', variant=variant) / seed:.1f}x the seed", flush=True)
    write_rows(rows, out)
    return rows


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["--child"]:
        print(json.dumps(_child(*args[1:4])), flush=True)
        return 0
    parser = argparse.ArgumentParser(prog="python -m lmdbio.study.bench validate",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="/tmp/lmdbio-perf")
    parser.add_argument("--images", type=int, default=3000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="results/perf/convert_validation.csv")
    options = parser.parse_args(args)
    os.makedirs(options.work, exist_ok=True)
    bench_validation(os.path.abspath(options.work), options.images, options.repeats,
                     options.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
