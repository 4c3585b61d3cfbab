"""The study's command line: ``python -m lmdbio.study`` (also ``lmdbio study``) runs the study,
``lmdbio generate`` makes the synthetic dataset. ``lmdbio`` finds both through the entry-point
group ``lmdbio.commands``; each ``main(argv, prog)`` parses its own options."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from lmdbio.cli import DefaultsHelpFormatter
from lmdbio.study.conditions import MODES

__all__ = ["generate_main", "main"]

FULL = {"images": 25_000, "epochs": 10, "repeats": 5, "train_batches": 0}


def _study(args: argparse.Namespace) -> int:
    from lmdbio.study.runner import StudyConfig, run_study

    targets = {"ssd": ""} if args.no_nfs else {"ssd": "", "nfs": ""}
    for item in args.target:
        name, _, path = item.partition("=")
        targets[name] = path
    overrides = FULL if args.full else {}
    config = StudyConfig(
        images=overrides.get("images", args.images), epochs=overrides.get("epochs", args.epochs),
        repeats=overrides.get("repeats", args.repeats), modes=tuple(args.modes.split(",")),
        train_batches=overrides.get("train_batches", args.train_batches),
        batch_size=args.batch_size, num_workers=args.num_workers, step_ms=args.step_ms,
        seed=args.seed, ddp_procs=args.ddp_procs, ddp_mode=args.ddp_mode,
        targets=targets, work_dir=args.work_dir,
        results_dir=args.results_dir, notebooks=args.notebooks, force=args.force, peers=not args.no_peers,
        peer_modes=tuple(args.peer_modes.split(",")))
    return run_study(config)


def _generate(args: argparse.Namespace) -> int:
    from lmdbio.study.synthetic import ensure_dataset

    split_dir = ensure_dataset(args.data_dir, args.images, seed=args.seed, split=args.split,
                               progress=not args.quiet)
    print(f"ImageFolder ready at {split_dir}")
    return 0


def study_parser(prog: str) -> argparse.ArgumentParser:
    from lmdbio.study.runner import StudyConfig

    d = StudyConfig()
    p = argparse.ArgumentParser(prog=prog, description="Run the storage study with papermill "
                                "into results/ (see README, 'The study').",
                                formatter_class=DefaultsHelpFormatter)
    p.add_argument("--images", type=int, default=d.images, help="synthetic images to generate")
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--repeats", type=int, default=d.repeats, help="repetitions per condition")
    p.add_argument("--modes", default=",".join(d.modes), help="train,emulate,load")
    p.add_argument("--train-batches", type=int, default=d.train_batches,
                   help="batches per train-mode epoch (0: whole epochs)")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--num-workers", type=int, default=d.num_workers)
    p.add_argument("--step-ms", type=float, default=d.step_ms, help="emulated step time")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--ddp-procs", type=int, default=d.ddp_procs,
                   help="torchrun ranks of the ddp cell per target (0: no ddp cell)")
    p.add_argument("--ddp-mode", default=d.ddp_mode, choices=MODES,
                   help="what each rank of the ddp cell runs")
    p.add_argument("--target", action="append", default=[], metavar="NAME=PATH",
                   help="a storage target at a mounted path, e.g. nfs=/mnt/nfs/data")
    p.add_argument("--no-nfs", action="store_true", help="skip the sshfs network-FS stand-in")
    p.add_argument("--no-peers", action="store_true",
                   help="leave out the WebDataset and LitData strategies even when installed "
                        "(they need pip install -e \".[peers]\")")
    p.add_argument("--peer-modes", default=",".join(d.peer_modes),
                   help="modes in which the peer strategies run too (e.g. train,emulate,load)")
    p.add_argument("--work-dir", default=d.work_dir, help="generated data goes here")
    p.add_argument("--results-dir", default=d.results_dir)
    p.add_argument("--notebooks", default=d.notebooks, metavar="DIR",
                   help="the study's notebooks (default: this checkout's notebooks/, else the "
                        "copy installed with lmdbio)")
    p.add_argument("--force", action="store_true", help="rerun finished notebooks")
    p.add_argument("--full", action="store_true",
                   help="the seed protocol: 25 000 images, 10 epochs, 5 repeats, whole epochs")
    return p


def generate_parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Generate the synthetic cats-vs-dogs "
                                "ImageFolder.")
    p.add_argument("data_dir")
    p.add_argument("--images", type=int, default=25_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--split", default="train")
    p.add_argument("-q", "--quiet", action="store_true")
    return p


def main(argv: Sequence[str] | None = None, prog: str = "python -m lmdbio.study") -> int:
    """Run the study; the exit status is non-zero when a notebook failed."""
    return _study(study_parser(prog).parse_args(argv))


def generate_main(argv: Sequence[str] | None = None, prog: str = "lmdbio generate") -> int:
    return _generate(generate_parser(prog).parse_args(argv))
