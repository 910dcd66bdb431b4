"""Batches and kv changes in the node layer: one batch command applied as one unit at one
log index (each operation with its own result, a failed cas undoing nothing), exactly once
for the batch and for operations with sessions of their own, session weights, and the kv
changes every apply reports (what the watch streams are made of)."""

from __future__ import annotations

import json

import cbor2
import pytest

from paxoslog.node.commands import decode_command
from paxoslog.node.instructions import DUPLICATE, EXECUTED, Applied, Reply
from paxoslog.node.machines import QueryFailed, StateMachines
from paxoslog.node.sessions import SessionTable, result_weight
from statemachines import BadCommand
from statemachines.counter import CounterStateMachine
from statemachines.kv import KVStateMachine

from test_driver import PROTOCOLS, kinds, leader, settle


def machines(sessions: SessionTable | None = None) -> StateMachines:
    def create(name):
        return KVStateMachine() if name == "kv" else CounterStateMachine()
    return StateMachines({"kv": KVStateMachine(), "counter": CounterStateMachine()},
                         SessionTable() if sessions is None else sessions, create,
                         record_terms=True)


def batch(m: StateMachines, ops, client="c", seq=1) -> bytes:
    return m.encode_batch_write([(sm, fields, key) for sm, fields, key in ops], client, seq,
                                ts=1000)


def kv(op, key, value=None, **extra):
    fields = {"op": op, "key": key, **extra}
    if value is not None:
        fields["value"] = value
    return ("kv", fields, None)


def test_kv_reports_each_change_with_the_previous_record():
    """put, put again, failed cas, cas, delete, delete of an absent key: the changes name
    the new and the previous record, and nothing for the operations that changed nothing."""
    sm = KVStateMachine()
    r1, c1 = sm.apply_with_changes(5, {"op": "put", "key": "a", "value": 1})
    assert c1 == (("a", (1, 5, 5, 1), None),) and r1["created"]
    r2, c2 = sm.apply_with_changes(6, {"op": "put", "key": "a", "value": 2})
    assert c2 == (("a", (2, 5, 6, 2), (1, 5, 5, 1)),)
    r3, c3 = sm.apply_with_changes(7, {"op": "cas", "key": "a", "value": 3, "expected": 9})
    assert c3 == () and r3 == {"op": "cas", "succeeded": False, "current_version": 2,
                               "current_mod_index": 6}
    r4, c4 = sm.apply_with_changes(8, {"op": "cas", "key": "a", "value": 3,
                                       "expected_version": 2})
    assert c4 == (("a", (3, 5, 8, 3), (2, 5, 6, 2)),) and r4["succeeded"] and r4["op"] == "cas"
    r5, c5 = sm.apply_with_changes(9, {"op": "delete", "key": "a"})
    assert c5 == (("a", None, (3, 5, 8, 3)),) and r5 == {"op": "delete", "deleted": True,
                                                           "version": 3}
    assert sm.apply_with_changes(10, {"op": "delete", "key": "a"}) == (
        {"op": "delete", "deleted": False}, ())
    assert sm.apply(11, {"op": "put", "key": "b", "value": 1})["mod_index"] == 11


def test_a_batch_applies_every_operation_in_order_at_one_index():
    """Results in order; a failed cas in the middle undoes nothing; later operations see
    earlier ones (same index); the changes list every key change in order."""
    m = machines()
    data = batch(m, [kv("put", "a", 1), kv("cas", "a", 5, expected=0),
                     kv("cas", "a", 2, expected=1), ("counter", {"op": "add", "name": "n",
                                                                 "delta": 4}, None),
                     kv("delete", "a"), kv("put", "b", "x")])
    out = m.apply_command(7, 2, data)
    assert out.outcome == EXECUTED and out.sm is None and out.key == ("c", 1)
    results = out.result["results"]
    assert out.result["op"] == "batch" and len(results) == 6
    assert results[0]["mod_index"] == 7 and results[1]["succeeded"] is False
    assert results[2]["succeeded"] is True and results[2]["version"] == 2
    assert results[3] == {"name": "n", "value": 4}
    assert results[4] == {"op": "delete", "deleted": True, "version": 2}
    assert [(k, new, old) for k, new, old in out.changes] == [
        ("a", (1, 7, 7, 1), None), ("a", (2, 7, 7, 2), (1, 7, 7, 1)),
        ("a", None, (2, 7, 7, 2)), ("b", ("x", 7, 7, 1), None)]
    assert m.kv.get("a") is None and m.kv.get("b")["value"] == "x"


def test_a_retried_batch_is_answered_from_the_session_table_not_applied_again():
    """The same (client_id, sequence) in the log twice: the second copy is a DUPLICATE
    with the first results and index, and changes nothing."""
    m = machines()
    data = batch(m, [kv("put", "a", 1), kv("put", "a", 2)])
    first = m.apply_command(3, 1, data)
    again = m.apply_command(9, 1, data)
    assert again.outcome == DUPLICATE and again.index == 3 and again.changes == ()
    assert again.result == first.result and m.kv.get("a")["version"] == 2


def test_operations_with_their_own_sessions_are_deduplicated_one_by_one():
    """Two batches (the WebSocket channel's packing) that share one sessioned operation:
    it runs once; its copy in the second batch gets the first result."""
    m = machines()
    op = ("kv", {"op": "put", "key": "a", "value": 1}, ("w", 5))
    first = m.apply_command(3, 1, batch(m, [op, kv("put", "b", 1)], client="s", seq=1))
    second = m.apply_command(4, 1, batch(m, [op, kv("put", "b", 2)], client="s", seq=2))
    assert second.result["results"][0] == first.result["results"][0]
    assert m.kv.get("a")["version"] == 1 and m.kv.get("b")["version"] == 2
    assert [c[0] for c in second.changes] == ["b"]
    assert m.sessions.lookup("w", 5)[0] != 0        # recorded on its own


def test_a_stale_operation_in_a_batch_is_refused_and_the_others_apply():
    """An operation whose sequence fell below its session's floor gets stale_sequence."""
    m = machines(SessionTable(results_max=1))
    m.apply_command(1, 1, batch(m, [("kv", {"op": "put", "key": "a", "value": 1}, ("w", 5)),
                                    ("kv", {"op": "put", "key": "a", "value": 2}, ("w", 6))]))
    out = m.apply_command(2, 1, batch(
        m, [("kv", {"op": "put", "key": "a", "value": 9}, ("w", 5)), kv("put", "b", 1)],
        seq=2))
    assert out.result["results"][0]["error"] == "stale_sequence"
    assert m.kv.get("a")["value"] == 2 and m.kv.get("b")["value"] == 1


def test_a_batch_is_validated_as_a_whole_before_it_is_encoded():
    """One bad operation refuses the batch with an error naming its position."""
    m = machines()
    with pytest.raises(BadCommand, match=r"ops\[1\]: .*value"):
        batch(m, [kv("put", "a", 1), ("kv", {"op": "put", "key": "b"}, None)])
    with pytest.raises(BadCommand, match=r"ops\[0\]: unknown state machine"):
        batch(m, [("nope", {"op": "x"}, None)])
    command = decode_command(batch(m, [kv("put", "a", 1)]))
    m.validate_logged(command)
    command["batch"][0]["op"] = "explode"
    with pytest.raises(BadCommand, match=r"ops\[0\]"):
        m.validate_logged(command)


def test_batch_results_weigh_as_many_results_as_operations():
    """The session table's total bound counts a batch by its operations, on record and
    after a restore alike, and evicts whole sessions by that weight."""
    table = SessionTable(sessions_max=100, results_max=8, results_total_max=10)
    table.record("a", 1, 1, 0, {"op": "batch", "results": [{}] * 6})
    assert table.results_total == 6 and result_weight({"op": "put"}) == 1
    table.record("a", 2, 2, 0, {"op": "put"})
    assert table.results_total == 7
    restored = SessionTable(sessions_max=100, results_max=8, results_total_max=10)
    restored.restore(table.snapshot())
    assert restored.results_total == 7
    table.record("b", 1, 3, 0, {"op": "batch", "results": [{}] * 5})    # 12 > 10: evict "a"
    assert table.lookup("a", 1)[0] == 0 and table.results_total == 5


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_batch_through_the_driver_is_one_command_answered_with_all_results(protocol):
    """submit_write of a batch: one log command, one Applied with its changes, one Reply
    carrying every operation's result."""
    d = leader(protocol)
    data = batch(d.machines, [kv("put", "a", 1), kv("put", "b", 2), kv("delete", "zz")])
    assert d.submit_write("H", ("c", 1), data) == []
    out = settle(d)
    applied = [op for op in out if type(op) is Applied and op.outcomes]
    replies = [op for op in out if type(op) is Reply]
    assert len(applied) == 1 and len(applied[0].outcomes) == 1
    outcome = applied[0].outcomes[0]
    assert [c[0] for c in outcome.changes] == ["a", "b"]
    assert kinds(out).index("Applied") < kinds(out).index("Reply")
    assert len(replies) == 1 and replies[0].status == 200
    body = replies[0].body
    assert body["index"] == outcome.index and len(body["result"]["results"]) == 3
    assert body["result"]["results"][2] == {"op": "delete", "deleted": False}


def test_a_forwarded_batch_is_validated_on_the_leader():
    """A batch forwarded by a peer is checked operation by operation like a single write;
    a bad one is answered 400 and never proposed."""
    d = leader("raft")
    good = batch(d.machines, [kv("put", "a", 1)])
    assert d.submit_forwarded_write("F", good) == []
    command = decode_command(good)
    command["batch"].append({"sm": "membership", "op": "add"})
    out = d.submit_forwarded_write("G", cbor2.dumps(command))
    assert out[0].status == 400 and "ops[1]" in out[0].body["message"]


@pytest.mark.parametrize("fields", [
    {"op": "txn", "compare": [{"key": "a", "target": "version", "cmp": ">=", "value": 0}],
     "success": [{"op": "put", "key": "a", "value": 1}]},
    {"op": "lease_grant", "ttl_ms": 60_000},
    {"op": "put", "key": "a", "value": 1}], ids=["txn", "lease_grant", "put"])
def test_a_forwarded_write_carrying_the_nodes_session_release_is_accepted(fields):
    """A follower encodes a client's write with the node's finished sessions (``release``)
    and forwards the bytes; the leader checks them like a client's write and must not
    take ``release`` for a field of the state machine (txn and lease ops refuse unknown
    fields: a txn through a follower failed with 400 whenever a release rode along, about
    one in ten under tools/bench_coord.py)."""
    d = leader("raft")
    data = d.machines.encode_write("kv", fields, "node2-ab", 7, 1000, release=[["node2-aa", 3]])
    assert decode_command(data)["release"] == [["node2-aa", 3]]
    d.machines.validate_logged(decode_command(data))
    assert d.submit_forwarded_write("F", data) == []
    replies = [op for op in settle(d) if type(op) is Reply]
    assert [(op.handle, op.status) for op in replies] == [("F", 200)]
    assert "error" not in replies[0].body["result"]


def test_a_batch_applied_from_the_encoding_node_equals_one_decoded_elsewhere():
    """The node that encoded a batch applies its own command objects (no second decode);
    another node decodes the bytes: same results, changes and state."""
    here, there = machines(), machines()
    data = batch(here, [kv("put", "a", {"x": [1, 2.5, None]}), kv("cas", "a", 2, expected=1),
                        kv("delete", "a"), kv("put", "b", "y")])
    mine = here.apply_command(4, 1, data)
    theirs = there.apply_command(4, 1, bytes(data))
    assert not here._encoded and (mine.result, mine.changes) == (theirs.result, theirs.changes)
    assert here.kv.snapshot() == there.kv.snapshot()


@pytest.mark.parametrize("fields", [
    {"op": "put", "key": "a", "value": {"x": [1, 2.5, None, True, "é"], "y": {}}},
    {"op": "txn", "compare": [{"key": "a", "target": "version", "cmp": ">=", "value": 0}],
     "success": [{"op": "put", "key": "t", "value": [1]}], "failure": []},
    {"op": "lease_grant", "ttl_ms": 60_000}], ids=["put", "txn", "lease_grant"])
def test_a_command_applied_from_the_encoding_node_equals_one_decoded_elsewhere(fields):
    """A single command too: the node that encoded it applies the map it encoded (no
    decode), with the session fields (release, acked); another node decodes the bytes:
    the same command, result, changes, state and session table."""
    here, there = machines(), machines()
    data = here.encode_write("kv", fields, "c", 3, 1000, release=[["n-0", 9]], acked=2)
    assert id(data) in here._encoded
    assert _same(here._encoded[id(data)][1], decode_command(data))
    mine = here.apply_command(4, 1, data)
    theirs = there.apply_command(4, 1, bytes(data))
    assert not here._encoded
    assert _same(mine.command, theirs.command)
    assert (mine.result, mine.changes, mine.outcome) == (theirs.result, theirs.changes,
                                                         theirs.outcome)
    assert here.kv.snapshot() == there.kv.snapshot()
    assert list(here.sessions.snapshot_producer()()) == list(there.sessions.snapshot_producer()())


@pytest.mark.parametrize("op", [{"op": "lease_promote", "term": 1 << 40},
                                {"op": "lease_expire", "ids": [5], "term": 1 << 40}])
def test_a_batch_cannot_carry_the_lease_keepers_internal_ops(op):
    """Only the leader's lease keeper proposes lease_promote/lease_expire: a client's batch
    naming them is refused as a whole before anything is proposed."""
    m = machines()
    with pytest.raises(BadCommand, match="internal"):
        batch(m, [kv("put", "a", 1), ("kv", op, None)])


def test_lease_ends_transactions_and_delete_range_report_every_key_they_change():
    """What watchers see: a transaction's puts and deletes, a delete_range's deletes and the
    keys a revoked lease takes with it, in order, each with the previous record."""
    sm = KVStateMachine()
    lease = sm.apply(1, {"op": "lease_grant", "ttl_ms": 1000})["id"]
    sm.apply(2, {"op": "put", "key": "l/b", "value": 1, "lease": lease})
    sm.apply(3, {"op": "put", "key": "l/a", "value": 2, "lease": lease})
    result, changes = sm.apply_with_changes(4, {"op": "lease_revoke", "id": lease})
    assert result["deleted"] == 2
    assert changes == (("l/a", None, (2, 3, 3, 1)), ("l/b", None, (1, 2, 2, 1)))
    txn = sm.validate({"op": "txn", "compare": [],
                       "success": [{"op": "put", "key": "t", "value": 1},
                                   {"op": "delete", "key": "t"}]})
    _, changes = sm.apply_with_changes(5, txn)
    assert changes == (("t", (1, 5, 5, 1), None), ("t", None, (1, 5, 5, 1)))
    for index, key in ((6, "p/1"), (7, "p/2")):
        sm.apply(index, {"op": "put", "key": key, "value": index})
    result, changes = sm.apply_with_changes(8, sm.validate({"op": "delete_range",
                                                            "prefix": "p/"}))
    assert result["deleted"] == 2
    assert changes == (("p/1", None, (6, 6, 6, 1)), ("p/2", None, (7, 7, 7, 1)))


def test_encoded_batches_never_applied_here_are_bounded_by_bytes():
    """Batches this node encoded but never applied (duplicates, retries, a lost leadership)
    are forgotten oldest first once their bytes pass the bound, not kept by the thousand."""
    from paxoslog.node import machines as machines_module
    here = machines()
    value = "v" * 100_000
    datas = [batch(here, [kv("put", f"k{i}", value)], seq=i + 1) for i in range(400)]
    assert here._encoded_bytes <= machines_module._ENCODED_BYTES_MAX
    assert len(here._encoded) < 400 and id(datas[-1]) in here._encoded
    assert here._encoded_bytes == sum(len(d) for d, _ in here._encoded.values())
    assert id(datas[0]) not in here._encoded
    here.apply_command(5, 1, datas[0])                 # pushed out: decoded again
    assert here.kv.query({"key": "k0"})["value"] == value
    here.apply_command(6, 1, datas[-1])                # still cached: applied from it
    assert id(datas[-1]) not in here._encoded
    assert here.kv.query({"key": "k399"})["value"] == value
    assert here._encoded_bytes == sum(len(d) for d, _ in here._encoded.values())


def _same(a, b) -> bool:
    """Equal and of the same types all the way down (1 == 1.0 and [1] == (1,) are not)."""
    if type(a) is not type(b):
        return False
    if type(a) is dict:
        return list(a) == list(b) and all(_same(k, j) and _same(a[k], b[j])
                                          for k, j in zip(a, b))
    if type(a) is list:
        return len(a) == len(b) and all(map(_same, a, b))
    return a == b


_KV_COMMANDS = [
    {"op": "put", "key": "a", "value": {"x": [1, 2.5, None, True, "é"], "y": {}}},
    {"op": "put", "key": "b", "value": "v", "lease": 7},
    {"op": "cas", "key": "a", "value": 3, "expected": {"x": [1]}},
    {"op": "cas", "key": "a", "value": 3, "expected_version": 2},
    {"op": "delete", "key": "a"},
    {"op": "delete_range", "prefix": "p/"},
    {"op": "txn", "compare": [{"key": "a", "target": "version", "cmp": ">=", "value": 0},
                              {"key": "b", "target": "value", "cmp": "==", "value": [1, {}]}],
     "success": [{"op": "put", "key": "t", "value": [1]}, {"op": "delete", "key": "u"}],
     "failure": [{"op": "get", "key": "a"}, {"op": "range", "prefix": "q/"}]},
    {"op": "lease_grant", "ttl_ms": 60_000},
    {"op": "lease_revoke", "id": 7},
]


@pytest.mark.parametrize("name,fields", [("kv", c) for c in _KV_COMMANDS] + [
    ("counter", {"op": "add", "name": "n", "delta": 5}),
    ("counter", {"op": "reset", "name": "n"})])
def test_state_machines_with_plain_commands_validate_to_what_cbor_gives_back(name, fields):
    """kv and counter declare ``plain_commands``: the node that encodes a batch applies the
    validated maps as they are, every other node what the bytes decode to.  They must be
    the same values of the same types."""
    m = machines()
    assert getattr(m.get(name), "plain_commands", False)
    validated = m.validate(dict(fields, sm=name))
    assert _same(cbor2.loads(cbor2.dumps(validated)), validated)


class _TupleStateMachine:
    """A user's state machine whose validate normalizes to a tuple (not plain)."""
    name = "tuples"
    version = 1

    def __init__(self) -> None:
        self.seen: list = []

    def validate(self, command: dict) -> dict:
        return {"op": "add", "items": tuple(command.get("items", ()))}

    def apply(self, index: int, command: dict):
        self.seen.append(type(command["items"]).__name__)
        return {"kind": type(command["items"]).__name__}

    def query(self, request):
        return {"seen": self.seen}

    def snapshot(self) -> bytes:
        return cbor2.dumps(self.seen)

    def restore(self, data: bytes) -> None:
        self.seen = cbor2.loads(data) if data else []


def test_a_batch_of_a_state_machine_without_plain_commands_is_decoded_where_it_was_encoded():
    """Its validate gave a tuple, which every other node decodes as a list: the encoding
    node must apply what the bytes decode to as well, or its state would differ."""
    def with_tuples():
        return StateMachines({"kv": KVStateMachine(), "tuples": _TupleStateMachine()},
                             SessionTable(), lambda name: None, record_terms=True)
    here, there = with_tuples(), with_tuples()
    data = here.encode_batch_write([("tuples", {"items": [1, 2]}, None)], "c", 1, ts=1000)
    mine = here.apply_command(4, 1, data)
    theirs = there.apply_command(4, 1, bytes(data))
    assert mine.result == theirs.result == {"op": "batch", "results": [{"kind": "list"}]}
    assert here.get("tuples").seen == there.get("tuples").seen == ["list"]


def test_a_query_the_kv_store_fails_to_answer_is_a_500_not_a_dead_node():
    """A value no JSON encoder prints (a 5,000-digit integer; the API refuses it now, but an
    older store may hold one) made the prefix read's size estimate raise, and the node
    serving the read stopped.  Now that read is answered 500 and the failure reported."""
    failures = []
    m = StateMachines({"kv": KVStateMachine()}, SessionTable(), lambda name: None,
                      record_terms=True, on_failure=lambda *args: failures.append(args))
    m.kv.apply(1, {"op": "put", "key": "p/poison", "value": 10 ** 5000})
    with pytest.raises(QueryFailed) as failed:
        m.query({"prefix": "p/"})
    assert failed.value.status == 500 and failed.value.body["error"] == "query_failed"
    assert [(name, index, type(exc)) for name, index, exc in failures] == [
        ("kv", -1, ValueError)]


def test_a_transactions_ranges_share_one_result_budget():
    """128 ranges over 1 MB of values each built a 123 MB answer on every replica (an
    apply of seconds, an election).  Their results now share TXN_RESULT_BYTES_MAX: the
    ranges past it answer more: true, the first ones in full, and the node's own
    result_bytes_max (a per-node setting) plays no part in a replicated result."""
    from statemachines.kv import TXN_RESULT_BYTES_MAX
    sm = KVStateMachine(result_bytes_max=1024)
    value = "v" * 1000
    for i in range(1000):
        sm.apply(i + 1, {"op": "put", "key": f"p/{i:04d}", "value": value})
    txn = sm.validate({"op": "txn", "compare": [],
                       "success": [{"op": "range", "prefix": "p/", "limit": 1000}] * 8})
    result = sm.apply(2000, txn)
    ranges = result["results"]
    whole = [r for r in ranges if not r["more"]]
    assert len(whole) == 3 and ranges[:3] == whole          # about 1 MB each
    assert all(len(r["kvs"]) == 1000 for r in whole)
    total = sum(len(json.dumps(kv, separators=(",", ":"))) + 1
                for r in ranges for kv in r["kvs"])
    assert TXN_RESULT_BYTES_MAX - 1100 < total <= TXN_RESULT_BYTES_MAX
    cut = ranges[3]
    assert cut["more"] and 0 < len(cut["kvs"]) < 1000
    assert cut["cursor"] == cut["kvs"][-1]["key"]
    assert all(r["more"] and not r["kvs"] and "cursor" not in r for r in ranges[4:])


@pytest.mark.parametrize("op", [{"op": "lease_grant", "ttl_ms": 1000},
                                {"op": "lease_revoke", "id": 4}])
def test_lease_operations_are_refused_in_a_batch(op):
    """The leader's lease keeper follows grants applied as commands of their own: a lease
    granted inside a batch never expired, and keep-alive called it unknown (found by a
    review).  A batch refuses lease operations, when a client's batch is encoded and when
    a forwarded one is checked."""
    m = machines()
    with pytest.raises(BadCommand, match="ops\\[1\\].*not allowed in a batch"):
        m.encode_batch_write([("kv", {"op": "put", "key": "a", "value": 1}, None),
                              ("kv", op, None)], "c", 1, 1000)
    forwarded = {"batch": [{"op": "put", "key": "a", "value": 1}, op], "client_id": "c",
                 "sequence": 1, "ts": 1000}
    with pytest.raises(BadCommand, match="ops\\[1\\].*not allowed in a batch"):
        m.validate_logged(forwarded)
    m.validate_logged({"batch": [{"op": "put", "key": "a", "value": 1, "lease": 4}],
                       "client_id": "c", "sequence": 1, "ts": 1000})
