"""A small HTTP/1.1 server: a Twisted ``Protocol`` feeding the httptools (llhttp) parser.

DESIGN.md section 5: twisted.web's pure-Python parser caps a node near 4,900 requests/s on
this machine, httptools near 36,800, so the consensus path, not parsing, sets our limit.

What it speaks: keep-alive (HTTP/1.1 default, HTTP/1.0 on request), pipelining (responses
go out in request order however the handlers finish; at most ``pipelined_requests_max``
outstanding per connection, then the socket is no longer read), Content-Length and chunked
request bodies, ``Expect: 100-continue``, HEAD.  Limits: a body announced larger than
``request_bytes_max`` gets 413 before any of it is read, a chunked body is cut off with 413
as soon as it passes the limit; request line plus headers over ``header_bytes_max`` get
431; garbage gets 400; each of these closes the connection after the response.  Idle
connections are closed after ``IDLE_TIMEOUT_S``; beyond ``connections_max`` new
connections get 503 and are closed.

The application is one object with ``handle(request) -> Response | Deferred[Response]``;
a ``Response`` is (status, body, content type, extra headers), the body either bytes or a
``FileBody``: a file streamed in 16 KiB pieces as the socket drains (Twisted's FileSender,
a pull producer), so a large body (a backup) never sits in memory; later pipelined
responses wait for it.
"""

from __future__ import annotations

import json
from typing import Callable
from urllib.parse import unquote

import httptools
from twisted.application.service import Service
from twisted.internet import defer, task
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.protocols.basic import FileSender
from twisted.python.failure import Failure

__all__ = ["HttpService", "HttpProtocol", "Request", "FileBody", "json_response", "REASONS"]

log = Logger(namespace="paxoslog.http")

IDLE_TIMEOUT_S = 120.0
_SWEEP_S = 5.0

REASONS = {100: "Continue", 200: "OK", 204: "No Content", 400: "Bad Request",
           401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
           405: "Method Not Allowed", 408: "Request Timeout", 409: "Conflict", 410: "Gone",
           413: "Payload Too Large", 431: "Request Header Fields Too Large",
           500: "Internal Server Error", 501: "Not Implemented", 503: "Service Unavailable",
           504: "Gateway Timeout"}
_STATUS_LINES = {code: f"HTTP/1.1 {code} {reason}\r\n".encode() for code, reason in REASONS.items()}
_JSON = b"application/json"


class Request:
    """One parsed request; ``principal`` is set by the API's access control."""

    __slots__ = ("method", "path", "query", "headers", "body", "keep_alive", "principal")

    def __init__(self, method: str, path: str, query: str, headers: dict, body: bytes,
                 keep_alive: bool) -> None:
        self.method = method
        self.path = path
        self.query = query
        self.headers = headers
        self.body = body
        self.keep_alive = keep_alive
        self.principal = None


class FileBody:
    """A response body read from ``path`` (``length`` bytes) while it is sent.  ``done``
    runs exactly once when the body is no longer needed (sent, failed, or the connection
    closed first): the owner deletes a temporary file there."""

    def __init__(self, path: str, length: int, done: Callable[[], None] | None = None) -> None:
        self.path = path
        self.length = length
        self._done = done
        self._file = None

    def send(self, consumer) -> defer.Deferred:
        """Stream the file into ``consumer`` (a transport); fires when the last byte went."""
        try:
            self._file = open(self.path, "rb")
        except OSError as exc:
            return defer.fail(exc)
        return FileSender().beginFileTransfer(self._file, consumer)

    def discard(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        done, self._done = self._done, None
        if done is not None:
            done()


def json_response(status: int, obj: object, headers: tuple = ()) -> tuple:
    body = json.dumps(obj, separators=(",", ":"), ensure_ascii=False, default=str).encode()
    return (status, body, _JSON, headers)


def _error(status: int, code: str, message: str) -> tuple:
    return json_response(status, {"error": code, "message": message})


class _Abort(Exception):
    """Stop the parser: the connection is being closed."""


class HttpProtocol(Protocol):
    def __init__(self, factory: "HttpFactory") -> None:
        self.factory = factory
        self.parser = httptools.HttpRequestParser(self)
        self.closing = False          # no more requests are read
        self.closed = False
        self.paused = False
        self.last_active = 0.0
        self._next = 0                # sequence of the next request parsed
        self._sent = 0                # sequence of the next response to write
        self._ready: dict[int, object] = {}   # seq -> bytes, or (head, FileBody)
        self._streaming = False       # a FileBody is being written (later ones wait)
        self._close_after: int | None = None
        self._reset()

    def _reset(self) -> None:
        self._url = b""
        self._headers: dict = {}
        self._body: list = []
        self._body_bytes = 0
        self._header_bytes = 0
        self._head = False
        self._dispatched = False

    # ------------------------------------------------------------------ connection

    def connectionMade(self) -> None:
        factory = self.factory
        factory.connections.add(self)
        self.last_active = factory.reactor.seconds()
        try:
            self.transport.setTcpNoDelay(True)
        except Exception:  # not every transport has the option
            pass
        if len(factory.connections) > factory.limits.connections_max:
            self.closing = True
            self._close_after = 0
            self._next = 1
            status, body, ctype, _ = _error(503, "unavailable", "too many connections")
            self._respond((status, body, ctype, ((b"Retry-After", b"1"),)), 0, False)

    def connectionLost(self, reason=None) -> None:
        self.closed = True
        self.closing = True
        self.factory.connections.discard(self)
        for item in self._ready.values():
            if type(item) is tuple and item[1] is not None:
                item[1].discard()
        self._ready.clear()

    def dataReceived(self, data: bytes) -> None:
        if self.closing:
            return
        self.last_active = self.factory.reactor.seconds()
        try:
            self.parser.feed_data(data)
        except _Abort:
            pass
        except httptools.HttpParserUpgrade:
            # We do not switch protocols (WebSocket arrives with the next issue): the request
            # was answered as plain HTTP/1.1; nothing after it can be parsed.
            self._stop_after(self._next - 1)
        except httptools.HttpParserError as exc:
            self._fail(400, "bad_request", f"malformed HTTP request: {exc}")

    def _stop_after(self, seq: int) -> None:
        self.closing = True
        self._close_after = seq
        if seq < self._sent:
            self.transport.loseConnection()

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

    # ------------------------------------------------------------------ parser callbacks

    def on_message_begin(self) -> None:
        self._reset()

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._header_bytes += len(url)
        if self._header_bytes > self.factory.limits.header_bytes_max:
            self._abort(431, "headers_too_large", "request line and headers are too large")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value) + 4
        if self._header_bytes > self.factory.limits.header_bytes_max:
            self._abort(431, "headers_too_large", "request line and headers are too large")
        lower = name.lower()
        if lower in self._headers:
            self._headers[lower] += b", " + value
        else:
            self._headers[lower] = value

    def on_headers_complete(self) -> None:
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
        expect = self._headers.get(b"expect")
        if expect is not None and expect.lower() == b"100-continue" and self._sent == self._next:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        if self._body_bytes > self.factory.limits.request_bytes_max:
            self._abort(413, "too_large", f"request body exceeds the "
                                          f"{self.factory.limits.request_bytes_max}-byte limit")
        self._body.append(body)

    def on_message_complete(self) -> None:
        parser = self.parser
        seq = self._next
        self._next += 1
        keep_alive = parser.should_keep_alive()
        method = parser.get_method().decode("latin-1")
        http10 = parser.get_http_version() == "1.0"
        url = self._url
        path, _, query = url.partition(b"?")
        path_text = path.decode("latin-1")
        if "%" in path_text:
            path_text = unquote(path_text)
        body = b"".join(self._body) if len(self._body) != 1 else self._body[0]
        request = Request(method, path_text, query.decode("latin-1"), self._headers, body,
                          keep_alive)
        head = method == "HEAD"
        if not keep_alive:
            self._stop_after(seq)
        elif self._next - self._sent >= self.factory.limits.pipelined_requests_max:
            self.paused = True
            self.transport.pauseProducing()
        self.factory.requests += 1
        try:
            result = self.factory.app.handle(request)
        except Exception:
            log.failure("request handler failed")
            result = _error(500, "internal", "internal error")
        if isinstance(result, defer.Deferred):
            result.addErrback(self._handler_failed)
            result.addCallback(self._respond, seq, keep_alive and http10, head)
        else:
            self._respond(result, seq, keep_alive and http10, head)
        if not keep_alive:
            raise _Abort()

    def _handler_failed(self, failure) -> tuple:
        log.failure("request handler failed", failure)
        return _error(500, "internal", "internal error")

    # ------------------------------------------------------------------ responses

    def _respond(self, result: tuple, seq: int, keep_alive_10: bool = False,
                 head: bool = False) -> None:
        status, body, content_type, headers = result
        stream = body if isinstance(body, FileBody) else None
        if self.closed:
            if stream is not None:
                stream.discard()
            return
        self.factory.count_status(status)
        close = self._close_after is not None and seq >= self._close_after
        length = stream.length if stream is not None else len(body)
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
        self._drain()

    def _write_item(self, item) -> None:
        """Write one response (bytes, or a head and a body streamed from a file)."""
        if type(item) is bytes:
            self.transport.write(item)
            self._sent += 1
            return
        head, stream = item
        self.transport.write(head)
        if stream is None:
            self._sent += 1
            return
        self._streaming = True
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
            self.transport.loseConnection()
            return None
        self._drain()
        return None

    def _drain(self) -> None:
        ready = self._ready
        while ready and not self._streaming:
            item = ready.pop(self._sent, None)
            if item is None:
                break
            self._write_item(item)
        if self._streaming:
            return
        self.last_active = self.factory.reactor.seconds()
        if self._close_after is not None and self._sent > self._close_after:
            self.transport.loseConnection()
            return
        if self.paused and self._next - self._sent < self.factory.limits.pipelined_requests_max:
            self.paused = False
            self.transport.resumeProducing()

    @property
    def idle(self) -> bool:
        return self._next == self._sent


class HttpFactory(Factory):
    noisy = False

    def __init__(self, app, limits, reactor) -> None:
        self.app = app
        self.limits = limits
        self.reactor = reactor
        self.connections: set[HttpProtocol] = set()
        self.requests = 0
        self.errors = 0
        self.statuses: dict[int, int] = {}

    def buildProtocol(self, addr):
        return HttpProtocol(self)

    def count_status(self, status: int) -> None:
        self.statuses[status] = self.statuses.get(status, 0) + 1

    def sweep(self) -> None:
        """Close connections idle for longer than IDLE_TIMEOUT_S (also half-sent requests)."""
        cutoff = self.reactor.seconds() - IDLE_TIMEOUT_S
        for conn in list(self.connections):
            if conn.last_active < cutoff and conn.idle:
                conn.transport.loseConnection()


class HttpService(Service):
    """Listens on ``address`` (port 0: any free port, see ``port``)."""

    name = "http"

    def __init__(self, app, address, limits, reactor) -> None:
        self.factory = HttpFactory(app, limits, reactor)
        self.address = address
        self.reactor = reactor
        self.listener = None
        self._sweeper = None

    @property
    def port(self) -> int | None:
        return self.listener.getHost().port if self.listener is not None else None

    def startService(self) -> None:
        super().startService()
        self.factory.noisy = False
        self.listener = self.reactor.listenTCP(self.address.port, self.factory,
                                               interface=self.address.host, backlog=1024)
        log.info("HTTP API listening on {host}:{port}", host=self.address.host, port=self.port)
        self._sweeper = task.LoopingCall(self.factory.sweep)
        self._sweeper.clock = self.reactor
        self._sweeper.start(_SWEEP_S, now=False)

    def stopService(self):
        super().stopService()
        if self._sweeper is not None and self._sweeper.running:
            self._sweeper.stop()
        listener, self.listener = self.listener, None
        d = defer.maybeDeferred(listener.stopListening) if listener else defer.succeed(None)
        for conn in list(self.factory.connections):
            conn.transport.loseConnection()
        return d
