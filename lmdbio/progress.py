"""A tqdm progress bar that also shows MB/s, or nothing at all (``progress=False``)."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator
from typing import Any

__all__ = ["Progress"]


class Progress:
    """Counts images (tqdm shows images/s and ETA) and bytes (shown as MB/s, twice a second)."""

    def __init__(self, total: int, initial: int = 0, *, enabled: bool = True,
                 unit: str = "img") -> None:
        self._bar: Any = None
        self._bytes = 0
        self._started = time.perf_counter()
        self._shown = self._started
        if enabled and sys.stderr is not None:  # None: stderr closed (``2>&-``)
            from tqdm.auto import tqdm  # notebook-aware bar when run under Jupyter

            with self._display():
                self._bar = tqdm(total=total, initial=initial, unit=unit, dynamic_ncols=True,
                                 smoothing=0.1)

    def update(self, nbytes: int, count: int = 1) -> None:
        if self._bar is None:
            return
        self._bytes += nbytes
        with self._display():
            self._bar.update(count)
            now = time.perf_counter()
            if now - self._shown >= 0.5:
                self._shown = now
                self._bar.set_postfix_str(
                    f"{self._bytes / 1e6 / (now - self._started):.1f} MB/s", refresh=False)

    def close(self) -> None:
        if self._bar is not None:
            bar, self._bar = self._bar, None
            with self._display():
                bar.close()

    @contextlib.contextmanager
    def _display(self) -> Iterator[None]:
        """The bar is a display: where it cannot be written (stderr a full disk, a closed
        descriptor) it is dropped, and the work goes on."""
        try:
            yield
        except (OSError, ValueError):  # ValueError: "I/O operation on closed file"
            self._bar = None

    # A ``with`` block closes the bar on errors too, so its line ends before the one-line
    # error message the CLI prints (instead of the message being glued onto the bar).
    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
