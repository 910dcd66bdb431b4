"""The three drivers of the retry planner, without a cluster: how each client stack sorts
its transport errors (http.client on real local sockets, Twisted on the exceptions treq
raises), what ``SyncClient`` raises for scripted attempts, ``drive_plan`` on a
``twisted.internet.task.Clock``, and what the chaos workload writes into its history.

The regression behind them: ``RequestTransmissionFailed`` (some bytes may have been
written) was read as "never sent" by client.py, so a write that may have been applied could
be reported as unavailable.
"""

from __future__ import annotations

import json
import random
import socket

import pytest
from twisted.internet import defer, error as tx_error, task
from twisted.python.failure import Failure
from twisted.web import _newclient

from paxoslog.chaos.history import FAIL, OK, UNKNOWN, History
from paxoslog.chaos.workload import Workload, WorkloadOptions
from paxoslog.client import (Client, NotFound, RequestFailed, SyncClient, Unavailable,
                             UnknownOutcome, classify_sync_failure, classify_twisted_failure,
                             drive_plan)
from paxoslog.retry import (Endpoints, NoReply, Reply, Request, RetryPlan, RetryPolicy,
                            TransportFailure, Verdict)

NOT_CONNECTED = TransportFailure.NOT_CONNECTED
SENT = TransportFailure.SENT
TIMED_OUT = TransportFailure.TIMED_OUT


def _wrapped(cls, *reasons):
    return cls([Failure(r) for r in reasons])


TWISTED_CASES = [
    (tx_error.ConnectionRefusedError(), NOT_CONNECTED),
    (tx_error.DNSLookupError("no.such.host"), NOT_CONNECTED),
    (tx_error.TimeoutError(), NOT_CONNECTED),                 # the Agent's connect timeout
    (tx_error.ConnectingCancelledError(None), NOT_CONNECTED),
    (_newclient.RequestNotSent(), NOT_CONNECTED),
    (_wrapped(_newclient.RequestTransmissionFailed, tx_error.ConnectionLost()), SENT),
    (_wrapped(_newclient.RequestGenerationFailed, ValueError()), SENT),
    (_wrapped(_newclient.ResponseNeverReceived, tx_error.ConnectionDone()), SENT),
    (_wrapped(_newclient.ResponseFailed, tx_error.ConnectionLost()), SENT),
    (_wrapped(_newclient.ResponseNeverReceived, defer.CancelledError()), TIMED_OUT),
    (defer.TimeoutError(), TIMED_OUT),
    (defer.CancelledError(), TIMED_OUT),
    (tx_error.ConnectionLost(), SENT),
    (ConnectionResetError(), SENT),
    (RuntimeError("anything else"), SENT),
]


@pytest.mark.parametrize("exc, kind", TWISTED_CASES, ids=lambda v: type(v).__name__)
def test_twisted_failures_are_sorted_by_what_may_have_been_sent(exc, kind):
    """Only failures that prove the connection never carried the request are not-connected."""
    assert classify_twisted_failure(exc).kind is kind


def test_sync_failures_depend_on_whether_the_connection_opened():
    """http.client: before connecting anything is not-connected; after, timeouts and the rest."""
    assert classify_sync_failure(TimeoutError(), connected=False).kind is NOT_CONNECTED
    assert classify_sync_failure(ConnectionRefusedError(), connected=False).kind is NOT_CONNECTED
    assert classify_sync_failure(TimeoutError(), connected=True).kind is TIMED_OUT
    assert classify_sync_failure(ConnectionResetError(), connected=True).kind is SENT
    assert classify_sync_failure(BrokenPipeError(), connected=True).kind is SENT


# ---------------------------------------------------------------------- real sockets

@pytest.fixture
def listener():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(4)
    yield sock
    sock.close()


def _endpoint(sock) -> str:
    return f"http://127.0.0.1:{sock.getsockname()[1]}"


def test_sync_attempt_on_a_closed_port_is_not_connected():
    """Nothing listens: connection refused, which proves nothing was sent."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    endpoint = _endpoint(sock)
    sock.close()
    with SyncClient([endpoint]) as client:
        outcome = client._attempt(endpoint, "POST", "/api/v1/consensus/propose", b"{}", 1.0)
    assert outcome.kind is NOT_CONNECTED


def test_sync_attempt_dropped_after_connecting_may_have_been_delivered(listener):
    """The server closes the open connection: the request may have reached it."""
    endpoint = _endpoint(listener)
    with SyncClient([endpoint]) as client:
        client._connection(endpoint, 1.0)           # open before the server drops it
        server_side, _ = listener.accept()
        server_side.close()
        outcome = client._attempt(endpoint, "POST", "/api/v1/consensus/propose", b"{}", 1.0)
    assert outcome.kind is SENT, outcome


def test_sync_attempt_unanswered_times_out_after_sending(listener):
    """Connected (the backlog accepts it) but never answered: timed out after sending."""
    endpoint = _endpoint(listener)
    with SyncClient([endpoint]) as client:
        outcome = client._attempt(endpoint, "GET", "/health", None, 0.2)
    assert outcome.kind is TIMED_OUT, outcome


# ---------------------------------------------------------------------- SyncClient driver

class _ScriptedSync(SyncClient):
    """A SyncClient whose attempts return scripted outcomes, on a fake clock."""

    def __init__(self, script, **kwargs) -> None:
        self.now = 0.0
        super().__init__(["http://a:1", "http://b:1", "http://c:1"], clock=lambda: self.now,
                         sleep=self._sleep_for, **kwargs)
        self.script = list(script)
        self.sent: list[tuple[str, bytes | None]] = []

    def _sleep_for(self, seconds: float) -> None:
        self.now += seconds

    def _attempt(self, endpoint, method, path, payload, timeout):
        self.sent.append((endpoint, payload))
        outcome = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        self.now += 0.01
        return outcome


def test_sync_write_sent_then_503_until_the_deadline_is_unknown_outcome():
    """A session write lost after sending, then 503s: UnknownOutcome, same pair every time."""
    client = _ScriptedSync([NoReply(SENT), Reply(503, {"error": "unavailable"}, 1.0)],
                           timeout=3.0)
    with pytest.raises(UnknownOutcome) as info:
        client.put("k", "v")
    assert "sequence=1" in str(info.value) and len(client.sent) > 3
    bodies = {payload for _, payload in client.sent}
    assert len(bodies) == 1
    assert json.loads(bodies.pop())["client_id"] == client.client_id
    assert {endpoint for endpoint, _ in client.sent} == set(client.endpoints)


def test_sync_write_refused_and_503_only_is_unavailable():
    """Nothing could have been delivered: Unavailable (not applied), with the last 503."""
    client = _ScriptedSync([NoReply(NOT_CONNECTED), Reply(503, {"error": "busy"})],
                           timeout=1.0)
    with pytest.raises(Unavailable) as info:
        client.put("k", "v")
    assert info.value.status == 503 and info.value.code == "busy"


def test_sync_write_answered_after_a_lost_reply_returns_the_answer():
    """With its session, a write resent after a lost reply returns the later 200."""
    client = _ScriptedSync([NoReply(TIMED_OUT), Reply(200, {"status": "committed",
                                                           "index": 7})])
    assert client.put("k", "v")["index"] == 7 and len(client.sent) == 2


def test_sync_write_without_session_stops_at_the_first_maybe_delivered_attempt():
    """A sessionless, non-idempotent write is never resent once it may have arrived."""
    client = _ScriptedSync([NoReply(SENT), Reply(200, {})])
    with pytest.raises(UnknownOutcome):
        client.request("POST", "/api/v1/consensus/propose", {"key": "k", "value": 1},
                       write=True)
    assert len(client.sent) == 1


def test_sync_membership_calls_are_resent_as_idempotent():
    """add-node carries no session but is idempotent: resent after a lost reply."""
    client = _ScriptedSync([NoReply(SENT), Reply(200, {"status": "ok"})])
    assert client.add_node(4, "127.0.0.1:7104")["status"] == "ok" and len(client.sent) == 2


def test_sync_refusals_raise_not_found_and_request_failed():
    """404 is NotFound, 400 RequestFailed, 503 on reads until the deadline Unavailable."""
    with pytest.raises(NotFound):
        _ScriptedSync([Reply(404, {"error": "not_found"})]).get("k")
    with pytest.raises(RequestFailed) as info:
        _ScriptedSync([Reply(400, {"error": "bad_request"})]).put("k", 1)
    assert info.value.status == 400
    with pytest.raises(Unavailable):
        _ScriptedSync([NoReply(TIMED_OUT)], timeout=1.0).get("k")


def test_sync_client_learns_endpoints_from_status_and_follows_hints():
    """A status body maps node ids to endpoints; a 503 hint then redirects the retry."""
    client = _ScriptedSync([Reply(503, {"error": "unavailable", "leader": 3}),
                            Reply(200, {"value": 1})])
    client.learn({"leader": None, "nodes": [{"id": 1, "api": "a:1"}, {"id": 2, "api": "b:1"},
                                            {"id": 3, "api": "c:1"}]})
    client.get("k")
    assert [e for e, _ in client.sent] == ["http://a:1", "http://c:1"]
    assert client.leader_endpoint == "http://c:1"


# ---------------------------------------------------------------------- Twisted driver

def _pump(clock: task.Clock, d: defer.Deferred, step_s: float = 0.01, limit_s: float = 60.0):
    """Advance ``clock`` until ``d`` fires; its result (or raise its failure)."""
    waited = 0.0
    while not d.called and waited < limit_s:
        clock.advance(step_s)
        waited += step_s
    assert d.called, "the driver never finished"
    results = []
    d.addBoth(results.append)
    result = results[0]
    if isinstance(result, Failure):
        result.raiseException()
    return result


class _ScriptedSend:
    """``send(endpoint, timeout_s)`` for drive_plan: scripted replies or exceptions."""

    def __init__(self, script) -> None:
        self.script = list(script)
        self.calls: list = []

    def __call__(self, endpoint, timeout_s):
        self.calls.append(endpoint)
        item = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        if isinstance(item, BaseException):
            return defer.fail(item)
        return defer.succeed(item)


def test_twisted_transmission_failure_then_503s_is_unknown_outcome():
    """The old bug: RequestTransmissionFailed, then 503s, must be unknown, not unavailable."""
    clock = task.Clock()
    client = Client(["http://a:1", "http://b:1"], reactor=clock, timeout=2.0)
    plan = client.plan("/api/v1/consensus/propose", {"client_id": "c", "sequence": 1}, True)
    send = _ScriptedSend([_wrapped(_newclient.RequestTransmissionFailed,
                                   tx_error.ConnectionLost()),
                          Reply(503, {"error": "unavailable"}, 1.0)])
    finish = _pump(clock, defer.Deferred.fromCoroutine(drive_plan(clock, plan, send)))
    assert finish.verdict is Verdict.UNKNOWN and len(send.calls) > 2
    with pytest.raises(UnknownOutcome):
        client.outcome(finish, {"client_id": "c", "sequence": 1})


def test_twisted_connection_refused_then_answer_returns_it():
    """Refused at one endpoint, answered at the next: the answer, after one backoff."""
    clock = task.Clock()
    plan = RetryPlan(Request.read(), RetryPolicy(), Endpoints(["a", "b"]))
    send = _ScriptedSend([tx_error.ConnectionRefusedError(), Reply(200, {"value": 3})])
    finish = _pump(clock, defer.Deferred.fromCoroutine(drive_plan(clock, plan, send)))
    assert finish.verdict is Verdict.ANSWERED and send.calls == ["a", "b"]


def test_cancelling_the_request_stops_the_retries():
    """The caller's cancel during a backoff ends the request; no further attempt is made."""
    clock = task.Clock()
    plan = RetryPlan(Request.read(), RetryPolicy(), Endpoints(["a", "b"]))
    send = _ScriptedSend([tx_error.ConnectionRefusedError()])
    d = defer.Deferred.fromCoroutine(drive_plan(clock, plan, send))
    assert send.calls == ["a"]
    d.cancel()
    clock.advance(5.0)
    with pytest.raises(defer.CancelledError):
        _pump(clock, d)
    assert send.calls == ["a"]


# ---------------------------------------------------------------------- chaos workload

class _FakeApi:
    """The chaos ApiClient's ``call``: scripted per call, every call remembered."""

    def __init__(self, script) -> None:
        self.script = list(script)
        self.calls: list[tuple[int, object]] = []

    def call(self, method, node, path, body=None, timeout_s=5.0):
        self.calls.append((node, body))
        item = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        if isinstance(item, BaseException):
            return defer.fail(item)
        return defer.succeed(item)


def _workload(script, timeout_s: float = 3.0):
    clock = task.Clock()
    api = _FakeApi(script)
    history = History(None, clock.seconds)
    options = WorkloadOptions(workers=1, timeout_s=timeout_s, probe_interval_s=0)
    return clock, api, history, Workload(clock, api, history, [1, 2, 3], options,
                                         random.Random(1))


def _write(clock, history, workload, sequence=1, policy=None):
    record = history.invoke(1, "w-p1", 2, "put", "k0.0", 42)
    d = defer.Deferred.fromCoroutine(workload.do_write(record, sequence, policy))
    return record, _pump(clock, d)


LOST = _wrapped(_newclient.ResponseNeverReceived, tx_error.ConnectionDone())


@pytest.mark.parametrize("script, status", [
    ([LOST, Reply(503, {"error": "unavailable"})], UNKNOWN),
    ([_wrapped(_newclient.RequestTransmissionFailed, tx_error.ConnectionLost()),
      tx_error.ConnectionRefusedError()], UNKNOWN),
    ([tx_error.ConnectionRefusedError(), Reply(503, {"error": "unavailable"})], FAIL),
    ([Reply(504, {"error": "outcome_unknown"}), Reply(200, {"result": {}, "index": 5})], OK),
    ([Reply(400, {"error": "bad_request"})], FAIL),
    ([LOST, Reply(400, {"error": "stale_sequence"})], UNKNOWN),
], ids=["lost-then-503", "transmission-failed", "refused-then-503", "504-then-200", "400",
        "lost-then-400"])
def test_chaos_history_records_the_planners_verdict(script, status):
    """A chaos write is ok / fail / unknown exactly as the planner decides."""
    clock, api, history, workload = _workload(script)
    record, result = _write(clock, history, workload)
    assert result == status and record.status == status
    assert (record.ret is None) == (status == UNKNOWN)
    assert api.calls[0][0] == 2                      # the operation's node first
    assert len({json.dumps(body, sort_keys=True) for _, body in api.calls}) == 1


def test_chaos_probe_is_one_attempt():
    """A probe (attempts_max=1) is classified, never retried."""
    clock, api, history, workload = _workload([defer.TimeoutError()])
    record, result = _write(clock, history, workload, policy=workload._probe_policy)
    assert result == UNKNOWN and len(api.calls) == 1


@pytest.mark.parametrize("script, status, output", [
    ([LOST, Reply(200, {"value": 9, "index": 3})], OK, 9),
    ([Reply(404, {"error": "not_found"})], OK, None),
    ([defer.TimeoutError(), Reply(504, {"error": "timeout"})], FAIL, None),
])
def test_chaos_reads_are_retried_and_never_unknown(script, status, output):
    """Reads retry any failure; out of time they fail (they had no effect), never unknown."""
    clock, api, history, workload = _workload(script, timeout_s=1.0)
    record = history.invoke(1, "w-p1", 1, "get", "k0.0")
    result = _pump(clock, defer.Deferred.fromCoroutine(workload.do_get(record)))
    assert result == status and record.status == status and record.output == output
