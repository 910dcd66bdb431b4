"""``Progress``: one line on stderr at most every ``interval_s`` while long work runs
(downloading a backup, rebuilding state, exporting rows), and a last line when it ends."""

from __future__ import annotations

import sys
import time
from typing import Callable

__all__ = ["Progress", "human_bytes"]


def human_bytes(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


class Progress:
    """``what``: e.g. "downloading"; ``total``: the expected amount (None: unknown);
    ``unit``: "bytes" (shown as KiB/MiB) or a noun such as "entries"."""

    def __init__(self, what: str, total: int | None = None, unit: str = "bytes", *,
                 stream=None, interval_s: float = 1.0,
                 clock: Callable[[], float] = time.monotonic, quiet: bool = False) -> None:
        self.what = what
        self.total = total
        self.unit = unit
        self.stream = stream if stream is not None else sys.stderr
        self.interval_s = interval_s
        self.clock = clock
        self.quiet = quiet
        self.started = clock()
        self._last = self.started
        self.done = 0

    def _amount(self, n: int) -> str:
        return human_bytes(n) if self.unit == "bytes" else f"{n:,} {self.unit}"

    def update(self, done: int) -> None:
        self.done = done
        now = self.clock()
        if self.quiet or now - self._last < self.interval_s:
            return
        self._last = now
        text = f"{self.what}: {self._amount(done)}"
        if self.total:
            text += f" of {self._amount(self.total)} ({100 * done / self.total:.0f}%)"
        self._write(text + f", {now - self.started:.0f}s")

    def finish(self) -> float:
        """The seconds it took (printed when the work took longer than one interval)."""
        seconds = self.clock() - self.started
        if not self.quiet and seconds >= self.interval_s:
            self._write(f"{self.what}: {self._amount(self.done)} in {seconds:.1f}s")
        return seconds

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text + "\n")
            self.stream.flush()
        except (OSError, ValueError):
            pass
