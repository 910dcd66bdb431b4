"""``Reloader``: SIGHUP (or ``POST /api/v1/admin/reload``) re-reads the conf file and applies
what can change while the node runs; never fatal.

What can change is whatever a *hook* applies: ``register(name, hook)`` with
``hook(new_config) -> list of changes made`` (descriptions; empty when nothing changed).
Today one hook is registered by ``paxoslog serve``: ``[log] level`` (``APPLIED_LIVE``).
The *contents* of the ``[auth]`` tokens file are not a conf field: the node re-reads that
file by itself when it changes (server/access.py), reload or not.

Every other field of ``ClusterConfig`` (nodes, ports, timing, limits, ``[auth]``,
``[tls]``, ``[websocket]``, state machines, the secret, and any section added later) is
compared with the conf the node started with and reported as needing a restart; it is not
applied.  The list is derived from the dataclass, not written by hand, so that a new
section cannot be silently ignored by a reload.

A conf file that no longer parses is refused as a whole: the node keeps running with what
it has and the answer (and the log) names the file, the key and the problem.  A hook that
raises is reported the same way; the other hooks still run.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

from twisted.logger import Logger

from paxoslog.config import ClusterConfig, ConfigError, load_config

__all__ = ["Reloader", "ReloadFailed", "RESTART_ONLY", "APPLIED_LIVE"]

log = Logger(namespace="paxoslog.reload")

# ClusterConfig fields a reload hook applies to the running node (serve.py's log level hook).
APPLIED_LIVE = ("log",)
# Bookkeeping, not settings: the conf file's own path (what a reload re-reads).
NOT_COMPARED = ("path",)


def _restart_only() -> tuple[str, ...]:
    """Every ``ClusterConfig`` field a running node cannot take over, in declaration order.
    Derived from the dataclass so that a section added to the conf is reported as needing a
    restart instead of being silently ignored (as ``[auth]``, ``[tls]`` and ``[websocket]``
    were while this was a hand-written list)."""
    skip = APPLIED_LIVE + NOT_COMPARED
    return tuple(f.name for f in dataclasses.fields(ClusterConfig) if f.name not in skip)


# ClusterConfig fields a running node cannot take over (a restart applies them).
RESTART_ONLY = _restart_only()


def _restart_note(field: str, path: str) -> str:
    """One ``needs_restart`` line; the secret is named, never shown."""
    what = "the peer secret" if field == "secret" else field
    return f"{what} changed in {path}: takes effect at the next restart"


class ReloadFailed(Exception):
    """The conf file could not be read or validated; nothing was applied."""


class Reloader:
    """``config``: the conf the node runs with (its ``path`` is re-read)."""

    def __init__(self, config: ClusterConfig,
                 load: Callable[[str], ClusterConfig] = load_config) -> None:
        self.config = config
        self.load = load
        self.hooks: list[tuple[str, Callable[[ClusterConfig], list]]] = []
        self.reloads = 0

    def register(self, name: str, hook: Callable[[ClusterConfig], list]) -> None:
        """Run ``hook(new_config)`` on every reload (in registration order)."""
        self.hooks.append((name, hook))

    def reload(self) -> dict:
        """Re-read the conf and apply it: ``{"applied": [...], "needs_restart": [...],
        "errors": [...]}``.  Raises ``ReloadFailed`` when the file is unusable."""
        path = self.config.path
        try:
            new = self.load(path)
        except ConfigError as exc:
            log.error("reload refused, nothing changed: {error}", error=exc)
            raise ReloadFailed(str(exc)) from None
        self.reloads += 1
        applied, errors = [], []
        for name, hook in self.hooks:
            try:
                applied.extend(hook(new) or [])
            except Exception as exc:
                errors.append(f"{name}: {exc}")
                log.error("reload of {name} failed: {error}", name=name, error=exc)
        restart = self._needs_restart(new)
        for change in applied:
            # warn, not info: a reload that raises the level must still say it happened.
            log.warn("reload: {change}", change=change)
        for note in restart:
            log.warn("reload: {note}", note=note)
        if not applied and not restart and not errors:
            log.info("reload: {path} re-read, nothing to change", path=path)
        return {"applied": applied, "needs_restart": restart, "errors": errors}

    def _needs_restart(self, new: ClusterConfig) -> list[str]:
        """What changed in ``new`` that no hook applies.  ``getattr`` per field, not ``==``
        on the whole conf: ``secret`` is excluded from the dataclass comparison (so that it
        never shows in a repr) but a changed secret still needs a restart.  The peer secret
        goes last, as it always has."""
        path = self.config.path
        changed = [name for name in RESTART_ONLY
                   if getattr(new, name) != getattr(self.config, name)]
        changed.sort(key=lambda name: name == "secret")
        return [_restart_note(name, path) for name in changed]
