"""What a handler sees and answers on the HTTP API: the parsed ``Request`` (and its query
string, ``query_params``), the answers (``json_response``, a ``FileBody`` streamed from a
file, ``SwitchProtocols`` for an upgrade).  The connection handling that produces and
sends them is http.py."""

from __future__ import annotations

import json
from typing import Callable
from json.encoder import c_make_encoder, encode_basestring
from urllib.parse import parse_qs

from twisted.internet import defer
from twisted.logger import Logger
from twisted.protocols.basic import FileSender

__all__ = ["Request", "FileBody", "SwitchProtocols", "Later", "json_response",
           "error_response", "query_params", "QUERY_FIELDS_MAX"]

log = Logger(namespace="paxoslog.http")

_JSON = b"application/json"


class Request:
    """One parsed request; ``principal`` is set by the API's access control.  ``upgrade``: the connection's first request asks to switch
    protocols (see ``SwitchProtocols``).  ``parsed``: the body already decoded (requests
    the WebSocket channel routes through the API carry their JSON object here)."""

    __slots__ = ("method", "path", "query", "headers", "body", "keep_alive", "upgrade",
                 "parsed", "principal")

    def __init__(self, method: str, path: str, query: str, headers: dict, body: bytes,
                 keep_alive: bool, upgrade: bool = False, parsed: object = None) -> None:
        self.method = method
        self.path = path
        self.query = query
        self.headers = headers
        self.body = body
        self.keep_alive = keep_alive
        self.upgrade = upgrade
        self.parsed = parsed
        self.principal = None


class SwitchProtocols:
    """A handler's answer to an upgrade request: hand the connection to a protocol built
    by ``factory`` (an ``IProtocolFactory``).  ``principal``: who the upgrade request was
    authenticated as; the new protocol gets it (``protocol.principal``) and speaks for it
    on every request it makes.  ``scrub``: what the request's bytes pass through before the
    new protocol gets them (the API removes the credentials: access.without_credentials)."""

    __slots__ = ("factory", "principal", "scrub")

    def __init__(self, factory, principal=None, scrub=None) -> None:
        self.factory = factory
        self.principal = principal
        self.scrub = scrub


class Later:
    """A handler's answer that is not ready yet, without a Deferred (the client request
    path: a Deferred and its callbacks cost about 2 us per request, 5 % of a read).
    ``answer`` has ``then(consumer)`` and later calls ``consumer(result)`` once (a
    ``runner.ClientRequest``); ``render(result)`` turns that result into the response tuple.
    ``then(respond, *args)`` calls ``respond(response, *args)``; a ``render`` that raises
    is logged and answered 500, so the client is always answered."""

    __slots__ = ("answer", "render")

    def __init__(self, answer, render: Callable[[object], tuple]) -> None:
        self.answer = answer
        self.render = render

    def then(self, respond: Callable, *args) -> None:
        response = self.response

        def deliver(result) -> None:
            respond(response(result), *args)
        self.answer.then(deliver)

    def response(self, result) -> tuple:
        """The response to ``result``: ``render``'s, or 500 (logged) when it raises."""
        try:
            return self.render(result)
        except Exception:
            log.failure("rendering a response failed")
            return error_response(500, "internal", "internal error")

    def as_deferred(self) -> defer.Deferred:
        """The response as a Deferred (for the API's one Deferred path: a token's first
        use on this node, whose hash is checked off the event loop)."""
        d = defer.Deferred()
        self.then(d.callback)
        return d


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


# One encoder for every response, the C one of the json module called directly: compact
# separators, UTF-8 text as is, ``str()`` of anything else, no NaN.  ``json.dumps`` with
# options builds an encoder per call, and even a kept ``JSONEncoder`` builds its C encoder
# per call: 3.2 us against 1.5 us for a read's answer.  Without the circular-reference
# markers: our bodies are trees (a cycle would end in RecursionError, answered 500).
_ENCODE = c_make_encoder(None, str, encode_basestring, None, ":", ",", False, False, False) \
    if c_make_encoder is not None else \
    json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, default=str,
                     allow_nan=False).iterencode


def json_response(status: int, obj: object, headers: tuple = ()) -> tuple:
    """A JSON response.  NaN, infinities, integers of more than 4,300 digits and lone
    surrogates are not JSON text: a body holding one becomes a 500 (the API refuses them on
    input, so only a plug-in's result could carry one)."""
    try:
        body = "".join(_ENCODE(obj, 0)).encode()
    except (ValueError, TypeError) as exc:
        # NaN or an infinity, an integer too long to print, a lone surrogate, a map key
        # JSON has no form for (a plug-in's result)
        log.error("a response could not be written as JSON ({error}); answered 500",
                  error=str(exc)[:200])
        status, headers = 500, ()
        body = (b'{"error":"internal","message":"the response held a value JSON cannot '
                b'carry"}')
    except RecursionError:
        log.error("a response held a cycle or nested too deep for JSON; answered 500")
        status, headers = 500, ()
        body = b'{"error":"internal","message":"the response could not be encoded"}'
    return (status, body, _JSON, headers)


def error_response(status: int, code: str, message: str) -> tuple:
    return json_response(status, {"error": code, "message": message})


QUERY_FIELDS_MAX = 32


def query_params(query: str) -> dict[str, str]:
    """A query string's parameters, the last value of each name (blank values kept): what
    ``parse_qs(query, keep_blank_values=True, max_num_fields=QUERY_FIELDS_MAX)`` gives.
    A query with nothing to decode (no ``%`` or ``+``, as in ``?key=k1``) is split here
    directly: urllib's parser cost 6 % of a leader's CPU under linearizable reads.  Raises
    ValueError past ``QUERY_FIELDS_MAX`` fields."""
    if "%" in query or "+" in query:
        parsed = parse_qs(query, keep_blank_values=True, max_num_fields=QUERY_FIELDS_MAX)
        return {name: values[-1] for name, values in parsed.items()}
    if query.count("&") >= QUERY_FIELDS_MAX:
        raise ValueError("Max number of fields exceeded")
    params = {}
    for field in query.split("&"):
        if field:
            name, _, value = field.partition("=")
            params[name] = value
    return params
