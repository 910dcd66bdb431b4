"""The listening side of the HTTP server: ``HttpFactory`` (the connections, their counts
per address and per status, the deadline sweep) and ``HttpService`` (listens where the conf
says, plain or under ``tlswire``).  One connection's state machine is http.py's
``HttpProtocol``.
"""

from __future__ import annotations

from twisted.application.service import Service
from twisted.internet import defer, task
from twisted.internet.protocol import Factory
from twisted.logger import Logger

from .http import HttpProtocol
from .tlswire import TLSFactory

__all__ = ["HttpFactory", "HttpService"]

log = Logger(namespace="paxoslog.http")

_SWEEP_S_MAX = 5.0
_SWEEP_S_MIN = 0.05


class HttpFactory(Factory):
    noisy = False

    def __init__(self, app, limits, reactor) -> None:
        self.app = app
        self.limits = limits
        self.reactor = reactor
        self.connections: set[HttpProtocol] = set()
        self.by_address: dict[str, int] = {}
        self.requests = 0
        self.errors = 0
        self.refused = 0              # connections over a cap
        self.timeouts = 0             # connections cut by a deadline (408, stalled reader)
        self.statuses: dict[int, int] = {}
        # on_response(host, method, path, status, length, seconds): the request metrics and
        # the access log (httpstats.py); None: nobody listens.
        self.on_response = None

    def buildProtocol(self, addr):
        return HttpProtocol(self, getattr(addr, "host", None))

    def count_address(self, host: str, delta: int) -> int:
        count = self.by_address.get(host, 0) + delta
        if count > 0:
            self.by_address[host] = count
        else:
            self.by_address.pop(host, None)
        return count

    def count_status(self, status: int) -> None:
        self.statuses[status] = self.statuses.get(status, 0) + 1

    @property
    def paused_connections(self) -> int:
        """Connections whose socket is not read (pipelining limit or a full write buffer)."""
        return sum(1 for conn in self.connections if conn.paused)

    @property
    def sweep_interval_s(self) -> float:
        """A quarter of the shortest deadline, within [50 ms, 5 s]."""
        limits = self.limits
        shortest = min(limits.header_timeout_ms, limits.body_timeout_ms,
                       limits.idle_timeout_ms) / 1000.0
        return min(_SWEEP_S_MAX, max(_SWEEP_S_MIN, shortest / 4))

    def sweep(self) -> None:
        """Enforce every connection's read deadline (see HttpProtocol.check_deadline)."""
        now = self.reactor.seconds()
        for conn in list(self.connections):
            conn.check_deadline(now)


class HttpService(Service):
    """Listens on ``address`` (port 0: any free port, see ``port``); with ``tls`` (a
    ``tls.NodeTls``) it speaks HTTPS with the node's certificate."""

    name = "http"

    def __init__(self, app, address, limits, reactor, tls=None) -> None:
        self.factory = HttpFactory(app, limits, reactor)
        self.address = address
        self.reactor = reactor
        self.tls = tls
        self.listener = None
        self._sweeper = None

    @property
    def port(self) -> int | None:
        return self.listener.getHost().port if self.listener is not None else None

    def startService(self) -> None:
        super().startService()
        self.factory.noisy = False
        if self.tls is not None:
            tls_factory = TLSFactory(self.tls.server_context(False), self.factory,
                                     server_side=True)
            self.listener = self.reactor.listenTCP(self.address.port, tls_factory,
                                                   interface=self.address.host, backlog=1024)
        else:
            self.listener = self.reactor.listenTCP(self.address.port, self.factory,
                                                   interface=self.address.host, backlog=1024)
        log.info("{scheme} API listening on {host}:{port}",
                 scheme="HTTPS" if self.tls is not None else "HTTP", host=self.address.host,
                 port=self.port)
        self._sweeper = task.LoopingCall(self.factory.sweep)
        self._sweeper.clock = self.reactor
        self._sweeper.start(self.factory.sweep_interval_s, now=False)

    def stopService(self):
        super().stopService()
        if self._sweeper is not None and self._sweeper.running:
            self._sweeper.stop()
        listener, self.listener = self.listener, None
        d = defer.maybeDeferred(listener.stopListening) if listener else defer.succeed(None)
        for conn in list(self.factory.connections):
            if conn.upgraded is None:     # the WebSocket service closes its own after us
                conn.close()
        return d
