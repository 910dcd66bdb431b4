"""A client names in ``acked`` the sequence up to which it has every answer: applying it
drops those results on every replica and raises the session's floor, so a late copy of
one of them is refused as stale, never applied twice.  The API checks the field, and the
client computes it from the writes it has settled."""

from __future__ import annotations

import pytest

from paxoslog.client import (OPEN_SEQUENCES_MAX, AnsweredSequences, UnknownOutcome, _Logic,
                             first_sequence)
from paxoslog.node.commands import decode_command
from paxoslog.node.instructions import DUPLICATE, EXECUTED, STALE
from paxoslog.node.machines import StateMachines
from paxoslog.node.sessions import DUPLICATE as SESSION_DUPLICATE
from paxoslog.node.sessions import STALE as SESSION_STALE
from paxoslog.node.sessions import SessionTable
from paxoslog.retry import Finish, Reply, Verdict
from statemachines.kv import KVStateMachine


def machines() -> StateMachines:
    return StateMachines({"kv": KVStateMachine()}, SessionTable(), lambda name: KVStateMachine(),
                         record_terms=True)


def put(m: StateMachines, key: str, seq: int, acked=None, client: str = "app") -> bytes:
    return m.encode_write("kv", {"op": "put", "key": key, "value": seq}, client, seq,
                          ts=1000, acked=acked)


def batch(m: StateMachines, seq: int, acked=None, size: int = 10) -> bytes:
    ops = [("kv", {"op": "put", "key": f"b{seq}-{i}", "value": i}, None) for i in range(size)]
    return m.encode_batch_write(ops, "app", seq, ts=1000, acked=acked)


def test_acked_drops_the_answered_results_and_their_copies_are_stale():
    m = machines()
    table = m.sessions
    for seq in (1, 2, 3):
        assert m.apply_command(seq, 1, put(m, f"k{seq}", seq)).outcome == EXECUTED
    assert m.apply_command(4, 1, batch(m, 4)).outcome == EXECUTED
    assert table.results_total == 3 + 10              # a batch weighs its operations
    late = put(m, "k2", 2)                            # a copy still in some log
    assert m.apply_command(5, 1, late).outcome == DUPLICATE
    carrier = put(m, "k5", 5, acked=4)
    assert decode_command(carrier)["acked"] == 4
    assert m.apply_command(6, 1, carrier).outcome == EXECUTED
    assert table.results_total == 1                   # only the carrier's own result
    assert m.apply_command(7, 1, late).outcome == STALE
    assert m.machines["kv"].get("k2")["version"] == 1
    assert m.apply_command(8, 1, batch(m, 4)).outcome == STALE
    assert m.apply_command(9, 1, put(m, "k5", 5, acked=4)).outcome == DUPLICATE
    assert m.apply_command(10, 1, put(m, "k6", 6)).outcome == EXECUTED   # no acked: kept
    assert table.results_total == 2


def test_acked_is_ignored_when_it_is_not_below_the_sequence_or_not_an_integer():
    """The API refuses these; the table ignores them too, the same on every replica."""
    for bad in (5, 6, -1, 1.5, "3", None, True):
        table = SessionTable()
        for seq in (1, 2, 3, 4):
            table.record("app", seq, seq, 1, {"ok": seq})
        table.acknowledge("app", 5, bad)
        assert table.results_total == 4, bad
    table = SessionTable()
    table.acknowledge("nobody", 5, 3)                 # no session: nothing is created
    assert len(table) == 0


def test_acked_only_moves_forward_and_replicas_that_apply_the_same_log_agree():
    a, b = machines(), machines()
    log = [put(a, "x", 1), put(a, "y", 2), put(a, "z", 3, acked=2), put(a, "w", 4, acked=1),
           batch(a, 5, acked=3), put(a, "v", 6, acked=5)]
    for index, data in enumerate(log, 1):
        a.apply_command(index, 1, data)
        b.apply_command(index, 1, data)
    assert a.sessions.snapshot() == b.sessions.snapshot()
    assert a.sessions.results_total == 1
    restored = SessionTable()
    restored.restore(a.sessions.snapshot())
    assert restored.snapshot() == a.sessions.snapshot()
    assert restored.lookup("app", 5)[0] == SESSION_STALE
    assert restored.lookup("app", 6)[0] == SESSION_DUPLICATE


def test_answered_sequences_count_only_a_settled_prefix():
    seen = AnsweredSequences()
    for seq in (1, 2, 3, 4):
        seen.issued(seq)
    seen.settled(2)
    assert seen.through == 0                          # 1 is still open
    seen.settled(1)
    assert seen.through == 2
    seen.settled(4)
    assert seen.through == 2
    seen.settled(99)                                  # never issued: ignored
    seen.settled(3)
    assert seen.through == 4


def _finish(verdict: Verdict, status: int = 200) -> Finish:
    return Finish(verdict, Reply(status, {"status": "committed"}, None), "", 1, False)


def test_the_client_sends_acked_for_settled_writes_and_not_past_an_unknown_outcome():
    logic = _Logic(["http://127.0.0.1:1"], timeout=1.0, attempt_timeout=1.0,
                   client_id=None)
    first = logic.write_body({"key": "a"})
    assert first["sequence"] == 1 and "acked" not in first
    logic.outcome(_finish(Verdict.ANSWERED), first)
    second = logic.write_body({"key": "b"})
    assert second["acked"] == 1
    with pytest.raises(UnknownOutcome):
        logic.outcome(_finish(Verdict.UNKNOWN, 504), second)   # may resend: stays open
    third = logic.write_body({"key": "c"})
    assert third["acked"] == 1
    logic.outcome(_finish(Verdict.ANSWERED), third)
    own = logic.write_body({"key": "d", "client_id": "mine", "sequence": 9})
    assert "acked" not in own                         # a caller's own session is theirs
    logic.outcome(_finish(Verdict.ANSWERED), dict(second))     # the resend was answered
    assert logic.write_body({"key": "e"})["acked"] == 3


def test_an_unknown_outcome_is_given_up_once_far_behind():
    """A write that ended unknown stays open for a resend, but not for ever: once
    OPEN_SEQUENCES_MAX later writes were issued (the cluster dropped its result long
    before), ``acked`` passes it and nothing more is kept for it."""
    seen = AnsweredSequences()
    seen.issued(1)
    seen.unknown(1)                                   # its outcome unknown: left open
    for seq in range(2, OPEN_SEQUENCES_MAX + 1):
        seen.issued(seq)
        seen.settled(seq)
    assert seen.through == 0 and len(seen._settled) == OPEN_SEQUENCES_MAX - 1
    seen.issued(OPEN_SEQUENCES_MAX + 1)
    assert seen.through == OPEN_SEQUENCES_MAX and not seen._settled
    assert seen._open == {OPEN_SEQUENCES_MAX + 1}


def test_a_fixed_client_id_starts_its_sequences_at_the_wall_clock():
    """A random id starts at 1; an id the caller fixes (a token may require one) starts at
    the wall clock in microseconds, so a client restarted with it is above every sequence
    its earlier run used; ``acked`` names the sequence before the first, so the cluster
    drops that run's results at once."""
    assert first_sequence(None) == first_sequence("app-*") == 1
    assert first_sequence("app-1", wall_ns=lambda: 1_700_000_000_123_456_789) == \
        1_700_000_000_123_456
    logic = _Logic(["http://127.0.0.1:1"], timeout=1.0, attempt_timeout=1.0,
                   client_id="app-1")
    body = logic.write_body({"key": "a"})
    assert body["sequence"] > 1_700_000_000_000_000 and body["acked"] == body["sequence"] - 1


def test_a_restarted_client_with_a_fixed_id_is_not_answered_its_earlier_run():
    """Run 1 of a client with a fixed id writes "blue"; run 2 (a restart, within the
    session idle time) writes "green" with the same id.  Starting again at sequence 1, run
    2 was answered run 1's result and "green" was never applied (found by a review)."""
    m = machines()
    index = 0
    for value in ("blue", "green"):
        logic = _Logic(["http://127.0.0.1:1"], timeout=1.0, attempt_timeout=1.0,
                       client_id="app-1")
        body = logic.write_body({"op": "put", "key": "config/mode", "value": value})
        index += 1
        data = m.encode_write("kv", {"op": "put", "key": "config/mode", "value": value},
                              body["client_id"], body["sequence"], ts=1000,
                              acked=body.get("acked"))
        assert m.apply_command(index, 1, data).outcome == EXECUTED
    assert m.machines["kv"].get("config/mode")["value"] == "green"


def test_the_node_that_encoded_a_batch_applies_its_acked_like_every_other_replica():
    """The encoding node applies its own cached map of a batch; that map must carry
    ``acked`` too (it once did not: the leader kept results its followers dropped)."""
    leader, follower = machines(), machines()
    log = [put(leader, "x", 1), batch(leader, 2), batch(leader, 3, acked=2)]
    for index, data in enumerate(log, 1):
        leader.apply_command(index, 1, data)
        follower.apply_command(index, 1, data)      # decoded: it encoded nothing
    assert leader.sessions.snapshot() == follower.sessions.snapshot()
    assert leader.sessions.results_total == 10         # only the last batch's results



def test_writes_still_in_flight_are_never_given_up():
    """put_many issues every batch's sequence before it sends one: more than
    OPEN_SEQUENCES_MAX batches in flight must not move ``acked`` past batches not yet
    answered (the first version did, and the server refused them 400: found by a
    review)."""
    seen = AnsweredSequences()
    for seq in range(1, OPEN_SEQUENCES_MAX + 100):
        seen.issued(seq)
    assert seen.through == 0
    seen.settled(1)
    assert seen.through == 1
