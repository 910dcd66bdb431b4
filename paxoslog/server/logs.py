"""Process-wide log output for ``paxoslog serve``: one line per event on stderr.

Two formats, chosen by where stderr goes:

* a terminal or a file: ``HH:MM:SS.mmm LEVEL [nN] namespace: message``;
* systemd's journal (``$JOURNAL_STREAM`` names stderr's device and inode, as systemd sets
  it for a unit whose output goes to the journal): ``<P>[nN] namespace: message``, where
  ``<P>`` is the syslog priority journald turns into the entry's ``PRIORITY`` (so
  ``journalctl -p warning`` works) and no timestamp (the journal keeps its own).  Every
  line of a multi-line event (a traceback) carries the priority, indented.

``start_logging`` returns a ``LogControl``: the level can change while the node runs
(SIGHUP or POST /api/v1/admin/reload re-read ``[log] level``).  The secret never reaches a
log event (the config dataclass hides it from repr, and no code formats it).
"""

from __future__ import annotations

import os
import sys
import time

from twisted.logger import (FilteringLogObserver, LogLevel, LogLevelFilterPredicate,
                            formatEvent, globalLogBeginner)

__all__ = ["start_logging", "LEVELS", "LogControl", "writes_to_journal", "PRIORITIES"]

LEVELS = {"debug": LogLevel.debug, "info": LogLevel.info, "warn": LogLevel.warn,
          "error": LogLevel.error}
# syslog priorities (sd-daemon(3)): what journald files each level under.
PRIORITIES = {LogLevel.debug: 7, LogLevel.info: 6, LogLevel.warn: 4, LogLevel.error: 3,
              LogLevel.critical: 2}


def writes_to_journal(stream) -> bool:
    """True when ``stream`` is the journal stream systemd connected (``$JOURNAL_STREAM`` is
    ``device:inode`` of it); a redirected stderr of a child does not count."""
    value = os.environ.get("JOURNAL_STREAM", "")
    device, sep, inode = value.partition(":")
    if not sep:
        return False
    try:
        st = os.fstat(stream.fileno())
        return st.st_dev == int(device) and st.st_ino == int(inode)
    except (OSError, ValueError, AttributeError):
        return False


class LogControl:
    """The running process's log level."""

    def __init__(self, predicate: LogLevelFilterPredicate, level: str, journal: bool) -> None:
        self._predicate = predicate
        self.level = level
        self.journal = journal

    def set_level(self, level: str) -> bool:
        """Change the level (one of ``LEVELS``); True when it changed."""
        if level not in LEVELS:
            raise ValueError(f"unknown log level {level!r}; expected one of "
                             f"{', '.join(LEVELS)}")
        if level == self.level:
            return False
        self._predicate.defaultLogLevel = LEVELS[level]
        self._predicate.clearLogLevels()
        self.level = level
        return True


def format_line(event: dict, prefix: str, journal: bool) -> str:
    """One event as the text written to the stream (newline-terminated)."""
    text = formatEvent(event)
    failure = event.get("log_failure")
    if failure is not None:
        text = f"{text}\n{failure.getTraceback()}"
    level = event.get("log_level", LogLevel.info)
    namespace = event.get("log_namespace", "-")
    if journal:
        mark = f"<{PRIORITIES.get(level, 6)}>"
        first, *rest = text.rstrip("\n").split("\n")
        return "".join([f"{mark}[{prefix}] {namespace}: {first}\n"]
                       + [f"{mark}    {line}\n" for line in rest])
    stamp = event.get("log_time") or time.time()
    clock = time.strftime("%H:%M:%S", time.localtime(stamp)) + f".{int(stamp * 1000) % 1000:03d}"
    return f"{clock} {level.name.upper():5} [{prefix}] {namespace}: {text}\n"


def start_logging(prefix: str, level: str = "info", stream=None,
                  journal: bool | None = None) -> LogControl:
    """Send Twisted's log events to ``stream`` (stderr) from now on.  ``journal`` None:
    detect the systemd journal on the stream."""
    stream = stream or sys.stderr
    if journal is None:
        journal = writes_to_journal(stream)

    def observer(event: dict) -> None:
        if (event.get("log_namespace") == "log_legacy" and not event.get("isError")
                and event.get("log_level", LogLevel.info) <= LogLevel.info):
            return      # Twisted's "factory starting on port" chatter
        try:
            stream.write(format_line(event, prefix, journal))
            stream.flush()
        except (OSError, ValueError):
            pass

    predicate = LogLevelFilterPredicate(defaultLogLevel=LEVELS.get(level, LogLevel.info))
    globalLogBeginner.beginLoggingTo([FilteringLogObserver(observer, [predicate])],
                                     redirectStandardIO=False)
    return LogControl(predicate, level if level in LEVELS else "info", journal)
