"""A daemon thread that runs one step every interval until stopped."""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

log = logging.getLogger("fastredir")


class PeriodicThread(threading.Thread):
    """Calls `step()` every `interval()` seconds, measured from the start
    of each step, until stop() is called.  An exception in one step is
    logged and the next step runs on time."""

    def __init__(self, name: str, interval: Callable[[], float]) -> None:
        super().__init__(name=name, daemon=True)
        self._interval = interval
        self._stopping = threading.Event()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def stop(self) -> None:
        self._stopping.set()

    def step(self) -> None:
        raise NotImplementedError

    def run(self) -> None:
        while not self._stopping.is_set():
            started = time.monotonic()
            try:
                self.step()
            except Exception:
                log.exception("%s step failed", self.name)
            self._stopping.wait(max(0.0, started + self._interval() - time.monotonic()))
