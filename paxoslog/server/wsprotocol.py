"""The WebSocket endpoint's protocol (``GET /api/v1/ws``, docs/websocket.md), on autobahn's
Twisted server (imported only when a node builds its endpoint, websocket.py: txaio, under
autobahn, serves one framework per process, and importing ``paxoslog.server`` must not
pick Twisted for a process that uses the asyncio client): the HTTP server hands the upgrade request over (http.py ``SwitchProtocols``) and
autobahn does the handshake and the framing; this module is the thin adapter between
frames and the node.

One connection carries:

* **requests** with an ``id``, answered possibly out of order, many in flight: ``put``,
  ``delete``, ``cas``, ``get``, ``sm``, ``batch``, ``status``.  Each is served by the HTTP
  API's own route (api.py) as a request with an already decoded body, so validation,
  errors and status codes are exactly the HTTP API's; the answer is
  ``{"id", "status", "body"}`` with the HTTP response body (plus ``retry_after`` when the
  HTTP answer had Retry-After);
* **subscriptions**: ``tail`` and ``watch`` (streams.py), ended by ``cancel``, by the
  client going away, or by the server with an ``end`` message.

Limits (the conf's [websocket]), each refused with an error that names it:
``message_bytes_max`` (autobahn closes with 1009), ``inflight_requests_max`` (429
``too_many_requests``), ``subscriptions_max`` (429 ``too_many_subscriptions``),
``connections_max`` (the handshake is answered 503), ``handshake_timeout_ms``,
``idle_timeout_ms`` (close 4000), ``slow_consumer_ms`` (streams end ``slow_consumer``,
close 4008), ``ping_interval_ms`` (autobahn's auto-ping; a peer that does not answer is
dropped).  A node that stops closes every connection with 4001.

Backpressure: the connection is a streaming producer of its transport.  When the
transport's buffer fills, the connection is paused: streams stop where they are (they
catch up on resume, streams.py), answers wait in the outbox (each still counts as in
flight), and once ``inflight_requests_max`` answers wait, the connection stops reading.
So a client that does not read costs a bounded amount of memory: the transport's buffer,
at most one stream message, and at most ``inflight_requests_max`` answers.
"""

from __future__ import annotations

from urllib.parse import urlencode

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionDeny
from twisted.internet import defer, task
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from zope.interface import implementer

from paxoslog.tokens import Role

from .errors import ApiError
from .http import Request
from .httpmsg import Later
from .streams import TAIL, WATCH, Subscription
from .wscodec import CODECS, JSON_SUBPROTOCOL, BadMessage

__all__ = ["StreamsFactory", "StreamsProtocol", "CLOSE_IDLE", "CLOSE_STOPPING",
           "CLOSE_SLOW_CONSUMER", "OPS"]

log = Logger(namespace="paxoslog.websocket")

CLOSE_IDLE = 4000
CLOSE_STOPPING = 4001     # the node is stopping (autobahn refuses 1001 from an application)
CLOSE_SLOW_CONSUMER = 4008
CLOSE_REVOKED = 4401      # the token the connection was opened with was revoked
_ID_CHARS_MAX = 128
_KV_WRITES = ("put", "delete", "cas")
_GET_FIELDS = frozenset({"id", "op", "key", "prefix", "limit", "consistency"})
_TAIL_FIELDS = frozenset({"id", "op", "from"})
_WATCH_FIELDS = frozenset({"id", "op", "key", "prefix", "from", "prev"})
OPS = ("put", "delete", "cas", "get", "sm", "batch", "status", "tail", "watch", "cancel")
_FRAME_REQUESTS_PER_INFLIGHT = 4   # a frame's requests: at most this many x the in-flight limit


class _Refused(Exception):
    """A request refused before it reached the API: status and error body."""

    def __init__(self, status: int, code: str, message: str, **extra) -> None:
        super().__init__(message)
        self.status = status
        self.body = {"error": code, "message": message, **extra}


@implementer(IPushProducer)
class _Backpressure:
    """The connection as its transport's streaming producer."""

    def __init__(self, conn: "StreamsProtocol") -> None:
        self.conn = conn

    def pauseProducing(self) -> None:
        self.conn.writable(False)

    def resumeProducing(self) -> None:
        self.conn.writable(True)

    def stopProducing(self) -> None:
        pass


class StreamsProtocol(WebSocketServerProtocol):
    """One WebSocket connection (a ``Sink`` for the stream hub)."""

    codec = None
    paused = False
    principal = None      # who the upgrade request was authenticated as (http.py sets it)

    # ------------------------------------------------------------------ connection

    def onConnect(self, request):
        factory = self.factory
        offered = list(request.protocols or ())
        chosen = next((p for p in offered if p in CODECS), None)
        if offered and chosen is None:
            raise ConnectionDeny(400, f"no supported subprotocol among {offered[:8]!r:.200}; "
                                      f"use one of {', '.join(CODECS)}")
        self.codec = CODECS[chosen or JSON_SUBPROTOCOL](factory.limits.json_depth_max)
        return chosen

    def onOpen(self) -> None:
        factory = self.factory
        factory.conns.add(self)
        self.inflight = 0
        self.subs: dict[int, Subscription] = {}
        self.next_stream = 0
        self.outbox: list[bytes] = []
        self._flush_call = None
        self._slow_call = None
        self.reading = True
        self.last_received = factory.reactor.seconds()
        self.registerProducer(_Backpressure(self), True)

    def onClose(self, wasClean, code, reason) -> None:
        factory = self.factory
        if self in factory.conns:
            factory.conns.discard(self)
            factory.hub.sink_closed(self)
            for sub in self.subs.values():   # those still starting (a tail's WAL read) too
                factory.hub.cancel(sub)
            self.subs.clear()
            self.outbox = []
            for call in (self._flush_call, self._slow_call):
                if call is not None and call.active():
                    call.cancel()

    @property
    def usable(self) -> bool:
        return self.state == self.STATE_OPEN

    # ------------------------------------------------------------------ backpressure

    def writable(self, yes: bool) -> None:
        """The transport's buffer drained (True) or filled up (False)."""
        if not yes:
            if self.paused:
                return
            self.paused = True
            self.factory.hub.paused(self)
            self._slow_call = self.factory.reactor.callLater(
                self.factory.options.slow_consumer_ms / 1000.0, self._slow_consumer)
            return
        if not self.paused:
            return
        self.paused = False
        if self._slow_call is not None and self._slow_call.active():
            self._slow_call.cancel()
        self._slow_call = None
        self._flush()
        if not self.reading:
            self.reading = True
            self.transport.resumeProducing()
        self.factory.hub.resume(self)

    def _slow_consumer(self) -> None:
        self._slow_call = None
        if not self.paused or not self.usable:
            return
        self.factory.hub.slow_consumer(self)
        self.sendClose(CLOSE_SLOW_CONSUMER, f"slow consumer: nothing read for "
                                            f"{self.factory.options.slow_consumer_ms} ms "
                                            "(websocket.slow_consumer_ms)")

    # ------------------------------------------------------------------ sending

    def send_stream(self, data: bytes) -> None:
        """A stream message (the hub checks ``paused`` first); answers queued before it
        go out first, so a subscribe answer always precedes its stream."""
        if self.outbox:
            self._flush()
        if self.usable:
            # The hub hands the very same bytes to every subscriber of a group that has
            # the same stream id (stream 1 of many connections): frame them once.
            factory = self.factory
            last = factory.last_prepared
            if last is None or last[0] is not data:
                last = factory.last_prepared = (data, factory.prepareMessage(
                    data, self.codec.binary))
            self.sendPreparedMessage(last[1])

    def stream_ended(self, sub: Subscription) -> None:
        self.subs.pop(sub.stream, None)

    def _answer(self, encoded: bytes) -> None:
        self.outbox.append(encoded)
        if self._flush_call is None and not self.paused:
            self._flush_call = self.factory.reactor.callLater(0, self._flush)

    def _flush(self) -> None:
        """Write the waiting answers as one frame (an array when several)."""
        if self._flush_call is not None:
            if self._flush_call.active():
                self._flush_call.cancel()
            self._flush_call = None
        if self.paused or not self.outbox:
            return
        out, self.outbox = self.outbox, []
        self.inflight -= len(out)
        if self.usable:
            # Prepared, as stream messages are: autobahn's sendMessage holds an answer to
            # websocket.message_bytes_max, which bounds what a client sends, not what it
            # is answered (a large prefix read, a batch's results).  Raising there lost
            # every answer of the frame, committed writes' included.
            self.sendPreparedMessage(self.factory.prepareMessage(
                self.codec.encode_many(out), self.codec.binary))
        if not self.reading and not self.paused:
            self.reading = True
            self.transport.resumeProducing()

    def _reply(self, request_id: bytes, status: int, body: dict) -> None:
        self._answer(self.codec.reply(request_id, status, body))

    # ------------------------------------------------------------------ receiving

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.last_received = self.factory.reactor.seconds()
        self._frame(payload, isBinary)
        # Every reply counts in flight, refusals too: a client that sends and never reads
        # stops being read once that many wait, whatever it sends.
        if self.paused and self.inflight >= self.factory.options.inflight_requests_max:
            self._stop_reading()

    def _frame(self, payload: bytes, binary: bool) -> None:
        codec = self.codec
        null = codec.encode_id(None)
        if binary != codec.binary:
            self.inflight += 1
            kind = "binary" if codec.binary else "text"
            self._reply(null, 400, {"error": "bad_message", "message":
                                    f"the {codec.subprotocol} subprotocol takes {kind} frames"})
            return
        try:
            message = codec.decode(payload)
        except BadMessage as exc:
            self.inflight += 1
            self._reply(null, 400, {"error": "bad_message", "message": str(exc)})
            return
        messages = message if type(message) is list else (message,)
        most = _FRAME_REQUESTS_PER_INFLIGHT * self.factory.options.inflight_requests_max
        if len(messages) > most:
            # Each item is answered (those past the in-flight limit with 429), all in this
            # turn: a frame of half a million tiny items held the event loop for seconds.
            self.inflight += 1
            self._reply(null, 400, {"error": "bad_message", "message":
                                    f"a frame carries at most {most} requests (4 x "
                                    f"websocket.inflight_requests_max), not {len(messages)}"})
            return
        for item in messages:
            self._request(item)

    def _request(self, message: object) -> None:
        codec = self.codec
        options = self.factory.options
        if type(message) is not dict:
            self.inflight += 1
            self._reply(codec.encode_id(None), 400, {
                "error": "bad_message", "message": "a message must be an object (or a frame "
                                                   "an array of objects)"})
            return
        request_id = message.get("id")
        if (request_id is not None and type(request_id) is not int
                and not (type(request_id) is str and len(request_id) <= _ID_CHARS_MAX)):
            request_id = None
        rid = codec.encode_id(request_id)
        self.inflight += 1
        if self.inflight > options.inflight_requests_max:
            self._reply(rid, 429, {"error": "too_many_requests", "message":
                                   f"more than {options.inflight_requests_max} requests in "
                                   "flight on this connection "
                                   "(websocket.inflight_requests_max)"})
            return
        try:
            if request_id is None:
                raise _Refused(400, "bad_request", '"id" must be an integer or a string of '
                                                   f'at most {_ID_CHARS_MAX} characters')
            access = self.factory.api.access
            if access is not None and access.revoked(self.principal):
                raise _Refused(401, "unauthenticated", "the bearer token this connection "
                                                       "was opened with has been revoked")
            op = message.get("op")
            if op in ("tail", "watch"):
                result = self._subscribe(op, message)
            elif op == "cancel":
                result = self._cancel(message)
            else:
                result = self.factory.api.handle_as(self._api_request(op, message),
                                                    self.principal)
        except _Refused as exc:
            self._reply(rid, exc.status, exc.body)
            return
        except ApiError as exc:
            self._reply(rid, exc.status, exc.body())
            return
        except Exception:
            log.failure("WebSocket request failed")
            self._reply(rid, 500, {"error": "internal", "message": "internal error"})
            return
        if type(result) is Later:
            result.then(self._answered, rid)
        elif isinstance(result, defer.Deferred):
            result.addCallbacks(self._answered, self._failed, callbackArgs=(rid,),
                                errbackArgs=(rid,))
        else:
            self._answered(result, rid)

    def _stop_reading(self) -> None:
        if self.reading:
            self.reading = False
            self.transport.pauseProducing()

    def _answered(self, result, rid: bytes) -> None:
        if not self.usable:
            return
        if type(result) is dict:                  # a subscription's answer
            self._reply(rid, 200, result)
            return
        status, body, _, headers = result
        retry_after = None
        for name, value in headers:
            if name.lower() == b"retry-after":
                retry_after = int(value)
        self._answer(self.codec.reply_raw(rid, status, body, retry_after))

    def _failed(self, failure, rid: bytes) -> None:
        if not self.usable:
            return
        if failure.check(ApiError):
            exc = failure.value
            self._reply(rid, exc.status, exc.body())
            return
        log.failure("WebSocket request failed", failure)
        self._reply(rid, 500, {"error": "internal", "message": "internal error"})

    # ------------------------------------------------------------------ API requests

    def _api_request(self, op: object, message: dict) -> Request:
        """The HTTP API request that serves ``op``."""
        if op in _KV_WRITES:
            body = {k: v for k, v in message.items() if k != "id"}
            return _request("POST", "/api/v1/consensus/propose", body=body)
        if op == "batch":
            body = {k: v for k, v in message.items() if k not in ("id", "op")}
            return _request("POST", "/api/v1/consensus/batch", body=body)
        if op == "get":
            unknown = sorted(set(message) - _GET_FIELDS)
            if unknown:
                raise _Refused(400, "bad_request", f"unknown field(s): {', '.join(unknown)[:200]}")
            params = {}
            for name in ("key", "prefix", "consistency"):
                if name in message:
                    if not isinstance(message[name], str):
                        raise _Refused(400, "bad_request", f'"{name}" must be a string')
                    params[name] = message[name]
            if "limit" in message:
                if type(message["limit"]) is not int:
                    raise _Refused(400, "bad_request", '"limit" must be an integer')
                params["limit"] = str(message["limit"])
            return _request("GET", "/api/v1/consensus/query", query=urlencode(params))
        if op == "sm":
            name = message.get("sm")
            body = message.get("body")
            if not isinstance(name, str) or not name or "/" in name:
                raise _Refused(400, "bad_request", '"sm" must name a state machine')
            if type(body) is not dict:
                raise _Refused(400, "bad_request", '"body" must be an object (what POST '
                                                   '/api/v1/sm/<name> takes)')
            return _request("POST", "/api/v1/sm/" + name, body=body)
        if op == "status":
            return _request("GET", "/api/v1/cluster/status")
        raise _Refused(400, "unknown_op", f"unknown op {op!r:.40}; ops: {', '.join(OPS)}")

    # ------------------------------------------------------------------ subscriptions

    def _subscribe(self, op: str, message: dict):
        options = self.factory.options
        if op == TAIL:
            # Entries carry every client's session ids (as /api/v1/log/entries): admin.
            self.factory.api.require_role(self.principal, Role.ADMIN, "a log tail")
        unknown = sorted(set(message) - (_TAIL_FIELDS if op == TAIL else _WATCH_FIELDS))
        if unknown:
            raise _Refused(400, "bad_request", f"unknown field(s): {', '.join(unknown)[:200]}")
        if len(self.subs) >= options.subscriptions_max:
            raise _Refused(429, "too_many_subscriptions",
                           f"this connection has {len(self.subs)} subscriptions, the most "
                           f"allowed (websocket.subscriptions_max)")
        start = message.get("from")
        if start is not None and (type(start) is not int or start < 1):
            raise _Refused(400, "bad_request", '"from" must be a positive integer (an index); '
                                               'leave it out to start with the next entry')
        self.next_stream += 1
        hub = self.factory.hub
        if op == TAIL:
            sub = Subscription(self.next_stream, self, TAIL, start)
            self.subs[sub.stream] = sub
            try:
                result = hub.subscribe_tail(sub)
            except Exception:
                self.subs.pop(sub.stream, None)
                raise
            if isinstance(result, defer.Deferred):
                result.addErrback(self._subscribe_failed, sub)
            return result
        key, prefix = message.get("key"), message.get("prefix")
        if (key is None) == (prefix is None):
            raise _Refused(400, "bad_request", 'a watch needs exactly one of "key" or '
                                               '"prefix" ("prefix": "" watches every key)')
        if not isinstance(key if prefix is None else prefix, str) or key == "":
            raise _Refused(400, "bad_request", '"key"/"prefix" must be a string ("key" not '
                                               'empty)')
        prev = message.get("prev", False)
        if type(prev) is not bool:
            raise _Refused(400, "bad_request", '"prev" must be true or false')
        sub = Subscription(self.next_stream, self, WATCH, start, key=key, prefix=prefix,
                           prev=prev)
        self.subs[sub.stream] = sub
        try:
            return hub.subscribe_watch(sub)
        except Exception:
            self.subs.pop(sub.stream, None)
            raise

    def _subscribe_failed(self, failure, sub: Subscription):
        self.subs.pop(sub.stream, None)
        return failure

    def _cancel(self, message: dict) -> dict:
        stream = message.get("stream")
        sub = self.subs.pop(stream, None) if type(stream) is int else None
        if sub is None:
            raise _Refused(404, "not_found", f"no stream {stream!r:.40} on this connection")
        self.factory.hub.cancel(sub)
        return {"stream": stream, "cancelled": True, "resume_from": sub.next}


def _request(method: str, path: str, *, query: str = "", body: dict | None = None) -> Request:
    return Request(method, path, query, {}, b"", True, parsed=body)


class StreamsFactory(WebSocketServerFactory):
    """Builds ``StreamsProtocol``s; ``api``: the HTTP API (api.py), ``hub``: the stream
    hub, ``options``: [websocket], ``limits``: [limits]."""

    protocol = StreamsProtocol

    def __init__(self, *, api, hub, options, limits, reactor) -> None:
        super().__init__(reactor=reactor, server="paxoslog")
        self.api = api
        self.hub = hub
        self.options = options
        self.limits = limits
        self.conns: set[StreamsProtocol] = set()
        self.last_prepared = None         # (bytes, PreparedMessage) of the last stream message
        ping_s = options.ping_interval_ms / 1000.0
        self.setProtocolOptions(
            maxFramePayloadSize=options.message_bytes_max,
            maxMessagePayloadSize=options.message_bytes_max,
            openHandshakeTimeout=options.handshake_timeout_ms / 1000.0,
            closeHandshakeTimeout=options.handshake_timeout_ms / 1000.0,
            autoPingInterval=ping_s, autoPingTimeout=ping_s,
            maxConnections=options.connections_max,
            # Fail with a close frame (1009 and the reason, e.g. an oversized message),
            # not by dropping the TCP connection: the client learns which limit it hit.
            failByDrop=False,
            # The JSON codec decodes text frames as strict UTF-8 itself (bad_message).
            utf8validateIncoming=False,
            tcpNoDelay=True)

    def sweep(self) -> None:
        """Close connections idle for ``idle_timeout_ms`` (nothing received, no
        subscription, no request in flight), and those opened with a token since revoked
        (their streams too: requests are refused at once)."""
        cutoff = self.reactor.seconds() - self.options.idle_timeout_ms / 1000.0
        access = self.api.access
        for conn in list(self.conns):
            if conn.usable and access is not None and access.revoked(conn.principal):
                conn.sendClose(CLOSE_REVOKED, "the bearer token this connection was opened "
                                              "with has been revoked")
                continue
            if (conn.usable and not conn.subs and not conn.inflight
                    and conn.last_received < cutoff):
                conn.sendClose(CLOSE_IDLE, f"idle for {self.options.idle_timeout_ms} ms "
                                           "(websocket.idle_timeout_ms)")
