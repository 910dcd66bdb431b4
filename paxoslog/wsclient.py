"""WebSocket clients of ``/api/v1/ws`` (docs/websocket.md): the stream cursors (pure: what
to subscribe with, what each stream message means, where to resume), a Twisted driver
(``Client.tail/watch/put_many`` in client.py use it) and a blocking driver on asyncio
(``SyncClient.tail/watch``: the CLI's ``log tail -f`` and ``watch``).  autobahn runs on
txaio, which serves one framework per process: a process uses one of the two drivers.  Both drivers are
autobahn's WebSocket clients; the cursors are the one implementation of the resume rules:

* a tail resumes at the index after the last entry delivered, a watch at the revision
  after the last ``revision`` a message covered; the cursor drops anything before that
  (a duplicate) and refuses a tail entry after it (a gap: the stream is restarted);
* an ``end`` message (``slow_consumer``, ``compacted`` after a snapshot install there,
  ``unavailable``) or a lost connection makes the driver subscribe again from the resume
  point, at the next endpoint; a subscribe answered 410 ``compacted`` everywhere is final:
  ``Compacted`` with the first index/revision that is still available.

``https://`` endpoints are reached as ``wss://``, verified against ``cafile`` (the cluster
CA, as for the HTTP clients) or, without one, the system's trust store.

Size: three parts around one wire format: the cursors and the message codec (pure, about
a third), the Twisted driver and the blocking asyncio driver (a connection and its resume
loop each).  They change together whenever the protocol does (a new message type, a new
end reason), which is why they share a module; the drivers import their framework lazily,
so a process loads only the one it uses.
"""

from __future__ import annotations

import itertools
import json
from collections import deque

import cbor2

__all__ = ["TailCursor", "WatchCursor", "StreamError", "Compacted", "StreamGap",
           "ws_url", "encode_message", "decode_frame", "JSON", "CBOR", "TwistedStream",
           "TwistedConnection", "connect_twisted", "blocking_stream"]

JSON = "paxoslog.v1.json"
CBOR = "paxoslog.v1.cbor"
_RESUMABLE = frozenset({"slow_consumer", "compacted", "unavailable", "internal",
                        "not_leader"})


class StreamError(Exception):
    """A stream could not go on: ``code`` (the server's error) and its body."""

    def __init__(self, message: str, code: str | None = None, body: object = None) -> None:
        super().__init__(message)
        self.code = code
        self.body = body


class Compacted(StreamError):
    """No endpoint still has the stream's start; ``first`` is the oldest available."""

    def __init__(self, message: str, first: int | None, body: object = None) -> None:
        super().__init__(message, "compacted", body)
        self.first = first


class StreamGap(StreamError):
    """A tail message skipped an index (never expected from a server: resubscribe)."""


def _outcome(status: int, body) -> str:
    """A subscribe answer in a few words (for ``TwistedStream.attempts``)."""
    body = body if isinstance(body, dict) else {}
    if status == 200:
        return f"200 from {body.get('from')} (applied {body.get('applied_index')})"
    extra = {k: body[k] for k in ("first_index", "first_revision") if k in body}
    return f"{status} {body.get('error')} {extra or ''}".rstrip()


def _given_up(seconds: float, compacted_at: dict, cursor) -> StreamError:
    """The error of a stream no endpoint served for ``seconds``: ``Compacted`` when every
    endpoint that answered said its start is gone (the others were unreachable)."""
    if compacted_at:
        firsts = [f for f in compacted_at.values() if f is not None]
        return Compacted(f"no endpoint served the stream for {seconds} s: those that answered "
                         f"({', '.join(sorted(compacted_at))}) no longer have "
                         f"{cursor.resume_point()}, the others were unreachable",
                         min(firsts) if firsts else None)
    return StreamError(f"no endpoint served the stream for {seconds} s")


def ws_url(endpoint: str) -> str:
    """``http://h:p`` -> ``ws://h:p/api/v1/ws`` (https -> wss)."""
    endpoint = endpoint.strip().rstrip("/")
    if "://" not in endpoint:
        endpoint = "http://" + endpoint
    scheme, rest = endpoint.split("://", 1)
    return ("wss" if scheme == "https" else "ws") + "://" + rest + "/api/v1/ws"


def encode_message(message: object, subprotocol: str) -> bytes:
    if subprotocol == CBOR:
        return cbor2.dumps(message)
    return json.dumps(message, separators=(",", ":")).encode()


def decode_frame(payload: bytes, subprotocol: str) -> list:
    """The messages of one frame (a frame holds a message or an array of them)."""
    value = cbor2.loads(payload) if subprotocol == CBOR else json.loads(payload)
    return value if isinstance(value, list) else [value]


# ====================================================================== cursors

class TailCursor:
    """Committed log entries from ``start`` (None: from the next one applied)."""

    kind = "tail"

    def __init__(self, start: int | None = None) -> None:
        self.next = start
        self.delivered = 0
        self.duplicates = 0
        self.index = None             # the newest index known applied (progress)

    def subscribe(self, request_id: int) -> dict:
        message = {"id": request_id, "op": "tail"}
        if self.next is not None:
            message["from"] = self.next
        return message

    def started(self, body: dict) -> None:
        if self.next is None:
            self.next = body["from"]

    def accept(self, message: dict) -> list:
        """The new entries of a stream message (raises ``StreamGap``)."""
        kind = message.get("type")
        if kind == "progress":
            self.index = message.get("index")
            return []
        if kind != "entries":
            return []
        out = []
        for entry in message["entries"]:
            index = entry["index"]
            if index < self.next:
                self.duplicates += 1
                continue
            if index > self.next:
                raise StreamGap(f"tail expected index {self.next}, got {index}")
            out.append(entry)
            self.next = index + 1
        self.delivered += len(out)
        self.index = self.next - 1
        return out

    def resume_point(self) -> str:
        return f"index {self.next}"


class WatchCursor:
    """kv events under ``key`` or ``prefix`` from revision ``start`` (None: from now);
    ``prev``: events carry the previous record."""

    kind = "watch"

    def __init__(self, key: str | None = None, prefix: str | None = None,
                 start: int | None = None, prev: bool = False) -> None:
        if (key is None) == (prefix is None):
            raise ValueError("watch exactly one of key or prefix")
        self.key = key
        self.prefix = prefix
        self.next = start
        self.prev = prev
        self.delivered = 0
        self.duplicates = 0
        self.revision = None          # the watcher is current up to this revision

    def subscribe(self, request_id: int) -> dict:
        message = {"id": request_id, "op": "watch"}
        if self.key is not None:
            message["key"] = self.key
        else:
            message["prefix"] = self.prefix
        if self.next is not None:
            message["from"] = self.next
        if self.prev:
            message["prev"] = True
        return message

    def started(self, body: dict) -> None:
        if self.next is None:
            self.next = body["from"]

    def accept(self, message: dict) -> list:
        kind = message.get("type")
        if kind == "progress":
            revision = message["revision"]
            if revision >= self.next:
                self.next = revision + 1
            self.revision = self.next - 1
            return []
        if kind != "events":
            return []
        out = []
        for event in message["events"]:
            if event["mod_index"] < self.next:
                self.duplicates += 1
                continue
            out.append(event)
        self.next = max(self.next, message["revision"] + 1)
        self.revision = self.next - 1
        self.delivered += len(out)
        return out

    def resume_point(self) -> str:
        return f"revision {self.next}"


def _end_error(message: dict) -> StreamError:
    return StreamError(f"stream ended: {message.get('error')}: {message.get('message')}",
                       message.get("error"), message)


# ====================================================================== Twisted

class TwistedConnection:
    """One WebSocket connection (autobahn's Twisted client): requests by id, stream
    messages to their handlers.  Use ``connect_twisted``."""

    def __init__(self, reactor, subprotocol: str) -> None:
        self.reactor = reactor
        self.subprotocol = subprotocol
        self.protocol = None
        self.pending: dict = {}
        self.streams: dict = {}
        self.closed = None            # a Deferred fired when the connection is gone
        self._ids = itertools.count(1)

    def next_id(self) -> int:
        return next(self._ids)

    def request(self, message: dict):
        """Send ``message`` (its id is set here); a Deferred of ``(status, body)``."""
        from twisted.internet import defer
        if self.protocol is None:
            return defer.fail(ConnectionError("not connected"))
        request_id = message.setdefault("id", self.next_id())
        d = defer.Deferred()
        self.pending[request_id] = d
        self.protocol.sendMessage(encode_message(message, self.subprotocol),
                                  self.subprotocol == CBOR)
        return d

    def send_many(self, messages: list) -> list:
        """Several requests in one frame; their Deferreds."""
        from twisted.internet import defer
        out = []
        for message in messages:
            d = defer.Deferred()
            self.pending[message.setdefault("id", self.next_id())] = d
            out.append(d)
        self.protocol.sendMessage(encode_message(messages, self.subprotocol),
                                  self.subprotocol == CBOR)
        return out

    def received(self, payload: bytes) -> None:
        for message in decode_frame(payload, self.subprotocol):
            if "stream" in message and "id" not in message:
                handler = self.streams.get(message["stream"])
                if handler is not None:
                    handler(message)
                continue
            d = self.pending.pop(message.get("id"), None)
            if d is not None:
                d.callback((message["status"], message.get("body")))

    def lost(self, reason: str) -> None:
        pending, self.pending = self.pending, {}
        for d in pending.values():
            d.errback(ConnectionError(f"connection lost: {reason}"))
        streams, self.streams = self.streams, {}
        for handler in streams.values():
            handler({"type": "end", "error": "connection_lost", "message": reason})
        self.protocol = None

    def pause_reading(self, yes: bool) -> None:
        """Stop (or go on) reading from the socket: a consumer that is behind pushes back
        to the server through TCP."""
        if self.protocol is not None and self.protocol.transport is not None:
            if yes:
                self.protocol.transport.pauseProducing()
            else:
                self.protocol.transport.resumeProducing()

    def close(self) -> None:
        if self.protocol is not None:
            self.protocol.sendClose(1000)


def _headers(authorization: str | None) -> dict | None:
    return {"Authorization": authorization} if authorization else None


def _twisted_tls_options(host: str, cafile: str | None):
    """Client TLS options for ``host``, trusting ``cafile`` only (else the system store)."""
    from twisted.internet import ssl
    if cafile is None:
        return ssl.optionsForClientTLS(host)
    with open(cafile, "rb") as f:
        root = ssl.Certificate.loadPEM(f.read())
    return ssl.optionsForClientTLS(host, trustRoot=root)


def connect_twisted(reactor, endpoint: str, subprotocol: str = JSON,
                    timeout_s: float = 5.0, cafile: str | None = None,
                    authorization: str | None = None):
    """A Deferred of a connected ``TwistedConnection`` to ``endpoint`` (http://h:p, or
    https://h:p: wss verified against ``cafile``); ``authorization``: the upgrade
    request's Authorization header (``Bearer <token>``), which every request on the
    connection then speaks for."""
    from autobahn.twisted.websocket import (WebSocketClientFactory,
                                            WebSocketClientProtocol, connectWS)
    from twisted.internet import defer

    conn = TwistedConnection(reactor, subprotocol)
    opened = defer.Deferred()
    conn.closed = defer.Deferred()

    class _Protocol(WebSocketClientProtocol):
        def onOpen(self):
            conn.protocol = self
            if not opened.called:
                opened.callback(conn)

        def onMessage(self, payload, isBinary):
            conn.received(payload)

        def onClose(self, wasClean, code, reason):
            conn.lost(f"{code} {reason}")
            if not opened.called:
                opened.errback(ConnectionError(f"WebSocket handshake failed: {code} "
                                               f"{reason}"))
            if not conn.closed.called:
                conn.closed.callback(None)

    class _Factory(WebSocketClientFactory):
        def clientConnectionFailed(self, connector, reason):
            # A refused or unreachable endpoint fails now, not at the timeout: a stream
            # cycling over endpoints with some down spent timeout_s on each dead one
            # (found in a chaos run: 2.6 s each, the streams fell behind every node's log).
            if not opened.called:
                opened.errback(ConnectionError(f"cannot connect to {endpoint}: "
                                               f"{reason.getErrorMessage()}"))

    factory = _Factory(ws_url(endpoint), protocols=[subprotocol], reactor=reactor,
                       headers=_headers(authorization))
    factory.protocol = _Protocol
    factory.setProtocolOptions(openHandshakeTimeout=timeout_s, autoPingInterval=0,
                               maxMessagePayloadSize=0, maxFramePayloadSize=0,
                               tcpNoDelay=True)
    tls = _twisted_tls_options(factory.host, cafile) if factory.isSecure else None
    connector = connectWS(factory, contextFactory=tls, timeout=timeout_s)

    def timed_out():
        if not opened.called:
            connector.disconnect()
            opened.errback(ConnectionError(f"no WebSocket connection to {endpoint} within "
                                           f"{timeout_s} s"))
    call = reactor.callLater(timeout_s + 0.5, timed_out)
    opened.addBoth(lambda r: (call.active() and call.cancel(), r)[1])
    return opened


class TwistedStream:
    """A tail or watch with automatic resume, for Twisted code: ``async for item in
    stream`` (inside ``Deferred.fromCoroutine``), or ``stream.each(callback)`` (a Deferred
    fired when the stream ends).  Up to ``buffer_max`` items wait for the consumer; beyond
    that the connection stops reading (TCP pushes back to the server, which pauses the
    stream, and ends it ``slow_consumer`` only after ``websocket.slow_consumer_ms``:
    resumed here at once)."""

    def __init__(self, reactor, endpoints: list[str], cursor, *, subprotocol: str = JSON,
                 buffer_max: int = 10_000, retry_s: float = 0.2,
                 connect_timeout_s: float = 3.0, give_up_s: float = 60.0,
                 cafile: str | None = None, authorization: str | None = None) -> None:
        self.reactor = reactor
        self.cafile = cafile
        self.authorization = authorization
        self.endpoints = list(endpoints)
        self.cursor = cursor
        self.subprotocol = subprotocol
        self.buffer_max = buffer_max
        self.retry_s = retry_s
        self.connect_timeout_s = connect_timeout_s
        self.give_up_s = give_up_s
        self.items: deque = deque()
        self.error: BaseException | None = None
        self.done = False
        self.reconnects = 0
        self.gaps = 0                 # stream messages that skipped an index (resubscribed)
        self.ends: list[dict] = []    # every end message the servers sent
        # The latest connection attempts: (seconds, endpoint, what came of it), to tell
        # afterwards why a stream did not advance.
        self.attempts: deque = deque(maxlen=40)
        self.endpoint: str | None = None
        self._position = 0
        self._waiter = None
        self._conn: TwistedConnection | None = None
        self._callback = None
        self._finished = None
        self._paused = False
        self._task = None

    # ---- consuming

    def start(self) -> "TwistedStream":
        from twisted.internet import defer
        if self._task is None:
            self._task = defer.Deferred.fromCoroutine(self._run())
            self._task.addErrback(self._crashed)
        return self

    def __aiter__(self):
        self.start()
        return self

    async def __anext__(self):
        from twisted.internet import defer
        while not self.items:
            if self.done:
                if self.error is not None:
                    raise self.error
                raise StopAsyncIteration
            self._waiter = defer.Deferred()
            await self._waiter
        item = self.items.popleft()
        if self._paused and len(self.items) < self.buffer_max // 2:
            self._paused = False
            if self._conn is not None:
                self._conn.pause_reading(False)
        return item

    def each(self, callback):
        """Call ``callback(item)`` for every item; a Deferred fired (None, or the error)
        when the stream ends or is cancelled."""
        from twisted.internet import defer
        self._callback = callback
        self._finished = defer.Deferred()
        self.start()
        return self._finished

    def cancel(self) -> None:
        self._finish(None)
        if self._conn is not None:
            self._conn.close()

    # ---- running

    def _crashed(self, failure) -> None:
        self._finish(failure.value)

    def _finish(self, error) -> None:
        if self.done:
            return
        self.done = True
        self.error = error
        self._wake()
        if self._finished is not None and not self._finished.called:
            if error is None:
                self._finished.callback(None)
            else:
                self._finished.errback(error)

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None:
            waiter.callback(None)

    def _deliver(self, items: list) -> None:
        if self._callback is not None:
            for item in items:
                self._callback(item)
            return
        self.items.extend(items)
        self._wake()
        if not self._paused and len(self.items) >= self.buffer_max and self._conn is not None:
            self._paused = True
            self._conn.pause_reading(True)

    async def _run(self) -> None:
        from twisted.internet import defer, task
        compacted_at: dict[str, int | None] = {}
        deadline = self.reactor.seconds() + self.give_up_s
        while not self.done:
            endpoint = self.endpoints[self._position % len(self.endpoints)]
            self._position += 1
            self.endpoint = endpoint
            ended = defer.Deferred()
            began = self.reactor.seconds()
            try:
                conn = await connect_twisted(self.reactor, endpoint, self.subprotocol,
                                             self.connect_timeout_s, self.cafile,
                                             self.authorization)
            except Exception as exc:
                conn = None
                self.attempts.append((began, endpoint, f"connect failed: {exc!r:.120}"))
            if conn is not None and not self.done:
                self._conn = conn
                try:
                    status, body = await conn.request(self.cursor.subscribe(conn.next_id()))
                except Exception as exc:
                    status, body = None, None
                    self.attempts.append((began, endpoint, f"subscribe failed: {exc!r:.120}"))
                if status is not None:
                    self.attempts.append((began, endpoint, _outcome(status, body)))
                if status == 200:
                    compacted_at.clear()
                    deadline = self.reactor.seconds() + self.give_up_s
                    self.cursor.started(body)
                    conn.streams[body["stream"]] = lambda m: self._message(m, ended)
                    why = await ended
                    self.attempts.append((self.reactor.seconds(), endpoint,
                                          f"ended before {self.cursor.resume_point()}: "
                                          f"{(why or {}).get('error') or 'a gap'}"))
                elif status == 410:
                    first = (body or {}).get("first_index", (body or {}).get("first_revision"))
                    compacted_at[endpoint] = first
                    if set(compacted_at) >= set(self.endpoints):
                        firsts = [f for f in compacted_at.values() if f is not None]
                        self._finish(Compacted(
                            f"no endpoint still has {self.cursor.resume_point()}: "
                            f"{(body or {}).get('message')}", min(firsts) if firsts else None,
                            body))
                elif status is not None and status not in (429, 503, 504):
                    self._finish(StreamError(f"subscribe refused: {status} {body}",
                                             (body or {}).get("error"), body))
                conn.streams.clear()
                conn.close()
                self._conn = None
                self._paused = False
            if self.done:
                break
            if self.reactor.seconds() > deadline:
                self._finish(_given_up(self.give_up_s, compacted_at, self.cursor))
                break
            self.reconnects += 1
            await task.deferLater(self.reactor, self.retry_s, lambda: None)

    def _message(self, message: dict, ended) -> None:
        if message.get("type") == "end":
            self.ends.append(message)
            if not ended.called:
                ended.callback(message)
            if message.get("error") not in _RESUMABLE and message.get("error") != \
                    "connection_lost":
                self._finish(_end_error(message))
            return
        try:
            items = self.cursor.accept(message)
        except StreamGap:
            self.gaps += 1
            if not ended.called:
                ended.callback(message)
            return
        if items:
            self._deliver(items)


# ====================================================================== blocking (asyncio)

def blocking_stream(endpoints: list[str], cursor, *, subprotocol: str = JSON,
                    follow: bool = True, timeout_s: float = 10.0, retry_s: float = 0.2,
                    give_up_s: float = 60.0, ssl_context=None,
                    authorization: str | None = None, idle_s: float | None = None):
    """A generator of the stream's items for synchronous code (autobahn's asyncio client
    on a private event loop).  ``follow`` False: stop once the stream has caught up with
    the applied index it reported when subscribing (``log tail`` without ``-f``).
    ``ssl_context``: for https endpoints (None: the system's trust store).  ``idle_s``:
    yield None whenever that long passes without an item (the caller may stop there)."""
    import asyncio

    loop = asyncio.new_event_loop()
    state = _BlockingState(endpoints, cursor, subprotocol, follow, timeout_s, retry_s,
                           give_up_s, ssl_context, authorization)
    try:
        while True:
            if idle_s is None:
                items = loop.run_until_complete(state.next_items())
            else:
                try:
                    items = loop.run_until_complete(
                        asyncio.wait_for(state.next_items(), idle_s))
                except asyncio.TimeoutError:
                    yield None
                    continue
            if items is None:
                return
            yield from items
    finally:
        loop.run_until_complete(state.close())
        loop.close()


class _BlockingState:
    def __init__(self, endpoints, cursor, subprotocol, follow, timeout_s, retry_s,
                 give_up_s, ssl_context=None, authorization: str | None = None) -> None:
        self.endpoints = list(endpoints)
        self.ssl_context = ssl_context
        self.authorization = authorization
        self.cursor = cursor
        self.subprotocol = subprotocol
        self.follow = follow
        self.timeout_s = timeout_s
        self.retry_s = retry_s
        self.give_up_s = give_up_s
        self.protocol = None
        self.queue = None
        self.position = 0
        self.stream = None
        self.until = None             # not following: stop after this index/revision
        self.finished = False
        self.endpoint = None
        self.compacted: dict = {}

    async def connect(self):
        import asyncio

        import txaio
        if getattr(txaio, "_explicit_framework", None) == "twisted":
            raise StreamError("the blocking streams use autobahn's asyncio client, and this "
                              "process already runs autobahn on Twisted (txaio serves one "
                              "framework per process): use Client.tail/watch here")
        from autobahn.asyncio.websocket import (WebSocketClientFactory,
                                                WebSocketClientProtocol)
        state = self
        queue = self.queue = asyncio.Queue()
        opened = asyncio.get_running_loop().create_future()

        class _Protocol(WebSocketClientProtocol):
            def onOpen(self):
                if not opened.done():
                    opened.set_result(self)

            def onMessage(self, payload, isBinary):
                for message in decode_frame(payload, state.subprotocol):
                    queue.put_nowait(message)

            def onClose(self, wasClean, code, reason):
                if not opened.done():
                    opened.set_exception(ConnectionError(f"{code} {reason}"))
                queue.put_nowait({"type": "end", "error": "connection_lost",
                                  "message": f"{code} {reason}"})

        endpoint = self.endpoints[self.position % len(self.endpoints)]
        self.position += 1
        url = ws_url(endpoint)
        factory = WebSocketClientFactory(url, protocols=[self.subprotocol],
                                         loop=asyncio.get_running_loop(),
                                         headers=_headers(self.authorization))
        factory.protocol = _Protocol
        factory.setProtocolOptions(maxMessagePayloadSize=0, maxFramePayloadSize=0,
                                   autoPingInterval=0)
        host, port = url.split("://", 1)[1].split("/", 1)[0].rsplit(":", 1)
        loop = asyncio.get_running_loop()
        host = host.strip("[]")
        tls = {}
        if url.startswith("wss://"):
            import ssl
            tls = {"ssl": self.ssl_context or ssl.create_default_context(),
                   "server_hostname": host}
        await asyncio.wait_for(loop.create_connection(factory, host, int(port), **tls),
                               self.timeout_s)
        self.protocol = await asyncio.wait_for(opened, self.timeout_s)
        self.protocol.sendMessage(encode_message(self.cursor.subscribe(1), self.subprotocol),
                                  self.subprotocol == CBOR)
        return endpoint

    async def next_items(self):
        import asyncio
        if self.finished:
            return None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.give_up_s
        while True:
            if self.protocol is None:
                try:
                    endpoint = await self.connect()
                except (OSError, asyncio.TimeoutError, ConnectionError):
                    if loop.time() > deadline:
                        raise _given_up(self.give_up_s, self.compacted, self.cursor)
                    await asyncio.sleep(self.retry_s)
                    continue
                self.endpoint = endpoint
            message = await self.queue.get()
            if "id" in message:
                status, body = message.get("status"), message.get("body") or {}
                if status == 200:
                    self.compacted.clear()
                    self.stream = body["stream"]
                    self.cursor.started(body)
                    if not self.follow and self.until is None:
                        self.until = body["applied_index"]
                        if self.cursor.next > self.until:
                            return None
                    continue
                if status == 410:
                    self.compacted[self.endpoint] = body.get("first_index",
                                                             body.get("first_revision"))
                    if set(self.compacted) >= set(self.endpoints):
                        firsts = [f for f in self.compacted.values() if f is not None]
                        raise Compacted(f"no endpoint still has {self.cursor.resume_point()}: "
                                        f"{body.get('message')}",
                                        min(firsts) if firsts else None, body)
                elif status not in (429, 503, 504):
                    raise StreamError(f"subscribe refused: {status} {body.get('message')}",
                                      body.get("error"), body)
                await self._drop()
                await asyncio.sleep(self.retry_s)
                continue
            if message.get("type") == "end":
                if message.get("error") not in _RESUMABLE | {"connection_lost"}:
                    raise _end_error(message)
                await self._drop()
                await asyncio.sleep(self.retry_s)
                continue
            if message.get("stream") != self.stream:
                continue
            try:
                items = self.cursor.accept(message)
            except StreamGap:
                await self._drop()
                continue
            if not self.follow and self.cursor.next > self.until:
                self.finished = True
                return items or None
            if items:
                return items

    async def _drop(self) -> None:
        if self.protocol is not None:
            self.protocol.sendClose(1000)
            if self.protocol.transport is not None:
                self.protocol.transport.close()
        self.protocol = None
        self.stream = None

    async def close(self) -> None:
        await self._drop()
