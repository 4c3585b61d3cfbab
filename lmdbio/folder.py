"""Class discovery and sample order, exactly as torchvision's ``ImageFolder`` does it.

Importing torchvision costs seconds, and ``lmdbio convert`` must start fast, so this module
mirrors ``torchvision.datasets.folder.find_classes`` / ``make_dataset`` without importing it.
``tests/test_folder_parity.py`` holds the two together: index *i* here is index *i* there.
The only deliberate difference: a directory loop through symlinks raises ``SourceError``
instead of walking until the path gets too long.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from .errors import SourceError

__all__ = ["IMG_EXTENSIONS", "find_classes", "has_file_allowed_extension", "make_dataset"]

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
        what = "is not a directory" if os.path.exists(directory) else "does not exist"
        raise SourceError(f"source {directory!r} {what}; pass the split folder that holds one "
                          "sub-folder per class (e.g. data/train)")
    classes = sorted(entry.name for entry in os.scandir(directory) if entry.is_dir())
    if not classes:
        raise SourceError(f"found no class folder in {directory!r}; an ImageFolder needs one "
                          "sub-folder per class (e.g. train/cat, train/dog)")
    return classes, {name: index for index, name in enumerate(classes)}


def _walk_checked(target_dir: str) -> list[tuple[str, list[str], list[str]]]:
    """``os.walk(followlinks=True)`` that refuses symlink loops instead of recursing into them."""
    walked = []
    ancestors: dict[str, set[tuple[int, int]]] = {}
    for root, dirs, files in os.walk(target_dir, followlinks=True):
        stat = os.stat(root)
        seen = ancestors.get(os.path.dirname(root), set())
        identity = (stat.st_dev, stat.st_ino)
        if identity in seen:
            raise SourceError(f"symlink loop at {root!r}; remove the link or point it outside "
                              "its own ancestors")
        ancestors[root] = seen | {identity}
        walked.append((root, dirs, files))
    return walked


def make_dataset(
    directory: str | os.PathLike[str],
    class_to_idx: dict[str, int],
    extensions: Sequence[str] = IMG_EXTENSIONS,
) -> list[tuple[str, int]]:
    """``(path, class_index)`` pairs in torchvision's order; paths are joined to ``directory``.

    Raises ``SourceError`` naming the classes that hold no file with an allowed extension.
    """
    directory = os.path.expanduser(os.fspath(directory))
    if isinstance(extensions, str):
        extensions = (extensions,)
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
                if has_file_allowed_extension(path, extensions):
                    instances.append((path, class_index))
                    available.add(target_class)
    empty = sorted(set(class_to_idx) - available)
    if empty:
        raise SourceError(
            f"found no valid file for the classes {', '.join(empty)} in {directory!r}; "
            f"supported extensions are {', '.join(extensions)}: add images or remove the folders"
        )
    return instances
