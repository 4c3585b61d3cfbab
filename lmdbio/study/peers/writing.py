"""Writers for the peer storage strategies the study compares lmdbio with: WebDataset tar
shards and a LitData optimized dataset (the ``peers`` extra: ``pip install 'lmdbio[peers]'``).

Both take the sample order from ``lmdbio.folder`` (torchvision's ImageFolder order without
importing it), so sample *i* carries ImageFolder's index *i* and label; both store the original
file bytes unchanged (no re-encode, no pickle) and the label as an int. Each writes into
``DST.partial`` and renames it to ``DST`` when complete, so a half-written output never sits
under the final name. Beside the data each leaves ``lmdbio-peer.json`` (classes, counts) so a
reader needs no ImageFolder walk.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator, Sequence
from typing import Any

from lmdbio.converter import default_destination as lmdb_destination
from lmdbio.errors import OutputExistsError
from lmdbio.folder import IMG_EXTENSIONS, find_classes, make_dataset
from lmdbio.publish import staged
from lmdbio.study.conditions import PEER_FORMATS, PEER_MODULES, installed_formats
from lmdbio.study.extras import require as require_extra

__all__ = ["MANIFEST", "SHARD_SAMPLES", "SHUFFLE_BUFFER", "SUFFIXES",
           "available", "default_destination", "listing_digest", "read_manifest", "require",
           "sizes", "write", "write_litdata", "write_webdataset"]

SUFFIXES = {"webdataset": ".wds", "litdata": ".litdata"}
MANIFEST = "lmdbio-peer.json"
SHARD_SAMPLES = 256   # samples per WebDataset shard / LitData chunk (study default, see README)
SHUFFLE_BUFFER = 1000  # WebDataset reader's shuffle buffer (its documented default size)


def available() -> tuple[str, ...]:
    """The peer formats whose package is installed (found, not imported: that costs seconds)."""
    return tuple(f for f in installed_formats() if f in PEER_FORMATS)


def require(fmt: str) -> Any:
    """Import the package behind ``fmt``, or one line saying how to install the extra."""
    if fmt not in PEER_FORMATS:
        raise ValueError(f"peer format must be one of {PEER_FORMATS}, not {fmt!r}")
    if fmt == "litdata":  # never ask PyPI for a newer version in the middle of a benchmark
        os.environ.setdefault("LITDATA_DISABLE_VERSION_CHECK", "1")
    return require_extra(PEER_MODULES[fmt], "peers", f"the {fmt} storage strategy")


def default_destination(source: str | os.PathLike[str], fmt: str) -> str:
    """``data/train`` -> ``data/train.wds`` / ``data/train.litdata``, as ``.lmdb`` for lmdbio."""
    return lmdb_destination(source, SUFFIXES[fmt])


def _listing(source: str) -> tuple[list[str], list[tuple[str, int]]]:
    classes, class_to_idx = find_classes(source)
    return classes, make_dataset(source, class_to_idx, IMG_EXTENSIONS)


def listing_digest(source: str | os.PathLike[str]) -> str:
    """SHA-256 of the split's class list and its samples' paths relative to it, in
    ImageFolder's order: what a manifest records, so a reader can tell a dataset written from
    another state of the split (sizes and modification times are left out: over SFTP times
    have whole seconds, and a copy made without -p changes them)."""
    classes, samples = _listing(os.fspath(source))
    return _digest(classes, [os.path.relpath(path, source) for path, _ in samples])


def _digest(classes: Sequence[str], relative: Sequence[str]) -> str:
    text = "\0".join(classes) + "\1" + "\0".join(relative)
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()


def _check_free(destination: str, overwrite: bool) -> None:
    if os.path.exists(destination) and not overwrite:
        raise OutputExistsError(f"{destination!r} exists; pass overwrite=True to replace it")


def _write_manifest(partial: str, manifest: dict[str, Any]) -> None:
    with open(os.path.join(partial, MANIFEST), "w") as handle:
        json.dump(manifest, handle, indent=1)


def read_manifest(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``lmdbio-peer.json`` of a written peer dataset, with a clear error if absent."""
    file = os.path.join(os.fspath(path), MANIFEST)
    if not os.path.exists(file):
        raise FileNotFoundError(f"no {MANIFEST} in {os.fspath(path)!r}: write it with "
                                "lmdbio.study.peers.write() (or the convert notebook) first")
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
    digest = _digest(classes, [os.path.relpath(path, source) for path, _ in samples])
    _check_free(destination, overwrite)
    with staged(destination) as partial:  # the old output (overwrite) goes only when done
        os.makedirs(partial)
        pattern = os.path.join(partial, "shard-%06d.tar")
        with wds.ShardWriter(pattern, maxcount=shard_samples, maxsize=1 << 40,
                             verbose=0) as sink:
            for index, (path, label) in enumerate(samples):
                ext = os.path.splitext(path)[1].lower().lstrip(".")
                with open(path, "rb") as handle:
                    sink.write({"__key__": f"{index:08d}", ext: handle.read(), "cls": label})
        shards = sorted(n for n in os.listdir(partial) if n.endswith(".tar"))
        counts = [min(shard_samples, len(samples) - i * shard_samples)
                  for i in range(len(shards))]
        _write_manifest(partial, {"format": "webdataset", "classes": classes,
                                  "num_samples": len(samples), "shards": shards,
                                  "shard_samples": counts, "source": os.path.abspath(source),
                                  "listing_digest": digest})
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
    digest = _digest(classes, [os.path.relpath(path, source) for path, _ in samples])
    _check_free(destination, overwrite)
    inputs = [(index, path, label) for index, (path, label) in enumerate(samples)]
    with staged(destination) as partial, _litdata_scratch():
        os.makedirs(partial)
        litdata.optimize(fn=_litdata_sample, inputs=inputs, output_dir=partial,
                         chunk_size=chunk_samples, num_workers=max(1, num_workers),
                         reorder_files=False, verbose=False, start_method="fork")
        _write_manifest(partial, {"format": "litdata", "classes": classes,
                                  "num_samples": len(samples), "chunk_samples": chunk_samples,
                                  "source": os.path.abspath(source),
                                  "listing_digest": digest})
    return destination


@contextlib.contextmanager
def _litdata_scratch() -> Iterator[None]:
    """``litdata.optimize`` keeps its chunk and data caches in the temporary folder
    (``/tmp/chunks``, ``/tmp/data``) and leaves them there: here in one of ours, removed after
    (its worker processes are forked, so they see the variables too)."""
    names = ("DATA_OPTIMIZER_CACHE_FOLDER", "DATA_OPTIMIZER_DATA_CACHE_FOLDER")
    before = {name: os.environ.get(name) for name in names}
    with tempfile.TemporaryDirectory(prefix="lmdbio-litdata-") as scratch:
        os.environ.update({name: os.path.join(scratch, name.lower()) for name in names})
        try:
            yield
        finally:
            for name, value in before.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value


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
