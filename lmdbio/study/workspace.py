"""Where a notebook's data lives, and getting it ready: generate if empty, convert if missing.

``papermill notebooks/bench.ipynb out.ipynb -p data_dir DIR`` works for an empty DIR (a
synthetic cats-vs-dogs set is generated) and for an existing ImageFolder (``DIR/train/<class>``,
used as is); the LMDB file is converted next to the split folder when missing, and so are the
peer formats named in ``formats`` (``train.wds``, ``train.litdata``; the ``peers`` extra).
What is there already is used only if it was written from the split as it is now (the same
classes and files, in the same order, none modified after the database was written): a
benchmark must not compare
ImageFolder over today's files with a database of last week's.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from lmdbio.converter import convert, default_destination
from lmdbio.database import Database
from lmdbio.envs import EnvOptions, options_for
from lmdbio.sources import list_source
from lmdbio.study import peers
from lmdbio.study.conditions import FORMATS, PEER_FORMATS, checked, checked_counts, switch
from lmdbio.study.synthetic import ensure_dataset

__all__ = ["StaleDataError", "Workspace", "default_data_dir", "prepare"]


class StaleDataError(ValueError):
    """A database or peer dataset next to the split was written from another state of it."""


@dataclass(frozen=True)
class Workspace:
    data_dir: str     # holds the split folder and, by default, the .lmdb file
    split_dir: str    # the ImageFolder root, e.g. DATA/train
    lmdb_path: str    # e.g. DATA/train.lmdb
    converted: bool   # True if this call wrote the LMDB file
    peer_paths: dict[str, str] = field(default_factory=dict)  # format -> its folder


def default_data_dir(n_images: int, seed: int) -> str:
    """A per-size scratch folder, so the notebooks' tiny default runs need no argument."""
    return os.path.join(tempfile.gettempdir(), "lmdbio-data", f"synthetic-{n_images}-s{seed}")


def prepare(data_dir: str = "", *, split: str = "train", lmdb_path: str = "",
            n_images: int = 64, seed: int = 0, progress: bool = False,
            formats: Sequence[str] = (), overwrite: bool = False) -> Workspace:
    """Make sure ``data_dir/split`` is an ImageFolder, ``lmdb_path`` its database and each
    peer format in ``formats`` written next to it (others in ``formats`` need nothing).

    ``data_dir`` empty: a synthetic set in a scratch folder; given, it must exist (a new,
    empty folder gets the synthetic set: a mistyped path must not). An existing database or
    peer dataset written from another state of the split is a ``StaleDataError``;
    ``overwrite=True`` converts the database again whatever it holds."""
    overwrite = bool(switch("overwrite", overwrite, auto=False))  # papermill's "false" too
    checked_counts(n_images=n_images, seed=seed)
    formats = checked("formats", formats, FORMATS) if formats else []  # before any conversion
    if data_dir and not os.path.isdir(os.path.expanduser(data_dir)):
        raise FileNotFoundError(f"data_dir {data_dir!r} is not a folder; pass the folder that "
                                f"holds {split}/ (an empty folder you made: a synthetic set)")
    data_dir = os.path.abspath(os.path.expanduser(data_dir or default_data_dir(n_images, seed)))
    os.makedirs(data_dir, exist_ok=True)  # the scratch default
    split_dir = os.fspath(ensure_dataset(data_dir, n_images, seed=seed, split=split,
                                         progress=progress))
    lmdb_path = os.path.abspath(lmdb_path) if lmdb_path else default_destination(split_dir)
    converted = overwrite or not os.path.exists(lmdb_path)
    if converted:
        convert(split_dir, lmdb_path, overwrite=overwrite, progress=progress)
    else:
        _check_database(lmdb_path, split_dir)
    peer_paths = {}
    for fmt in (f for f in formats if f in PEER_FORMATS):
        peer_paths[fmt] = peers.default_destination(split_dir, fmt)
        if not os.path.exists(peer_paths[fmt]):
            peers.write(fmt, split_dir, peer_paths[fmt])
        else:
            _check_peer(peer_paths[fmt], split_dir)
    return Workspace(data_dir, split_dir, lmdb_path, converted, peer_paths)


def _stale(path: str, split_dir: str, remedy: str) -> StaleDataError:
    return StaleDataError(f"{path!r} was written from another state of {split_dir!r} (classes "
                          f"or files added, removed, renamed or changed since); {remedy}")


def _check_database(lmdb_path: str, split_dir: str) -> None:
    """The database holds the split's classes and paths, in ImageFolder's order (listed with
    the extensions it was converted with; one converted with an ``is_valid_file`` records
    none, and that listing cannot be redone: not checked)."""
    # options_for: shares the environment a dataset of this process may hold open already
    with Database(lmdb_path, options_for(lmdb_path, EnvOptions())) as db:
        meta, stored = db.meta, db.relative_paths()
    if not meta.extensions:
        return
    listing = list_source(split_dir, tuple(meta.extensions), allow_empty=True)
    listed = listing.relative_paths
    skipped = {path for path, _ in meta.skipped}  # listed, refused at conversion
    kept = [path for path in listed if path not in skipped]
    # a file rewritten under its name since the conversion: modified after the database was
    # last written (both times from the same file system, unlike the fingerprint's
    # nanoseconds through sshfs, which reports whole seconds); a time in the future, from a
    # clock that is ahead, cannot tell, and converting again would not change it
    changed = os.stat(lmdb_path).st_mtime_ns < listing.newest_mtime_ns <= time.time_ns()
    if listing.classes == meta.classes and kept == stored and \
            len(kept) + len(skipped) == len(listed) and not changed:
        return
    if os.path.basename(os.path.realpath(meta.source_root)) != \
            os.path.basename(os.path.realpath(split_dir)):  # e.g. lmdb_path of another split:
        raise StaleDataError(  # converting it again would replace that split's database
            f"{lmdb_path!r} was converted from {meta.source_root!r}, not from {split_dir!r}; "
            "pass the lmdb_path of this split (or none: <data_dir>/<split>.lmdb)")
    raise _stale(lmdb_path, split_dir, "convert it again (the convert notebook with "
                 f"overwrite=True, or 'lmdbio convert {split_dir} {lmdb_path} --overwrite') "
                 "or delete it")


def _check_peer(path: str, split_dir: str) -> None:
    recorded = peers.read_manifest(path).get("listing_digest")
    if recorded is not None and recorded != peers.listing_digest(split_dir):  # None: a
        # manifest written before the digest was recorded, which cannot tell
        raise _stale(path, split_dir, "delete it, and it is written again")
