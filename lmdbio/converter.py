"""``lmdbio.convert``: an ImageFolder tree into one LMDB file, crash-safe and resumable.

The output is written as ``DST.partial`` and renamed to ``DST`` only when complete, so ``DST``
is either a complete database or absent. A killed run leaves ``DST.partial`` with a checkpoint
at its last commit; ``resume=True`` continues from there when the source listing is unchanged.
"""

from __future__ import annotations

import collections
import contextvars
import dataclasses
import datetime
import os
import stat
import sys
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import lmdb

from . import __version__
from .errors import (
    ConvertOptionError,
    DestinationError,
    OutputExistsError,
    ResumeError,
    SourceError,
    printable,
)
from .folder import DEFAULT, selection
from .format import Metadata
from .partial_lock import lock_partial
from .paths import absolute_path, named
from .lmdbcheck import require_sound
from .progress import Progress
from .publish import discard, publish, same_file
from .resize import Resizer, check_resume_setting, make_resizer
from .shard_plan import ShardSpec, plan, shard_path, slice_listing
from .sources import (
    Listing,
    default_read_workers,
    list_source,
    read_in_order,
    source_error,
)
from .system import peak_rss_bytes
from .validate import CHECKS, Check, capture_warnings
from .writer import Checkpoint, LmdbWriter

__all__ = ["ConvertReport", "convert", "default_destination"]

OnError = Literal["fail", "skip"]

# True while convert_shards converts the shards of a set: it judges what on_error="skip" left
# over the whole set once every shard is written, so a shard does not judge its own classes
# first (its verdict would name one shard's classes, where the set's names the whole tree's).
judged_by_set: contextvars.ContextVar[bool] = contextvars.ContextVar("judged_by_set",
                                                                     default=False)


@dataclass(frozen=True)
class ConvertReport:
    """What a conversion did; ``str()`` gives the one-paragraph summary the CLI prints."""

    source: str
    destination: str
    num_samples: int
    classes: list[str]
    payload_bytes: int
    file_bytes: int
    seconds: float
    resumed_from: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    peak_rss_bytes: int = 0
    check: str = "decode"  # what every stored file passed (lmdbio.validate)
    warnings: list[tuple[str, str]] = field(default_factory=list)  # (path, Pillow's warning)

    @property
    def images_per_second(self) -> float:
        return (self.num_samples - self.resumed_from) / self.seconds if self.seconds else 0.0

    @property
    def megabytes_per_second(self) -> float:
        return self.payload_bytes / 1e6 / self.seconds if self.seconds else 0.0

    def __str__(self) -> str:
        lines = [f"wrote {self.num_samples} images of {len(self.classes)} classes to "
                 f"{printable(self.destination)} ({self.file_bytes / 1e6:.1f} MB) in "
                 f"{self.seconds:.1f} s: "
                 f"{self.images_per_second:.0f} images/s, {self.megabytes_per_second:.1f} MB/s, "
                 f"peak RSS {self.peak_rss_bytes / 1e6:.0f} MB"]
        if self.resumed_from:
            lines.append(f"resumed after {self.resumed_from} images")
        if self.skipped:
            lines.append(f"skipped {len(self.skipped)} bad files:")
            lines += [f"  {printable(path)}: {printable(reason)}"  # source names: any bytes
                      for path, reason in self.skipped]
        if self.warnings:
            lines.append(f"{len(self.warnings)} warnings while checking the images (stored):")
            lines += [f"  {printable(path)}: {printable(text)}" for path, text in self.warnings]
        return "\n".join(lines)


def default_destination(source: str | os.PathLike[str], suffix: str = ".lmdb") -> str:
    """``data/train`` -> ``data/train.lmdb``, next to the source as in pytorch-lmdb (another
    ``suffix`` for other formats of the same source)."""
    return absolute_path(source) + suffix


def convert(
    source: str | os.PathLike[str],
    destination: str | os.PathLike[str] | None = None,
    *,
    overwrite: bool = False,
    resume: bool = False,
    on_error: OnError = "fail",
    verify_images: bool = False,
    workers: int | None = None,
    commit_bytes: int = 32 << 20,
    extensions: Sequence[str] | str | None = DEFAULT,
    progress: bool = True,
    shard: tuple[int, int] | None = None,
    max_size: int | None = None,
    quality: int | None = None,
    is_valid_file: Callable[[str], bool] | None = None,
    allow_empty: bool = False,
    check: Check = "decode",
) -> ConvertReport:
    """Convert the ImageFolder at ``source`` into the LMDB file ``destination``.

    Sample order and classes are exactly ``torchvision.datasets.ImageFolder(source)``'s.
    Files are read by ``workers`` threads (default: 16 on a network or FUSE file system, 4 on
    a local disk: ``sources.default_read_workers``); records are committed every
    ``commit_bytes``.
    ``extensions`` / ``is_valid_file`` / ``allow_empty`` select files and classes as
    ImageFolder's do (``extensions`` defaults to ``IMG_EXTENSIONS`` unless ``is_valid_file`` is
    given; both is a ``ValueError``).
    ``check`` is what a file must pass to be stored (``lmdbio.validate``): ``"decode"``
    (default) loads it as ImageFolder's loader would (bomb limit, decode, RGB; JPEGs at 1/8
    DCT scale), ``"full"`` (also ``verify_images=True``) exactly so, ``"structure"`` only
    checks headers and end markers (faster; may store files that fail to decode).
    ``on_error="skip"`` leaves out files that fail and lists them with their reason in the
    report and the metadata; a class that loses every file is an error unless
    ``allow_empty``, and so is a conversion that stores nothing. Pillow's warnings go to the
    report (``warnings``), not to stderr.
    ``shard=(i, n)`` writes only shard ``i`` of ``n`` (a contiguous block of the listing) to
    ``destination`` with ``-0000i-of-0000n`` before ``.lmdb`` (see ``lmdbio.shard_plan``).
    A shard may hold no file of a class, or store nothing at all, so on its own it judges
    only the classes whose every file it holds; ``convert_shards`` judges the whole set.
    ``max_size`` downscales images longer than that many pixels and re-encodes them (JPEGs
    at JPEG ``quality``, default 90); others keep their bytes (see ``lmdbio.resize``).
    """
    if on_error not in ("fail", "skip"):
        raise ValueError(f"on_error must be 'fail' or 'skip', not {on_error!r}")
    if check not in CHECKS:
        raise ValueError(f"check must be one of {', '.join(map(repr, CHECKS))}, not {check!r}")
    if verify_images and check == "structure":
        raise ConvertOptionError('verify_images=True asks for check="full", not '
                                 'check="structure"; give one of them')
    check = "full" if verify_images else check
    extensions, is_valid_file = selection(extensions, is_valid_file)
    named(source, "source", SourceError)
    if destination is not None:
        named(destination, "destination", DestinationError)
    workers = default_read_workers(source) if workers is None else workers
    if workers < 1 or commit_bytes < 1:
        raise ValueError(f"workers and commit_bytes must be >= 1, not {workers}, {commit_bytes}")
    resizer = make_resizer(max_size, quality)
    setting = resizer.setting if resizer else [None, None]
    started = time.perf_counter()
    dst = (absolute_path(destination) if destination
           else default_destination(source))  # "~" expanded as for the source
    dst = shard_path(dst, *shard) if shard else dst
    check_destination(dst, overwrite)
    listing = list_source(source, extensions, workers, is_valid_file=is_valid_file,
                          allow_empty=allow_empty)
    _refuse_a_source_file(dst, listing)
    spec = plan(*shard, len(listing)) if shard else ShardSpec(0, 1, 0, len(listing), len(listing))
    whole = collections.Counter(listing.targets)  # files per class in the whole listing
    listing = dataclasses.replace(slice_listing(listing, spec),  # the fingerprint stays
                                  given=listing.given)  # the whole source's
    partial = dst + ".partial"
    guard = lock_partial(partial, keep=resume)
    writer = None
    try:
        if resume:  # liblmdb trusts the pages it resumes from (lmdbio.lmdbcheck)
            require_sound(partial, remedy="delete it, or convert again without --resume",
                          error=ResumeError)  # kept: the user decides
        writer = LmdbWriter(partial, fd=guard)  # the map grows with the data (writer.py)
        finished = writer.finished_metadata() if resume else None
        if finished is not None and finished.source_fingerprint == listing.fingerprint and (
                finished.shard_index, finished.shard_count) == (spec.index, spec.count):
            # killed after the last commit, before the rename: nothing left but publishing
            check_resume_setting([finished.max_size, finished.quality], setting, partial)
            writer.close()
            state, meta = {"written": finished.num_samples}, finished
        else:
            state = _start_state(writer, listing, resume, partial, spec, setting, on_error,
                                 check)
            with capture_warnings():
                meta = _write_records(writer, listing, spec, state, on_error=on_error,
                                      check=check, workers=workers,
                                      commit_bytes=commit_bytes, progress=progress,
                                      extensions=extensions or (), resizer=resizer,
                                      allow_empty=allow_empty, whole=whole)
        writer = None  # finished and closed
        if not same_file(partial, guard):  # the name was swapped for a link meanwhile
            raise DestinationError(f"{partial!r} was replaced during the conversion (someone "
                                   "else writes the destination folder); convert again")
        if not publish(partial, dst, overwrite=overwrite):
            raise OutputExistsError(f"destination {dst!r} appeared during the conversion; "
                                    "convert again with --overwrite, or choose another DST")
    except KeyboardInterrupt:
        if writer is not None:
            writer.close()
        print(f"lmdbio: interrupted; continue with --resume (partial output: {partial})",
              file=sys.stderr)
        raise
    except BaseException as exc:
        if writer is not None:
            writer.close()
        if not isinstance(exc, ResumeError):  # keep resumable work the user may still want
            discard(partial)
        raise
    finally:
        os.close(guard)
    return ConvertReport(
        source=listing.root, destination=dst, num_samples=meta.num_samples,
        classes=meta.classes, payload_bytes=meta.payload_bytes,
        file_bytes=os.path.getsize(dst), seconds=time.perf_counter() - started,
        resumed_from=state["written"], skipped=meta.skipped,
        peak_rss_bytes=peak_rss_bytes(), check=meta.check or check,
        warnings=list(meta.warnings))


def check_destination(dst: str, overwrite: bool) -> None:
    """Refuse ``dst`` before anything is read or written: its folder missing, a folder or a
    device there, or a file there without ``overwrite``."""
    folder = os.path.dirname(dst)
    if not os.path.isdir(folder):
        raise DestinationError(f"destination folder {folder!r} does not exist; create it first")
    if os.path.isdir(dst):
        raise DestinationError(f"destination {dst!r} is a directory; pass a file name such as "
                               "train.lmdb")
    try:
        kind = os.stat(dst).st_mode
    except OSError:
        kind = None
    if kind is not None and not stat.S_ISREG(kind):  # --overwrite would replace /dev/null
        raise DestinationError(f"destination {dst!r} is not a regular file (a device, FIFO or "
                               "socket); choose a file name such as train.lmdb")
    if os.path.lexists(dst) and not overwrite:  # lexists: a dangling link is there too
        what = "is a symbolic link to nothing" if not os.path.exists(dst) else "already exists"
        raise OutputExistsError(f"destination {dst!r} {what}; pass --overwrite "
                                "(overwrite=True) to replace it, or choose another DST")


def _refuse_a_source_file(dst: str, listing: Listing) -> None:
    """``overwrite`` must not replace one of the images being converted with the database."""
    if not os.path.exists(dst):
        return
    root, real = os.path.realpath(listing.root), os.path.realpath(dst)
    if real.startswith(root + os.sep) and os.path.relpath(real, root) in listing.relative_paths:
        raise DestinationError(f"destination {dst!r} is one of the images of "
                               f"{listing.root!r}; choose a file outside the source's classes")


def _start_state(writer: LmdbWriter, listing: Listing, resume: bool, partial: str,
                 spec: ShardSpec, setting: list[int | None], on_error: str,
                 check: str) -> Checkpoint:
    fresh: Checkpoint = {"fingerprint": listing.fingerprint, "position": 0, "written": 0,
                         "payload_bytes": 0, "skipped": [], "shard": [spec.index, spec.count],
                         "resize": setting, "on_error": on_error, "check": check,
                         "warnings": []}
    checkpoint = writer.checkpoint()
    if checkpoint is None:
        return fresh
    if not resume or checkpoint.get("written", -1) < 0:
        raise ResumeError(f"{partial!r} holds records without a valid checkpoint; delete it "
                          "and convert again without --resume")
    if checkpoint.get("fingerprint") != listing.fingerprint:
        raise ResumeError(f"the source {listing.root!r} changed since {partial!r} was written "
                          "(file list, sizes or times differ); convert again without --resume")
    if checkpoint.get("shard", [0, 1]) != fresh["shard"]:
        raise ResumeError(f"{partial!r} holds shard {checkpoint['shard'][0]} of "
                          f"{checkpoint['shard'][1]}, not {spec.index} of {spec.count}; resume "
                          "with the matching --shard, or convert again without --resume")
    check_resume_setting(checkpoint.get("resize", [None, None]), setting, partial)
    started = checkpoint.get("on_error", on_error)  # absent in checkpoints before 0.1.1
    if started != on_error:
        raise ResumeError(f"{partial!r} was started with --on-error {started!r}, not "
                          f"{on_error!r}; resume with on_error=\"{started}\", or convert again "
                          "without resume=True")
    started = checkpoint.get("check", check)  # absent in checkpoints before check=
    if started != check:
        raise ResumeError(f"{partial!r} was started with check={started!r}, not {check!r}; "
                          f"resume with check=\"{started}\", or convert again without "
                          "resume=True")
    return checkpoint


def _write_records(writer: LmdbWriter, listing: Listing, spec: ShardSpec, state: Checkpoint, *,
                   on_error: OnError, check: Check, workers: int, commit_bytes: int,
                   progress: bool, extensions: Sequence[str],
                   resizer: Resizer | None, allow_empty: bool,
                   whole: Mapping[int, int]) -> Metadata:
    skipped: list[list[str]] = [list(item) for item in state["skipped"]]
    noted: list[list[str]] = [list(item) for item in state.get("warnings", [])]
    written, payload_bytes = state["written"], state["payload_bytes"]
    batch: list[bytes] = []  # encoded records: each payload is held once until its commit
    batch_bytes = 0

    def commit(position: int) -> None:
        nonlocal batch, batch_bytes, written
        writer.commit_encoded(written, batch, {"fingerprint": listing.fingerprint, "position": position,
                                       "written": written + len(batch),
                                       "payload_bytes": payload_bytes, "skipped": skipped,
                                       "shard": [spec.index, spec.count],
                                       "resize": resizer.setting if resizer else [None, None],
                                       "on_error": on_error, "check": check,
                                       "warnings": noted})
        written += len(batch)
        batch, batch_bytes = [], 0

    with Progress(len(listing), state["position"], enabled=progress) as bar:
        for result in read_in_order(listing, state["position"], workers=workers,
                                    check=check, transform=resizer):
            noted += [[listing.relative_paths[result.position], text]
                      for text in result.warnings]
            if result.data is None:
                if on_error == "fail":
                    raise source_error(listing, result)
                skipped.append([listing.relative_paths[result.position], str(result.error)])
            else:
                batch.append(result.data)  # encoded by the read threads
                batch_bytes += result.payload_bytes
                payload_bytes += result.payload_bytes
            bar.update(result.payload_bytes)
            if batch_bytes >= commit_bytes:
                commit(result.position + 1)
        if batch:
            commit(len(listing))
    keep = set(range(len(listing))) - _skipped_positions(listing, skipped)
    positions = sorted(keep)
    if not judged_by_set.get():
        held = collections.Counter(listing.targets)
        # a lone shard of several decides only for the classes it holds whole (their files
        # are contiguous, so most classes); convert_shards judges the whole set
        decidable = None if spec.count == 1 else [c for c, n in held.items() if whole[c] == n]
        check_what_is_left(listing.root, listing.classes,
                           collections.Counter(listing.targets[i] for i in positions),
                           skipped, allow_empty, decidable)
    meta = Metadata(
        num_samples=written, classes=listing.classes, source_root=listing.root,
        source_fingerprint=listing.fingerprint, extensions=list(extensions),
        payload_bytes=payload_bytes, skipped=[(p, r) for p, r in skipped],
        lmdbio_version=__version__, lmdb_version=".".join(map(str, lmdb.version())),
        created_utc=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        shard_index=spec.index, shard_count=spec.count, shard_start=spec.start,
        shard_stop=spec.stop, listing_total=spec.total,
        max_size=resizer.max_size if resizer else None,
        quality=resizer.quality if resizer else None, source_as_given=listing.given,
        check=check, warnings=[(p, w) for p, w in noted])
    writer.finish(meta, [listing.relative_paths[i] for i in positions],
                  [listing.targets[i] for i in positions])
    return meta


def _skipped_positions(listing: Listing, skipped: list[list[str]]) -> set[int]:
    names = {path for path, _ in skipped}
    return {i for i, rel in enumerate(listing.relative_paths) if rel in names}


def check_what_is_left(root: str, classes: Sequence[str], kept: Mapping[int, int],
                       skipped: Sequence[Sequence[str]], allow_empty: bool,
                       decidable: Collection[int] | None = None) -> None:
    """What ``on_error="skip"`` left must still be an ImageFolder: a conversion that stores
    nothing is an error, not an empty database; so is a class whose every file was refused
    (an empty class, which ImageFolder refuses unless ``allow_empty``). ``kept``: stored
    files per class index; ``skipped``: ``(relative path, reason)`` in listing order.
    ``decidable``: the classes this part of a conversion may judge (a lone shard: those whose
    every file it holds), with no judgement of the whole; None: the whole conversion."""
    if not skipped:
        return
    if decidable is None and not any(kept.values()):
        path, reason = skipped[0]
        # No check="structure" here: it would store files that fail to decode, which is
        # what the default check exists to prevent, and it cannot help an unreadable file.
        raise SourceError(f"every one of the {len(skipped)} files of {root!r} was refused "
                          f"(the first, {path!r}: {reason}); nothing to store: fix or replace "
                          "the files, or convert the folder that holds the images")
    if allow_empty:
        return
    judged = range(len(classes)) if decidable is None else sorted(decidable)
    lost = [classes[c] for c in judged if not kept.get(c)]
    if lost:
        names = set(lost)
        first = next(((p, r) for p, r in skipped if p.split(os.sep, 1)[0] in names), None)
        example = f" (the first, {first[0]!r}: {first[1]})" if first else ""
        raise SourceError(f"every file of the classes {', '.join(lost)} was refused{example}; "
                          "fix or replace those files, or pass allow_empty=True to keep them "
                          "as empty classes")
