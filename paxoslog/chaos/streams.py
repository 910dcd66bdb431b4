"""Stream observers of a chaos run: tails and watches that follow the whole run through
the WebSocket endpoint, as a client application would (the client library's streams,
resuming at any node after every fault).

Each observer starts at index/revision 1 on a different node and records what it was
delivered, with what the library saw on the way: duplicates it dropped and gaps it had to
resubscribe over (both must stay 0: the servers promise neither), the ``end`` messages
servers sent, reconnects, and an error if the stream gave up.  ``checks.check_streams``
judges the records against the final log and the linearizable history.
"""

from __future__ import annotations

from twisted.internet import task

from paxoslog.wsclient import CBOR, JSON, TailCursor, TwistedStream, WatchCursor

__all__ = ["StreamObservers"]


class _Observer:
    def __init__(self, name: str, stream: TwistedStream, clock) -> None:
        self.name = name
        self.stream = stream
        self.clock = clock
        self.items: list = []
        self.error: str | None = None
        self.started = stream.reactor.seconds()
        self.done = stream.each(self.items.append)
        self.done.addErrback(self._failed)

    def _failed(self, failure) -> None:
        self.error = f"{type(failure.value).__name__}: {failure.getErrorMessage()}"

    @property
    def position(self) -> int:
        """The next index/revision the observer waits for."""
        return self.stream.cursor.next or 1

    def record(self) -> dict:
        cursor = self.stream.cursor
        out = {"name": self.name, "kind": cursor.kind, "items": self.items,
               "next": cursor.next, "duplicates": cursor.duplicates,
               "gaps": self.stream.gaps, "reconnects": self.stream.reconnects,
               "ends": [{k: v for k, v in m.items() if k != "stream"}
                        for m in self.stream.ends if m.get("error") != "connection_lost"],
               "attempts": [[round(t - self.started, 3), endpoint, what]
                            for t, endpoint, what in self.stream.attempts],
               "error": self.error}
        if cursor.kind == "watch":
            out["prefix"] = cursor.prefix
            out["prev"] = cursor.prev
        return out


class StreamObservers:
    """``endpoints``: every node's API URL (spares included: unreachable ones are
    skipped); ``prefix``: what one of the watches follows (the other follows every key;
    the workload's keys are ``k<slot>.<generation>``); ``cafile``: the cluster CA when the
    endpoints are https (the streams then use wss)."""

    def __init__(self, reactor, endpoints: list[str], clock, *, prefix: str,
                 give_up_s: float, cafile: str | None = None,
                 token: str | None = None) -> None:
        self.reactor = reactor
        self.cafile = cafile
        self.authorization = f"Bearer {token}" if token else None   # a tail needs admin
        self.endpoints = endpoints
        self.clock = clock
        self.prefix = prefix
        self.give_up_s = give_up_s
        self.observers: list[_Observer] = []

    def _rotated(self, shift: int) -> list[str]:
        shift %= len(self.endpoints)
        return self.endpoints[shift:] + self.endpoints[:shift]

    def start(self) -> None:
        specs = [("tail-json", TailCursor(1), JSON), ("tail-cbor", TailCursor(1), CBOR),
                 ("watch-all", WatchCursor(prefix="", start=1, prev=True), JSON),
                 (f"watch-{self.prefix}", WatchCursor(prefix=self.prefix, start=1), CBOR)]
        for shift, (name, cursor, subprotocol) in enumerate(specs):
            stream = TwistedStream(self.reactor, self._rotated(shift), cursor,
                                   subprotocol=subprotocol, give_up_s=self.give_up_s,
                                   retry_s=0.1, connect_timeout_s=2.0, cafile=self.cafile,
                                   authorization=self.authorization)
            self.observers.append(_Observer(name, stream, self.clock))

    async def catch_up(self, index: int, timeout_s: float) -> bool:
        """Wait until every observer still running is past ``index``."""
        deadline = self.clock() + timeout_s
        while self.clock() < deadline:
            if all(o.position > index or o.error or o.stream.done for o in self.observers):
                return True
            await task.deferLater(self.reactor, 0.1, lambda: None)
        return False

    def stop(self) -> None:
        for observer in self.observers:
            observer.stream.cancel()

    def records(self) -> list[dict]:
        return [o.record() for o in self.observers]
