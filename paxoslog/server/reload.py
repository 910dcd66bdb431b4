"""``Reloader``: SIGHUP (or ``POST /api/v1/admin/reload``) re-reads the conf file and applies
what can change while the node runs; never fatal.

What can change is whatever a *hook* applies: ``register(name, hook)`` with
``hook(new_config) -> list of changes made`` (descriptions; empty when nothing changed).
Today one hook is registered by ``paxoslog serve``: ``[log] level``.  The client token
file of the auth layer plugs in the same way (``reloader.register("tokens", ...)``).

Everything else (nodes, ports, timing, limits, state machines, the secret) is compared with
the conf the node started with and reported as needing a restart; it is not applied.

A conf file that no longer parses is refused as a whole: the node keeps running with what
it has and the answer (and the log) names the file, the key and the problem.  A hook that
raises is reported the same way; the other hooks still run.
"""

from __future__ import annotations

from typing import Callable

from twisted.logger import Logger

from paxoslog.config import ClusterConfig, ConfigError, load_config

__all__ = ["Reloader", "ReloadFailed", "RESTART_ONLY"]

log = Logger(namespace="paxoslog.reload")

# ClusterConfig fields a running node cannot take over (a restart applies them).
RESTART_ONLY = ("name", "protocol", "nodes", "timing", "snapshot", "storage", "batching",
                "limits", "state_machines")


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
        restart = [f"{field} changed in {path}: takes effect at the next restart"
                   for field in RESTART_ONLY
                   if getattr(new, field) != getattr(self.config, field)]
        if new.secret != self.config.secret:
            restart.append(f"the peer secret changed in {path}: takes effect at the next "
                           "restart")
        for change in applied:
            # warn, not info: a reload that raises the level must still say it happened.
            log.warn("reload: {change}", change=change)
        for note in restart:
            log.warn("reload: {note}", note=note)
        if not applied and not restart and not errors:
            log.info("reload: {path} re-read, nothing to change", path=path)
        return {"applied": applied, "needs_restart": restart, "errors": errors}
