"""The with-statement of everything the study brings up and must take down (relays, listeners,
mounts): ``start()`` on enter, ``close()`` on exit, and ``close()`` too when ``start()`` fails
half-way, so a failed start leaves nothing behind. Stdlib only (the relay runs it as a script)."""

from __future__ import annotations

from types import TracebackType
from typing import Optional, TypeVar

__all__ = ["Service"]

S = TypeVar("S", bound="Service")


class Service:
    """Subclasses define ``start()`` and an idempotent ``close()`` that never raises."""

    def start(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self: S) -> S:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, exc_type: Optional[type[BaseException]],
                 exc: Optional[BaseException], tb: Optional[TracebackType]) -> None:
        self.close()
