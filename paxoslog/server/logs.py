"""Process-wide log output for ``paxoslog serve``: one line per event on stderr.

``HH:MM:SS.mmm LEVEL [nN] namespace: message``.  The secret never reaches a log event (the
config dataclass hides it from repr, and no code formats it).
"""

from __future__ import annotations

import sys
import time

from twisted.logger import (FilteringLogObserver, LogLevel, LogLevelFilterPredicate,
                            formatEvent, globalLogBeginner)

__all__ = ["start_logging", "LEVELS"]

LEVELS = {"debug": LogLevel.debug, "info": LogLevel.info, "warn": LogLevel.warn,
          "error": LogLevel.error}


def start_logging(prefix: str, level: str = "info", stream=None) -> None:
    stream = stream or sys.stderr

    def observer(event: dict) -> None:
        if (event.get("log_namespace") == "log_legacy" and not event.get("isError")
                and event.get("log_level", LogLevel.info) <= LogLevel.info):
            return      # Twisted's "factory starting on port" chatter
        text = formatEvent(event)
        failure = event.get("log_failure")
        if failure is not None:
            text = f"{text}\n{failure.getTraceback()}"
        stamp = event.get("log_time") or time.time()
        clock = time.strftime("%H:%M:%S", time.localtime(stamp)) + f".{int(stamp * 1000) % 1000:03d}"
        lvl = event.get("log_level", LogLevel.info).name.upper()
        namespace = event.get("log_namespace", "-")
        try:
            stream.write(f"{clock} {lvl:5} [{prefix}] {namespace}: {text}\n")
            stream.flush()
        except (OSError, ValueError):
            pass

    predicate = LogLevelFilterPredicate(defaultLogLevel=LEVELS.get(level, LogLevel.info))
    globalLogBeginner.beginLoggingTo([FilteringLogObserver(observer, [predicate])],
                                     redirectStandardIO=False)
