"""``lmdbio.convert``: an ImageFolder tree into one LMDB file, crash-safe and resumable.

The output is written as ``DST.partial`` and renamed to ``DST`` only when complete, so ``DST``
is either a complete database or absent. A killed run leaves ``DST.partial`` with a checkpoint
at its last commit; ``resume=True`` continues from there when the source listing is unchanged.
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import os
import stat
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import lmdb

from . import __version__
from .errors import (ConcurrentWriteError, DestinationError, OutputExistsError, ResumeError,
                     printable)
from .folder import IMG_EXTENSIONS
from .format import Metadata
from .progress import Progress
from .publish import discard, publish, same_file
from .resize import Resizer, check_resume_setting, make_resizer
from .shard_plan import ShardSpec, plan, shard_path, slice_listing
from .sources import Listing, default_read_workers, list_source, read_in_order, source_error
from .system import peak_rss_bytes
from .writer import Checkpoint, LmdbWriter

__all__ = ["ConvertReport", "convert", "default_destination"]

OnError = Literal["fail", "skip"]


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

    @property
    def images_per_second(self) -> float:
        return (self.num_samples - self.resumed_from) / self.seconds if self.seconds else 0.0

    @property
    def megabytes_per_second(self) -> float:
        return self.payload_bytes / 1e6 / self.seconds if self.seconds else 0.0

    def __str__(self) -> str:
        lines = [f"wrote {self.num_samples} images of {len(self.classes)} classes to "
                 f"{self.destination} ({self.file_bytes / 1e6:.1f} MB) in {self.seconds:.1f} s: "
                 f"{self.images_per_second:.0f} images/s, {self.megabytes_per_second:.1f} MB/s, "
                 f"peak RSS {self.peak_rss_bytes / 1e6:.0f} MB"]
        if self.resumed_from:
            lines.append(f"resumed after {self.resumed_from} images")
        if self.skipped:
            lines.append(f"skipped {len(self.skipped)} bad files:")
            lines += [f"  {printable(path)}: {printable(reason)}"  # source names: any bytes
                      for path, reason in self.skipped]
        return "\n".join(lines)


def default_destination(source: str | os.PathLike[str], suffix: str = ".lmdb") -> str:
    """``data/train`` -> ``data/train.lmdb``, next to the source as in pytorch-lmdb (another
    ``suffix`` for other formats of the same source)."""
    return os.path.normpath(os.path.abspath(os.path.expanduser(os.fspath(source)))) + suffix


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
    extensions: Sequence[str] = IMG_EXTENSIONS,
    progress: bool = True,
    shard: tuple[int, int] | None = None,
    max_size: int | None = None,
    quality: int | None = None,
) -> ConvertReport:
    """Convert the ImageFolder at ``source`` into the LMDB file ``destination``.

    Sample order and classes are exactly ``torchvision.datasets.ImageFolder(source)``'s.
    Files are read by ``workers`` threads (default: 16 on a network or FUSE file system, 4 on
    a local disk: ``sources.default_read_workers``); records are committed every
    ``commit_bytes``.
    ``on_error="skip"`` leaves out unreadable or non-image files and lists them in the report
    and the metadata; ``verify_images`` fully decodes each image (catches truncated JPEGs).
    ``shard=(i, n)`` writes only shard ``i`` of ``n`` (a contiguous block of the listing) to
    ``destination`` with ``-0000i-of-0000n`` before ``.lmdb`` (see ``lmdbio.shards``).
    ``max_size`` downscales images longer than that many pixels and re-encodes them (JPEGs
    at JPEG ``quality``, default 90); others keep their bytes (see ``lmdbio.resize``).
    """
    if on_error not in ("fail", "skip"):
        raise ValueError(f"on_error must be 'fail' or 'skip', not {on_error!r}")
    workers = default_read_workers(source) if workers is None else workers
    if workers < 1 or commit_bytes < 1:
        raise ValueError(f"workers and commit_bytes must be >= 1, not {workers}, {commit_bytes}")
    resizer = make_resizer(max_size, quality)
    setting = resizer.setting if resizer else [None, None]
    started = time.perf_counter()
    extensions = (extensions,) if isinstance(extensions, str) else tuple(extensions)
    dst = (os.path.abspath(os.path.expanduser(os.fspath(destination))) if destination
           else default_destination(source))  # "~" expanded as for the source
    dst = shard_path(dst, *shard) if shard else dst
    _check_destination(dst, overwrite)
    listing = list_source(source, extensions, workers)
    spec = plan(*shard, len(listing)) if shard else ShardSpec(0, 1, 0, len(listing), len(listing))
    listing = slice_listing(listing, spec)  # the fingerprint stays the whole source's
    partial = dst + ".partial"
    guard = _lock_partial(partial, keep=resume)
    writer = None
    try:
        writer = LmdbWriter(partial, fd=guard)  # the map grows with the data (writer.py)
        finished = writer.finished_metadata() if resume else None
        if finished is not None and finished.source_fingerprint == listing.fingerprint and (
                finished.shard_index, finished.shard_count) == (spec.index, spec.count):
            # killed after the last commit, before the rename: nothing left but publishing
            check_resume_setting([finished.max_size, finished.quality], setting, partial)
            writer.close()
            state, meta = {"written": finished.num_samples}, finished
        else:
            state = _start_state(writer, listing, resume, partial, spec, setting, on_error)
            meta = _write_records(writer, listing, spec, state, on_error=on_error,
                                  verify_images=verify_images, workers=workers,
                                  commit_bytes=commit_bytes, progress=progress,
                                  extensions=extensions, resizer=resizer)
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
        peak_rss_bytes=peak_rss_bytes())


def _check_destination(dst: str, overwrite: bool) -> None:
    folder = os.path.dirname(dst)
    if not os.path.isdir(folder):
        raise DestinationError(f"destination folder {folder!r} does not exist; create it first")
    if os.path.isdir(dst):
        raise DestinationError(f"destination {dst!r} is a directory; pass a file name such as "
                               "train.lmdb")
    if os.path.exists(dst) and not overwrite:
        raise OutputExistsError(f"destination {dst!r} already exists; pass --overwrite "
                                "(overwrite=True) to replace it, or choose another DST")


def _lock_partial(partial: str, keep: bool) -> int:
    """An exclusive lock on ``DST.partial`` so two conversions never write one file.

    Whoever can write the destination folder can plant anything at ``DST.partial``: a symlink
    to a victim file, a hard link to one, a FIFO, a device node, a file they own and keep
    open. Only a regular file this user owns, with one link, opened without following a
    symlink, is written (and resumed); anything else but a folder is unlinked (the link
    itself, never its target) and a new file is created with ``O_EXCL``. The returned fd is
    the inode LMDB then writes (``LmdbWriter(fd=...)``). Unless ``keep`` (resuming), a stale
    partial file is emptied; LMDB starts afresh on an empty file.
    """
    for _ in range(8):  # each retry follows an unlink: only a racing planter loops
        try:
            found = os.lstat(partial)
        except FileNotFoundError:
            found = None
        except OSError as exc:
            raise DestinationError(f"cannot inspect {partial!r} ({exc.strerror}); check that "
                                   "the folder is readable") from None
        if found is not None and stat.S_ISDIR(found.st_mode):
            raise DestinationError(f"{partial!r} is a folder; remove it (lmdbio writes its "
                                   "partial output under that name), then convert again")
        if found is not None and not _writable_partial(found):
            # A run killed between publish's link() and unlink() leaves DST.partial as a
            # second name of the complete DST (tests/test_reliability_kill.py); a planted
            # link, FIFO or foreign file: never write through any of them.
            _unlink_quietly(partial)
            continue
        flags = os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        try:
            fd = os.open(partial, flags | (os.O_CREAT | os.O_EXCL if found is None else 0),
                         0o644)
        except (FileExistsError, FileNotFoundError, IsADirectoryError):
            continue  # changed since the lstat: look again
        except OSError as exc:
            if exc.errno == errno.ELOOP:  # a symlink swapped in since the lstat
                _unlink_quietly(partial)
                continue
            raise DestinationError(f"cannot create {partial!r} ({exc.strerror}); check that "
                                   "the folder is writable") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise ConcurrentWriteError(f"another conversion is writing {partial!r}; wait for "
                                       "it or stop it") from None
        held = os.fstat(fd)
        if not _writable_partial(held) or not same_file(partial, fd):
            os.close(fd)  # swapped or linked since the open: start again from the lstat
            continue
        if not keep:
            os.ftruncate(fd, 0)
        return fd
    raise DestinationError(f"{partial!r} keeps being replaced while lmdbio opens it; "
                           "someone else writes the destination folder: use a private one")


def _writable_partial(found: os.stat_result) -> bool:
    return (stat.S_ISREG(found.st_mode) and found.st_nlink == 1
            and found.st_uid == os.geteuid())


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise DestinationError(f"cannot remove {path!r} ({exc.strerror}), which lmdbio will "
                               "not write through; remove it by hand") from None


def _start_state(writer: LmdbWriter, listing: Listing, resume: bool, partial: str,
                 spec: ShardSpec, setting: list[int | None], on_error: str) -> Checkpoint:
    fresh: Checkpoint = {"fingerprint": listing.fingerprint, "position": 0, "written": 0,
                         "payload_bytes": 0, "skipped": [], "shard": [spec.index, spec.count],
                         "resize": setting, "on_error": on_error}
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
                          f"{on_error!r}; resume with --on-error {started}, or convert again "
                          "without --resume")
    return checkpoint


def _write_records(writer: LmdbWriter, listing: Listing, spec: ShardSpec, state: Checkpoint, *,
                   on_error: OnError, verify_images: bool, workers: int, commit_bytes: int,
                   progress: bool, extensions: Sequence[str],
                   resizer: Resizer | None) -> Metadata:
    skipped: list[list[str]] = [list(item) for item in state["skipped"]]
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
                                       "on_error": on_error})
        written += len(batch)
        batch, batch_bytes = [], 0

    with Progress(len(listing), state["position"], enabled=progress) as bar:
        for result in read_in_order(listing, state["position"], workers=workers,
                                    full_decode=verify_images, transform=resizer):
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
    meta = Metadata(
        num_samples=written, classes=listing.classes, source_root=listing.root,
        source_fingerprint=listing.fingerprint, extensions=list(extensions),
        payload_bytes=payload_bytes, skipped=[(p, r) for p, r in skipped],
        lmdbio_version=__version__, lmdb_version=".".join(map(str, lmdb.version())),
        created_utc=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        shard_index=spec.index, shard_count=spec.count, shard_start=spec.start,
        shard_stop=spec.stop, listing_total=spec.total,
        max_size=resizer.max_size if resizer else None,
        quality=resizer.quality if resizer else None)
    writer.finish(meta, [listing.relative_paths[i] for i in positions],
                  [listing.targets[i] for i in positions])
    return meta


def _skipped_positions(listing: Listing, skipped: list[list[str]]) -> set[int]:
    names = {path for path, _ in skipped}
    return {i for i, rel in enumerate(listing.relative_paths) if rel in names}

