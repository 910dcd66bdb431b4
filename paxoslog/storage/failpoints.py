"""Named crash/sleep/error points at every persist step of the storage layer.

Enabled by the environment variable ``PAXOSLOG_FAILPOINTS`` read once at import, e.g.::

    PAXOSLOG_FAILPOINTS="wal.after_fsync=exit,snapshot.before_rename=sleep(200)"

Actions:

``exit``       ``os._exit(1)`` on the spot: no cleanup, no flush (kill -9 at that instruction)
``panic``      raise ``FailpointPanic`` (an exception the storage code never catches)
``error``      raise ``OSError(EIO)`` as if the kernel had failed the write/fsync/rename
``sleep(ms)``  block for ``ms`` milliseconds (widen a race window)
``off``        disabled (the same as not listing the point)

Call sites are written ``if ACTIVE: hit("wal.before_fsync")``: with nothing enabled the cost is
one truthiness test of an empty module-level dict.  ``ACTIVE`` is mutated in place, never
rebound, so modules may import it by name.  An unknown point name or action is a ``ValueError``
(a typo in a crash test must not silently test nothing).
"""

from __future__ import annotations

import errno
import os
import re
import time

__all__ = ["POINTS", "ACTIVE", "ENV_VAR", "FailpointPanic", "hit", "enable", "disable",
           "clear", "configure", "parse"]

ENV_VAR = "PAXOSLOG_FAILPOINTS"

POINTS = frozenset({
    # write-ahead log
    "wal.before_append", "wal.after_append", "wal.before_fsync", "wal.after_fsync",
    "wal.before_create_segment", "wal.after_create_segment",
    # hard-state checkpoint and META (atomic replace)
    "hardstate.before_rename", "hardstate.after_rename",
    "meta.before_rename", "meta.after_rename",
    # local snapshots
    "snapshot.before_write", "snapshot.before_fsync", "snapshot.before_rename",
    "snapshot.after_rename", "snapshot.before_prune",
    # compaction
    "compact.before_delete", "compact.after_delete",
    # installing a snapshot received from a peer
    "install.before_rename", "install.after_rename", "install.after_marker",
    # snapshot transfer receiver
    "transfer.before_write", "transfer.before_fsync", "transfer.before_rename",
})

ACTIVE: dict[str, tuple[str, float]] = {}

_ACTION = re.compile(r"^(exit|panic|error|off|sleep\((\d+)\))$")


class FailpointPanic(RuntimeError):
    """Raised by a failpoint whose action is ``panic``."""


def hit(name: str) -> None:
    """Run the action configured for ``name`` (call only when ``ACTIVE`` is non-empty)."""
    action = ACTIVE.get(name)
    if action is None:
        return
    kind, arg = action
    if kind == "exit":
        os._exit(1)
    if kind == "panic":
        raise FailpointPanic(f"failpoint {name}: panic")
    if kind == "error":
        raise OSError(errno.EIO, f"failpoint {name}: injected I/O error")
    if kind == "sleep":
        time.sleep(arg)


def parse(spec: str) -> dict[str, tuple[str, float]]:
    """Parse ``"name=action[,name=action]"`` into {name: (kind, seconds)}; validate names."""
    points: dict[str, tuple[str, float]] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, sep, action = item.partition("=")
        name, action = name.strip(), action.strip()
        if not sep or name not in POINTS:
            raise ValueError(f"{ENV_VAR}: unknown failpoint {name!r} in {item!r}; "
                             f"known: {', '.join(sorted(POINTS))}")
        match = _ACTION.match(action)
        if match is None:
            raise ValueError(f"{ENV_VAR}: bad action {action!r} for {name}; expected "
                             "exit, panic, error, sleep(ms) or off")
        kind = action.split("(")[0]
        if kind != "off":
            points[name] = (kind, int(match.group(2)) / 1000.0 if match.group(2) else 0.0)
    return points


def configure(spec: str) -> None:
    """Replace the whole set of enabled points with ``spec`` (the env var syntax)."""
    points = parse(spec)
    ACTIVE.clear()
    ACTIVE.update(points)


def enable(name: str, action: str) -> None:
    """Enable one point, e.g. ``enable("wal.before_fsync", "error")``."""
    ACTIVE.update(parse(f"{name}={action}"))
    if action.strip() == "off":
        ACTIVE.pop(name, None)


def disable(name: str) -> None:
    ACTIVE.pop(name, None)


def clear() -> None:
    ACTIVE.clear()


configure(os.environ.get(ENV_VAR, ""))
