"""The study's vocabulary, written once: what a run reads (format), how (mode), from where the
cache stands (cache). Everything that lists, checks or orders these takes them from here."""

from __future__ import annotations

import argparse
import importlib.util
from collections.abc import Callable

__all__ = ["BASE_FORMATS", "CACHES", "COUNT_LEAST", "FORMATS", "LOCALITY_FORMATS", "MODES",
           "PEER_FORMATS", "at_least", "checked", "checked_counts", "checked_names",
           "installed_formats", "order", "switch"]

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
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:  # each condition would run twice, as if a repetition
        raise ValueError(f"{what} {', '.join(map(repr, twice))} given more than once")
    return names


def checked_names(what: str, allowed: tuple[str, ...]) -> Callable[[str], tuple[str, ...]]:
    """``checked`` as an argparse ``type``: a wrong name is the parser's one-line error."""
    def parse(text: str) -> tuple[str, ...]:
        try:
            return tuple(checked(what, text, allowed))
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return parse


def at_least(name: str, value: object, least: float, whole: bool = True) -> None:
    """A count (``whole``) or duration parameter of another type, below ``least`` or NaN
    fails before the first run, naming it, not in torch or the figure cell after them all
    (papermill passes ``-p epochs two`` as the string "two")."""
    kinds = (int,) if whole else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds):
        raise ValueError(f"{name} must be {'an int' if whole else 'a number'}, not {value!r}")
    if not value >= least:
        raise ValueError(f"{name} must be at least {least}, not {value!r}")


# the least value of each count a notebook or the study takes (a run's or a rank's)
COUNT_LEAST = {"epochs": 1, "repeats": 1, "max_batches": 0, "batch_size": 1, "num_workers": 0,
               "threads": 0, "seed": 0, "nproc": 1, "n_images": 2}


def checked_counts(step_ms: object = None, **counts: object) -> None:
    """Each count in ``counts`` (named as in ``COUNT_LEAST``) an int at or above its least
    value, and ``step_ms`` (where given) a number >= 0, before anything runs (``at_least``)."""
    for name, value in counts.items():
        at_least(name, value, COUNT_LEAST[name])
    if step_ms is not None:
        at_least("step_ms", step_ms, 0, whole=False)


def switch(name: str, value: bool | str, auto: bool = True) -> bool | str:
    """A True / False (/ "auto" where ``auto``) option as a notebook parameter may spell it:
    papermill's ``-p overwrite false`` passes the string "false", which Python takes as true."""
    spelled = str(value).strip().lower()
    if spelled in ("true", "false") or auto and spelled == "auto":
        return {"true": True, "false": False}.get(spelled, "auto")
    allowed = "True, False or 'auto'" if auto else "True or False"
    raise ValueError(f"{name} must be {allowed}, not {value!r}")
