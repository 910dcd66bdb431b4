"""A small HTTP/1.1 server: a Twisted ``Protocol`` feeding the httptools (llhttp) parser.

DESIGN.md section 5: twisted.web's pure-Python parser caps a node near 4,900 requests/s on
this machine, httptools near 36,800, so the consensus path, not parsing, sets our limit.

What it speaks: keep-alive (HTTP/1.1 default, HTTP/1.0 on request), pipelining (responses
go out in request order however the handlers finish), Content-Length and chunked request
bodies, ``Expect: 100-continue``, HEAD.  HTTPS is the same protocol under ``tlswire``
(``httpservice.HttpService(tls=...)``, which also holds the connection counts and the
deadline sweep).

Every input is bounded (the ``[limits]`` of the conf; docs/security.md lists the errors):

* size: a body announced larger than ``request_bytes_max`` gets 413 before any of it is
  read, a chunked body is cut off with 413 as soon as it passes the limit; request line plus
  headers over ``header_bytes_max`` get 431, and so does a single header or trailer line
  that grows past it before it ends (the parser keeps an unfinished line whole); trailers
  are read and dropped, never taken as headers; garbage gets 400.  Each closes the
  connection after the response.
* pipelining and slow readers: at most ``pipelined_requests_max`` requests per connection
  are parsed and not yet answered.  Input is parsed in slices small enough that the limit
  cannot be passed inside one read (a request takes at least ``_REQUEST_BYTES_MIN`` bytes),
  the rest waits unparsed, and the socket is no longer read (``pauseProducing``).  The
  protocol is also a producer registered with its transport: when the transport's write
  buffer fills (the client does not read its answers) reading stops too, until it drains,
  and requests already parsed in the same slice wait unhandled (``_held``), so answers
  made at once (reads of the node's own state, the API document) do not queue one per
  parsed request.  Answers that come later (writes, linearizable reads) are bounded by
  the pipeline limit: a client that pipelines and never reads holds at most that many.
* time: the request line and headers must arrive within ``header_timeout_ms`` of the
  request's first byte (of the connection's opening, for the first request), the body
  within ``body_timeout_ms`` of the headers: else 408 and close (slowloris).  A connection
  with nothing to do, or whose client does not read its answers, for ``idle_timeout_ms`` is
  closed, and so is one being closed gracefully whose client never reads its last
  answer.  A sweep checks the deadlines a few times per shortest timeout.
* connections: beyond ``connections_max`` in all, or ``connections_per_address_max`` from
  one client address, a new connection gets 503 and is closed.

The application is one object with ``handle(request) -> Response | Deferred[Response] |
Later`` (``Later``: a response to come without a Deferred, httpmsg.py);
a ``Response`` is (status, body, content type, extra headers), the body either bytes or a
``FileBody``: a file streamed in 16 KiB pieces as the socket drains (Twisted's FileSender,
a pull producer, takes the transport's producer slot meanwhile), so a large body (a backup)
never sits in memory; later pipelined responses wait for it.  ``json_response`` never
emits NaN or Infinity (not JSON): such a body becomes a 500.

Protocol switching (the WebSocket endpoint): the *first* request of a connection that
asks to upgrade (``Connection: upgrade`` + ``Upgrade``) is marked ``request.upgrade``; if
the handler answers it with ``SwitchProtocols(factory)``, the connection is handed to a
protocol of that factory, which receives the raw bytes of that request (passed through
the answer's ``scrub``: the API removes the credentials) and everything after it
(autobahn then does the handshake itself); this protocol only relays bytes from
then on, gives up its producer slot, and no HTTP deadline applies any more (the new
protocol keeps its own).  It still counts against ``connections_max`` and
``connections_per_address_max``.  Any other answer is sent as plain HTTP and the
connection closes.

Size: the connection state machine (parsing, pipelining backpressure, deadlines, the
upgrade hand-over) is one protocol class; what handlers see and answer is httpmsg.py; the
listening side (factory, counts, sweep, service) is httpservice.py.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING
from urllib.parse import unquote

import httptools
from twisted.internet import defer
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from .httpmsg import (FileBody, Later, Request, SwitchProtocols, error_response as _error,
                      json_response)
from .sockets import write_now

if TYPE_CHECKING:
    from .httpservice import HttpFactory

__all__ = ["HttpProtocol", "Request", "FileBody", "SwitchProtocols", "json_response",
           "REASONS"]

log = Logger(namespace="paxoslog.http")

# The shortest request llhttp completes on a kept-alive connection: "GET / HTTP/1.1\r\n\r\n"
# is 18 bytes; 16 leaves room for doubt.
_REQUEST_BYTES_MIN = 16

# What a connection is waiting for, for the deadlines (see HttpProtocol._phase).
_HEADERS = "headers"      # the client: a request line and headers
_BODY = "body"            # the client: the rest of a body
_IDLE = "idle"            # nothing outstanding: the client may send the next request
_BUSY = "busy"            # the server: answers outstanding (no client deadline)
_STALLED = "stalled"      # the client: reading the answers we wrote

REASONS = {100: "Continue", 200: "OK", 204: "No Content", 400: "Bad Request",
           401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
           405: "Method Not Allowed", 408: "Request Timeout", 409: "Conflict", 410: "Gone",
           413: "Payload Too Large", 426: "Upgrade Required", 429: "Too Many Requests",
           431: "Request Header Fields Too Large",
           500: "Internal Server Error", 501: "Not Implemented", 503: "Service Unavailable",
           504: "Gateway Timeout"}
_STATUS_LINES = {code: f"HTTP/1.1 {code} {reason}\r\n".encode() for code, reason in REASONS.items()}
_JSON = b"application/json"


class _Abort(Exception):
    """Stop the parser: the connection is being closed."""


@implementer(IPushProducer)
class HttpProtocol(Protocol):
    """One client connection.  Also the producer of its transport's output: the transport
    pauses it when its write buffer is full (``pauseProducing``), which stops reading."""

    def __init__(self, factory: "HttpFactory", host: str | None = None) -> None:
        self.factory = factory
        self.host = host              # the client's address (per-address connection cap)
        self.parser = httptools.HttpRequestParser(self)
        self.closing = False          # no more requests are read
        self.closed = False
        self.paused = False           # the socket is not being read
        self.last_active = 0.0
        self._next = 0                # sequence of the next request parsed
        self._sent = 0                # sequence of the next response to write
        self._ready: dict[int, object] = {}   # seq -> bytes, or (head, FileBody)
        self._held: list[tuple] = []  # parsed while the client was not reading: not run yet
        self._streaming = False       # a FileBody is being written (later ones wait)
        self._close_after: int | None = None
        self._input = b""             # received, not parsed yet (from _input_pos)
        self._input_pos = 0
        self._feeding = False
        self._pipeline_full = False   # pipelined_requests_max answers outstanding
        self._write_full = False      # the transport's write buffer is full
        self._in_message = False
        self._quiet = 0               # bytes of the message parsed since the parser reported
        self._closing_since: float | None = None   # close() asked for a graceful close
        self._phase = _HEADERS        # a new connection owes us its first request
        self._phase_since = 0.0
        self._registered = False      # we are our transport's producer
        self._began: dict[int, tuple] = {}   # seq -> (method, path, start): on_response
        self._raw: list | None = []   # the first request's bytes while it may upgrade
        self._switch: SwitchProtocols | None = None
        self._after_upgrade: list | None = None   # bytes from an upgrade request on
        self.upgraded = None          # the protocol the connection was handed to
        self._reset()

    def _reset(self) -> None:
        self._url = b""
        self._headers: dict = {}
        self._body: list = []
        self._body_bytes = 0
        self._body_left = 0           # Content-Length bytes still to come (0: unknown)
        self._header_bytes = 0
        self._head = False
        self._dispatched = False

    # ------------------------------------------------------------------ connection

    def connectionMade(self) -> None:
        factory = self.factory
        factory.connections.add(self)
        now = factory.reactor.seconds()
        self.last_active = self._phase_since = now
        try:
            self.transport.setTcpNoDelay(True)
        except Exception:  # not every transport has the option
            pass
        limits = factory.limits
        too_many = None
        from_host = factory.count_address(self.host, +1) if self.host is not None else 0
        if len(factory.connections) > limits.connections_max:
            too_many = "too many connections (limits.connections_max)"
        elif from_host > limits.connections_per_address_max:
            too_many = (f"too many connections from {self.host} "
                        f"(limits.connections_per_address_max)")
        if too_many is not None:
            factory.refused += 1
            self.closing = True
            self._close_after = 0
            self._next = 1
            status, body, ctype, _ = _error(503, "unavailable", too_many)
            self._respond((status, body, ctype, ((b"Retry-After", b"1"),)), 0, False)
            return
        self.transport.registerProducer(self, True)
        self._registered = True

    def close(self, abort: bool = False) -> None:
        """Close the connection: after what was written (``loseConnection``), or at once.
        The producer is unregistered first, or the transport (TLS in particular) would wait
        for it before closing."""
        if self._registered:
            self._registered = False
            self.transport.unregisterProducer()
        if abort:
            self.transport.abortConnection()
        else:
            if self._closing_since is None:
                self._closing_since = self.factory.reactor.seconds()
            self.transport.loseConnection()

    def connectionLost(self, reason=None) -> None:
        if self.closed:
            return
        self.closed = True
        self.closing = True
        factory = self.factory
        factory.connections.discard(self)
        if self.host is not None:
            factory.count_address(self.host, -1)
        for item in self._ready.values():
            if type(item) is tuple and item[1] is not None:
                item[1].discard()
        self._ready.clear()
        self._held.clear()
        self._input = b""
        if self.upgraded is not None:
            self.upgraded.connectionLost(reason)

    # ------------------------------------------------------------------ input

    def dataReceived(self, data: bytes) -> None:
        if self.upgraded is not None:
            self.upgraded.dataReceived(data)
            return
        if self._after_upgrade is not None:
            self._hold_upgrade_bytes(data)
            return
        if self.closing:
            return
        self.last_active = self.factory.reactor.seconds()
        if self._raw is not None:
            self._raw.append(data)
        if self._input_pos < len(self._input):
            self._input = self._input[self._input_pos:] + data
        else:
            self._input = data
        self._input_pos = 0
        if not self._feeding:
            self._drain()

    def _blocked(self) -> bool:
        return self._pipeline_full or self._write_full

    def _budget(self) -> int:
        """How many input bytes may be parsed now without completing more requests than
        there are free pipeline slots (each request takes >= _REQUEST_BYTES_MIN bytes; the
        known rest of a body cannot start one)."""
        slots = self.factory.limits.pipelined_requests_max - (self._next - self._sent)
        return max(0, slots) * _REQUEST_BYTES_MIN + (self._body_left if self._in_message else 0)

    def _drain(self) -> None:
        """Parse what was received, slice by slice, while nothing blocks; then read the
        socket again, or stop reading it."""
        self._feeding = True
        try:
            while not self.closing and self._input_pos < len(self._input) \
                    and not self._blocked():
                budget = self._budget()
                if budget <= 0:
                    break
                start = self._input_pos
                stop = min(len(self._input), start + budget)
                self._input_pos = stop
                before = (self._next, self._header_bytes, self._body_bytes, self._dispatched)
                try:
                    self.parser.feed_data(memoryview(self._input)[start:stop])
                except _Abort:
                    return
                except httptools.HttpParserUpgrade as exc:
                    self._upgrade_requested(start + (exc.args[0] if exc.args else stop - start))
                    return
                except httptools.HttpParserError as exc:
                    self._fail(400, "bad_request", f"malformed HTTP request: {exc}")
                    return
                if before != (self._next, self._header_bytes, self._body_bytes,
                              self._dispatched) or not self._in_message:
                    self._quiet = 0
                    continue
                # Nothing reported: the parser is inside a header or trailer line (which
                # it keeps until the line ends, growing a buffer) or chunk framing.
                self._quiet += stop - start
                if self._quiet > self.factory.limits.header_bytes_max:
                    self._in_message = False
                    self._fail(431, "headers_too_large", "a header or trailer line is larger "
                               "than limits.header_bytes_max")
                    return
        finally:
            self._feeding = False
        if self._input_pos >= len(self._input):
            self._input, self._input_pos = b"", 0
        self._read(not self._blocked())

    def _read(self, wanted: bool) -> None:
        """Read the socket (``wanted``) or stop reading it."""
        if self.closing or self.closed:
            return
        if wanted and self.paused:
            self.paused = False
            self.transport.resumeProducing()
        elif not wanted and not self.paused:
            self.paused = True
            self.transport.pauseProducing()
        self._update_phase()

    # ------------------------------------------------------------------ protocol switch

    def _upgrade_requested(self, end: int) -> None:
        """The parser stopped after an upgrade request ending at ``self._input[end]``."""
        if self._raw is None:
            # Not the first request of the connection, or refused already: answered as
            # plain HTTP/1.1; nothing after it can be parsed.
            self._stop_after(self._next - 1)
            return
        # ``_input`` is a suffix of everything received, which is ``_raw``.
        raw = b"".join(self._raw)
        rest = self._input[end:]
        self._raw = None
        self._input, self._input_pos = b"", 0
        self._after_upgrade = [raw[:len(raw) - len(rest)], rest]
        self.closing = True
        if self._switch is not None:
            self._switch_now()

    def _hold_upgrade_bytes(self, data: bytes) -> None:
        """Bytes after the upgrade request while its handler is still deciding (a client
        normally waits for the 101 before it sends any)."""
        self._after_upgrade.append(data)
        if sum(len(part) for part in self._after_upgrade) > self.factory.limits.header_bytes_max:
            self.close(abort=True)

    def _switch_now(self) -> None:
        """Hand the connection over: the new protocol gets the transport (and its producer
        slot) and every byte from the start of the upgrade request on."""
        switch = self._switch
        factory, principal = switch.factory, switch.principal
        data = b"".join(self._after_upgrade)
        if switch.scrub is not None:
            data = switch.scrub(data)
        self._after_upgrade = self._switch = None
        if self._registered:
            self._registered = False
            self.transport.unregisterProducer()
        if self.paused:
            self.paused = False
            self.transport.resumeProducing()
        protocol = factory.buildProtocol(self.transport.getPeer())
        if protocol is None:
            self.transport.loseConnection()
            return
        self.upgraded = protocol
        protocol.principal = principal
        protocol.makeConnection(self.transport)
        if data:
            protocol.dataReceived(data)

    def _stop_after(self, seq: int) -> None:
        self.closing = True
        self._close_after = seq
        if seq < self._sent:
            self.close()

    def _fail(self, status: int, code: str, message: str) -> None:
        """Answer (after any earlier pipelined responses) and close the connection."""
        if self.closing:
            return
        self.factory.errors += 1
        seq = self._next
        self._next += 1
        self._stop_after(seq)
        self._respond(_error(status, code, message), seq, False)

    def _abort(self, status: int, code: str, message: str) -> None:
        self._fail(status, code, message)
        raise _Abort()

    # ------------------------------------------------------------------ producer

    def pauseProducing(self) -> None:
        """The transport's write buffer is full: stop reading until it drains."""
        self._write_full = True
        self._read(False)

    def resumeProducing(self) -> None:
        self._write_full = False
        held = self._held
        while held and not self._write_full and not self.closed:
            self._dispatch(*held.pop(0))
        if not self._feeding:
            self._drain()

    def stopProducing(self) -> None:
        self.closing = True

    # ------------------------------------------------------------------ deadlines

    def _update_phase(self) -> None:
        if self._write_full:
            phase = _STALLED
        elif self._in_message:
            phase = _BUSY if self.paused else (_BODY if self._dispatched else _HEADERS)
        elif self._next == self._sent:
            phase = _IDLE
        else:
            phase = _BUSY
        if phase != self._phase:
            self._phase = phase
            self._phase_since = self.factory.reactor.seconds()

    def check_deadline(self, now: float) -> None:
        """Called by the factory's sweep: enforce the deadline of the current phase."""
        if self.closed or self.upgraded is not None:
            return
        limits = self.factory.limits
        if self._closing_since is not None:
            # A graceful close waits for the client to read what was written; one that
            # never reads would hold the connection (and its answers) for good.
            if now - self._closing_since > limits.idle_timeout_ms / 1000.0:
                self.factory.timeouts += 1
                self.close(abort=True)
            return
        phase = self._phase
        waited = now - self._phase_since
        if phase == _HEADERS and waited > limits.header_timeout_ms / 1000.0:
            self.factory.timeouts += 1
            self._timed_out(f"the request line and headers did not arrive within "
                            f"{limits.header_timeout_ms} ms (limits.header_timeout_ms)")
        elif phase == _BODY and waited > limits.body_timeout_ms / 1000.0:
            self.factory.timeouts += 1
            self._timed_out(f"the request body did not arrive within {limits.body_timeout_ms} "
                            f"ms (limits.body_timeout_ms)")
        elif phase in (_IDLE, _STALLED) and waited > limits.idle_timeout_ms / 1000.0:
            if phase == _STALLED:
                self.factory.timeouts += 1
                self.close(abort=True)      # it does not read: nothing to flush
            else:
                self.close()

    def _timed_out(self, message: str) -> None:
        if self.closing:
            self.close(abort=True)
            return
        self._in_message = False
        self._fail(408, "request_timeout", message)

    # ------------------------------------------------------------------ parser callbacks

    def on_message_begin(self) -> None:
        self._reset()
        self._in_message = True
        self._phase = _HEADERS
        self._phase_since = self.factory.reactor.seconds()

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._header_bytes += len(url)
        if self._header_bytes > self.factory.limits.header_bytes_max:
            self._abort(431, "headers_too_large", "request line and headers are too large")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value) + 4
        if self._header_bytes > self.factory.limits.header_bytes_max:
            self._abort(431, "headers_too_large", "request line and headers are too large")
        if self._dispatched:
            return            # a chunked body's trailer: never taken as a header (RFC 9110)
        lower = name.lower()
        if lower in self._headers:
            self._headers[lower] += b", " + value
        else:
            self._headers[lower] = value

    def on_headers_complete(self) -> None:
        if self._raw is not None and (self._next != 0 or not self.parser.should_upgrade()):
            self._raw = None          # only the first request of a connection may upgrade
        limit = self.factory.limits.request_bytes_max
        length = self._headers.get(b"content-length")
        if length is not None:
            try:
                announced = int(length)
            except ValueError:
                self._abort(400, "bad_request", "bad Content-Length")
            if announced > limit:
                self._abort(413, "too_large", f"request body of {announced} bytes exceeds the "
                                              f"{limit}-byte limit")
            if b"transfer-encoding" not in self._headers:
                self._body_left = announced
        self._dispatched = True           # here: the headers are in, the body is next
        self._phase = _BODY
        self._phase_since = self.factory.reactor.seconds()
        expect = self._headers.get(b"expect")
        if expect is not None and expect.lower() == b"100-continue" and self._sent == self._next:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        if self._body_left:
            self._body_left = max(0, self._body_left - len(body))
        if self._body_bytes > self.factory.limits.request_bytes_max:
            self._abort(413, "too_large", f"request body exceeds the "
                                          f"{self.factory.limits.request_bytes_max}-byte limit")
        self._body.append(body)

    def on_message_complete(self) -> None:
        parser = self.parser
        seq = self._next
        self._next += 1
        self._in_message = False
        self._body_left = 0
        keep_alive = parser.should_keep_alive()
        method = parser.get_method().decode("latin-1")
        http10 = parser.get_http_version() == "1.0"
        url = self._url
        path, _, query = url.partition(b"?")
        path_text = path.decode("latin-1")
        if "%" in path_text:
            path_text = unquote(path_text)
        body = b"".join(self._body) if len(self._body) != 1 else self._body[0]
        upgrade = self._raw is not None
        request = Request(method, path_text, query.decode("latin-1"), self._headers, body,
                          keep_alive, upgrade=upgrade)
        head = method == "HEAD"
        if upgrade:
            keep_alive = True         # the parser stops after it (HttpParserUpgrade)
        elif not keep_alive:
            self._stop_after(seq)
        elif self._next - self._sent >= self.factory.limits.pipelined_requests_max:
            self._pipeline_full = True    # _drain stops parsing and reading
        self.factory.requests += 1
        self._phase = _BUSY
        if self._write_full or self._held:
            # The answers already written wait for the client to read them: this request
            # waits too, so that one read of small pipelined requests cannot queue a large
            # answer each (several MiB per connection).
            self._held.append((request, seq, keep_alive and http10, head))
        else:
            self._dispatch(request, seq, keep_alive and http10, head)
        if not keep_alive:
            raise _Abort()

    def _dispatch(self, request: Request, seq: int, keep_alive_10: bool, head: bool) -> None:
        """Hand request ``seq`` to the application; its answer comes to ``_respond``."""
        if self.factory.on_response is not None:
            self._began[seq] = (request.method, request.path, time.perf_counter())
        try:
            result = self.factory.app.handle(request)
        except Exception:
            log.failure("request handler failed")
            result = _error(500, "internal", "internal error")
        if type(result) is Later:
            result.then(self._respond, seq, keep_alive_10, head)
        elif isinstance(result, defer.Deferred):
            args = (seq, keep_alive_10, head)
            result.addCallbacks(self._respond, self._handler_failed,
                                callbackArgs=args, errbackArgs=args)
        else:
            self._respond(result, seq, keep_alive_10, head)

    def _handler_failed(self, failure, seq: int, keep_alive_10: bool, head: bool) -> None:
        log.failure("request handler failed", failure)
        self._respond(_error(500, "internal", "internal error"), seq, keep_alive_10, head)

    # ------------------------------------------------------------------ responses

    def _respond(self, result: tuple, seq: int, keep_alive_10: bool = False,
                 head: bool = False) -> None:
        upgrading = self._raw is not None or self._after_upgrade is not None
        if type(result) is SwitchProtocols:
            if self.closed:
                return
            if upgrading:
                self._switch = result
                if self._after_upgrade is not None:
                    self._switch_now()
                return
            result = _error(400, "bad_request", "only a connection's first request, asking "
                                                "to upgrade, can switch protocols")
        elif upgrading:
            # An upgrade the handler refused: answer as HTTP/1.1, then close.
            self._raw = self._after_upgrade = None
            self.closing = True
            self._close_after = seq
        status, body, content_type, headers = result
        stream = body if isinstance(body, FileBody) else None
        if self.closed:
            if stream is not None:
                stream.discard()
            return
        self.factory.count_status(status)
        close = self._close_after is not None and seq >= self._close_after
        length = stream.length if stream is not None else len(body)
        began = self._began.pop(seq, None)
        if began is not None:
            method, path, started = began
            self.factory.on_response(self.host, method, path, status, length,
                                     time.perf_counter() - started)
        parts = [_STATUS_LINES.get(status) or f"HTTP/1.1 {status} Status\r\n".encode(),
                 b"Content-Type: ", content_type, b"\r\nContent-Length: ",
                 str(length).encode(), b"\r\n"]
        for name, value in headers:
            parts += (name, b": ", value, b"\r\n")
        if close:
            parts.append(b"Connection: close\r\n")
        elif keep_alive_10:
            parts.append(b"Connection: keep-alive\r\n")
        parts.append(b"\r\n")
        if stream is not None:
            if head:
                stream.discard()
                stream = None
            item = (b"".join(parts), stream)
        else:
            if not head:
                parts.append(body)
            item = b"".join(parts)
        if seq != self._sent or self._streaming:
            self._ready[seq] = item
            return
        self._write_item(item)
        self._flush_ready()

    def _write_item(self, item) -> None:
        """Write one response (bytes, or a head and a body streamed from a file)."""
        if type(item) is bytes:
            write_now(self.transport, item)
            self._sent += 1
            return
        head, stream = item
        self.transport.write(head)
        if stream is None:
            self._sent += 1
            return
        self._streaming = True
        if self._registered:
            # The FileSender is the transport's producer while it streams.
            self._registered = False
            self.transport.unregisterProducer()
        stream.send(self.transport).addBoth(self._stream_done, stream)

    def _stream_done(self, result, stream: "FileBody") -> None:
        stream.discard()
        self._streaming = False
        if self.closed:
            return None
        self._sent += 1
        if isinstance(result, Failure):
            # The file could not be read to its end: the client got a short body, which
            # its Content-Length check detects; the connection cannot be reused.
            log.warn("streaming a response body failed: {error}",
                     error=result.getErrorMessage())
            self.closing = True
            self.close()
            return None
        if not self.closing:
            self.transport.registerProducer(self, True)
            self._registered = True
        self._flush_ready()
        if self._write_full and self._registered and not self._streaming and not self.closed:
            # Paused before the body streamed: the transport drove the file sender since
            # and will not resume us.  Go on; a write into a full buffer pauses us again.
            self.resumeProducing()
        return None

    def _flush_ready(self) -> None:
        """Write the responses that are ready in request order; then close, or let more
        requests in."""
        ready = self._ready
        while ready and not self._streaming:
            item = ready.pop(self._sent, None)
            if item is None:
                break
            self._write_item(item)
        if self._streaming:
            self._update_phase()
            return
        self.last_active = self.factory.reactor.seconds()
        if self._close_after is not None and self._sent > self._close_after:
            self.close()
            return
        if self._pipeline_full and \
                self._next - self._sent < self.factory.limits.pipelined_requests_max:
            self._pipeline_full = False
            if not self._feeding:
                self._drain()
                return
        self._update_phase()

    @property
    def idle(self) -> bool:
        return self._next == self._sent and self.upgraded is None

