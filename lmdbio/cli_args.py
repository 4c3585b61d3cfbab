"""The command line's argument types (argparse ``type=`` callables: a bad value is argparse's
one-line usage error, naming the option and the value) and its help formatter; shared by
``lmdbio`` and ``python -m lmdbio.study``."""

from __future__ import annotations

import argparse
import os

__all__ = ["DefaultsHelpFormatter", "image_count", "int_at_least", "milliseconds",
           "mounted_folder", "non_negative_int", "number", "parse_extensions", "positive_int",
           "quality", "seconds"]


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """Each option's default after its help, unless the help says it already or there is
    none to say (``None``, ``False``): argparse's own formatter printed "(default: SRC.lmdb
    next to SRC) (default: None)"."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if ("default" in text.lower() or action.default is None or action.default is False
                or action.default == argparse.SUPPRESS
                or not action.option_strings and action.nargs not in ("?", "*")):
            return text
        return f"{text} (default: %(default)s)"


def number(text: str, *, zero: bool) -> float:
    """A finite number above 0 (``zero``: at least 0)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number: {text!r}") from None
    if not (value >= 0 if zero else value > 0) or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number {'>=' if zero else '>'} 0, not "
                                         f"{text}")
    return value


def seconds(text: str) -> float:
    return number(text, zero=False)


def milliseconds(text: str) -> float:
    return number(text, zero=True)


def int_at_least(text: str, least: int, most: int | None = None) -> int:
    """An argparse ``type``: ``text`` as an int of at least ``least`` (and at most ``most``)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if value < least or (most is not None and value > most):
        bounds = f"from {least} to {most}" if most is not None else f">= {least}"
        raise argparse.ArgumentTypeError(f"must be {bounds}, not {value}")
    return value


def positive_int(text: str) -> int:
    return int_at_least(text, 1)


def non_negative_int(text: str) -> int:
    return int_at_least(text, 0)


def image_count(text: str) -> int:
    """Images of a synthetic set: at least two (two classes, an image each)."""
    return int_at_least(text, 2)


def mounted_folder(text: str) -> str:
    """An argparse ``type``: a folder that exists (a storage target: checked before a long
    run, not when its turn comes)."""
    if not os.path.isdir(os.path.expanduser(text)):
        raise argparse.ArgumentTypeError(f"{text!r} is not a folder; mount the storage first "
                                         "or pass an existing folder on it")
    return text


def quality(text: str) -> int:
    value = positive_int(text)
    if value > 100:
        raise argparse.ArgumentTypeError(f"must be from 1 to 100, not {value}")
    return value


def parse_extensions(text: str) -> tuple[str, ...]:
    """``".jpg, .png"`` -> ``(".jpg", ".png")``; an empty item would match every file."""
    items = tuple(item.strip() for item in text.split(","))
    if not all(items):
        raise argparse.ArgumentTypeError(
            f"{text!r} has an empty item, which would match every file; list them as "
            "'.jpg,.png'")
    return items
