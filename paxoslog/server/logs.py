"""Process-wide log output for ``paxoslog serve``: one line per event on stderr or a file.

Three formats:

* text (a terminal or a file): ``2025-01-31T14:03:07.123+01:00 LEVEL [nN] namespace:
  message``: ISO-8601 local time with its UTC offset, so lines of nodes in other zones
  (or across a DST change) still sort and compare;
* json (``--log-format json``): Twisted's JSON observer (``jsonFileLogObserver``), one
  object per line, with the event's own fields (``peer``, ``index``, ...) plus ``time``
  (ISO-8601 as above), ``level``, ``node``, ``namespace`` and ``message`` (the formatted
  text); ``twisted.logger.eventsFromJSONLogFile`` reads it back;
* systemd's journal (``$JOURNAL_STREAM`` names stderr's device and inode, as systemd sets
  it for a unit whose output goes to the journal): ``<P>[nN] namespace: message``, where
  ``<P>`` is the syslog priority journald turns into the entry's ``PRIORITY`` (so
  ``journalctl -p warning`` works) and no timestamp (the journal keeps its own).  Every
  line of a multi-line event (a traceback) carries the priority, indented.

(the journal is chosen automatically when stderr is the journal and no file is named).

``start_logging`` returns a ``LogControl``: the level can change while the node runs
(SIGHUP or POST /api/v1/admin/reload re-read ``[log] level``), and SIGHUP reopens the log
file (``--log-file``) and the access log (``--access-log``): logrotate moves the file, sends
SIGHUP, and the node writes to a new file at the old path.  A file that cannot be reopened
leaves the old one in use, with an error in it.  The secret never reaches a log event (the
config dataclass hides it from repr, and no code formats it), and the access log has no
headers or bodies (tokens travel in headers).
"""

from __future__ import annotations

import os
import sys
from datetime import datetime

from twisted.logger import (FilteringLogObserver, LogLevel, LogLevelFilterPredicate,
                            formatEvent, globalLogBeginner, jsonFileLogObserver)

__all__ = ["start_logging", "LEVELS", "FORMATS", "LogControl", "LogFile", "AccessLog",
           "writes_to_journal", "PRIORITIES", "iso_time"]

FORMATS = ("text", "json")

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


def iso_time(stamp: float) -> str:
    """``2025-01-31T14:03:07.123+01:00``: local time with its offset, milliseconds."""
    return datetime.fromtimestamp(stamp).astimezone().isoformat(timespec="milliseconds")


class LogFile:
    """A file written in append mode (or a stream, e.g. stderr, that is never reopened).
    ``reopen()`` opens the path again: after logrotate moved the file away."""

    def __init__(self, path: str | None = None, stream=None) -> None:
        self.path = path
        self.stream = open(path, "a", encoding="utf-8") if path else (stream or sys.stderr)

    def write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):
            pass

    def reopen(self) -> str | None:
        """None when reopened (or nothing to reopen); else why not (the old file stays)."""
        if not self.path:
            return None
        try:
            stream = open(self.path, "a", encoding="utf-8")
        except OSError as exc:
            return f"cannot reopen {self.path}: {exc.strerror}"
        old, self.stream = self.stream, stream
        try:
            old.close()
        except OSError:
            pass
        return None

    def close(self) -> None:
        if self.path:
            self.stream.close()


# a logged target cannot end the line, start a fake one or drive a terminal: '"', the C0
# and C1 controls (CR, LF, NEL, CSI among them), DEL and the Unicode line and paragraph
# separators are written percent-encoded (as UTF-8)
_ESCAPED = {c: "".join(f"%{b:02X}" for b in chr(c).encode())
            for c in (*range(0x20), 0x22, *range(0x7F, 0xA0), 0x2028, 0x2029)}


class AccessLog:
    """One line per HTTP response: ``time client "METHOD path" status bytes seconds``.
    The path is logged without its query string's values' secrets: there are none in
    ours (tokens travel in headers, never logged)."""

    def __init__(self, out: LogFile) -> None:
        self.out = out

    def record(self, host: str | None, method: str, target: str, status: int, length: int,
               seconds: float, stamp: float) -> None:
        target = target[:2048].translate(_ESCAPED)
        self.out.write(f'{iso_time(stamp)} {host or "-"} "{method} {target}" {status} '
                       f"{length} {seconds:.6f}\n")


class LogControl:
    """The running process's log level and files."""

    def __init__(self, predicate: LogLevelFilterPredicate, level: str, journal: bool,
                 files: list | None = None, rebuild=None) -> None:
        self._predicate = predicate
        self.level = level
        self.journal = journal
        self.files: list[LogFile] = list(files or [])
        self._rebuild = rebuild      # the JSON observer writes to one stream: rebuild it

    def reopen(self) -> list[str]:
        """Reopen every log file (SIGHUP); the problems, if any (never raises)."""
        problems = [p for p in (f.reopen() for f in self.files) if p]
        if self._rebuild is not None:
            self._rebuild()
        return problems

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
    stamp = event.get("log_time") or 0.0
    return f"{iso_time(stamp)} {level.name.upper():5} [{prefix}] {namespace}: {text}\n"


def json_fields(event: dict, prefix: str) -> dict:
    """The event with the fields every JSON line carries (a copy; observers share it)."""
    level = event.get("log_level", LogLevel.info)
    text = formatEvent(event)
    failure = event.get("log_failure")
    if failure is not None:
        text = f"{text}\n{failure.getTraceback()}"
    out = {key: value for key, value in event.items()
           if key not in ("log_logger", "log_source", "log_failure", "log_trace")}
    out.update(time=iso_time(event.get("log_time") or 0.0), level=level.name, node=prefix,
               namespace=event.get("log_namespace", "-"), message=text)
    return out


def _chatter(event: dict) -> bool:
    """Twisted's "factory starting on port" lines."""
    return (event.get("log_namespace") == "log_legacy" and not event.get("isError")
            and event.get("log_level", LogLevel.info) <= LogLevel.info)


def start_logging(prefix: str, level: str = "info", stream=None,
                  journal: bool | None = None, fmt: str = "text",
                  path: str | None = None) -> LogControl:
    """Send Twisted's log events to ``path`` (appended to), else ``stream`` (stderr), from
    now on, as ``fmt`` (text or json).  ``journal`` None: detect the systemd journal on
    the stream (text format, no file only)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown log format {fmt!r}; expected one of {', '.join(FORMATS)}")
    out = LogFile(path, stream)
    if journal is None:
        journal = path is None and fmt == "text" and writes_to_journal(out.stream)
    rebuild = None
    if fmt == "json":
        state = {}

        def rebuild() -> None:
            state["observer"] = jsonFileLogObserver(out.stream, recordSeparator="")
        rebuild()

        def observer(event: dict) -> None:
            if not _chatter(event):
                try:
                    state["observer"](json_fields(event, prefix))
                    out.stream.flush()
                except (OSError, ValueError):
                    pass
    else:
        def observer(event: dict) -> None:
            if not _chatter(event):
                out.write(format_line(event, prefix, journal))

    predicate = LogLevelFilterPredicate(defaultLogLevel=LEVELS.get(level, LogLevel.info))
    globalLogBeginner.beginLoggingTo([FilteringLogObserver(observer, [predicate])],
                                     redirectStandardIO=False)
    return LogControl(predicate, level if level in LEVELS else "info", journal, [out],
                      rebuild)
