"""The ``lmdbio`` command line. ``convert``, ``info``, ``verify``, ``extract`` and ``advise
--transform none`` never import torch or torchvision, so they start in a fraction of a
second."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict
from typing import Any

from .cli_args import (DefaultsHelpFormatter, int_at_least, milliseconds, parse_extensions,
                       positive_int, quality, seconds)

__all__ = ["main", "run_guarded"]

Handler = Callable[[argparse.Namespace], int]


def _convert(args: argparse.Namespace) -> int:
    from .converter import convert
    from .errors import ShardSpecError
    from .shard_conversion import convert_shards
    from .shard_plan import parse_shard

    options = dict(overwrite=args.overwrite, resume=args.resume, on_error=args.on_error,
                   verify_images=args.verify_images, workers=args.workers,
                   commit_bytes=args.commit_mb << 20, progress=not args.quiet,
                   max_size=args.max_size, quality=args.quality, check=args.check,
                   allow_empty=args.allow_empty)
    if args.extensions:
        options["extensions"] = args.extensions
    shard = parse_shard(args.shard) if args.shard else None
    if args.jobs > 1 and not args.num_shards:
        raise ShardSpecError(f"--jobs {args.jobs} needs --num-shards N; to convert one shard "
                             "per process, run one 'convert --shard I/N' each")
    if shard and args.num_shards and args.num_shards != shard[1]:
        raise ShardSpecError(f"--shard {args.shard} contradicts --num-shards "
                             f"{args.num_shards}; give one of them")
    if args.num_shards and not shard:
        reports = convert_shards(args.src, args.dst, args.num_shards, jobs=args.jobs, **options)
        report("\n".join(map(str, reports)) or "every shard was complete already")
        return 0
    done = convert(args.src, args.dst, shard=shard, **options)
    report(done, written=done.destination)
    return 0


def _info(args: argparse.Namespace) -> int:
    from .shard_plan import is_glob
    from .shard_set import ShardedDatabase, expand_paths
    from .tools import info

    results = [info(path) for path in expand_paths(args.db)]
    if len(args.db) == 1 and not is_glob(args.db[0]):  # one file, even one shard of several
        report(json.dumps(asdict(results[0]), indent=2) if args.json else results[0])
        return 0
    if all(r.shard_count == 1 for r in results):  # whole databases, not a shard set: each
        report(json.dumps([asdict(r) for r in results], indent=2) if args.json
               else "\n".join(map(str, results)))
        return 0
    with ShardedDatabase([r.path for r in results]) as shards:  # checks the set
        summary = (f"shard set: {len(results)} files, {len(shards)} samples of "
                   f"{len(shards.meta.classes)} classes, complete")
    report(json.dumps([asdict(r) for r in results], indent=2) if args.json
          else "\n".join(map(str, results + [summary])))  # type: ignore[operator]
    return 0


def _verify(args: argparse.Namespace) -> int:
    from .shard_set import expand_paths
    from .tools import verify

    damaged = 0
    for path in expand_paths(args.db):  # each file on its own: shards, or unrelated DBs
        with _saying_when_interrupted("verify interrupted; nothing was changed"):
            result = verify(path, decode=args.decode, progress=not args.quiet)
        report(result)
        damaged += not result.ok
    return 1 if damaged else 0


def _extract(args: argparse.Namespace) -> int:
    from .errors import DatabaseNotFoundError, printable
    from .paths import absolute_path
    from .shard_plan import is_glob
    from .tools import extract
    from .unpack import staged

    if is_glob(args.db) and not os.path.lexists(os.path.expanduser(args.db)):
        raise DatabaseNotFoundError(
            f"extract takes one database, not the pattern {args.db!r}; extract each shard "
            "into the same OUTDIR in turn (their files differ: no --overwrite needed)")
    outdir = printable(args.outdir)
    whole = staged(absolute_path(args.outdir))
    with _saying_when_interrupted(
            f"extract interrupted; nothing was written to {outdir}" if whole else
            f"extract interrupted; {outdir} holds the files written so far: extract again "
            "with --overwrite"):
        count = extract(args.db, args.outdir, overwrite=args.overwrite, progress=not args.quiet)
    report(f"extracted {count} files to {outdir}", written=args.outdir)
    return 0


@contextlib.contextmanager
def _saying_when_interrupted(line: str) -> Iterator[None]:
    """Ctrl-C or SIGTERM: ``line`` on stderr (what was left and what to do), then on."""
    try:
        yield
    except KeyboardInterrupt:
        print(f"lmdbio: {line}", file=sys.stderr)
        raise


def _advise(args: argparse.Namespace) -> int:
    from .advise import advise

    def say(line: str) -> None:  # what it is doing during the minute; never into a pipe, so
        print(f"lmdbio advise: {line}...", file=sys.stderr, flush=True)  # errors stay 1 line

    with _saying_when_interrupted("advise interrupted; nothing was written"):
        result = advise(args.dir, workers=args.workers, batch_size=args.batch_size,
                        step_s=args.step_ms / 1e3, sample=args.sample, budget_s=args.budget,
                        transform=args.transform, allow_empty=args.allow_empty,
                        progress=say if sys.stderr.isatty() and not args.json else None)
    report(json.dumps(result.as_dict(), indent=2) if args.json else result)
    return 0


def register_convert(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("convert", help="convert an ImageFolder tree into one LMDB file",
                            formatter_class=DefaultsHelpFormatter)
    p.add_argument("src", help="split folder holding one sub-folder per class, e.g. data/train")
    p.add_argument("dst", nargs="?", help="output file (default: SRC.lmdb next to SRC)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing DST")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted conversion from its last commit")
    p.add_argument("--on-error", choices=("fail", "skip"), default="fail",
                   help="what to do with unreadable or non-image files")
    p.add_argument("--check", choices=("decode", "full", "structure"), default="decode",
                   help="what a file must pass to be stored: 'decode' loads it as "
                   "ImageFolder's loader would (bomb limit, decode, RGB; JPEGs at 1/8 DCT "
                   "scale, which still decodes all their data); 'full' decodes at full size; "
                   "'structure' only checks headers and end markers (faster: stored files may "
                   "still fail to decode)")
    p.add_argument("--verify-images", action="store_true", help="the same as --check full")
    p.add_argument("--extensions", metavar="EXT,EXT", type=parse_extensions,
                   help="file extensions to list, comma-separated (default: ImageFolder's)")
    p.add_argument("--allow-empty", action="store_true",
                   help="keep class folders without images as empty classes, as "
                   "ImageFolder(allow_empty=True)")
    p.add_argument("--workers", type=positive_int, default=None,
                   help="parallel file reads (default: 16 on a network FS, 4 on a local disk)")
    p.add_argument("--commit-mb", type=positive_int, default=32,
                   help="MB of images per transaction")
    p.add_argument("--shard", metavar="I/N",
                   help="write only shard I of N (0-based) as DST-0000I-of-0000N.lmdb; the "
                   "shards can be converted by different processes or nodes")
    p.add_argument("--num-shards", type=positive_int, metavar="N",
                   help="write all N shards (with --resume: the unfinished ones)")
    p.add_argument("--jobs", type=positive_int, default=1,
                   help="with --num-shards: shards converted at once, in separate processes")
    p.add_argument("--max-size", type=positive_int, metavar="N",
                   help="downscale images whose longer side exceeds N px to N (aspect kept) "
                   "and re-encode them (JPEG stays JPEG, other formats become PNG); smaller "
                   "images keep their bytes. Recorded in the metadata")
    p.add_argument("--quality", type=quality, metavar="Q",
                   help="with --max-size: JPEG quality (1-100) of re-encoded images "
                   "(default: 90)")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="no progress bar; a failure is one line on stderr")
    p.set_defaults(handler=_convert)


def register_info(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("info", help="counts, classes, sizes and versions of a database")
    p.add_argument("db", nargs="+", help="a database, several, or the shards of one (files "
                   "or a glob: a shard set is checked whole)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=_info)


def register_verify(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("verify", help="check every record's checksum (exit 1 on damage)")
    p.add_argument("db", nargs="+", help="a database, several, or the shards of one (files or "
                   "a glob), each verified on its own")
    p.add_argument("--decode", action="store_true", help="also decode every image")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=_verify)


def register_extract(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("extract", help="write the ImageFolder tree back, byte for byte")
    p.add_argument("db")
    p.add_argument("outdir")
    p.add_argument("--overwrite", action="store_true", help="replace existing files")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=_extract)


def _advised_workers(text: str) -> int:
    from .advise_model import MOST_WORKERS  # imported when advise is what runs

    return int_at_least(text, 0, MOST_WORKERS)


def _advised_batch(text: str) -> int:
    from .advise_model import MOST_BATCH

    return int_at_least(text, 1, MOST_BATCH)


def register_advise(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "advise", help="measure whether converting an ImageFolder tree pays off here",
        description="Measure this storage and these CPUs on a sample of DIR (cold: the "
        "sample's pages are dropped from the page cache first), predict a DataLoader's "
        "images/s with ImageFolder and with lmdbio, and say whether to convert. Writes "
        "nothing. The model: docs/ADVISE.md.",
        formatter_class=DefaultsHelpFormatter)
    p.add_argument("dir", metavar="DIR", help="split folder holding one sub-folder per class")
    p.add_argument("--workers", type=_advised_workers, default=None, metavar="N",
                   help="DataLoader workers to predict for (default: one per available core)")
    p.add_argument("--batch-size", type=_advised_batch, default=128, metavar="B",
                   help="DataLoader batch size (matters with --step-ms)")
    p.add_argument("--step-ms", type=milliseconds, default=0.0, metavar="MS",
                   help="an accelerator step per batch, in ms (0: the loader alone)")
    p.add_argument("--transform", choices=("seed", "none"), default="seed",
                   help="what each image costs: 'seed' = decode + RandomResizedCrop(64), flip, "
                   "ToTensor, Normalize (imports torchvision); 'none' = decode only")
    p.add_argument("--sample", type=positive_int, default=300,
                   help="files to measure at most")
    p.add_argument("--budget", type=seconds, default=60.0, metavar="S",
                   help="seconds to measure for at most (the listing included)")
    p.add_argument("--allow-empty", action="store_true",
                   help="accept class folders without images, as ImageFolder(allow_empty=True)")
    p.add_argument("--json", action="store_true", help="one JSON object: every input and "
                   "prediction")
    p.set_defaults(handler=_advise)


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(  # the docstring without its reST quotes, for a terminal
        prog="lmdbio", description=__doc__.replace("``", "'"))
    parser.add_argument("--version", action="version", version=f"lmdbio {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for register in (register_convert, register_info, register_verify, register_extract,
                     register_advise):
        register(commands)
    register_plugins(commands)
    return parser


PLUGIN_GROUP = "lmdbio.commands"


def register_plugins(commands: argparse._SubParsersAction) -> None:
    """Commands that other code adds under ``lmdbio`` through the entry-point group
    ``lmdbio.commands`` (the study adds ``study`` and ``generate``). Each entry point names a
    ``main(argv, prog) -> int``, loaded only when its command runs: the library never imports
    what it does not know, and ``lmdbio --help`` stays fast."""
    from importlib.metadata import entry_points

    for point in sorted(entry_points(group=PLUGIN_GROUP), key=lambda p: p.name):
        if point.name in commands.choices:
            continue  # a plugin cannot replace a library command
        sub = commands.add_parser(point.name, add_help=False,
                                  help=f"(from {point.value.split(':')[0]}; "
                                       f"'lmdbio {point.name} --help' for its options)")
        sub.set_defaults(handler=_plugin_handler(point))


def _plugin_handler(point: Any) -> Handler:
    def run(args: argparse.Namespace) -> int:
        plugin_main = point.load()
        return int(plugin_main(args.plugin_argv, f"lmdbio {point.name}"))
    run.plugin = True  # type: ignore[attr-defined]
    return run


def _printable_output() -> None:
    """File names need not be valid UTF-8 (Python holds them with surrogate escapes); under a
    strict UTF-8 stdout, printing one would crash after the work is done. Escape them instead."""
    for stream in (sys.stdout, sys.stderr):
        # surrogateescape (the C locale's) still fails on a real non-ASCII class name
        if getattr(stream, "errors", None) in ("strict", "surrogateescape") \
                and hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")


def main(argv: Sequence[str] | None = None) -> int:
    _printable_output()
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    handler: Handler = args.handler
    if getattr(handler, "plugin", False):
        args.plugin_argv = rest  # the plugin parses its own options
    elif rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    return run_guarded(lambda: handler(args))


def run_guarded(command: Callable[[], int]) -> int:
    """Run ``command`` as a CLI does: an lmdbio or I/O error is one line on stderr and exit
    status 1, Ctrl-C is 130 and SIGTERM 143 (whoever was interrupted has said how to
    continue)."""
    from .errors import LmdbioError, printable
    from .interrupts import Terminated, sigterm_as_interrupt

    with sigterm_as_interrupt():
        try:
            status = command()
            if sys.stdout is not None:  # what a plugin printed: a closed pipe shows here,
                sys.stdout.flush()       # not in the interpreter's exit
            return status
        except LmdbioError as exc:  # printable: one line, whatever a stored name holds
            print(f"lmdbio: error: {cli_wording(printable(exc))}", file=sys.stderr)
            return 1
        except BrokenPipeError:  # `lmdbio info ... | head`: the reader has what it wanted
            _quiet_stdout()
            return 128 + signal.SIGPIPE
        except Terminated:
            return 128 + signal.SIGTERM
        except KeyboardInterrupt:
            return 128 + signal.SIGINT
        except OSError as exc:  # an I/O failure lmdbio did not anticipate: still one line
            print(f"lmdbio: error: {printable(exc)}", file=sys.stderr)
            return 1


def report(what: object, written: str | None = None) -> None:
    """Print a command's report on stdout when it is done. A closed pipe shows here as
    BrokenPipeError (``run_guarded``); stdout closed (``>&-``) drops the report; a full disk
    under stdout is an error where the report is the product (``info``), and where the
    command ``written`` something (``convert``, ``extract``) a warning that it is in place:
    running it again would refuse the existing output."""
    from .errors import DestinationError, printable

    if sys.stdout is None:
        return
    try:
        print(what, flush=True)
    except BrokenPipeError:
        raise
    except OSError as exc:
        _quiet_stdout()
        if written is None:
            raise DestinationError(f"the report could not be written to stdout "
                                   f"({exc.strerror}); run the command again with stdout "
                                   "somewhere writable") from None
        print(f"lmdbio: warning: the report could not be written to stdout ({exc.strerror});"
              f" {printable(written)} is complete", file=sys.stderr)


def _quiet_stdout() -> None:
    """stdout to /dev/null: the interpreter's last flush at exit would meet the closed pipe
    again and print a traceback."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # stdout without a descriptor (captured): nothing to do
        pass


_API_OPTION = None


def cli_wording(text: str) -> str:
    """An error written for the Python API, in the command line's words: ``on_error="skip"``
    -> ``--on-error skip``, ``allow_empty=True`` -> ``--allow-empty``, ``resume=True`` ->
    ``--resume``, ``max_size=N`` -> ``--max-size N``..."""
    import re

    global _API_OPTION
    if _API_OPTION is None:
        _API_OPTION = re.compile(r'\b(on_error|check|transform)=["\'](\w+)["\']|\b(allow_empty|'
                                 r'resume|overwrite|verify_images)=True\b|'
                                 r'\b(max_size|quality)=(\w+)\b')

    def spell(match: re.Match[str]) -> str:
        if match[1]:
            return f"--{match[1].replace('_', '-')} {match[2]}"
        if match[3]:
            return f"--{match[3].replace('_', '-')}"
        return f"--{match[4].replace('_', '-')} {match[5]}"
    # an API spelling in brackets beside the flag: "--overwrite (overwrite=True)"
    text = re.sub(r" \((?:(?:overwrite|resume)=True|transform='\w+')\)", "", text)
    return _API_OPTION.sub(spell, text)


if __name__ == "__main__":
    sys.exit(main())
