"""Absolute paths that name what the given path names.

Why: ``os.path.abspath`` removes ``..`` by text, so ``link/../train`` becomes ``./train``,
while the operating system (and so ``ImageFolder("link/../train")``) goes through ``link``
first and then to its target's parent. Reading a source from the text-normalized path stored
another folder's images under the names ImageFolder lists, without an error.
"""

from __future__ import annotations

import os

__all__ = ["absolute_path"]


def absolute_path(path: str | os.PathLike[str]) -> str:
    """``path`` with ``~`` expanded, made absolute: normalized (``os.path.abspath``) unless a
    ``..`` in it follows a symbolic link, where it is only joined to the working directory, so
    the operating system resolves it as it resolves ``path``."""
    given = os.path.expanduser(os.fspath(path))
    normalized = os.path.abspath(given)
    if ".." not in given.split(os.sep):
        return normalized
    joined = os.path.join(os.getcwd(), given)
    return normalized if os.path.realpath(normalized) == os.path.realpath(joined) else joined
