"""The WebSocket endpoint (``GET /api/v1/ws``, docs/websocket.md): its lifecycle service and
the factory a node hands the HTTP server for upgrades.  The protocol itself (autobahn's
Twisted server) lives in wsprotocol.py, imported here only when a node builds its
endpoint: autobahn runs on txaio, which serves one framework per process, so merely
importing ``paxoslog.server`` must not choose Twisted (the blocking client and the tests
use autobahn's asyncio client).
"""

from __future__ import annotations

from twisted.application.service import Service
from twisted.internet import defer, task

__all__ = ["WebSocketService", "streams_factory"]


def streams_factory(*, api, hub, options, limits, reactor):
    """The endpoint's ``StreamsFactory`` (wsprotocol.py)."""
    from .wsprotocol import StreamsFactory
    return StreamsFactory(api=api, hub=hub, options=options, limits=limits, reactor=reactor)


class WebSocketService(Service):
    """The endpoint's lifecycle: the hub's progress timer and the idle sweep."""

    name = "websocket"

    def __init__(self, factory: StreamsFactory, reactor) -> None:
        self.factory = factory
        self.reactor = reactor
        self._sweeper = None

    def startService(self) -> None:
        super().startService()
        self.factory.hub.start()
        period = max(0.05, min(5.0, self.factory.options.idle_timeout_ms / 4000.0))
        self._sweeper = task.LoopingCall(self.factory.sweep)
        self._sweeper.clock = self.reactor
        self._sweeper.start(period, now=False)

    def stopService(self):
        super().stopService()
        self.factory.hub.stop()
        if self._sweeper is not None and self._sweeper.running:
            self._sweeper.stop()
        from .wsprotocol import CLOSE_STOPPING     # loaded already: the factory is built
        for conn in list(self.factory.conns):
            if conn.usable:
                conn.sendClose(CLOSE_STOPPING, "the node is stopping")
        return defer.succeed(None)
