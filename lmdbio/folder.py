"""Class discovery and sample order, exactly as torchvision's ``ImageFolder`` does it.

Importing torchvision costs seconds, and ``lmdbio convert`` must start fast, so this module
mirrors ``torchvision.datasets.folder.find_classes`` / ``make_dataset`` without importing it.
``tests/lib/test_parity.py`` holds the two together: index *i* here is index *i* there.
The only deliberate difference: a directory loop through symlinks raises ``SourceError``
instead of walking until the path gets too long.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

from .errors import SourceError, SourceNotAFolderError

__all__ = ["IMG_EXTENSIONS", "find_classes", "has_file_allowed_extension", "make_dataset",
           "selection"]

# Same tuple, same order as torchvision.datasets.folder.IMG_EXTENSIONS.
IMG_EXTENSIONS: tuple[str, ...] = (
    ".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp",
)


def has_file_allowed_extension(filename: str, extensions: Sequence[str]) -> bool:
    """True if ``filename`` ends with one of ``extensions`` (compared lower-case); a single
    string is one extension, as in torchvision (not a sequence of one-letter suffixes)."""
    return filename.lower().endswith(
        extensions if isinstance(extensions, str) else tuple(extensions))


def find_classes(directory: str | os.PathLike[str]) -> tuple[list[str], dict[str, int]]:
    """Sorted names of the sub-directories of ``directory`` and their indices."""
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        # torchvision's os.scandir raises NotADirectoryError for a file: so does this
        error = SourceNotAFolderError if os.path.exists(directory) else SourceError
        what = "is not a directory" if os.path.exists(directory) else "does not exist"
        raise error(f"source {directory!r} {what}; pass the split folder that holds one "
                    "sub-folder per class (e.g. data/train)")
    classes = sorted(entry.name for entry in os.scandir(directory) if entry.is_dir())
    if not classes:
        raise SourceError(f"found no class folder in {directory!r}; an ImageFolder needs one "
                          "sub-folder per class (e.g. train/cat, train/dog)")
    return classes, {name: index for index, name in enumerate(classes)}


def _unreadable(error: OSError) -> None:
    raise SourceError(f"cannot list folder {error.filename!r} ({error.strerror}); fix its "
                      "permissions, or move it out of the tree") from None


def _walk_checked(target_dir: str) -> list[tuple[str, list[str], list[str]]]:
    """``os.walk(followlinks=True)`` that refuses symlink loops instead of recursing into them,
    and folders it cannot list: torchvision's walk passes over them in silence, so their
    images would be missing from a conversion that reports success (or be refused as an
    empty class, with ``allow_empty`` as the remedy)."""
    walked = []
    ancestors: dict[str, set[tuple[int, int]]] = {}
    for root, dirs, files in os.walk(target_dir, followlinks=True, onerror=_unreadable):
        stat = os.stat(root)
        seen = ancestors.get(os.path.dirname(root), set())
        identity = (stat.st_dev, stat.st_ino)
        if identity in seen:
            raise SourceError(f"symlink loop at {root!r}; remove the link or point it outside "
                              "its own ancestors")
        ancestors[root] = seen | {identity}
        walked.append((root, dirs, files))
    return walked


class _Default:
    def __repr__(self) -> str:
        return "IMG_EXTENSIONS unless is_valid_file is given"


DEFAULT: Any = _Default()  # "not given": ImageFolder's own rule decides (``selection``)


def selection(extensions: Sequence[str] | str | None = DEFAULT,
              is_valid_file: Callable[[str], bool] | None = None
              ) -> tuple[tuple[str, ...] | None, Callable[[str], bool] | None]:
    """``(extensions, is_valid_file)`` as ImageFolder passes them to ``make_dataset``:
    ``IMG_EXTENSIONS`` unless ``is_valid_file`` is given; both given, or both None, is
    torchvision's ``ValueError``."""
    if extensions is DEFAULT:
        extensions = IMG_EXTENSIONS if is_valid_file is None else None
    if (extensions is None) == (is_valid_file is None):
        raise ValueError("Both extensions and is_valid_file cannot be None or not None at the "
                         "same time")
    if extensions is not None:
        extensions = (extensions,) if isinstance(extensions, str) else tuple(extensions)
    return extensions, is_valid_file


def make_dataset(
    directory: str | os.PathLike[str],
    class_to_idx: dict[str, int] | None = None,
    extensions: Sequence[str] | str | None = DEFAULT,
    is_valid_file: Callable[[str], bool] | None = None,
    allow_empty: bool = False,
) -> list[tuple[str, int]]:
    """``(path, class_index)`` pairs in torchvision's order; paths are joined to ``directory``
    as given (``~`` expanded), and ``is_valid_file`` sees them so.

    As torchvision 0.29's ``make_dataset``, except that ``extensions`` left out means
    ``IMG_EXTENSIONS`` (or none, when ``is_valid_file`` is given), as ImageFolder passes it.
    Raises ``SourceError`` (a ``FileNotFoundError``) with torchvision's message naming the
    classes that hold no valid file, unless ``allow_empty``.
    """
    directory = os.path.expanduser(os.fspath(directory))
    if class_to_idx is None:
        _, class_to_idx = find_classes(directory)
    elif not class_to_idx:
        raise ValueError("'class_to_index' must have at least one entry to collect any samples.")
    extensions, is_valid_file = selection(extensions, is_valid_file)
    valid: Callable[[str], bool] = (is_valid_file if extensions is None else
                                    lambda path: has_file_allowed_extension(path, extensions))
    instances: list[tuple[str, int]] = []
    available: set[str] = set()
    for target_class in sorted(class_to_idx):
        class_index = class_to_idx[target_class]
        target_dir = os.path.join(directory, target_class)
        if not os.path.isdir(target_dir):
            continue
        for root, _, fnames in sorted(_walk_checked(target_dir)):
            for fname in sorted(fnames):
                path = os.path.join(root, fname)
                if valid(path):
                    instances.append((path, class_index))
                    available.add(target_class)
    empty = set(class_to_idx) - available
    if empty and not allow_empty:
        raise SourceError(empty_classes_message(empty, extensions)
                          + f" (in {directory!r}: add images, remove the folders, or pass "
                          "allow_empty=True to keep them as empty classes)")
    return instances


def empty_classes_message(empty: set[str], extensions: Sequence[str] | str | None) -> str:
    """torchvision's words, exactly."""
    msg = f"Found no valid file for the classes {', '.join(sorted(empty))}. "
    if extensions is not None:
        msg += ("Supported extensions are: "
                f"{extensions if isinstance(extensions, str) else ', '.join(extensions)}")
    return msg
