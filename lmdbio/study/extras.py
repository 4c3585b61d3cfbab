"""The study's optional packages: imported when needed, with one line saying which extra to
install when missing (instead of an ImportError traceback)."""

from __future__ import annotations

import importlib
from typing import Any

from lmdbio.errors import MissingDependencyError

__all__ = ["EXTRAS", "pandas", "require"]

# (in a checkout: pip install -e ".[notebooks]", as make install does)
EXTRAS = {"notebooks": "pip install 'lmdbio[notebooks]'", "peers": "pip install 'lmdbio[peers]'"}


def require(module: str, extra: str, purpose: str) -> Any:
    """Import ``module``, or raise ``MissingDependencyError`` (an ImportError, one line on the
    command line): ``purpose`` needs the ``extra`` extra."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingDependencyError(f"{purpose} needs {module}: {EXTRAS[extra]}") from None


def pandas() -> Any:
    """pandas, which the study's tables need."""
    return require("pandas", "notebooks", "the study's tables")
