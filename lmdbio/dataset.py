"""``ImageFolderLMDB``: a drop-in for ``torchvision.datasets.ImageFolder`` over one LMDB file
(or a set of shard files read as one dataset)."""

from __future__ import annotations

import operator
import os
from collections.abc import Callable, Sequence
from typing import Any

from PIL import Image
from torchvision.datasets import ImageFolder, VisionDataset

from .access import SampleReader, open_database
from .arrival import in_arrival_order
from .decode import decode_pil, pure_decoder
from .envs import EnvOptions, open_options
from .errors import (
    CorruptRecordError,
    DatabaseChangedError,
    DatabaseNotFoundError,
    ImageDecodeError,
    LmdbioError,
    SampleNotFoundError,
    printable,
)
from .format import data_file
from .prefetch import Prefetcher, fits_in_memory, prefetch_files, stop_all
from .shard_set import expand_paths
from .system import on_network_fs

__all__ = ["ImageFolderLMDB", "ImageTooLargeError", "UnidentifiedStoredImageError"]


class ImageTooLargeError(ImageDecodeError, Image.DecompressionBombError):
    """A stored image over Pillow's decompression-bomb limit (only a ``check="structure"``
    conversion stores one): Pillow's own ``DecompressionBombError``, as ImageFolder's loader
    raises, and an ``ImageDecodeError`` naming the record."""


class UnidentifiedStoredImageError(ImageDecodeError, Image.UnidentifiedImageError):
    """A stored payload Pillow cannot identify as an image (only a ``check="structure"``
    conversion stores one): Pillow's own ``UnidentifiedImageError``, as ImageFolder's loader
    raises, and an ``ImageDecodeError`` naming the record."""


def _fits_in_memory(root: str | list[str]) -> bool:
    """Whether the database file(s) take at most half the memory budget; a missing file
    answers True and is reported by the reader in its own words."""
    try:
        return fits_in_memory([data_file(p) for p in expand_paths(root)])
    except (OSError, DatabaseNotFoundError):
        return True


def _readahead_in_use(root: str | list[str], default: bool) -> bool:
    try:
        in_use = [o.readahead for p in expand_paths(root) if (o := open_options(p)) is not None]
    except (OSError, LmdbioError):
        return default  # the reader reports it in its own words
    return in_use[0] if in_use else default


class ImageFolderLMDB(ImageFolder):
    """Samples of an lmdbio database, indexed exactly like ``ImageFolder`` on the source tree.

    A ``torchvision.datasets.ImageFolder`` (so a ``VisionDataset``): ``isinstance`` checks,
    ``wrap_dataset_for_transforms_v2``, ``transforms`` (a ``StandardTransform``) and the repr
    are torchvision's; only ``root`` is the database (ImageFolder's is the source folder,
    which need not exist here). ``find_classes``/``make_dataset`` are ImageFolder's (they read
    a folder on disk, not the database).

    Args:
        root: the ``.lmdb`` file written by ``lmdbio convert``; or the shards of one
            conversion (``--num-shards``) as a glob pattern (``"train-*-of-00004.lmdb"``) or a
            list of files, read as one dataset with global indices.
        transform: applied to the decoded image (as in ImageFolder).
        target_transform: applied to the integer target.
        decode: bytes -> image; default ``decode_pil`` (RGB PIL image, like ImageFolder).
        readahead: let the kernel read ahead around each record (``True``) or read only the
            pages of each record (``False``, the seed's setting). ``"auto"`` (default): on when
            the file(s) fit in half the memory this process can use, where it turns the many
            small page faults of a cold random read into few large reads; off when they do
            not, where the neighbours it reads are evicted before use (README, "Performance").
        prefetch: read the file(s) front to back once in a background thread of this process
            (four concurrent streams on a network or FUSE file system, where one stream is
            bound by its window), so a cold epoch in any order runs at the storage's
            sequential bandwidth (see ``lmdbio.prefetch``). ``"auto"`` (default): only when the files take at most half
            of the memory this process can use (RAM, or its cgroup's limit); ``True`` always;
            ``False`` never. Started here, in the process that builds the dataset, so
            DataLoader workers share the one read; stopped by ``close()``. The stream takes
            CPU (FUSE, ssh) or bandwidth from the first batches: where a training step slower
            than the loader sets the pace, ``False`` starts a cold epoch sooner and costs ~7 %
            where the loader sets it (README, "When a slower step sets the pace"). Beside it, a batch
            whose next record is not in the page cache yet decodes others of the batch that
            are, and transforms in batch order (``arrival_order``; the same batch).
        batch_hints: when a DataLoader asks for a batch (``__getitems__``), ask storage for
            all of its records at once, in the background, before reading the first: a cold
            batch then waits for the slowest read instead of the sum of them all (records in
            the page cache cost a lookup, ~10 us each). ``"auto"`` (default): when this
            dataset does not prefetch its file(s) (they do not fit, or ``prefetch=False``);
            beside a prefetch, which reads them in order anyway, the random requests would
            slow its stream. There, on a network file system, the records of a batch that
            the stream has not reached yet (and only those) are read together by a few
            threads before the first is used (``batch_fetch``): one after another each would
            wait behind the stream's requests (0.45 s against 0.06 s for a cold batch of 64
            over sshfs at 1 Gb/s). Only for the first 256 records a worker asks for (a cold
            start): fetching every batch, a worker faster than the stream slowed it down.
            Samples are the same either way.
        lock: use LMDB's lock file; off by default, which is what read-only mounts need.
        max_readers: LMDB reader slots (only with ``lock=True``).
        verify_checksums: check each record's CRC32 before decoding it.
        allow_pickle: read a pytorch-lmdb seed database (pickled records). Off by default:
            unpickling runs code chosen by whoever wrote the file.

    Attributes ``classes``, ``class_to_idx``, ``samples`` (``imgs``) and ``targets`` are those of
    ``ImageFolder(source)``, ``source`` spelled as it was given to ``convert`` (files written
    before lmdbio recorded that spelling: its absolute path); ``extensions`` those the
    conversion listed (``None`` after ``is_valid_file``); ``loader(path)`` loads a ``samples``
    path from the database (decoded by ``decode``, no transform), as ImageFolder's loader
    loads it from the source; ``samples``/``targets`` are decoded on first use, so opening a
    database with a million samples reads a few hundred bytes. As in torchvision, these
    are plain attributes of the dataset's own, to assign or edit in place: once ``samples``
    is read or assigned (a subset, reordering or relabelling, ``ds.samples.pop()``),
    ``len(ds)`` and ``ds[i]`` follow that list, each path read from the record stored under
    it and each target taken from the list; ``targets``, ``imgs``, ``classes`` and
    ``class_to_idx`` are then what torchvision leaves them (``imgs`` the list ``samples`` was
    before it was rebound) and changing them changes no item; an assigned ``loader`` is
    called with each sample's path, as ImageFolder calls it (it reads the file system, not
    the database). The LMDB environment is opened
    lazily in each process that reads (safe with DataLoader workers under fork, spawn and
    forkserver) and is not pickled.
    """

    def __init__(self, root: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
                 transform: Callable[[Any], Any] | None = None,
                 target_transform: Callable[[int], Any] | None = None, *,
                 decode: Callable[[bytes], Any] = decode_pil,
                 readahead: bool | str = "auto", prefetch: bool | str = "auto",
                 batch_hints: bool | str = "auto", lock: bool = False, max_readers: int = 126,
                 verify_checksums: bool = True, allow_pickle: bool = False) -> None:
        VisionDataset.__init__(self, None, transform=transform,  # type: ignore[arg-type]
                               target_transform=target_transform)  # sets ``transforms``
        self.root: str | list[str] = (  # expanded as torchvision's VisionDataset does
            os.path.expanduser(os.fspath(root)) if isinstance(root, (str, os.PathLike))
            else [os.path.expanduser(os.fspath(p)) for p in root])
        self.decode = decode
        self._index_of: dict[str, int] | None = None
        for name, value in (("readahead", readahead), ("prefetch", prefetch),
                            ("batch_hints", batch_hints)):
            if value not in (True, False, "auto"):
                raise ValueError(f"{name} must be True, False or 'auto', not {value!r}")
        fits = _fits_in_memory(self.root)
        #: What ``readahead`` is for this dataset (``"auto"`` resolved: as the file is open
        #: already in this process, if it is, else on when the data fit in memory).
        self.readahead: bool = (_readahead_in_use(self.root, fits) if readahead == "auto"
                                else bool(readahead))
        readahead = self.readahead
        self.database: SampleReader = open_database(
            self.root, EnvOptions(readahead=readahead, lock=lock, max_readers=max_readers),
            verify_checksums=verify_checksums, allow_pickle=allow_pickle)
        self._samples: list[tuple[str, int]] | None = None  # the database's, decoded on use
        self._paths: list[str] | None = None  # record i's path, as ``samples`` spells it
        self._targets: list[int] | None = None
        # What the caller assigned or was handed, torchvision-style (None: the database's own,
        # never handed out). Only then do ``len``/``[i]`` read the list; a plain ``is None``
        # test keeps the default path as fast as before.
        self._assigned_samples: list[tuple[str, int]] | None = None
        self._assigned: dict[str, Any] = {}
        self._path_loader: Callable[[str], Any] | None = None  # an assigned ``loader``
        self._prefetchers: list[Prefetcher] = []
        if prefetch is True or (prefetch == "auto" and fits):
            self._prefetchers = prefetch_files(self.files)
        #: Whether batches are hinted to storage (``"auto"`` resolved); workers inherit it.
        self.batch_hints: bool = (not self._prefetchers if batch_hints == "auto"
                                  else bool(batch_hints))
        #: Whether a batch's records not yet in the page cache are read together before the
        #: first is used: ``batch_hints="auto"`` beside a prefetch on a network file system.
        self.batch_fetch: bool = (batch_hints == "auto" and bool(self._prefetchers)
                                  and any(on_network_fs(f) for f in self.files))
        #: Whether a batch whose next record is not in the page cache yet decodes others of it
        #: that are meanwhile: beside a prefetch of files that fit, with lmdbio's own decoders
        #: (``lmdbio.arrival``); a process stops looking once it finds a whole batch cached.
        self.arrival_order: bool = bool(self._prefetchers) and fits and pure_decoder(decode)
        self._warm_in: int | None = None  # the process that found a whole batch cached

    @property
    def files(self) -> list[str]:
        """The database file(s) read (one per shard)."""
        return [data_file(p) for p in self.database.paths]

    @property
    def prefetching(self) -> bool:
        """True while a prefetch started by this dataset is still reading."""
        return any(not p.done for p in self._prefetchers)

    # The attributes below are ImageFolder's plain attributes, made on first use: each is an
    # object of this dataset's own (edited in place or rebound, it changes nothing the
    # database or a copy of the dataset holds), ``imgs`` is the list ``samples`` was until
    # ``samples`` is rebound, and ``len``/``[i]`` follow ``samples`` once it is handed out.

    @property
    def classes(self) -> list[str]:
        return self._own("classes", lambda: list(self.database.meta.classes))

    @classes.setter
    def classes(self, value: list[str]) -> None:
        self._assigned["classes"] = value

    @property
    def class_to_idx(self) -> dict[str, int]:
        return self._own("class_to_idx", lambda: self.database.meta.class_to_idx)

    @class_to_idx.setter
    def class_to_idx(self, value: dict[str, int]) -> None:
        self._assigned["class_to_idx"] = value

    @property
    def targets(self) -> list[int]:
        return self._own("targets", lambda: list(self._stored_targets()))

    @targets.setter
    def targets(self, value: list[int]) -> None:
        self._assigned["targets"] = value

    @property
    def samples(self) -> list[tuple[str, int]]:
        """``(path in the source tree, target)``, as ImageFolder lists them."""
        if self._assigned_samples is None:  # from now on ``[i]`` reads what this list says,
            self._assigned_samples = self._stored_samples()  # as ImageFolder's ``[i]`` does
        return self._assigned_samples

    @samples.setter
    def samples(self, value: list[tuple[str, int]]) -> None:
        self._assigned_samples = value

    @property
    def imgs(self) -> list[tuple[str, int]]:
        """The same list as ``samples`` until ``samples`` is assigned, as in torchvision
        (``ImageFolder`` sets ``imgs = samples`` once)."""
        if "imgs" in self._assigned:
            return self._assigned["imgs"]  # type: ignore[no-any-return]
        if self._assigned_samples is None:
            return self.samples
        return self._stored_samples()

    @imgs.setter
    def imgs(self, value: list[tuple[str, int]]) -> None:
        self._assigned["imgs"] = value

    def _own(self, name: str, make: Callable[[], Any]) -> Any:
        if name not in self._assigned:
            self._assigned[name] = make()
        return self._assigned[name]

    def _stored_targets(self) -> list[int]:
        if self._targets is None:
            self._targets = self.database.targets()
        return self._targets

    def _stored_samples(self) -> list[tuple[str, int]]:
        """The database's list, made once: the one ``samples`` and ``imgs`` first hand out."""
        if self._samples is None:
            self._samples = list(zip(self._stored_paths(), self._stored_targets()))
        return self._samples

    def _stored_paths(self) -> list[str]:
        if self._paths is None:
            source = self.database.meta.samples_root
            self._paths = [os.path.join(source, rel) for rel in self.database.relative_paths()]
        return self._paths

    def _record_at(self, position: int, path: str | os.PathLike[str], where: str) -> int:
        """The record behind ``samples[position]``: the same position while the list holds
        the database's path there (one comparison: reading ``samples`` costs ``[i]`` nothing),
        else the record stored under ``path``."""
        paths = self._paths
        if paths is not None and 0 <= position < len(paths) and paths[position] == path:
            return position
        return self._record_of(path, where)

    def _record_of(self, path: str | os.PathLike[str], where: str) -> int:
        """The index of the record stored under ``path`` (a path as the database's own
        ``samples`` spell it); ``where`` names who asked, for the message."""
        if self._index_of is None:  # from the database, not from a list handed out
            self._index_of = {p: i for i, p in enumerate(self._stored_paths())}  # its strings
        try:
            return self._index_of[os.fspath(path)]  # type: ignore[index]
        except (KeyError, TypeError):
            shown = printable(repr(path))
            raise SampleNotFoundError(
                f"{where} {shown} is not stored in {self.database.path!r}; assign only paths "
                "from the dataset's own samples (spelled as they are, under "
                f"{self.database.meta.samples_root!r}), or re-convert the source with that "
                "file in it") from None

    @property
    def extensions(self) -> tuple[str, ...] | None:
        """The extensions the conversion listed; ``None`` when it used ``is_valid_file``."""
        return self._own("extensions", lambda: tuple(self.database.meta.extensions) or None)

    @extensions.setter
    def extensions(self, value: tuple[str, ...] | None) -> None:
        self._assigned["extensions"] = value

    @property
    def loader(self) -> Callable[[str], Any]:
        """``path`` (as in ``samples``) -> the decoded image, read from the database. One
        assigned instead is what ``[i]`` calls with the sample's path, as in ImageFolder:
        it reads the file system, not the database."""
        return self._path_loader if self._path_loader is not None else self._load_path

    @loader.setter
    def loader(self, value: Callable[[str], Any]) -> None:
        self._path_loader = value

    def _load_path(self, path: str | os.PathLike[str]) -> Any:
        index = self._record_of(path, "loader path")
        return self._decode(index, self._get(index)[1])

    def __len__(self) -> int:
        if self._assigned_samples is not None:
            return len(self._assigned_samples)
        return len(self.database)

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        return self._transformed(*self._decoded(index))

    def _decoded(self, index: int) -> tuple[Any, Any]:
        """``(decoded image, target)`` of sample ``index``, before the transforms."""
        index = operator.index(index)  # as a list index: "1" and 1.9 are a TypeError
        if self._path_loader is not None:
            path, target = self.samples[index]
            return self._path_loader(path), target
        if self._assigned_samples is not None:
            # as DatasetFolder: the path and target of the list, the image stored under it
            assigned = self._assigned_samples
            path, target = assigned[index]
            record = self._record_at(index if index >= 0 else index + len(assigned), path,
                                     f"samples[{index}] path")
            data = self._get(record)[1]
        else:
            if -len(self) <= index < 0:  # further down the read's IndexError names it as given
                index += len(self)
            record = index
            target, data = self._get(index)
        return self._decode(record, data), target

    def _transformed(self, sample: Any, target: Any) -> tuple[Any, Any]:
        if self.transform is not None:
            sample = self.transform(sample)
        if self.target_transform is not None:
            return sample, self.target_transform(target)
        return sample, target

    def __getitems__(self, indices: Sequence[int]) -> list[tuple[Any, Any]]:
        """A batch, as a DataLoader with a ``batch_size`` asks for it: ``[self[i] for i in
        indices]``, with the records asked of storage together first (``batch_hints``) and,
        while a cold batch waits for a prefetch, decoded in the order they arrive
        (``arrival_order``)."""
        indices = list(indices)  # read twice below: an iterator would be spent by the first
        if self._path_loader is not None:  # the records are not what it reads
            return [self[i] for i in indices]
        arrival = (self.arrival_order and self._warm_in != os.getpid()
                   and type(self).__getitem__ is ImageFolderLMDB.__getitem__
                   and pure_decoder(self.decode))  # ``decode`` may be reassigned
        records = None
        if self.batch_hints or self.batch_fetch or arrival:
            records = self._records_behind(indices)
        looked = self.database.records_cached(records) if arrival and records else None
        cold = looked is not None and not all(looked)
        if arrival and records and not cold:
            self._warm_in = os.getpid()  # a whole batch is cached: in a uniform shuffle the
            # stream is through, and this process's later batches skip the look (in an order
            # that keeps neighbours together it may come early: then they read in order)
        if records and self.batch_hints:
            self.database.will_need_records(records)
        elif records and self.batch_fetch:
            self.database.fetch_records(records)
            looked = None  # what was fetched is cached now
        if cold:
            assert records is not None
            return in_arrival_order(
                len(indices),
                lambda positions: self.database.records_cached([records[p] for p in positions]),
                lambda position: self._decoded(indices[position]),
                lambda _, item: self._transformed(*item), looked=looked)
        return [self[i] for i in indices]

    def _records_behind(self, indices: Sequence[int]) -> list[int] | None:
        """The records behind ``indices`` (sample indices, as ``__getitem__`` takes them); None
        when one is not there, which is left to the read to report."""
        assigned = self._assigned_samples
        try:
            count = len(self.database) if assigned is None else len(assigned)
            positions = [j + count if (j := operator.index(i)) < 0 else j for i in indices]
            if assigned is None:
                return positions
            return [self._record_at(p, assigned[p][0], "samples path") for p in positions]
        except (IndexError, TypeError, ValueError, SampleNotFoundError):
            return None

    def _where(self, index: int) -> str:
        try:
            return repr(self.database.relative_paths()[index])
        except (LmdbioError, IndexError):
            return "path unknown"

    def _get(self, index: int) -> tuple[int, bytes]:
        """The record; a damaged one's error names its index, stored path and the remedy."""
        try:
            return self.database.get(index)
        except DatabaseChangedError:
            raise  # not this record's fault: its own message and remedy (reopen) stand
        except LmdbioError as exc:
            text, mark = str(exc), f"record {index} ("
            if mark not in text:  # the message lacks the stored path: lead with it
                text = f"{mark}{self._where(index)}): {text}"
            if "re-convert" not in text and "restore" not in text:
                text += "; run 'lmdbio verify' on it and re-convert the source"
            try:
                error = type(exc)(text)
            except TypeError:  # a class with a richer constructor
                error = CorruptRecordError(text)
            raise error from None

    def _decode(self, index: int, data: bytes) -> Any:
        try:
            return self.decode(data)
        except (LmdbioError, MemoryError):
            raise
        except Image.DecompressionBombError as exc:
            raise self._undecodable(index, data, exc, ImageTooLargeError) from None
        except Image.UnidentifiedImageError as exc:
            raise self._undecodable(index, data, exc, UnidentifiedStoredImageError) from None
        except (OSError, SyntaxError, ValueError) as exc:  # "truncated", a mode convert()
            # refuses...: ImageDecodeError is an OSError and a ValueError, so code written for
            # ImageFolder's loader still catches it
            raise self._undecodable(index, data, exc) from None
        except Exception as exc:
            raise self._undecodable(index, data, exc) from exc  # payload; kept in the chain

    def _undecodable(self, index: int, data: bytes, exc: BaseException,
                     kind: type[ImageDecodeError] = ImageDecodeError) -> ImageDecodeError:
        """Pillow's own message names a BytesIO object; this one names the record."""
        where = self._where(index)
        what = "an empty payload" if not data else f"{len(data)} bytes starting {bytes(data[:8])!r}"
        return kind(
            f"record {index} ({where}) of {self.database.path!r} does not decode as an image "
            f"({type(exc).__name__}: {printable(str(exc).split(' <_io.')[0].strip())}; it holds "
            f"{what}); "
            "run 'lmdbio verify --decode' on it and re-convert the source")

    def will_need(self, start: int, stop: int) -> None:
        """Ask storage for samples ``[start, stop)`` now, in one asynchronous read; a sampler
        that knows what comes next calls it (``BlockShuffleSampler`` does, per block)."""
        assigned = self._assigned_samples
        if assigned is None:
            self.database.will_need(start, stop)
            return
        try:  # the records behind an assigned list: one read per run of consecutive ones
            records = sorted({self._record_of(path, "samples path")
                              for path, _ in assigned[start:stop]})
        except SampleNotFoundError:
            return  # a hint: the read itself reports the path
        begin = 0
        for i in range(1, len(records) + 1):
            if i == len(records) or records[i] != records[i - 1] + 1:
                self.database.will_need(records[begin], records[i - 1] + 1)
                begin = i

    def close(self) -> None:
        """Stop any prefetch and release the LMDB environment (needed before evicting its pages
        from the cache)."""
        stop_all(self._prefetchers)
        self._prefetchers = []
        self.arrival_order = False  # no stream to wait for any more
        self.database.close()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_assigned"] = dict(self._assigned)  # a copy's rebinding leaves this one alone
        state["_prefetchers"] = []  # threads stay in the process that started them
        state["_index_of"] = None  # rebuilt on use
        return state

    def __repr__(self) -> str:
        """torchvision's layout; also when a transform is a class such as ``str``, whose repr
        torchvision's ``StandardTransform`` cannot format."""
        try:
            return super().__repr__()
        except TypeError:
            pass
        body = [f"Number of datapoints: {len(self)}", f"Root location: {self.root}"]
        body += self.extra_repr().splitlines()
        if self.transforms is not None:
            body.append(type(self.transforms).__name__)
            for head, value in (("Transform: ", self.transform),
                                ("Target transform: ", self.target_transform)):
                if value is not None:
                    lines = repr(value).splitlines()
                    body += [head + lines[0]] + [" " * len(head) + ln for ln in lines[1:]]
        return "\n".join([f"Dataset {type(self).__name__}"]
                         + [" " * self._repr_indent + line for line in body])
