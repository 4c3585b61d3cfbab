"""Where a notebook's data lives, and getting it ready: generate if empty, convert if missing.

``papermill notebooks/bench.ipynb out.ipynb -p data_dir DIR`` works for an empty DIR (a
synthetic cats-vs-dogs set is generated) and for an existing ImageFolder (``DIR/train/<class>``,
used as is); the LMDB file is converted next to the split folder when missing, and so are the
peer formats named in ``formats`` (``train.wds``, ``train.litdata``; the ``peers`` extra).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field

from lmdbio.converter import convert, default_destination
from lmdbio.study import peers
from lmdbio.study.conditions import PEER_FORMATS
from lmdbio.study.synthetic import ensure_dataset

__all__ = ["Workspace", "default_data_dir", "prepare"]


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
            formats: Sequence[str] = ()) -> Workspace:
    """Make sure ``data_dir/split`` is an ImageFolder, ``lmdb_path`` its database and each
    peer format in ``formats`` written next to it (others in ``formats`` need nothing)."""
    data_dir = os.path.abspath(os.path.expanduser(data_dir or default_data_dir(n_images, seed)))
    split_dir = os.fspath(ensure_dataset(data_dir, n_images, seed=seed, split=split,
                                         progress=progress))
    lmdb_path = os.path.abspath(lmdb_path) if lmdb_path else default_destination(split_dir)
    converted = False
    if not os.path.exists(lmdb_path):
        convert(split_dir, lmdb_path, progress=progress)
        converted = True
    peer_paths = {}
    for fmt in (f for f in formats if f in PEER_FORMATS):
        peer_paths[fmt] = peers.default_destination(split_dir, fmt)
        if not os.path.exists(peer_paths[fmt]):
            peers.write(fmt, split_dir, peer_paths[fmt])
    return Workspace(data_dir, split_dir, lmdb_path, converted, peer_paths)
