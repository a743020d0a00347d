"""A clock that moves only when told to."""

from __future__ import annotations

import math

__all__ = ["FakeClock"]


class FakeClock:
    """A clock for tests: call it for the time; it moves only by :meth:`advance` or
    :meth:`set`.

    Pass it wherever relaypolicy takes a ``clock`` (monotonic-style: start at ``0.0``, the
    default) or a ``wall_clock`` (start at a Unix time, e.g. ``1_767_225_600.0``), so a
    test moves time without sleeping::

        clock = FakeClock()
        table = ExpiringIpTable(1800, clock=clock)
        clock.advance(1799.5)
    """

    __slots__ = ("_now",)

    def __init__(self, start: float = 0.0) -> None:
        self._now = _seconds(start, "start")

    def __call__(self) -> float:
        return self._now

    @property
    def now(self) -> float:
        """The current time, as calling the clock gives it."""
        return self._now

    def advance(self, seconds: float) -> float:
        """Move forward by ``seconds`` (not negative: see :meth:`set`); the new time."""
        seconds = _seconds(seconds, "seconds")
        if seconds < 0:
            raise ValueError(f"a clock does not advance backwards ({seconds}); use set()")
        self._now += seconds
        return self._now

    def set(self, now: float) -> None:
        """Jump to ``now``, forward or back (a wall clock can be stepped back)."""
        self._now = _seconds(now, "now")

    def __repr__(self) -> str:
        return f"FakeClock({self._now!r})"


def _seconds(value: float, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{field}: expected seconds as a number, got {type(value).__name__}")
    if not math.isfinite(value):
        raise ValueError(f"{field}: must be finite, not {value!r}")
    return float(value)
