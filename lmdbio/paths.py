"""Absolute paths that name what the given path names.

Why: ``os.path.abspath`` removes ``..`` by text, so ``link/../train`` becomes ``./train``,
while the operating system (and so ``ImageFolder("link/../train")``) goes through ``link``
first and then to its target's parent. Reading a source from the text-normalized path stored
another folder's images under the names ImageFolder lists, without an error.
"""

from __future__ import annotations

import os

__all__ = ["absolute_path", "named"]


def absolute_path(path: str | os.PathLike[str]) -> str:
    """``path`` with ``~`` expanded, made absolute and normalized (no ``.``, ``..`` or trailing
    separator), naming what ``path`` names: ``os.path.abspath`` where dropping its ``..`` by
    text means the same; else, where a ``..`` follows a symbolic link, the part up to the last
    ``..`` resolved as the operating system resolves it (``os.path.realpath``)."""
    given = os.path.expanduser(os.fspath(path))
    normalized = os.path.abspath(given)
    parts = given.split(os.sep)
    if ".." not in parts:
        return normalized
    last = len(parts) - 1 - parts[::-1].index("..")
    head = os.sep.join(parts[:last + 1]) or os.sep
    resolved = os.path.join(os.path.realpath(head), *parts[last + 1:])
    return normalized if os.path.realpath(normalized) == os.path.realpath(resolved) \
        else os.path.normpath(resolved)


def named(path: str | os.PathLike[str], what: str, error: type[Exception]) -> None:
    """Refuse an empty ``path`` (``error``): ``""``, an unset shell variable, would otherwise
    name the current folder, and ``convert ""`` write beside it."""
    if os.fspath(path) in ("", b""):
        raise error(f"the {what} is an empty path (an unset variable?); name it explicitly")
