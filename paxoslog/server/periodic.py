"""``PeriodicService``: a service that does one job every ``period_s`` seconds on its
reactor (the first time one period after it starts), stopped with the node."""

from __future__ import annotations

from twisted.application.service import Service
from twisted.internet import task

__all__ = ["PeriodicService"]


class PeriodicService(Service):
    """Subclasses set ``reactor`` and ``period_s`` and implement ``periodic()``."""

    reactor = None
    period_s: float = 1.0
    _loop: task.LoopingCall | None = None

    def periodic(self) -> None:
        raise NotImplementedError

    def startService(self) -> None:
        super().startService()
        self._loop = task.LoopingCall(self.periodic)
        self._loop.clock = self.reactor
        self._loop.start(self.period_s, now=False)

    def stopService(self):
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
