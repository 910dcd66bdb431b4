"""Named crash/sleep/error points at every persist step of the storage layer.

Enabled by the environment variable ``PAXOSLOG_FAILPOINTS`` read once at import, e.g.::

    PAXOSLOG_FAILPOINTS="wal.after_fsync=exit,snapshot.before_rename=sleep(200)"
    PAXOSLOG_FAILPOINTS="wal.before_fsync=exit:nth=3"          # die at the 3rd fsync
    PAXOSLOG_FAILPOINTS="wal.after_append=sleep(20):p=0.05"    # 5 % of appends stall

Actions:

``exit``       ``os._exit(1)`` on the spot: no cleanup, no flush (kill -9 at that instruction)
``panic``      raise ``FailpointPanic`` (an exception the storage code never catches)
``error``      raise ``OSError(EIO)`` as if the kernel had failed the write/fsync/rename
``sleep(ms)``  block for ``ms`` milliseconds (widen a race window)
``off``        disabled (the same as not listing the point)

Options, appended to the action with ``:`` (at most one of them):

``nth=N``      fire on the Nth hit of the point only (1-based, counted since the point was
               enabled); every other hit passes
``p=P``        fire on each hit with probability P (0 < P <= 1)

The draws of ``p`` are seeded: ``PAXOSLOG_FAILPOINTS_SEED`` (an integer) gives each point
its own ``random.Random`` seeded from (seed, point name), so one point's decisions do not
depend on how often the others were hit, and a run replays with the same seed.  Without
the variable a seed is drawn from ``os.urandom``; ``seed()`` returns it, and every fired
action names the point, the hit number and the seed (the exception message; a line on
stderr before ``exit``), so a failure found at random can be replayed.

Call sites are written ``if ACTIVE: hit("wal.before_fsync")``: with nothing enabled the cost is
one truthiness test of an empty module-level dict.  ``ACTIVE`` is mutated in place, never
rebound, so modules may import it by name.  An unknown point name, action or option is a
``ValueError`` (a typo in a crash test must not silently test nothing).
"""

from __future__ import annotations

import errno
import os
import random
import re
import threading
import time
from typing import NamedTuple

__all__ = ["POINTS", "ACTIVE", "ENV_VAR", "SEED_ENV_VAR", "Action", "FailpointPanic", "hit",
           "enable", "disable", "clear", "configure", "parse", "seed", "hits"]

ENV_VAR = "PAXOSLOG_FAILPOINTS"
SEED_ENV_VAR = "PAXOSLOG_FAILPOINTS_SEED"

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
    "install.after_truncate", "install.before_rename", "install.after_rename",
    "install.after_marker",
    # snapshot transfer receiver
    "transfer.before_write", "transfer.before_fsync", "transfer.before_rename",
})


class Action(NamedTuple):
    """One enabled point: ``kind`` (exit, panic, error, sleep), ``seconds`` (sleep only),
    and at most one of ``nth`` (fire on that hit only) and ``p`` (fire with probability)."""

    kind: str
    seconds: float = 0.0
    nth: int | None = None
    p: float | None = None


ACTIVE: dict[str, Action] = {}

_ACTION = re.compile(r"^(exit|panic|error|off|sleep\((\d+)\))$")
_NTH = re.compile(r"^nth=([1-9]\d{0,17})$")
_PROBABILITY = re.compile(r"^p=(\d*\.?\d+(?:[eE]-?\d+)?)$")

_lock = threading.Lock()          # the WAL and snapshot threads may hit points concurrently
_hits: dict[str, int] = {}
_rngs: dict[str, random.Random] = {}
_seed = 0


class FailpointPanic(RuntimeError):
    """Raised by a failpoint whose action is ``panic``."""


def hit(name: str) -> None:
    """Run the action configured for ``name`` (call only when ``ACTIVE`` is non-empty)."""
    action = ACTIVE.get(name)
    if action is None:
        return
    with _lock:
        count = _hits[name] = _hits.get(name, 0) + 1
        if action.nth is not None and count != action.nth:
            return
        if action.p is not None:
            rng = _rngs.get(name)
            if rng is None:
                rng = _rngs[name] = random.Random(f"{_seed}:{name}")
            if rng.random() >= action.p:
                return
    where = f"failpoint {name} (hit {count}, seed {_seed})"
    kind = action.kind
    if kind == "exit":
        try:
            os.write(2, f"{where}: exit\n".encode())
        except OSError:
            pass
        os._exit(1)
    if kind == "panic":
        raise FailpointPanic(f"{where}: panic")
    if kind == "error":
        raise OSError(errno.EIO, f"{where}: injected I/O error")
    if kind == "sleep":
        time.sleep(action.seconds)


def parse(spec: str) -> dict[str, Action]:
    """Parse ``"name=action[:option][,name=action[:option]]"`` into {name: Action}."""
    points: dict[str, Action] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, sep, text = item.partition("=")
        name, text = name.strip(), text.strip()
        if not sep or name not in POINTS:
            raise ValueError(f"{ENV_VAR}: unknown failpoint {name!r} in {item!r}; "
                             f"known: {', '.join(sorted(POINTS))}")
        action, *options = [part.strip() for part in text.split(":")]
        match = _ACTION.match(action)
        if match is None:
            raise ValueError(f"{ENV_VAR}: bad action {action!r} for {name}; expected "
                             "exit, panic, error, sleep(ms) or off")
        nth = p = None
        if len(options) > 1:
            raise ValueError(f"{ENV_VAR}: {name}: at most one option (nth=N or p=P), "
                             f"got {':'.join(options)!r}")
        for option in options:
            if (found := _NTH.match(option)) is not None:
                nth = int(found.group(1))
            elif (found := _PROBABILITY.match(option)) is not None:
                p = float(found.group(1))
                if not 0.0 < p <= 1.0:
                    raise ValueError(f"{ENV_VAR}: {name}: probability {p} is not in (0, 1]")
            else:
                raise ValueError(f"{ENV_VAR}: bad option {option!r} for {name}; expected "
                                 "nth=N (N >= 1) or p=P (0 < P <= 1)")
        kind = action.split("(")[0]
        if kind != "off":
            seconds = int(match.group(2)) / 1000.0 if match.group(2) else 0.0
            points[name] = Action(kind, seconds, nth, p)
    return points


def _reset_counts(names) -> None:
    with _lock:
        for name in names:
            _hits.pop(name, None)
            _rngs.pop(name, None)


def configure(spec: str, seed_value: int | None = None) -> None:
    """Replace the whole set of enabled points with ``spec`` (the env var syntax); hit
    counts start again from 0.  ``seed_value`` (default: keep the current seed) seeds the
    probabilistic points."""
    global _seed
    points = parse(spec)
    if seed_value is not None:
        _seed = seed_value
    _reset_counts(list(_hits) + list(_rngs))
    ACTIVE.clear()
    ACTIVE.update(points)


def enable(name: str, action: str) -> None:
    """Enable one point, e.g. ``enable("wal.before_fsync", "error:nth=2")``; its hit count
    starts again from 0."""
    parsed = parse(f"{name}={action}")
    _reset_counts([name])
    ACTIVE.update(parsed)
    if name not in parsed:
        ACTIVE.pop(name, None)


def disable(name: str) -> None:
    ACTIVE.pop(name, None)


def clear() -> None:
    ACTIVE.clear()
    _reset_counts(list(_hits) + list(_rngs))


def seed() -> int:
    """The seed of the probabilistic points (``PAXOSLOG_FAILPOINTS_SEED`` or drawn)."""
    return _seed


def hits(name: str) -> int:
    """How often ``name`` was hit since it was enabled (for tests and reports)."""
    with _lock:
        return _hits.get(name, 0)


def _seed_from_env() -> int:
    text = os.environ.get(SEED_ENV_VAR, "").strip()
    if not text:
        return int.from_bytes(os.urandom(4), "big")
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{SEED_ENV_VAR}: expected an integer, got {text!r}") from None


configure(os.environ.get(ENV_VAR, ""), _seed_from_env())
