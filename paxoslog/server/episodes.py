"""Episodes: a condition an operator must act on, told once when it starts and once when it
ends, with how long it lasted.

A node that has no leader for ten minutes must not print ten thousand lines, nor none: it
prints one WARN when the condition has held long enough to matter, and one line when it is
over (``... after 12.3 s``).  The end line has the level of the start line, so a log
filtered by level (``journalctl -p warning``, ``--log-level warn``) shows both halves.

Two kinds, both pure (no reactor, no clock of their own: ``clock()`` is injected and returns
seconds, e.g. ``reactor.seconds`` or ``task.Clock().seconds`` in tests) and both writing
through an injected ``emit(level, text)`` (level one of "warn", "error"):

* ``Condition``: sampled.  ``update(active, detail)`` is called periodically; the episode
  starts once the condition has held for ``after_s`` (0: at once) and ends the first time
  it no longer holds.  A condition that comes and goes faster than ``after_s`` says nothing.
* ``Occurrences``: event-driven (a slow fsync, a failed snapshot).  ``occurred(detail)``
  starts the episode at the first event; later events are counted, not printed; the episode
  ends when ``quiet_s`` pass without one (``tick()`` notices), or at once on
  ``recovered()`` (a snapshot that succeeds after failures).

``Watch`` (watch.py) owns one of these per operator-actionable condition of a node.
"""

from __future__ import annotations

from typing import Callable

__all__ = ["Condition", "Occurrences", "format_duration"]

Emit = Callable[[str, str], None]


def format_duration(seconds: float) -> str:
    """``0.8 s``, ``12.3 s``, ``4 min 05 s``, ``2 h 03 min``: short, and exact enough."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


class Condition:
    """A sampled condition.  ``start_text`` and ``end_text`` are ``str.format`` templates
    with ``{detail}`` (the detail of the sample that started or ended it) and, for the
    end, ``{duration}`` (since the condition first held, not since it was told)."""

    def __init__(self, clock: Callable[[], float], emit: Emit, *, level: str,
                 start_text: str, end_text: str, after_s: float = 0.0) -> None:
        self.clock = clock
        self.emit = emit
        self.level = level
        self.start_text = start_text
        self.end_text = end_text
        self.after_s = after_s
        self.since: float | None = None     # when the condition began to hold
        self.told = False                   # the start line was written
        self.episodes = 0                   # episodes told so far (for metrics/tests)

    @property
    def active(self) -> bool:
        """True while an episode is open (told and not yet over)."""
        return self.told

    def update(self, active: bool, detail: str = "") -> None:
        now = self.clock()
        if active:
            if self.since is None:
                self.since = now
            if not self.told and now - self.since >= self.after_s:
                self.told = True
                self.episodes += 1
                self.emit(self.level, self.start_text.format(
                    detail=detail, duration=format_duration(now - self.since)))
            return
        if self.told:
            self.emit(self.level, self.end_text.format(
                detail=detail, duration=format_duration(now - self.since)))
        self.since = None
        self.told = False


class Occurrences:
    """Events that come in bursts.  Templates: ``start_text`` with ``{detail}``;
    ``end_text`` with ``{duration}`` (first to last event, or to ``recovered``),
    ``{count}`` and ``{detail}`` (of the last event, or what ``recovered`` says)."""

    def __init__(self, clock: Callable[[], float], emit: Emit, *, level: str,
                 start_text: str, end_text: str, quiet_s: float) -> None:
        self.clock = clock
        self.emit = emit
        self.level = level
        self.start_text = start_text
        self.end_text = end_text
        self.quiet_s = quiet_s
        self.first: float | None = None
        self.last = 0.0
        self.count = 0
        self.detail = ""
        self.episodes = 0

    @property
    def active(self) -> bool:
        return self.first is not None

    def occurred(self, detail: str = "") -> None:
        now = self.clock()
        self.detail = detail
        self.count += 1
        self.last = now
        if self.first is None:
            self.first = now
            self.episodes += 1
            self.emit(self.level, self.start_text.format(detail=detail))

    def tick(self) -> None:
        """Close the episode once ``quiet_s`` passed without an event."""
        if self.first is not None and self.clock() - self.last >= self.quiet_s:
            self._end(self.last, self.detail)

    def recovered(self, detail: str = "") -> None:
        """The condition is over now (e.g. a snapshot succeeded after failures)."""
        if self.first is not None:
            self._end(self.clock(), detail)

    def _end(self, until: float, detail: str) -> None:
        self.emit(self.level, self.end_text.format(
            duration=format_duration(until - self.first), count=self.count, detail=detail))
        self.first = None
        self.count = 0
