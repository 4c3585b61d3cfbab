"""Writers for the peer storage strategies the study compares lmdbio with: WebDataset tar
shards and a LitData optimized dataset (the ``peers`` extra: ``pip install -e ".[peers]"``).

Both take the sample order from ``lmdbio.folder`` (torchvision's ImageFolder order without
importing it), so sample *i* carries ImageFolder's index *i* and label; both store the original
file bytes unchanged (no re-encode, no pickle) and the label as an int. Each writes into
``DST.partial`` and renames it to ``DST`` when complete, so a half-written output never sits
under the final name. Beside the data each leaves ``lmdbio-peer.json`` (classes, counts) so a
reader needs no ImageFolder walk.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import shutil
from collections.abc import Sequence
from typing import Any

from .errors import OutputExistsError
from .folder import IMG_EXTENSIONS, find_classes, make_dataset

__all__ = ["MANIFEST", "PEER_FORMATS", "SHARD_SAMPLES", "SHUFFLE_BUFFER", "SUFFIXES",
           "available", "default_destination", "read_manifest", "require", "sizes", "write",
           "write_litdata", "write_webdataset"]

PEER_FORMATS = ("webdataset", "litdata")
SUFFIXES = {"webdataset": ".wds", "litdata": ".litdata"}
MODULES = {"webdataset": "webdataset", "litdata": "litdata"}
MANIFEST = "lmdbio-peer.json"
INSTALL = 'pip install -e ".[peers]"'
SHARD_SAMPLES = 256   # samples per WebDataset shard / LitData chunk (study default, see README)
SHUFFLE_BUFFER = 1000  # WebDataset reader's shuffle buffer (its documented default size)


def available() -> tuple[str, ...]:
    """The peer formats whose package is installed (found, not imported: that costs seconds)."""
    return tuple(f for f in PEER_FORMATS if importlib.util.find_spec(MODULES[f]) is not None)


def require(fmt: str) -> Any:
    """Import the package behind ``fmt``, or one line saying how to install the extra."""
    if fmt not in PEER_FORMATS:
        raise ValueError(f"peer format must be one of {PEER_FORMATS}, not {fmt!r}")
    if fmt == "litdata":  # never ask PyPI for a newer version in the middle of a benchmark
        os.environ.setdefault("LITDATA_DISABLE_VERSION_CHECK", "1")
    try:
        return importlib.import_module(MODULES[fmt])
    except ImportError:
        raise ImportError(f"the {fmt} storage strategy needs the peers extra: {INSTALL}"
                          ) from None


def default_destination(source: str | os.PathLike[str], fmt: str) -> str:
    """``data/train`` -> ``data/train.wds`` / ``data/train.litdata``, as ``.lmdb`` for lmdbio."""
    return os.path.normpath(os.path.abspath(os.path.expanduser(os.fspath(source)))) + SUFFIXES[fmt]


def _listing(source: str) -> tuple[list[str], list[tuple[str, int]]]:
    classes, class_to_idx = find_classes(source)
    return classes, make_dataset(source, class_to_idx, IMG_EXTENSIONS)


def _begin(destination: str, overwrite: bool) -> str:
    """The ``.partial`` folder to write into, after refusing or clearing what is in the way."""
    if os.path.exists(destination):
        if not overwrite:
            raise OutputExistsError(f"{destination!r} exists; pass overwrite=True to replace it")
    partial = destination + ".partial"
    shutil.rmtree(partial, ignore_errors=True)  # a killed earlier run: start again
    os.makedirs(partial)
    return partial


def _publish(partial: str, destination: str, manifest: dict[str, Any]) -> None:
    with open(os.path.join(partial, MANIFEST), "w") as handle:
        json.dump(manifest, handle, indent=1)
    if os.path.exists(destination):  # overwrite=True: the old output goes only now
        shutil.rmtree(destination)
    os.replace(partial, destination)


def read_manifest(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``lmdbio-peer.json`` of a written peer dataset, with a clear error if absent."""
    file = os.path.join(os.fspath(path), MANIFEST)
    if not os.path.exists(file):
        raise FileNotFoundError(f"no {MANIFEST} in {os.fspath(path)!r}: write it with "
                                "lmdbio.peers.write() (or the convert notebook) first")
    with open(file) as handle:
        return json.load(handle)


def write_webdataset(source: str | os.PathLike[str], destination: str | None = None, *,
                     shard_samples: int = SHARD_SAMPLES, overwrite: bool = False) -> str:
    """ImageFolder -> ``shard-000000.tar`` ... of ``shard_samples`` samples each.

    Each sample is ``KEY.EXT`` (the original file's bytes; EXT its lower-case extension, so
    WebDataset's own decoders would recognise it) and ``KEY.cls`` (the label as text), KEY the
    ImageFolder index, zero-padded."""
    wds = require("webdataset")
    source = os.fspath(source)
    destination = destination or default_destination(source, "webdataset")
    classes, samples = _listing(source)
    partial = _begin(destination, overwrite)
    pattern = os.path.join(partial, "shard-%06d.tar")
    with wds.ShardWriter(pattern, maxcount=shard_samples, maxsize=1 << 40, verbose=0) as sink:
        for index, (path, label) in enumerate(samples):
            ext = os.path.splitext(path)[1].lower().lstrip(".")
            with open(path, "rb") as handle:
                sink.write({"__key__": f"{index:08d}", ext: handle.read(), "cls": label})
    shards = sorted(n for n in os.listdir(partial) if n.endswith(".tar"))
    counts = [min(shard_samples, len(samples) - i * shard_samples) for i in range(len(shards))]
    _publish(partial, destination, {"format": "webdataset", "classes": classes,
                                    "num_samples": len(samples), "shards": shards,
                                    "shard_samples": counts, "source": os.path.abspath(source)})
    return destination


def _litdata_sample(item: tuple[int, str, int]) -> dict[str, Any]:
    """One LitData sample: module level, so litdata's worker processes can import it."""
    index, path, label = item
    with open(path, "rb") as handle:
        return {"index": index, "label": label, "image": handle.read()}


def write_litdata(source: str | os.PathLike[str], destination: str | None = None, *,
                  chunk_samples: int = SHARD_SAMPLES, num_workers: int = 2,
                  overwrite: bool = False) -> str:
    """ImageFolder -> a LitData optimized dataset (``litdata.optimize``): chunks of
    ``chunk_samples`` samples ``{"index": int, "label": int, "image": bytes}``, bytes unchanged.

    ``optimize`` splits the work between ``num_workers`` processes, so chunk order is not the
    ImageFolder order; every sample keeps its ImageFolder ``index``."""
    litdata = require("litdata")
    source = os.fspath(source)
    destination = destination or default_destination(source, "litdata")
    classes, samples = _listing(source)
    partial = _begin(destination, overwrite)
    inputs = [(index, path, label) for index, (path, label) in enumerate(samples)]
    litdata.optimize(fn=_litdata_sample, inputs=inputs, output_dir=partial,
                     chunk_size=chunk_samples, num_workers=max(1, num_workers),
                     reorder_files=False, verbose=False, start_method="fork")
    _publish(partial, destination, {"format": "litdata", "classes": classes,
                                    "num_samples": len(samples), "chunk_samples": chunk_samples,
                                    "source": os.path.abspath(source)})
    return destination


def write(fmt: str, source: str | os.PathLike[str], destination: str | None = None,
          **options: Any) -> str:
    """``write_webdataset`` or ``write_litdata`` by name; returns the destination."""
    writers = {"webdataset": write_webdataset, "litdata": write_litdata}
    if fmt not in writers:
        raise ValueError(f"peer format must be one of {PEER_FORMATS}, not {fmt!r}")
    return writers[fmt](source, destination, **options)


def sizes(paths: Sequence[str]) -> int:
    """Bytes on disk (allocated blocks) of files and trees."""
    total = 0
    for path in paths:
        walk = os.walk(path) if os.path.isdir(path) else [("", [], [path])]
        for root, _, files in walk:
            total += sum(os.stat(os.path.join(root, f)).st_blocks * 512 for f in files)
    return total
