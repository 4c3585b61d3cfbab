"""The study's command line: ``python -m lmdbio.study`` (also ``lmdbio study``) runs the study,
``lmdbio generate`` makes the synthetic dataset. ``lmdbio`` finds both through the entry-point
group ``lmdbio.commands``; each ``main(argv, prog)`` parses its own options."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from lmdbio.cli_args import (DefaultsHelpFormatter, image_count, int_at_least, milliseconds,
                             mounted_folder, non_negative_int, positive_int)
from lmdbio.study.conditions import MODES, checked_names

__all__ = ["generate_main", "main"]

FULL = {"images": 25_000, "epochs": 10, "repeats": 5, "train_batches": 0}


def _study(args: argparse.Namespace) -> int:
    from lmdbio.study.runner import StudyConfig, run_study

    targets = {"ssd": ""} if args.no_nfs else {"ssd": "", "nfs": ""}
    targets.update(args.target)
    overrides = FULL if args.full else {}
    config = StudyConfig(
        images=overrides.get("images", args.images), epochs=overrides.get("epochs", args.epochs),
        repeats=overrides.get("repeats", args.repeats), modes=args.modes,
        train_batches=overrides.get("train_batches", args.train_batches),
        batch_size=args.batch_size, num_workers=args.num_workers, step_ms=args.step_ms,
        seed=args.seed, ddp_procs=args.ddp_procs, ddp_mode=args.ddp_mode,
        targets=targets, work_dir=args.work_dir,
        results_dir=args.results_dir, notebooks=args.notebooks, force=args.force, peers=not args.no_peers,
        peer_modes=args.peer_modes)
    return run_study(config)


def _generate(args: argparse.Namespace) -> int:
    from lmdbio.errors import SourceError
    from lmdbio.study.synthetic import ensure_dataset

    try:
        split_dir = ensure_dataset(args.data_dir, args.images, seed=args.seed,
                                   split=args.split, progress=not args.quiet)
    except ValueError as exc:  # a folder that is not for a synthetic set: one line, exit 1
        raise SourceError(str(exc).replace("data_dir=", "DATA_DIR ").replace(
            " and split=", " and --split ")) from None
    print(f"ImageFolder ready at {split_dir}")
    return 0


def _target(text: str) -> tuple[str, str]:
    name, _, path = text.partition("=")
    if not name.strip() or not path.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=PATH (e.g. nfs=/mnt/nfs/data)")
    return name.strip(), mounted_folder(path)  # not after the targets before it


def _ranks(text: str) -> int:
    ranks = int_at_least(text, 0)
    if ranks == 1:
        raise argparse.ArgumentTypeError("1 rank is no distributed run: 0 (no ddp cell) or >= 2")
    return ranks


def study_parser(prog: str) -> argparse.ArgumentParser:
    from lmdbio.study.runner import StudyConfig

    d = StudyConfig()
    modes = checked_names("modes", MODES)
    p = argparse.ArgumentParser(prog=prog, description="Run the storage study with papermill "
                                "into results/ (see README, 'The study').",
                                formatter_class=DefaultsHelpFormatter)
    p.add_argument("--images", type=image_count, default=d.images,
                   help="synthetic images to generate")
    p.add_argument("--epochs", type=positive_int, default=d.epochs, help="epochs per run")
    p.add_argument("--repeats", type=positive_int, default=d.repeats,
                   help="repetitions per condition")
    p.add_argument("--modes", type=modes, default=",".join(d.modes), help="train,emulate,load")
    p.add_argument("--train-batches", type=non_negative_int, default=d.train_batches,
                   help="batches per train-mode epoch (0: whole epochs)")
    p.add_argument("--batch-size", type=positive_int, default=d.batch_size,
                   help="images per batch")
    p.add_argument("--num-workers", type=non_negative_int, default=d.num_workers,
                   help="DataLoader worker processes")
    p.add_argument("--step-ms", type=milliseconds, default=d.step_ms,
                   help="emulated accelerator step per batch (mode emulate)")
    p.add_argument("--seed", type=non_negative_int, default=d.seed,
                   help="synthetic data, model and shuffle seed")
    p.add_argument("--ddp-procs", type=_ranks, default=d.ddp_procs,
                   help="torchrun ranks of the ddp cell per target (0: no ddp cell)")
    p.add_argument("--ddp-mode", default=d.ddp_mode, choices=MODES,
                   help="what each rank of the ddp cell runs")
    p.add_argument("--target", action="append", default=[], metavar="NAME=PATH", type=_target,
                   help="a storage target at a mounted path, e.g. nfs=/mnt/nfs/data")
    p.add_argument("--no-nfs", action="store_true", help="skip the sshfs network-FS stand-in")
    p.add_argument("--no-peers", action="store_true",
                   help="leave out the WebDataset and LitData strategies even when installed "
                        "(they need pip install 'lmdbio[peers]')")
    p.add_argument("--peer-modes", type=modes, default=",".join(d.peer_modes),
                   help="modes in which the peer strategies run too (e.g. train,emulate,load)")
    p.add_argument("--work-dir", default=d.work_dir, help="generated data goes here")
    p.add_argument("--results-dir", default=d.results_dir,
                   help="executed notebooks, tables and figures go here")
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
    p.add_argument("--images", type=image_count, default=25_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--split", default="train")
    p.add_argument("-q", "--quiet", action="store_true")
    return p


def main(argv: Sequence[str] | None = None, prog: str = "python -m lmdbio.study") -> int:
    """Run the study; the exit status is non-zero when a notebook failed."""
    return _study(study_parser(prog).parse_args(argv))


def generate_main(argv: Sequence[str] | None = None, prog: str = "lmdbio generate") -> int:
    return _generate(generate_parser(prog).parse_args(argv))
