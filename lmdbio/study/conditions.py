"""The study's vocabulary, written once: what a run reads (format), how (mode), from where the
cache stands (cache). Everything that lists, checks or orders these takes them from here."""

from __future__ import annotations

import argparse
import importlib.util
from collections.abc import Callable

__all__ = ["BASE_FORMATS", "CACHES", "FORMATS", "LOCALITY_FORMATS", "MODES", "PEER_FORMATS",
           "checked", "checked_names", "installed_formats", "order", "switch"]

# train: ResNet-18 on this machine; emulate: a sleep of an accelerator's step (MLPerf Storage
# style); load: the loader alone, as fast as it goes. In this order in every table and figure.
MODES = ("train", "emulate", "load")
CACHES = ("cold", "warm")
BASE_FORMATS = ("imagefolder", "lmdb")       # torchvision's ImageFolder; lmdbio's ImageFolderLMDB
PEER_FORMATS = ("webdataset", "litdata")     # the peers it is compared with (the [peers] extra)
# lmdbio read in BlockShuffleSampler's order (neighbouring records together): for data that do
# not fit in memory, where a per-sample uniform shuffle pays a random read per record
LOCALITY_FORMATS = ("lmdb-block",)
FORMATS = BASE_FORMATS + LOCALITY_FORMATS + PEER_FORMATS
PEER_MODULES = {"webdataset": "webdataset", "litdata": "litdata"}


def installed_formats() -> tuple[str, ...]:
    """Every format this machine can run: the base two and each peer whose package is installed
    (found, not imported: importing them costs seconds)."""
    return BASE_FORMATS + tuple(f for f in PEER_FORMATS
                                if importlib.util.find_spec(PEER_MODULES[f]) is not None)


def order(names: object) -> list[str]:
    """``names`` (formats or modes) in the study's order, anything unknown after, sorted."""
    present = set(names)  # type: ignore[call-overload]
    known = [n for n in FORMATS + MODES if n in present]
    return known + sorted(present - set(known))


def checked(what: str, values: object, allowed: tuple[str, ...]) -> list[str]:
    """``values`` (a comma-separated string or a sequence) as a list of names, each stripped
    and checked against ``allowed``: a mistyped notebook parameter fails before the first run,
    not after the runs that came before it in the plan."""
    names = [str(v).strip() for v in (values.split(",") if isinstance(values, str)
                                       else values)]  # type: ignore[attr-defined]
    wrong = [n for n in names if n not in allowed]
    if wrong or not names:
        raise ValueError(f"{what} {', '.join(map(repr, wrong)) or '(none)'}: not one of "
                         f"{', '.join(allowed)}")
    return names


def checked_names(what: str, allowed: tuple[str, ...]) -> Callable[[str], tuple[str, ...]]:
    """``checked`` as an argparse ``type``: a wrong name is the parser's one-line error."""
    def parse(text: str) -> tuple[str, ...]:
        try:
            return tuple(checked(what, text, allowed))
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return parse


def at_least(name: str, value: float, least: float) -> None:
    """A count or duration parameter below ``least`` (or NaN) fails before the first run,
    not in the figure cell after them all."""
    if not value >= least:
        raise ValueError(f"{name} must be at least {least}, not {value!r}")


def switch(name: str, value: bool | str) -> bool | str:
    """A True / False / "auto" option as a notebook parameter may spell it ("false", "True")."""
    spelled = str(value).strip().lower()
    if spelled in ("true", "false", "auto"):
        return {"true": True, "false": False}.get(spelled, "auto")
    raise ValueError(f"{name} must be True, False or 'auto', not {value!r}")
