"""The benchmark as a torchrun program: every rank reads the same LMDB file (read-only, no lock
file) and the same ImageFolder through ``DistributedSampler``; rank 0 writes all rows.

    OMP_NUM_THREADS=1 torchrun --standalone --nproc_per_node 2 -m lmdbio.study.ddp_bench \\
        --data-dir work/data --mode load --output-dir results/ssd/ddp

Several nodes against a shared mount: the same command on each node with ``--nnodes``,
``--node_rank`` and ``--rdzv-endpoint HOST:PORT`` instead of ``--standalone`` (README, "Scale
out"). Without torchrun it runs as one process (rank 0 of 1), like the bench notebook.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from lmdbio.study.conditions import MODES

__all__ = ["main"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m lmdbio.study.ddp_bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default="", help="holds SPLIT/; empty: a synthetic set")
    p.add_argument("--split", default="train")
    p.add_argument("--lmdb-path", default="", help="default: DATA_DIR/SPLIT.lmdb")
    p.add_argument("--storage", default="local", help="label of the storage target")
    p.add_argument("--backing-dir", default="", help="server side of a network FS, evicted too")
    p.add_argument("--mode", default="load", choices=MODES)
    p.add_argument("--formats", default="imagefolder,lmdb")
    p.add_argument("--cache", default="cold,warm")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=32, help="per rank")
    p.add_argument("--num-workers", type=int, default=1, help="DataLoader workers per rank")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--step-ms", type=float, default=20.0)
    p.add_argument("--n-images", type=int, default=64, help="synthetic images if DATA_DIR is empty")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads per rank (0: cores/ranks)")
    p.add_argument("--max-batches", type=int, default=0, help="per rank and epoch (0: all)")
    p.add_argument("--device", default="", help="cpu or cuda (default: cuda if available)")
    p.add_argument("--no-warmup", action="store_true", help="skip the discarded warm-up run")
    p.add_argument("--record-indices", action="store_true",
                   help="list each batch's sample indices in batches.parquet")
    p.add_argument("--output-dir", required=True, help="batches.parquet, runs.parquet go here")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import torch

    from lmdbio.study import distributed
    from lmdbio.study.protocol import run_bench
    from lmdbio.study.workspace import prepare

    ctx = distributed.setup()
    try:
        options = dict(split=args.split, lmdb_path=args.lmdb_path, n_images=args.n_images,
                       seed=args.seed)
        if ctx.is_main:  # generate / convert once, before any other rank looks
            prepare(args.data_dir, **options)  # type: ignore[arg-type]
        ctx.barrier()
        workspace = prepare(args.data_dir, **options)  # type: ignore[arg-type]
        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        result = run_bench(
            data_dir=workspace.data_dir, split_dir=workspace.split_dir,
            lmdb_path=workspace.lmdb_path, storage=args.storage, mode=args.mode,
            formats=args.formats.split(","), caches=args.cache.split(","), epochs=args.epochs,
            batch_size=args.batch_size, num_workers=args.num_workers, repeats=args.repeats,
            step_ms=args.step_ms, seed=args.seed, threads=args.threads,
            warmup=not args.no_warmup, backing_dir=args.backing_dir,
            max_batches=args.max_batches, device=device, output_dir=args.output_dir,
            record_indices=args.record_indices)
        if ctx.is_main:
            runs = result.runs
            print(f"lmdbio.study.ddp_bench: {ctx.world_size} rank(s), backend "
                  f"{ctx.backend or 'none'}: {runs['run_id'].nunique()} runs, {len(runs)} "
                  f"rank rows written to {args.output_dir}", flush=True)
        ctx.barrier()
    finally:
        distributed.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
