"""Opt-in reader for databases written by the pytorch-lmdb seed tools (pickled records).

The seed stores ``pickle((image, label))`` under ``str(index)`` keys, plus ``__keys__`` and
``__len__``. Unpickling runs code chosen by whoever wrote the file, so this reader is used only
with ``allow_pickle=True``, and even then through an unpickler that admits nothing but the
NumPy array types the seed's labels use (and ``_codecs.encode``, how old pickle protocols spell
bytes). Convert such a database once with
``lmdbio convert`` after extracting it, or read it here.
"""

from __future__ import annotations

import functools
import io
import operator
import os
import pickle
from collections.abc import Iterable, Sequence
from typing import Any

import lmdb

from . import envs
from .errors import CorruptRecordError, FormatError, LegacyFormatError
from .format import Metadata

__all__ = ["LegacyDatabase", "is_legacy"]

_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    # pickle protocol 5 (Python >= 3.14's default) rebuilds arrays with _frombuffer
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    # protocols 0-2 spell bytes as _codecs.encode(str, "latin1")
    ("_codecs", "encode"),
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED:
            raise LegacyFormatError(f"legacy record references {module}.{name}, which lmdbio "
                                    "refuses to load; re-convert the source with lmdbio")
        return super().find_class(module, name)


def _unpickle(blob: bytes) -> Any:
    try:
        return _NumpyOnlyUnpickler(io.BytesIO(blob)).load()
    except LegacyFormatError:
        raise
    except Exception as exc:  # any malformed pickle: report, never crash differently
        raise CorruptRecordError(f"legacy record does not unpickle ({exc}); re-convert the "
                                 "source") from None


def _as_bytes(image: Any) -> bytes:
    while isinstance(image, (list, tuple)) and len(image) == 1:
        image = image[0]  # the seed's DataLoader collate wraps the bytes in a list
    if not isinstance(image, (bytes, bytearray)):
        raise CorruptRecordError(f"legacy record holds {type(image).__name__}, not image bytes")
    return bytes(image)


# Labels become a class list of max(label) + 1 names: bound them, so a crafted label of 10**12
# cannot ask for a 10**12-element list. ImageFolder labels are below the number of classes,
# which is at most the number of samples; a seed subset may skip classes, hence the floor.
_MIN_LABEL_LIMIT = 1 << 16


def _as_int(value: Any, what: str) -> int:
    """An integer the pickle holds (Python or NumPy), never a bool, string, float or list."""
    if hasattr(value, "reshape") and getattr(value, "size", 0) == 1:
        value = value.reshape(-1)[0]  # the seed stores array([label])
    elif isinstance(value, (list, tuple)) and len(value) == 1:
        value = value[0]
    if isinstance(value, bool) or not hasattr(value, "__index__"):
        raise CorruptRecordError(f"{what} is {_short(value)}, not an integer; the seed file is "
                                 "damaged or hostile: re-convert the source")
    try:
        return operator.index(value)
    except (TypeError, ValueError, OverflowError):
        raise CorruptRecordError(f"{what} is {_short(value)}, not an integer") from None


def _short(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:40]}{'...' if len(text) > 40 else ''}"


def is_legacy(txn: lmdb.Transaction) -> bool:
    return txn.get(b"__keys__") is not None and txn.get(b"__len__") is not None


class LegacyDatabase:
    """Reads a seed database through the same interface as ``database.Database``
    (``access.SampleReader``)."""

    def __init__(self, path: str | os.PathLike[str], options: envs.EnvOptions | None = None,
                 **_: Any) -> None:
        self.path = os.path.expanduser(os.fspath(path))
        self.options = options or envs.EnvOptions()
        self._shared: envs.SharedEnv | None = None
        try:
            self._length = self._read_length()
        except BaseException:
            self.close()
            raise

    def _read_length(self) -> int:
        with self._env().begin() as txn:
            if not is_legacy(txn):
                raise FormatError(f"{self.path!r} is not a pytorch-lmdb seed database")
            length = _as_int(_unpickle(txn.get(b"__len__")), f"{self.path!r}: __len__")
            records = self._env().stat()["entries"] - 2  # all keys but __keys__, __len__
        if not 0 <= length <= records:  # bounds every loop over the samples by the file
            raise CorruptRecordError(f"{self.path!r}: __len__ is {length}, but the file holds "
                                     f"{records} records; it is damaged or hostile: re-convert "
                                     "the source")
        return length

    def _env(self) -> lmdb.Environment:
        if self._shared is None or self._shared.pid != os.getpid():
            self._shared = envs.acquire(self.path, self.options)
        return self._shared.env

    def __len__(self) -> int:
        return self._length

    def get(self, index: int) -> tuple[int, bytes]:
        if not 0 <= index < self._length:
            raise IndexError(f"sample index {index} out of range for {self._length} samples")
        with self._env().begin() as txn:
            blob = txn.get(str(index).encode("ascii"))
        if blob is None:
            raise CorruptRecordError(f"record {index} is missing from {self.path!r}")
        value = _unpickle(blob)
        if not isinstance(value, (list, tuple)) or len(value) != 2:
            raise CorruptRecordError(f"legacy record {index} is not an (image, label) pair")
        label = _as_int(value[1], f"{self.path!r}: record {index}'s label")
        if not 0 <= label < max(self._length, _MIN_LABEL_LIMIT):
            raise CorruptRecordError(f"{self.path!r}: record {index} has label {label}, outside "
                                     f"0..{max(self._length, _MIN_LABEL_LIMIT) - 1}; the seed "
                                     "file is damaged or hostile: re-convert the source")
        return label, _as_bytes(value[0])

    def targets(self) -> list[int]:
        """Every label; the seed stores none apart, so this reads the whole database."""
        return [self.get(i)[0] for i in range(self._length)]

    def relative_paths(self) -> list[str]:
        return [str(i) for i in range(self._length)]  # the seed keeps no file names

    @property
    def paths(self) -> list[str]:
        return [self.path]

    def will_need(self, start: int, stop: int) -> None:
        """Nothing: the seed's decimal string keys do not sort in index order, so records
        ``[start, stop)`` are not one byte range to ask storage for."""

    def will_need_records(self, indices: Iterable[int]) -> None:
        """Nothing: seed files are read as they always were (their records are pickles)."""

    def fetch_records(self, indices: Iterable[int]) -> None:
        """Nothing: seed files are read as they always were (their records are pickles)."""

    def records_cached(self, indices: Sequence[int]) -> list[bool]:
        """All True: seed files are read in the order asked, as they always were."""
        return [True] * len(indices)

    @functools.cached_property
    def meta(self) -> Metadata:
        labels = self.targets()
        classes = [str(i) for i in range(max(labels, default=-1) + 1)]
        return Metadata(num_samples=self._length, classes=classes, source_root="",
                        source_fingerprint="", extensions=[], payload_bytes=0)

    def close(self) -> None:
        if self._shared is not None:
            envs.release(self._shared)
        self._shared = None

    def __enter__(self) -> LegacyDatabase:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_shared": None}
