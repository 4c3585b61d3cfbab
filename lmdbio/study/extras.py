"""The study's optional packages: imported when needed, with one line saying which extra to
install when missing (instead of an ImportError traceback)."""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["EXTRAS", "pandas", "require"]

EXTRAS = {"notebooks": "pip install 'lmdbio[notebooks]'", "peers": 'pip install -e ".[peers]"'}


def require(module: str, extra: str, purpose: str) -> Any:
    """Import ``module``, or raise ImportError: ``purpose`` needs the ``extra`` extra."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(f"{purpose} needs {module}: {EXTRAS[extra]}") from None


def pandas() -> Any:
    """pandas, which the study's tables need."""
    return require("pandas", "notebooks", "the study's tables")
