"""A simulated clock: sleeping advances time at once, so a drill with a two-minute Spot warning and a
three-minute model load runs in well under a minute of wall time. Timings are reported in simulated seconds."""

from __future__ import annotations

import threading
from collections.abc import Callable


class SimClock:
    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self._now = start
        self.start = start
        self._lock = threading.Lock()
        self._on_advance: list[Callable[[float], None]] = []

    def now(self) -> float:
        with self._lock:
            return self._now

    def monotonic(self) -> float:
        return self.now()

    def elapsed(self) -> float:
        return self.now() - self.start

    def sleep(self, seconds: float) -> None:
        self.advance(seconds)

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("time does not go backwards")
        with self._lock:
            self._now += seconds
            now = self._now
        for callback in list(self._on_advance):
            callback(now)

    def on_advance(self, callback: Callable[[float], None]) -> None:
        """Call ``callback(now)`` after every advance: emulated servers check whether they finished loading."""
        self._on_advance.append(callback)
