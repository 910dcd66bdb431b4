"""The httptools-based HTTP/1.1 protocol on a StringTransport and a Clock: keep-alive,
pipelining order, chunked bodies, 100-continue, HEAD, limits (413 before the body, 431,
connection caps in all and per address), garbage, backpressure (pipelining limit within one
read, a full write buffer), read deadlines (headers, body, idle, a client that does not
read), JSON bodies that cannot hold NaN or Infinity, and the protocol switch of the
WebSocket endpoint."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from twisted.internet import defer, task
from twisted.internet.testing import StringTransport

from paxoslog.server.http import FileBody, HttpProtocol, SwitchProtocols, json_response
from paxoslog.server.httpservice import HttpFactory


@dataclass(frozen=True)
class Limits:
    request_bytes_max: int = 1000
    header_bytes_max: int = 2000
    connections_max: int = 4
    pipelined_requests_max: int = 3
    header_timeout_ms: int = 1000
    body_timeout_ms: int = 2000
    idle_timeout_ms: int = 120_000
    connections_per_address_max: int = 2


class App:
    def __init__(self) -> None:
        self.requests = []
        self.pending: list[defer.Deferred] = []
        self.defer_paths = set()

    def handle(self, request):
        self.requests.append(request)
        if request.path in self.defer_paths:
            d = defer.Deferred()
            self.pending.append(d)
            return d
        return json_response(200, {"path": request.path, "body": request.body.decode(),
                                   "query": request.query})


@pytest.fixture
def setup():
    clock = task.Clock()
    app = App()
    factory = HttpFactory(app, Limits(), clock)

    def connect():
        proto = factory.buildProtocol(None)
        transport = StringTransport()
        proto.makeConnection(transport)
        return proto, transport
    return app, factory, clock, connect


def responses(data: bytes) -> list[bytes]:
    return [b"HTTP/1.1" + part for part in data.split(b"HTTP/1.1")[1:]]


def test_keep_alive_serves_several_requests_on_one_connection(setup):
    """Two requests in one read: two responses in order, the connection stays open."""
    app, _, _, connect = setup
    proto, t = connect()
    proto.dataReceived(b"GET /a?x=1 HTTP/1.1\r\nHost: h\r\n\r\n"
                       b"POST /b HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nhi")
    out = responses(t.value())
    assert len(out) == 2 and b'"path":"/a"' in out[0] and b'"body":"hi"' in out[1]
    assert b'"query":"x=1"' in out[0]
    assert not t.disconnecting and b"Connection: close" not in t.value()


def test_pipelined_responses_keep_request_order(setup):
    """A slow first handler holds back the second response until it is done."""
    app, _, _, connect = setup
    app.defer_paths.add("/slow")
    proto, t = connect()
    proto.dataReceived(b"GET /slow HTTP/1.1\r\n\r\nGET /fast HTTP/1.1\r\n\r\n")
    assert t.value() == b""
    app.pending[0].callback(json_response(200, {"slow": True}))
    out = responses(t.value())
    assert b'"slow":true' in out[0] and b'"/fast"' in out[1]


def test_too_many_outstanding_pipelined_requests_pause_reading(setup):
    """At pipelined_requests_max outstanding the socket is paused, resumed once answered."""
    app, _, _, connect = setup
    app.defer_paths.add("/slow")
    proto, t = connect()
    proto.dataReceived(b"GET /slow HTTP/1.1\r\n\r\n" * 3)
    assert t.producerState == "paused"
    for d in app.pending:
        d.callback(json_response(200, {}))
    assert t.producerState == "producing"
    assert len(responses(t.value())) == 3


def test_chunked_body_is_assembled(setup):
    """A chunked request body arrives whole at the application."""
    app, _, _, connect = setup
    proto, t = connect()
    proto.dataReceived(b"POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                       b"3\r\nabc\r\n")
    proto.dataReceived(b"2\r\nde\r\n0\r\n\r\n")
    assert app.requests[-1].body == b"abcde"
    assert b'"body":"abcde"' in t.value()


def test_announced_body_over_the_limit_gets_413_before_it_is_read(setup):
    """Content-Length above the limit: 413 and close at once; the app never sees it."""
    app, _, _, connect = setup
    proto, t = connect()
    proto.dataReceived(b"POST /big HTTP/1.1\r\nContent-Length: 5000\r\n\r\n")
    assert t.value().startswith(b"HTTP/1.1 413 ") and b'"too_large"' in t.value()
    assert t.disconnecting and not app.requests


def test_chunked_body_over_the_limit_gets_413(setup):
    """A chunked body is cut off with 413 as soon as it passes the limit."""
    app, _, _, connect = setup
    proto, t = connect()
    proto.dataReceived(b"POST /big HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n")
    for _ in range(3):
        proto.dataReceived(b"1f4\r\n" + b"x" * 500 + b"\r\n")
    assert t.value().startswith(b"HTTP/1.1 413 ") and t.disconnecting and not app.requests


def test_oversized_headers_get_431(setup):
    """Request line plus headers over header_bytes_max: 431 and close."""
    _, _, _, connect = setup
    proto, t = connect()
    proto.dataReceived(b"GET / HTTP/1.1\r\nX: " + b"a" * 3000 + b"\r\n\r\n")
    assert t.value().startswith(b"HTTP/1.1 431 ") and t.disconnecting



@pytest.mark.parametrize("head", [b"GET / HTTP/1.1\r\nHost: h\r\nX-Pad: ",      # a value
                                  b"GET / HTTP/1.1\r\nHost: h\r\nX-",           # a name
                                  b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                                  b"1\r\nx\r\n0\r\nX-Trailer: "])               # a trailer
def test_a_line_that_never_ends_gets_431_once_it_passes_the_limit(setup, head):
    """The parser keeps an unfinished header (or trailer) line whole and reports it only
    when it ends: without a count of its own the node would buffer, and copy, whatever the
    client streams.  The 431 comes as soon as the line passes header_bytes_max (2,000 here;
    one parse slice is 48 bytes with 3 pipeline slots), not at the end of the line."""
    _, _, _, connect = setup
    proto, t = connect()
    proto.dataReceived(head)
    fed = len(head)
    while not t.value() and fed < 100_000:
        proto.dataReceived(b"a" * 100)
        fed += 100
    assert t.value().startswith(b"HTTP/1.1 431 ") and t.disconnecting
    assert fed <= 2000 + len(head) + 200


def test_trailers_are_read_but_never_taken_as_headers(setup):
    """A chunked body's trailer (here an Authorization no header carried) is dropped: a
    check on the headers cannot be sidestepped by sending the field after the body."""
    app, _, _, connect = setup
    proto, t = connect()
    proto.dataReceived(b"POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                       b"2\r\nab\r\n0\r\nAuthorization: Bearer x\r\nHost: evil\r\n\r\n")
    (request,) = app.requests
    assert request.body == b"ab" and b"authorization" not in request.headers
    assert b"host" not in request.headers and t.value().startswith(b"HTTP/1.1 200 ")

def test_garbage_gets_400_and_close(setup):
    """Bytes that are not HTTP: a JSON 400 and the connection is closed."""
    _, _, _, connect = setup
    proto, t = connect()
    proto.dataReceived(b"\x00\x01\x02 hello\r\n\r\n")
    assert t.value().startswith(b"HTTP/1.1 400 ") and b'"bad_request"' in t.value()
    assert t.disconnecting


def test_error_after_pipelined_requests_comes_last(setup):
    """A good request then garbage: the good response first, then the 400, then close."""
    app, _, _, connect = setup
    app.defer_paths.add("/slow")
    proto, t = connect()
    proto.dataReceived(b"GET /slow HTTP/1.1\r\n\r\nBROKEN\x00\r\n\r\n")
    assert t.value() == b""
    app.pending[0].callback(json_response(200, {"first": 1}))
    out = responses(t.value())
    assert b'"first":1' in out[0] and out[1].startswith(b"HTTP/1.1 400 ")
    assert t.disconnecting


def test_connection_close_and_http10(setup):
    """Connection: close and plain HTTP/1.0 close after the response; HTTP/1.0 keep-alive
    is honoured and announced."""
    _, _, _, connect = setup
    proto, t = connect()
    proto.dataReceived(b"GET /a HTTP/1.1\r\nConnection: close\r\n\r\nGET /b HTTP/1.1\r\n\r\n")
    assert len(responses(t.value())) == 1 and b"Connection: close" in t.value()
    assert t.disconnecting
    proto, t = connect()
    proto.dataReceived(b"GET /a HTTP/1.0\r\n\r\n")
    assert t.disconnecting
    proto, t = connect()
    proto.dataReceived(b"GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    assert b"Connection: keep-alive" in t.value() and not t.disconnecting


def test_expect_100_continue_and_head(setup):
    """Expect: 100-continue gets the interim response; HEAD gets headers only."""
    _, _, _, connect = setup
    proto, t = connect()
    proto.dataReceived(b"POST /e HTTP/1.1\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n")
    assert t.value() == b"HTTP/1.1 100 Continue\r\n\r\n"
    proto.dataReceived(b"abc")
    assert b"HTTP/1.1 200 OK" in t.value()
    proto, t = connect()
    proto.dataReceived(b"HEAD /h HTTP/1.1\r\n\r\n")
    head, _, body = t.value().partition(b"\r\n\r\n")
    assert b"Content-Length: " in head and b"Content-Length: 0" not in head and body == b""


def test_connections_over_the_cap_get_503(setup):
    """Beyond connections_max a new connection is answered 503 with Retry-After (as the
    OpenAPI document promises for every 503) and closed."""
    _, factory, _, connect = setup
    for _ in range(4):
        connect()
    proto, t = connect()
    assert t.value().startswith(b"HTTP/1.1 503 ") and t.disconnecting
    assert b"\r\nRetry-After: 1\r\n" in t.value()
    proto.connectionLost(None)
    assert len(factory.connections) == 4


def test_idle_connections_are_swept(setup):
    """A connection idle beyond the timeout is closed by the sweep; a busy one is not."""
    app, factory, clock, connect = setup
    app.defer_paths.add("/slow")
    idle, idle_t = connect()
    busy, busy_t = connect()
    busy.dataReceived(b"GET /slow HTTP/1.1\r\n\r\n")
    clock.advance(121)
    factory.sweep()
    assert idle_t.disconnecting and not busy_t.disconnecting


# ---------------------------------------------------------------------- streamed bodies

def _file_body(tmp_path, data: bytes, done: list):
    path = tmp_path / "body.bin"
    path.write_bytes(data)
    return FileBody(str(path), len(data), lambda: done.append(str(path)))


def _pump(transport: StringTransport) -> None:
    """Play the socket: pull from the registered (pull) producer until it unregisters (the
    protocol then registers itself again, as the connection's push producer)."""
    while transport.producer is not None and not isinstance(transport.producer, HttpProtocol):
        transport.producer.resumeProducing()


def test_file_body_is_streamed_whole_and_then_released(setup, tmp_path):
    """A FileBody goes out with its Content-Length, piece by piece; then ``done`` runs."""
    app, _, _, connect = setup
    data = bytes(range(256)) * 200                   # several 16 KiB pieces
    done: list = []
    app.defer_paths.add("/file")
    proto, t = connect()
    proto.dataReceived(b"GET /file HTTP/1.1\r\n\r\n")
    app.pending[0].callback((200, _file_body(tmp_path, data, done), b"application/x", ()))
    assert t.producer is not None and not done      # only the head and one piece so far
    _pump(t)
    head, _, body = t.value().partition(b"\r\n\r\n")
    assert f"Content-Length: {len(data)}".encode() in head and body == data
    assert done and not t.disconnecting


def test_pipelined_response_waits_for_a_streamed_body(setup, tmp_path):
    """A response behind a streamed body is written only after its last byte."""
    app, _, _, connect = setup
    done: list = []
    app.defer_paths.add("/file")
    proto, t = connect()
    proto.dataReceived(b"GET /file HTTP/1.1\r\n\r\nGET /next HTTP/1.1\r\n\r\n")
    app.pending[0].callback((200, _file_body(tmp_path, b"x" * 40000, done), b"a/b", ()))
    assert b'"/next"' not in t.value()
    _pump(t)
    out = responses(t.value())
    assert len(out) == 2 and out[0].endswith(b"x" * 100) and b'"/next"' in out[1]


def test_lost_connection_mid_stream_releases_the_body(setup, tmp_path):
    """The client goes away half way: the producer stops and ``done`` still runs once."""
    app, _, _, connect = setup
    done: list = []
    app.defer_paths.add("/file")
    proto, t = connect()
    proto.dataReceived(b"GET /file HTTP/1.1\r\n\r\n")
    app.pending[0].callback((200, _file_body(tmp_path, b"y" * 100000, done), b"a/b", ()))
    producer = t.producer
    producer.stopProducing()                          # what a closing transport does
    proto.connectionLost(None)
    assert len(done) == 1


def test_head_of_a_streamed_body_sends_no_body(setup, tmp_path):
    """HEAD announces the length and releases the body without reading it."""
    app, _, _, connect = setup
    done: list = []
    app.defer_paths.add("/file")
    proto, t = connect()
    proto.dataReceived(b"HEAD /file HTTP/1.1\r\n\r\n")
    app.pending[0].callback((200, _file_body(tmp_path, b"z" * 500, done), b"a/b", ()))
    head, _, body = t.value().partition(b"\r\n\r\n")
    assert b"Content-Length: 500" in head and body == b"" and done


def test_a_read_of_many_pipelined_requests_is_parsed_only_up_to_the_limit(setup):
    """1,400 requests in one read with a limit of 3 outstanding: 3 are handled, the socket
    is paused, the rest wait unparsed; each answer lets one more in, all in order."""
    app, _, _, connect = setup
    app.defer_paths.add("/slow")
    proto, t = connect()
    proto.dataReceived(b"GET /slow HTTP/1.1\r\nHost: h\r\n\r\n" * 1400)
    assert len(app.requests) == 3 and t.producerState == "paused"
    app.pending[0].callback(json_response(200, {"n": 0}))
    assert len(app.requests) == 4 and t.producerState == "paused"
    for i in range(1, 1400):
        app.pending[i].callback(json_response(200, {"n": i}))
    out = responses(t.value())
    assert len(out) == 1400 and b'"n":1399' in out[-1]
    assert t.producerState == "producing"


def test_reading_stops_while_the_write_buffer_is_full(setup):
    """When the transport says its buffer is full (the client does not read), nothing more
    is parsed and the socket is paused; once it drains, the waiting requests are served."""
    app, _, _, connect = setup
    proto, t = connect()
    assert t.producer is proto                   # registered as the transport's producer
    proto.dataReceived(b"GET /a HTTP/1.1\r\n\r\n")
    proto.pauseProducing()                       # what the transport does when full
    assert t.producerState == "paused"
    proto.dataReceived(b"GET /b HTTP/1.1\r\n\r\nGET /c HTTP/1.1\r\n\r\n")
    assert [r.path for r in app.requests] == ["/a"]
    proto.resumeProducing()
    assert [r.path for r in app.requests] == ["/a", "/b", "/c"]
    assert t.producerState == "producing"



class FillingTransport(StringTransport):
    """Says "full" to its producer once more than ``size`` bytes wait, as a TCP transport
    does when the client does not read; ``drain()`` empties it and says "resume"."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size
        self.full = False

    def write(self, data) -> None:
        super().write(data)
        if len(self.value()) > self.size and not self.full:
            self.full = True
            self.producer.pauseProducing()

    def drain(self) -> None:
        self.clear()
        self.full = False
        self.producer.resumeProducing()


def test_requests_parsed_while_the_write_buffer_is_full_wait_for_it_to_drain():
    """Three small pipelined requests in one read, each with a 10 kB answer, to a client
    that does not read: the first answer fills the buffer, and the two requests parsed with
    it wait unanswered (not one queued answer each); as the buffer drains they are served,
    one buffer at a time, in order."""
    class BigAnswers(App):
        def handle(self, request):
            self.requests.append(request)
            return json_response(200, {"path": request.path, "pad": "x" * 10_000})

    app = BigAnswers()
    factory = HttpFactory(app, Limits(), task.Clock())
    proto = factory.buildProtocol(None)
    t = FillingTransport(4096)
    proto.makeConnection(t)
    proto.dataReceived(b"GET /1 HTTP/1.1\r\n\r\nGET /2 HTTP/1.1\r\n\r\nGET /3 HTTP/1.1\r\n\r\n")
    assert [r.path for r in app.requests] == ["/1"] and t.full
    t.drain()
    assert [r.path for r in app.requests] == ["/1", "/2"] and t.full
    t.drain()
    assert [r.path for r in app.requests] == ["/1", "/2", "/3"]
    assert b'"path":"/3"' in t.value()

def test_slow_headers_and_slow_bodies_get_408(setup):
    """Headers trickling in past header_timeout_ms, or a body past body_timeout_ms, get
    408 request_timeout and the connection is closed; a fresh connection that sends
    nothing is held to the header deadline too."""
    app, factory, clock, connect = setup
    proto, t = connect()
    proto.dataReceived(b"GET /slow")
    for _ in range(3):
        clock.advance(0.4)
        proto.dataReceived(b"l")                 # one byte at a time: still too slow
        factory.sweep()
    assert t.value().startswith(b"HTTP/1.1 408 ") and b'"request_timeout"' in t.value()
    assert b"header_timeout_ms" in t.value() and t.disconnecting and not app.requests
    proto, t = connect()
    proto.dataReceived(b"POST /b HTTP/1.1\r\nContent-Length: 10\r\n\r\nab")
    clock.advance(1.5)
    factory.sweep()
    assert not t.disconnecting                   # the body has 2 s
    clock.advance(1.0)
    factory.sweep()
    assert t.value().startswith(b"HTTP/1.1 408 ") and b"body_timeout_ms" in t.value()
    silent, silent_t = connect()
    clock.advance(1.1)
    factory.sweep()
    assert silent_t.value().startswith(b"HTTP/1.1 408 ")


def test_a_client_that_does_not_read_is_cut_after_the_idle_timeout(setup):
    """A connection whose write buffer stays full for idle_timeout_ms is aborted."""
    _, factory, clock, connect = setup
    proto, t = connect()
    proto.dataReceived(b"GET /a HTTP/1.1\r\n\r\n")
    proto.pauseProducing()
    clock.advance(119)
    factory.sweep()
    assert not t.disconnecting
    clock.advance(2)
    factory.sweep()
    assert t.disconnected or t.disconnecting


def test_connections_per_address_are_capped(setup):
    """Beyond connections_per_address_max from one address: 503; others still connect."""
    from twisted.internet.address import IPv4Address
    _, factory, _, _ = setup

    def connect_from(host):
        proto = factory.buildProtocol(IPv4Address("TCP", host, 5000))
        transport = StringTransport()
        proto.makeConnection(transport)
        return proto, transport
    for _ in range(2):
        connect_from("10.0.0.1")
    proto, t = connect_from("10.0.0.1")
    assert t.value().startswith(b"HTTP/1.1 503 ") and b"connections_per_address_max" in t.value()
    proto.connectionLost(None)
    assert factory.by_address["10.0.0.1"] == 2
    _, other = connect_from("10.0.0.2")
    assert other.value() == b""


def test_json_responses_never_carry_nan_or_infinity():
    """A body with a non-finite number becomes a 500 whose body is valid JSON."""
    import json
    status, body, _, _ = json_response(200, {"x": float("inf"), "y": [float("nan")]})
    assert status == 500 and json.loads(body)["error"] == "internal"



class Recorder:
    """A protocol a connection is handed to: what it got."""

    def __init__(self) -> None:
        self.data = b""
        self.transport = None
        self.lost = False

    def makeConnection(self, transport) -> None:
        self.transport = transport

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason=None) -> None:
        self.lost = True


class RecorderFactory:
    def __init__(self) -> None:
        self.built: list[Recorder] = []

    def buildProtocol(self, addr):
        self.built.append(Recorder())
        return self.built[-1]


UPGRADE = (b"GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
           b"Sec-WebSocket-Key: x\r\n\r\n")


class UpgradingApp(App):
    def __init__(self, factory, later: bool = False) -> None:
        super().__init__()
        self.factory = factory
        self.later = later

    def handle(self, request):
        self.requests.append(request)
        if request.path != "/ws":
            return json_response(200, {"upgrade": request.upgrade})
        if not request.upgrade:
            return json_response(426, {"error": "upgrade_required"})
        if self.later:
            d = defer.Deferred()
            self.pending.append(d)
            return d
        return SwitchProtocols(self.factory)


def upgrading(later: bool = False):
    target = RecorderFactory()
    factory = HttpFactory(UpgradingApp(target, later), Limits(), task.Clock())
    proto = factory.buildProtocol(None)
    transport = StringTransport()
    proto.makeConnection(transport)
    return factory, target, proto, transport


def test_an_upgrade_hands_the_raw_request_and_what_follows_to_the_new_protocol():
    """SwitchProtocols: the new protocol gets the transport, the request's own bytes and
    the bytes after it; later reads and the close are relayed to it; no HTTP answer."""
    factory, target, proto, t = upgrading()
    proto.dataReceived(UPGRADE[:20])
    proto.dataReceived(UPGRADE[20:] + b"\x81\x05frame")
    assert t.value() == b""
    (upgraded,) = target.built
    assert upgraded.transport is t and upgraded.data == UPGRADE + b"\x81\x05frame"
    proto.dataReceived(b"more")
    assert upgraded.data.endswith(b"more")
    proto.connectionLost(None)
    assert upgraded.lost and proto not in factory.connections


def test_an_upgrade_answered_later_keeps_the_bytes_that_arrive_meanwhile():
    """A handler that decides later: bytes after the request wait for the switch."""
    factory, target, proto, t = upgrading(later=True)
    proto.dataReceived(UPGRADE)
    proto.dataReceived(b"early")
    factory.app.pending[0].callback(SwitchProtocols(target))
    assert target.built[0].data == UPGRADE + b"early"


def test_an_upgrade_that_is_not_the_first_request_is_answered_as_http_and_closed():
    """Only a connection's first request may switch protocols."""
    factory, target, proto, t = upgrading()
    proto.dataReceived(b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n" + UPGRADE)
    out = responses(t.value())
    assert b'"upgrade":false' in out[0] and b"426" in out[1].split(b"\r\n")[0]
    assert t.disconnecting and not target.built


def test_a_refused_upgrade_gets_its_http_answer_then_the_connection_closes():
    """An upgrade request to a path that does not switch: a plain answer, then close."""
    factory, target, proto, t = upgrading()
    proto.dataReceived(UPGRADE.replace(b"/ws", b"/other") + b"GET /x HTTP/1.1\r\n\r\n")
    out = responses(t.value())
    assert len(out) == 1 and b'"upgrade":true' in out[0] and t.disconnecting


def test_an_upgraded_connection_leaves_the_producer_slot_and_the_http_deadlines():
    """After the switch the new protocol may register its own producer, and no HTTP
    deadline (header, idle) cuts the connection: the WebSocket layer has its own."""
    factory, target, proto, t = upgrading()
    assert t.producer is proto
    proto.dataReceived(UPGRADE)
    assert t.producer is None and target.built
    factory.reactor.advance(3600)
    factory.sweep()
    assert not t.disconnecting and t.value() == b""


def test_an_upgrade_request_larger_than_one_parse_slice_arrives_whole():
    """The input is parsed in slices bounded by the pipelining limit; the new protocol
    still gets every byte of a long upgrade request and the frame after it."""
    factory, target, proto, t = upgrading()
    request = UPGRADE.replace(b"\r\n\r\n", b"\r\nX-Pad: " + b"p" * 1500 + b"\r\n\r\n")
    proto.dataReceived(request + b"\x81\x01x")
    assert target.built[0].data == request + b"\x81\x01x"


class KernelTransport(StringTransport):
    """Twisted's FileDescriptor as a producer sees it: a write past ``size`` bytes pauses
    the registered streaming producer; ``drain()`` (the kernel took everything) resumes it
    only if it paused it.  A pull producer (the FileSender) is driven by ``drain()``."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size
        self.paused_it = False
        self.streaming = None

    def registerProducer(self, producer, streaming) -> None:
        self.producer, self.streaming = producer, streaming

    def unregisterProducer(self) -> None:
        self.producer = None

    def write(self, data) -> None:
        super().write(data)
        if self.producer is not None and self.streaming and len(self.value()) > self.size:
            self.paused_it = True
            self.producer.pauseProducing()

    def drain(self) -> None:
        self.clear()
        if self.producer is not None and (not self.streaming or self.paused_it):
            self.paused_it = False
            self.producer.resumeProducing()


def test_a_connection_paused_before_a_file_body_streams_reads_again_after_it(tmp_path):
    """The buffer filled (the protocol paused), then a file body streamed: the transport
    drove the file sender since and never resumes the protocol, which stayed paused with
    its held requests for good (found by a review).  It goes on after the body."""
    app = App()
    app.defer_paths.update({"/a", "/file"})
    factory = HttpFactory(app, Limits(pipelined_requests_max=8), task.Clock())
    proto = factory.buildProtocol(None)
    t = KernelTransport(4096)
    proto.makeConnection(t)
    proto.dataReceived(b"GET /a HTTP/1.1\r\n\r\nGET /file HTTP/1.1\r\n\r\n")
    done: list = []
    app.pending[1].callback((200, _file_body(tmp_path, b"z" * 50_000, done), b"a/b", ()))
    app.pending[0].callback(json_response(200, {"pad": "x" * 10_000}))   # fills the buffer
    for _ in range(100):
        t.drain()
        if isinstance(t.producer, HttpProtocol):
            break
    assert done and isinstance(t.producer, HttpProtocol)
    proto.dataReceived(b"GET /next HTTP/1.1\r\n\r\n")
    assert [r.path for r in app.requests] == ["/a", "/file", "/next"]


def test_a_closing_connection_whose_client_never_reads_is_cut_after_the_idle_timeout(setup):
    """A last answer (Connection: close) the client never reads kept the connection open
    for good: a graceful close waits for the client.  It is aborted after idle_timeout_ms
    (found by a review)."""
    _, factory, clock, connect = setup
    proto, t = connect()
    proto.dataReceived(b"GET /a HTTP/1.1\r\nConnection: close\r\n\r\n")
    assert t.disconnecting and proto in factory.connections
    clock.advance(119)
    proto.check_deadline(clock.seconds())
    assert not t.disconnected
    clock.advance(2)
    proto.check_deadline(clock.seconds())
    assert t.disconnected                         # StringTransport: abortConnection
