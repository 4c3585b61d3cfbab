"""What a storage sweep runs (``SweepConfig``) and its command line (``python -m
lmdbio.study.sweep``): every option checked as it is parsed, so a wrong value stops the sweep
with one line before anything is generated or mounted."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from lmdbio.cli_args import (DefaultsHelpFormatter, image_count, milliseconds, mounted_folder,
                             non_negative_int, number, positive_int)
from lmdbio.study.conditions import checked_names, installed_formats

__all__ = ["MODES", "SweepConfig", "parse"]

MODES = ("load", "emulate")


@dataclass(frozen=True)
class SweepConfig:
    images: int = 2000                 # the data set of the network and disk points
    big_images: int = 8000             # the larger-than-cache data set
    max_images: int = 2048             # images read per run (a whole epoch when fewer)
    rtts: tuple[float, ...] = (0.0, 0.2, 0.5, 1.0, 2.0)
    capped: tuple[float, float] | None = (0.5, 1000.0)   # (rtt_ms, Mb/s) of the capped point
    warm_at: tuple[float, ...] = (0.0, 2.0)
    hdd: bool = True
    larger_than_cache: bool = True
    targets: tuple[str, ...] = ()
    modes: tuple[str, ...] = MODES
    formats: tuple[str, ...] = field(default_factory=installed_formats)
    repeats: int = 3
    batch_size: int = 64
    num_workers: int = 2
    step_ms: float = 25.0              # emulate: an accelerator step per batch of 64
    seed: int = 0
    relay_check: bool = True
    advise: bool = True
    # every run's CPU seconds per process group ("cpu"); "stacks" adds py-spy's stages
    profile: str = "cpu"
    work_dir: str = "work/sweep"
    out_dir: str = "results/sweep"


def _milliseconds_list(text: str) -> tuple[float, ...]:
    """``0,0.5,2``: round trips in ms (none at all: ``''``)."""
    return tuple(milliseconds(x) for x in text.split(",") if x.strip())


def _capped(text: str) -> tuple[float, float] | None:
    if not text.strip():
        return None
    rtt, colon, mbps = text.partition(":")
    if not colon:
        raise argparse.ArgumentTypeError(f"{text!r} is not RTT_MS:MBPS (e.g. 0.5:1000)")
    return milliseconds(rtt), number(mbps, zero=False)


def parse(argv: Sequence[str] | None, description: str) -> tuple[SweepConfig, bool]:
    """(the default ``SweepConfig`` with what ``argv`` sets, whether only advise is asked for)."""
    default = SweepConfig()
    parser = argparse.ArgumentParser(prog="python -m lmdbio.study.sweep",
                                     description=description,
                                     formatter_class=DefaultsHelpFormatter)
    parser.add_argument("--images", type=image_count, default=default.images,
                        help="images in the data set of the network and disk points")
    parser.add_argument("--big-images", type=image_count, default=default.big_images,
                        help="images in the larger-than-cache data set")
    parser.add_argument("--max-images", type=positive_int, default=default.max_images,
                        help="images read per run (a whole epoch when the set has fewer)")
    parser.add_argument("--rtt", type=_milliseconds_list, metavar="MS,...",
                        default=",".join(f"{x:g}" for x in default.rtts),
                        help="round trips added to the SFTP mount, ms; '' for none")
    parser.add_argument("--capped", type=_capped, metavar="RTT_MS:MBPS",
                        default=":".join(f"{x:g}" for x in default.capped or ()),
                        help="the bandwidth-capped point; '' for none")
    parser.add_argument("--warm-at", type=_milliseconds_list, metavar="MS,...",
                        help="round trips (of --rtt) also run warm; '' for none (default: "
                             f"{','.join(f'{x:g}' for x in default.warm_at)}, those swept)")
    parser.add_argument("--no-hdd", action="store_true", help="skip the HDD-like disk point")
    parser.add_argument("--no-larger-than-cache", action="store_true",
                        help="skip the point with data 4x the page cache")
    parser.add_argument("--target", action="append", default=[], metavar="DIR",
                        type=mounted_folder,
                        help="a real mount to sweep too (its RTT is measured only)")
    parser.add_argument("--modes", type=checked_names("modes", MODES),
                        default=",".join(default.modes))
    parser.add_argument("--formats", type=checked_names("formats", installed_formats()),
                        default=",".join(default.formats),
                        help="strategies (those installed here); lmdb-block joins lmdb at the "
                             "larger-than-cache point")
    parser.add_argument("--repeats", type=positive_int, default=default.repeats,
                        help="repetitions of every run, in ABBA order")
    parser.add_argument("--batch-size", type=positive_int, default=default.batch_size)
    parser.add_argument("--workers", type=non_negative_int, default=default.num_workers,
                        help="DataLoader workers")
    parser.add_argument("--step-ms", type=milliseconds, default=default.step_ms,
                        help="emulate: the accelerator's step per batch")
    parser.add_argument("--no-relay-check", action="store_true",
                        help="skip the mount with and without the relay (relay_check.csv)")
    parser.add_argument("--no-advise", action="store_true",
                        help="skip lmdbio advise at every point (advise.csv)")
    parser.add_argument("--profile", action="store_true",
                        help="also sample the Python processes' stacks with py-spy (where "
                             "their CPU seconds go: stage_*_s columns, profile.md)")
    parser.add_argument("--advise-only", action="store_true",
                        help="only lmdbio advise at every point, against OUT/runs.csv")
    parser.add_argument("--work-dir", default=default.work_dir, help="generated data go here")
    parser.add_argument("--out", default=default.out_dir, help="results go here")
    args = parser.parse_args(argv)
    if args.warm_at is None:  # the default levels that this sweep has
        args.warm_at = tuple(x for x in default.warm_at if x in args.rtt)
    unswept = sorted(set(args.warm_at) - set(args.rtt))
    if unswept:
        parser.error(f"--warm-at {','.join(f'{x:g}' for x in unswept)}: not a round trip of "
                     f"--rtt; add it there or leave it out")
    cfg = replace(default, images=args.images, big_images=args.big_images,
                  max_images=args.max_images, rtts=args.rtt, capped=args.capped,
                  warm_at=args.warm_at, hdd=not args.no_hdd,
                  larger_than_cache=not args.no_larger_than_cache, targets=tuple(args.target),
                  modes=args.modes, formats=args.formats, repeats=args.repeats,
                  batch_size=args.batch_size, num_workers=args.workers, step_ms=args.step_ms,
                  relay_check=not args.no_relay_check, advise=not args.no_advise,
                  profile="stacks" if args.profile else "cpu",
                  work_dir=args.work_dir, out_dir=args.out)
    return cfg, args.advise_only
