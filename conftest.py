"""Repository-wide pytest configuration: ``pytest --nbval`` compares the notebooks' outputs
through ``notebooks/sanitize.cfg`` (timings, addresses, temporary paths) without a flag, from
the repository root or from ``notebooks/``; an explicit ``--nbval-sanitize-with`` wins."""

from __future__ import annotations

import os

import pytest

SANITIZE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "notebooks", "sanitize.cfg")


def pytest_configure(config: pytest.Config) -> None:
    option = config.option
    if getattr(option, "nbval_sanitize_with", "unset") is None and not getattr(
            option, "sanitize_with", None):  # nbval installed, no file given
        option.nbval_sanitize_with = SANITIZE
