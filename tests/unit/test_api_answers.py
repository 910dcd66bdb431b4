"""How the API turns a client request's answer into a response (paxoslog/server/api.py,
``Later`` in httpmsg.py): without a Deferred on the common path, with the same statuses,
headers and error mapping as before, and always an answer."""

from __future__ import annotations

import json

from twisted.logger import globalLogPublisher

from paxoslog.config import LimitsConf
from paxoslog.server.api import Api, _with_headers
from paxoslog.server.errors import ApiError
from paxoslog.server.httpmsg import Later, Request
from paxoslog.server.runner import ClientRequest


class FakeRouter:
    """Hands out the requests it was given, for the test to answer."""

    def __init__(self) -> None:
        self.requests: list[ClientRequest] = []

    def _new(self) -> ClientRequest:
        request = ClientRequest(True)
        self.requests.append(request)
        return request

    def write(self, sm, fields, client_id=None, sequence=None, internal=False, acked=None):
        return self._new()

    def write_batch(self, ops, client_id=None, sequence=None, acked=None):
        return self._new()

    def read(self, query, consistency):
        return self._new()


class Book:
    removed = False


def api_and_router() -> tuple[Api, FakeRouter]:
    api = Api(1, LimitsConf(), 1 << 20)
    router = FakeRouter()
    api.bind(router=router, views=None, admin=None, book=Book())
    return api, router


def request(method: str, path: str, body: dict | None = None, query: str = "") -> Request:
    data = json.dumps(body).encode() if body is not None else b""
    return Request(method, path, query, {b"host": b"127.0.0.1"}, data, True)


def respond(later: Later) -> list:
    responses = []
    later.then(lambda response, tag: responses.append((tag, response)), "tag")
    return responses


def body_of(response: tuple) -> dict:
    return json.loads(response[1])


def test_a_write_answered_later_is_a_later_and_its_answer_the_response():
    api, router = api_and_router()
    later = api.handle(request("POST", "/api/v1/consensus/propose", {"key": "k", "value": 1}))
    assert type(later) is Later
    responses = respond(later)
    assert responses == []
    router.requests[0].answer({"status": "committed", "index": 7, "result": {"op": "put"}})
    [(tag, (status, _, ctype, headers))] = responses
    assert tag == "tag" and status == 200 and ctype == b"application/json" and headers == ()
    assert body_of(responses[0][1])["index"] == 7


def test_a_write_refused_when_applied_maps_to_its_status_with_the_index():
    """The committed result's error: 404 for lease_not_found, else 400 (as before)."""
    api, router = api_and_router()
    for error, status in (("lease_not_found", 404), ("version_mismatch", 400)):
        responses = respond(api.handle(request("POST", "/api/v1/consensus/propose",
                                               {"key": "k", "value": 1})))
        router.requests[-1].answer({"status": "committed", "index": 9,
                                    "result": {"error": error, "message": "m"}})
        [(_, response)] = responses
        assert response[0] == status and body_of(response)["error"] == error
        assert body_of(response)["index"] == 9


def test_an_error_answer_keeps_its_retry_after_and_a_read_answered_first_goes_at_once():
    api, router = api_and_router()
    read = api.handle(request("GET", "/api/v1/consensus/query", query="key=k"))
    router.requests[0].answer(ApiError.from_body(503, {"error": "unavailable", "message": "m"}))
    [(_, response)] = respond(read)             # the answer came before the consumer
    assert response[0] == 503 and (b"Retry-After", b"1") in response[3]


def test_a_render_that_raises_is_logged_and_answered_500():
    """A committed batch whose result cannot be reshaped (here: not a map at all)."""
    api, router = api_and_router()
    later = api.handle(request("POST", "/api/v1/consensus/batch",
                               {"ops": [{"op": "put", "key": "k", "value": 1}]}))
    responses = respond(later)
    logged: list = []
    globalLogPublisher.addObserver(logged.append)
    try:
        router.requests[0].answer(["not", "a", "map"])
    finally:
        globalLogPublisher.removeObserver(logged.append)
    [(_, response)] = responses
    assert response[0] == 500 and body_of(response)["error"] == "internal"
    assert [e["log_failure"].type for e in logged if "log_failure" in e] == [AttributeError]


def test_cors_headers_are_added_to_a_later_answer_without_a_deferred():
    """A browser's request with access control on: the CORS headers go on the response
    rendered when the answer comes (success, error, or a render that raised: 500), and
    the answer still comes without a Deferred."""
    cors = ((b"Access-Control-Allow-Origin", b"https://a.example"),)
    api, router = api_and_router()
    query = request("GET", "/api/v1/consensus/query", query="key=k")
    batch = request("POST", "/api/v1/consensus/batch",
                    {"ops": [{"op": "put", "key": "k", "value": 1}]})
    cases = [(query, {"key": "k", "value": 1, "index": 3}, 200),
             (query, ApiError(503, "unavailable", "no leader", retry_after=1), 503),
             (batch, ["not", "a", "map"], 500)]          # the batch's render raises
    for req, answer, status in cases:
        router.requests.clear()
        responses = respond(_with_headers(api.handle(req), cors))
        logged: list = []
        globalLogPublisher.addObserver(logged.append)
        try:
            router.requests[0].answer(answer)
        finally:
            globalLogPublisher.removeObserver(logged.append)
        [(_, (got_status, _, _, headers))] = responses
        assert got_status == status and cors[0] in headers
        assert any("log_failure" in e for e in logged) == (status == 500)
