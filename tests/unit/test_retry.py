"""The retry planner (paxoslog/retry.py) on made-up attempt sequences.

Two tables spell the rules out for every outcome kind, for a read, a write with a session
and one without, with or without an earlier attempt that may have been delivered: what the
planner does next when it has time left, and what the request amounts to when it has none.
Then endpoint choice (leader hints, Retry-After, backoff, the deadline), and a hypothesis
property over random attempt sequences: a write that may have reached a server is never
reported as not applied.
"""

from __future__ import annotations

import ast
import pathlib

import pytest
from hypothesis import given, settings, strategies as st

from paxoslog.retry import (Attempt, Endpoints, Finish, NoReply, Reply, Request, RetryPlan,
                            RetryPolicy, TransportFailure, Verdict, parse_retry_after)

NOT_CONNECTED = NoReply(TransportFailure.NOT_CONNECTED, "refused")
SENT = NoReply(TransportFailure.SENT, "reset")
TIMED_OUT = NoReply(TransportFailure.TIMED_OUT, "timeout")

OUTCOMES = {
    "200": Reply(200, {"status": "committed"}),
    "404": Reply(404, {"error": "not_found"}),
    "400": Reply(400, {"error": "stale_sequence"}),
    "410": Reply(410, {"error": "removed"}),
    "503": Reply(503, {"error": "unavailable", "leader": None}, 1.0),
    "503-stale-floor": Reply(503, {"error": "revision_not_reached", "future": False}, 1.0),
    "503-future": Reply(503, {"error": "revision_not_reached", "future": True}, 1.0),
    "504": Reply(504, {"error": "outcome_unknown"}),
    "500": Reply(500, {"error": "internal"}),
    "not-connected": NOT_CONNECTED,
    "sent": SENT,
    "timed-out": TIMED_OUT,
}

READ = Request.read()
SESSION = Request.write_with(session=True)
NO_SESSION = Request.write_with(session=False)

RETRY = "retry"
A, R, U, N = Verdict.ANSWERED, Verdict.REFUSED, Verdict.UNKNOWN, Verdict.NOT_APPLIED

# What the planner does after the outcome when time and attempts are left.  Columns: a
# read; a write with a session, fresh / after an earlier maybe-delivered attempt; a write
# without a session, fresh (after a maybe-delivered attempt it is never sent again).
NEXT = {
    #                 read   session  session-written  no-session
    "200":           (A,     A,       A,               A),
    "404":           (R,     R,       U,               R),
    "400":           (R,     R,       U,               R),
    "410":           (RETRY, RETRY,   RETRY,           RETRY),
    "503":           (RETRY, RETRY,   RETRY,           RETRY),
    "503-stale-floor": (RETRY, RETRY, RETRY,           RETRY),
    "503-future":    (R,     R,       U,               R),
    "504":           (RETRY, RETRY,   RETRY,           U),
    "500":           (RETRY, RETRY,   RETRY,           U),
    "not-connected": (RETRY, RETRY,   RETRY,           RETRY),
    "sent":          (RETRY, RETRY,   RETRY,           U),
    "timed-out":     (RETRY, RETRY,   RETRY,           U),
}

# The verdict when the outcome was the last attempt allowed (attempts_max reached).
LAST = {
    #                 read   session  session-written  no-session
    "200":           (A,     A,       A,               A),
    "404":           (R,     R,       U,               R),
    "400":           (R,     R,       U,               R),
    "410":           (N,     N,       U,               N),
    "503":           (N,     N,       U,               N),
    "503-stale-floor": (N,   N,       U,               N),
    "503-future":    (R,     R,       U,               R),
    "504":           (N,     U,       U,               U),
    "500":           (N,     U,       U,               U),
    "not-connected": (N,     N,       U,               N),
    "sent":          (N,     U,       U,               U),
    "timed-out":     (N,     U,       U,               U),
}

COLUMNS = [(READ, False), (SESSION, False), (SESSION, True), (NO_SESSION, False)]


def _plan(request: Request, **policy) -> RetryPlan:
    book = Endpoints(["a", "b", "c"], {1: "a", 2: "b", 3: "c"})
    return RetryPlan(request, RetryPolicy(**policy), book)


def _run(plan: RetryPlan, outcomes, now: float = 0.0):
    """Feed ``outcomes`` attempt by attempt; the decisions, the last one included."""
    step = plan.start(now)
    decisions = [step]
    for outcome in outcomes:
        assert isinstance(step, Attempt), f"the planner stopped early: {step}"
        now += step.delay_s + 0.001
        step = plan.record(step.endpoint, outcome, now)
        decisions.append(step)
    return decisions


@pytest.mark.parametrize("name", sorted(OUTCOMES))
@pytest.mark.parametrize("column", range(4), ids=["read", "session", "session-written",
                                                   "no-session"])
def test_next_step_table(name, column):
    """With time left, each outcome leads to the tabled retry or verdict."""
    request, written = COLUMNS[column]
    prior = [SENT] if written else []
    last = _run(_plan(request), prior + [OUTCOMES[name]])[-1]
    expected = NEXT[name][column]
    if expected == RETRY:
        assert isinstance(last, Attempt), last
    else:
        assert isinstance(last, Finish) and last.verdict is expected, last


@pytest.mark.parametrize("name", sorted(OUTCOMES))
@pytest.mark.parametrize("column", range(4), ids=["read", "session", "session-written",
                                                   "no-session"])
def test_last_attempt_table(name, column):
    """On the last attempt allowed, each outcome gives the tabled verdict."""
    request, written = COLUMNS[column]
    prior = [SENT] if written else []
    plan = _plan(request, attempts_max=len(prior) + 1)
    last = _run(plan, prior + [OUTCOMES[name]])[-1]
    assert isinstance(last, Finish)
    assert last.verdict is LAST[name][column], last
    assert last.attempts == len(prior) + 1


@pytest.mark.parametrize("name", sorted(OUTCOMES))
def test_out_of_time_is_out_of_attempts(name):
    """Running past the deadline gives the same verdicts as running out of attempts."""
    for column, (request, written) in enumerate(COLUMNS):
        plan = _plan(request, timeout_s=1.0, attempt_timeout_s=1.0)
        step = plan.start(0.0)
        if written:
            step = plan.record(step.endpoint, SENT, 0.1)
        last = plan.record(step.endpoint, OUTCOMES[name], 0.999)
        assert isinstance(last, Finish), (name, column, last)
        assert last.verdict is LAST[name][column], (name, column, last)


def test_a_write_without_session_is_not_resent_after_it_may_have_been_delivered():
    """No session: the first maybe-delivered attempt ends the request, unknown."""
    for outcome in (SENT, TIMED_OUT, OUTCOMES["504"], OUTCOMES["500"]):
        plan = _plan(NO_SESSION)
        decisions = _run(plan, [NOT_CONNECTED, OUTCOMES["503"], outcome])
        assert [type(d) for d in decisions] == [Attempt, Attempt, Attempt, Finish]
        assert decisions[-1].verdict is U and decisions[-1].maybe_delivered


def test_a_later_503_does_not_turn_a_maybe_delivered_write_into_not_applied():
    """The safety rule: sent, then 503s until the deadline, is unknown, not unavailable."""
    plan = _plan(SESSION, timeout_s=2.0)
    step = plan.start(0.0)
    now = 0.0
    step = plan.record(step.endpoint, SENT, now)
    while isinstance(step, Attempt):
        now += step.delay_s
        step = plan.record(step.endpoint, OUTCOMES["503"], now)
    assert step.verdict is U and step.maybe_delivered and step.attempts > 3
    assert step.reply.status == 503


def test_a_session_write_answered_after_a_maybe_delivered_attempt_is_committed():
    """With a session, a 200 after a lost reply is the truth (the session table's)."""
    plan = _plan(SESSION)
    last = _run(plan, [TIMED_OUT, OUTCOMES["504"], OUTCOMES["503"], OUTCOMES["200"]])[-1]
    assert last.verdict is A and last.attempts == 4 and last.maybe_delivered


def test_idempotent_writes_are_resent_but_still_end_unknown():
    """An idempotent write is resent after a maybe-delivered attempt; out of time: unknown."""
    plan = _plan(Request.write_with(session=False, idempotent=True), attempts_max=3)
    decisions = _run(plan, [SENT, NOT_CONNECTED, OUTCOMES["503"]])
    assert decisions[-1].verdict is U


def test_reads_are_retried_after_anything_and_never_unknown():
    """A read is retried after every failure kind and ends not applied, never unknown."""
    failures = [SENT, TIMED_OUT, OUTCOMES["504"], OUTCOMES["500"], OUTCOMES["503"],
                NOT_CONNECTED, OUTCOMES["410"]]
    plan = _plan(READ, attempts_max=len(failures))
    decisions = _run(plan, failures)
    assert all(isinstance(d, Attempt) for d in decisions[:-1])
    assert decisions[-1].verdict is N and not decisions[-1].maybe_delivered


# ---------------------------------------------------------------------- endpoints

def test_a_503_leader_hint_is_followed_and_remembered():
    """503 naming node 3: the retry goes to node 3's endpoint, and the next request too."""
    book = Endpoints(["a", "b", "c"], {1: "a", 2: "b", 3: "c"})
    plan = RetryPlan(SESSION, RetryPolicy(), book)
    first = plan.start(0.0)
    assert first.endpoint == "a"
    retry = plan.record("a", Reply(503, {"error": "not_leader", "leader": 3}), 0.01)
    assert retry.endpoint == "c" and book.leader == "c"
    assert plan.record("c", Reply(200, {}), 0.05).verdict is A
    assert RetryPlan(READ, RetryPolicy(), book).start(1.0).endpoint == "c"


def test_a_stale_or_unknown_hint_moves_to_the_next_endpoint():
    """A hint naming the endpoint that just failed, or an unknown node, is not followed."""
    for hint in (1, 7, "x", None, True):
        book = Endpoints(["a", "b", "c"], {1: "a", 2: "b"})
        plan = RetryPlan(READ, RetryPolicy(), book)
        plan.start(0.0)
        assert plan.record("a", Reply(503, {"leader": hint}), 0.0).endpoint == "b"
        assert book.leader == ("a" if type(hint) is int and hint == 1 else None)


def test_failed_leader_is_forgotten_and_the_answering_endpoint_preferred():
    """A transport failure at the leader clears it; the endpoint that answers leads next."""
    book = Endpoints(["a", "b", "c"], {1: "a", 2: "b", 3: "c"})
    book.note_leader(1)
    plan = RetryPlan(READ, RetryPolicy(), book)
    assert plan.start(0.0).endpoint == "a"
    retry = plan.record("a", NOT_CONNECTED, 0.0)
    assert book.leader is None and retry.endpoint == "b"
    plan.record("b", Reply(200, {}), 0.1)
    assert book.order() == ["b", "a", "c"]


def test_retry_after_is_honoured_per_endpoint_up_to_the_cap():
    """Retry-After holds its endpoint back (capped); another endpoint goes after backoff."""
    policy = RetryPolicy(backoff_s=(0.02,), retry_after_max_s=0.5)
    single = RetryPlan(READ, policy, Endpoints(["a"]))
    single.start(0.0)
    assert single.record("a", Reply(503, {}, 0.3), 1.0) == Attempt("a", pytest.approx(0.3),
                                                                    pytest.approx(3.0))
    assert single.record("a", Reply(503, {}, 9.0), 2.0).delay_s == pytest.approx(0.5)

    pair = RetryPlan(READ, policy, Endpoints(["a", "b"]))
    pair.start(0.0)
    to_b = pair.record("a", Reply(503, {}, 1.0), 0.0)
    assert to_b.endpoint == "b" and to_b.delay_s == pytest.approx(0.02)
    back = pair.record("b", Reply(503, {}, 1.0), 0.1)
    assert back.endpoint == "a" and back.delay_s == pytest.approx(0.4)   # a free at 0.5


def test_backoff_follows_the_policy_and_repeats_its_last_delay():
    """The n-th retry waits backoff_s[n], the last value repeating."""
    plan = RetryPlan(READ, RetryPolicy(backoff_s=(0.1, 0.2, 0.4)), Endpoints(["a", "b"]))
    decisions = _run(plan, [NOT_CONNECTED] * 5)
    assert [round(d.delay_s, 6) for d in decisions] == [0.0, 0.1, 0.2, 0.4, 0.4, 0.4]
    assert [d.endpoint for d in decisions] == ["a", "b", "a", "b", "a", "b"]


def test_attempts_fit_in_the_deadline():
    """Attempt timeouts shrink to the deadline; nothing is scheduled past it."""
    plan = RetryPlan(READ, RetryPolicy(timeout_s=1.0, attempt_timeout_s=0.8,
                                       backoff_s=(0.1,)), Endpoints(["a"]))
    assert plan.start(0.0).timeout_s == pytest.approx(0.8)
    retry = plan.record("a", TIMED_OUT, 0.8)
    assert retry.delay_s == pytest.approx(0.1) and retry.timeout_s == pytest.approx(0.1)
    assert isinstance(plan.record("a", TIMED_OUT, 0.95), Finish)


def test_misuse_is_refused():
    """record() needs an outstanding attempt; start() runs once; bad policies are refused."""
    plan = _plan(READ)
    with pytest.raises(RuntimeError):
        plan.record("a", SENT, 0.0)
    plan.start(0.0)
    with pytest.raises(RuntimeError):
        plan.start(0.0)
    plan.record("a", Reply(200, {}), 0.0)
    with pytest.raises(RuntimeError):
        plan.record("a", Reply(200, {}), 0.0)
    for bad in ({"timeout_s": 0}, {"backoff_s": ()}, {"backoff_s": (0.0,)},
                {"attempts_max": 0}, {"retry_after_max_s": -1}):
        with pytest.raises(ValueError):
            RetryPolicy(**bad)
    with pytest.raises(ValueError):
        Endpoints([])


@pytest.mark.parametrize("raw, seconds", [("1", 1.0), (b" 2 ", 2.0), ("0.5", 0.5),
                                          (None, None), ("-1", None), ("nan", None),
                                          ("Wed, 21 Oct 2015 07:28:00 GMT", None)])
def test_parse_retry_after(raw, seconds):
    """Delta-seconds are parsed; absent, negative, NaN and HTTP dates give None."""
    assert parse_retry_after(raw) == seconds


def test_the_planner_imports_nothing_impure():
    """retry.py stays sans-I/O: no Twisted, sockets, clock, threads or randomness."""
    path = pathlib.Path(__file__).resolve().parents[2] / "paxoslog" / "retry.py"
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    assert not names & {"twisted", "time", "socket", "http", "threading", "asyncio", "random",
                        "os", "select", "treq"}, names


# ---------------------------------------------------------------------- property

_outcome = st.one_of(
    st.sampled_from(list(TransportFailure)).map(NoReply),
    st.builds(Reply, st.sampled_from([200, 201, 204, 301, 400, 404, 409, 410, 413, 500, 502,
                                      503, 504]),
              st.one_of(st.none(), st.fixed_dictionaries({"leader": st.sampled_from(
                  [None, 1, 2, 3, 9, "x"])})),
              st.one_of(st.none(), st.floats(0, 5))))

_request = st.sampled_from([READ, SESSION, NO_SESSION,
                            Request.write_with(session=False, idempotent=True)])


@settings(max_examples=400, deadline=None)
@given(request=_request, outcomes=st.lists(_outcome, min_size=1, max_size=40),
       durations=st.lists(st.floats(0, 2), min_size=40, max_size=40),
       endpoints=st.integers(1, 4), attempts_max=st.one_of(st.none(), st.integers(1, 8)),
       timeout=st.floats(0.5, 30))
def test_random_attempt_sequences_are_classified_safely(request, outcomes, durations,
                                                        endpoints, attempts_max, timeout):
    """Random attempts: never not-applied after a maybe-delivered write; the plan keeps
    to its deadline and attempt cap; reads are never unknown."""
    names = ["a", "b", "c", "d"][:endpoints]
    plan = RetryPlan(request, RetryPolicy(timeout_s=timeout, attempts_max=attempts_max),
                     Endpoints(names, {i + 1: n for i, n in enumerate(names)}))
    now = 100.0
    step = plan.start(now)
    seen = []
    while isinstance(step, Attempt):
        assert step.endpoint in names and step.delay_s >= 0 and step.timeout_s > 0
        assert now + step.delay_s < plan.deadline
        assert now + step.delay_s + step.timeout_s <= plan.deadline + 1e-9
        if len(seen) == len(outcomes):
            return                               # the script ran out before the plan did
        outcome = outcomes[len(seen)]
        now += step.delay_s + min(durations[len(seen)], step.timeout_s)
        seen.append(outcome)
        step = plan.record(step.endpoint, outcome, now)
    delivered = [o.maybe_delivered for o in seen]
    assert step.attempts == len(seen)
    assert attempts_max is None or step.attempts <= attempts_max
    if request.write and any(delivered):
        assert step.verdict in (Verdict.ANSWERED, Verdict.UNKNOWN)
        assert step.maybe_delivered
        if not request.resendable:
            assert delivered.index(True) == len(seen) - 1    # never sent again
    if step.verdict is Verdict.NOT_APPLIED and request.write:
        assert not any(delivered)
    if not request.write:
        assert step.verdict is not Verdict.UNKNOWN
    last = seen[-1]
    assert (step.verdict is Verdict.ANSWERED) == (isinstance(last, Reply)
                                                  and 200 <= last.status < 300)
    if step.verdict is Verdict.REFUSED:
        assert 400 <= last.status < 500 and last.status != 410
    stopped_by_rule = (isinstance(last, Reply) and 400 <= last.status < 500
                       and last.status != 410) or (request.write and not request.resendable
                                                   and delivered[-1])
    if step.verdict in (Verdict.NOT_APPLIED, Verdict.UNKNOWN) and not stopped_by_rule:
        # it gave up: out of attempts, or the next attempt (at most a backoff or a capped
        # Retry-After away, 0.5 s by default) could not start before the deadline
        out_of_attempts = attempts_max is not None and step.attempts == attempts_max
        assert out_of_attempts or now > plan.deadline - 0.5 - 1e-9
