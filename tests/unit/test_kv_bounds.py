"""kv version 4: what one command's reads may cost (txn gets and ranges share one result
budget, across every transaction of a batch; reads past it read nothing), the lease id
counter across a snapshot, and JSON equality in cas and value compares."""

from __future__ import annotations

import json

import cbor2
import pytest
from hypothesis import given, settings, strategies as st

import statemachines.kv as kvmod
from paxoslog.node.machines import StateMachines
from paxoslog.node.sessions import SessionTable
from statemachines.kv import TXN_RESULT_BYTES_MAX, KVStateMachine
import statemachines.txn as txnmod

BIG = "x" * (1000 << 10)             # 1000 KB: four fit in the budget, not five
GETS = {"op": "txn", "success": [{"op": "get", "key": "big"}] * 128}


def _machines() -> StateMachines:
    return StateMachines({"kv": KVStateMachine()}, SessionTable(),
                         lambda name: KVStateMachine(), True)


def _value_bytes(results: list) -> int:
    """Bytes of the values a list of txn results carries (JSON, as counted)."""
    return sum(len(json.dumps(r["kv"]["value"])) for r in results
               if r["op"] == "get" and r["kv"] and "value" in r["kv"])


def test_a_txn_of_128_gets_of_one_big_value_is_bounded_by_the_budget():
    """128 gets of one 1000 KB value gave a 131 MB result (a 2 KB request), kept in the
    session table and every snapshot.  The gets count against TXN_RESULT_BYTES_MAX: the
    first four come back whole; the first that does not fit, and every get after it,
    answer the key's metadata without its value, marked truncated."""
    kv = KVStateMachine()
    kv.apply(1, kv.validate({"op": "put", "key": "big", "value": BIG}))
    result = kv.apply(2, kv.validate(GETS))
    assert result["succeeded"] is True and len(result["results"]) == 128
    whole = result["results"][:4]
    assert all(r == {"op": "get", "kv": kv.get("big")} for r in whole)
    meta = {"key": "big", "create_index": 1, "mod_index": 1, "version": 1}
    assert all(r == {"op": "get", "kv": meta, "truncated": True}
               for r in result["results"][4:])
    size = len(json.dumps(result, separators=(",", ":")))
    assert size < TXN_RESULT_BYTES_MAX + 128 * 200, size
    assert len(cbor2.dumps(result)) < TXN_RESULT_BYTES_MAX + 128 * 200


def test_a_batch_of_such_txns_is_bounded_as_a_whole_and_a_single_command_starts_afresh():
    """Ten of those transactions in one batch command (a 21 KB request) gave ten times
    the budget.  The batch's ops share it: four values in all, in the first transaction;
    the session table keeps a bounded result.  A single command applied next, in the same
    log entry, has the whole budget again; so does the next entry."""
    m = _machines()
    m.apply_command(1, 1, m.encode_write("kv", {"op": "put", "key": "big", "value": BIG},
                                         "c", 1, 1000))
    batch = m.encode_batch_write([("kv", dict(GETS), None)] * 10, "c", 2, 1001)
    assert len(batch) < 32 << 10
    applied = m.apply_command(2, 1, batch)
    txns = applied.result["results"]
    assert len(txns) == 10 and all(t["succeeded"] for t in txns)
    assert [_value_bytes(t["results"]) > 0 for t in txns] == [True] + [False] * 9
    assert sum(_value_bytes(t["results"]) for t in txns) <= TXN_RESULT_BYTES_MAX
    assert all(r.get("truncated") for t in txns[1:] for r in t["results"])
    kept = len(cbor2.dumps(m.sessions.snapshot()))
    assert kept < TXN_RESULT_BYTES_MAX + 10 * 128 * 100, kept
    single = m.apply_command(2, 1, m.encode_write("kv", dict(GETS), "d", 1, 1002))
    assert _value_bytes(single.result["results"]) == 4 * len(json.dumps(BIG))
    later = m.apply_command(3, 1, m.encode_batch_write([("kv", dict(GETS), None)], "c", 3, 1003))
    assert _value_bytes(later.result["results"][0]["results"]) == 4 * len(json.dumps(BIG))
    # A batch after a single command in the same entry has the whole budget too (the node
    # tells kv where each command begins).
    after = m.apply_command(3, 1, m.encode_batch_write([("kv", dict(GETS), None)], "e", 1, 1004))
    assert _value_bytes(after.result["results"][0]["results"]) == 4 * len(json.dumps(BIG))


def test_reads_after_a_cut_read_nothing_and_an_empty_range_says_no_more():
    """Once a read did not fit, the later reads of the command are cut too (even small
    ones), without reading a record; a range over a prefix with no key answers more:
    false; a get of an absent key answers null, budget or not."""
    kv = KVStateMachine()
    kv.apply(1, {"op": "put", "key": "big", "value": "y" * (TXN_RESULT_BYTES_MAX - 200)})
    kv.apply(2, {"op": "put", "key": "small", "value": 1})
    result = kv.apply(3, kv.validate({"op": "txn", "success": [
        {"op": "get", "key": "big"}, {"op": "get", "key": "big"}, {"op": "get", "key": "small"},
        {"op": "range", "prefix": "s"}, {"op": "range", "prefix": "none/"},
        {"op": "get", "key": "absent"}]}))["results"]
    assert result[0]["kv"]["value"] == "y" * (TXN_RESULT_BYTES_MAX - 200)
    assert result[1]["truncated"] and "value" not in result[1]["kv"]
    assert result[2] == {"op": "get", "kv": {"key": "small", "create_index": 2,
                                             "mod_index": 2, "version": 1},
                         "truncated": True}
    assert result[3] == {"op": "range", "kvs": [], "more": True}
    assert result[4] == {"op": "range", "kvs": [], "more": False}
    assert result[5] == {"op": "get", "kv": None}


class _Counting:
    """Counts what the kv module encodes and reads while a transaction applies."""

    def __init__(self, monkeypatch, kv: KVStateMachine) -> None:
        self.gets = 0
        self.encoded = 0
        get = kv.get

        def counted_get(key):
            self.gets += 1
            return get(key)
        monkeypatch.setattr(kv, "get", counted_get)
        for name in ("_dumps", "_escape"):
            original = getattr(kvmod, name, None)
            if original is not None:
                monkeypatch.setattr(kvmod, name, self._wrap(original))
        proxy = type("json", (), {"dumps": staticmethod(self._wrap(json.dumps))})
        monkeypatch.setattr(kvmod, "json", proxy)      # the module's own json.dumps

    def _wrap(self, encode):
        def counted(*args, **kwargs):
            out = encode(*args, **kwargs)
            self.encoded += len(out)
            return out
        return counted


def test_ranges_after_the_budget_is_spent_read_and_encode_no_record(monkeypatch):
    """128 ranges over 900 KB values: each range after the budget was used up read and
    encoded its first record (0.32 s a transaction on every replica).  Now the first
    range reads what fits and the one record that does not; the other 127 read nothing,
    and what is encoded stays within the budget and one piece of the record cut."""
    kv = KVStateMachine()
    for i in range(6):
        kv.apply(i + 1, {"op": "put", "key": f"r{i}", "value": "y" * (900 << 10)})
    command = kv.validate({"op": "txn", "success": [{"op": "range", "prefix": "r",
                                                     "limit": 1000}] * 128})
    count = _Counting(monkeypatch, kv)
    results = kv.apply(10, command)["results"]
    assert [len(r["kvs"]) for r in results[:2]] == [4, 0]
    assert results[0]["more"] and results[0]["cursor"] == "r3"
    assert all(r == {"op": "range", "kvs": [], "more": True} for r in results[1:])
    assert count.gets == 5, count.gets
    assert count.encoded <= TXN_RESULT_BYTES_MAX, count.encoded


def test_a_value_that_does_not_fit_is_not_encoded_whole(monkeypatch):
    """A string whose length fits but whose escaped JSON does not ("é" is 6 bytes
    escaped) is measured a piece at a time, stopping past the budget; a value longer than
    the budget is not encoded at all."""
    kv = KVStateMachine()
    kv.apply(1, {"op": "put", "key": "wide", "value": "é" * (1 << 20)})     # 6 MiB escaped
    kv.apply(2, {"op": "put", "key": "long", "value": "z" * (5 << 20)})
    kv.apply(3, {"op": "put", "key": "nested", "value": [["z" * (5 << 20)]]})
    for key in ("wide", "long", "nested"):
        count = _Counting(monkeypatch, kv)
        result = kv.apply(10, kv.validate({"op": "txn",
                                            "success": [{"op": "get", "key": key}] * 64}))
        assert all(r["truncated"] for r in result["results"])
        assert count.encoded <= TXN_RESULT_BYTES_MAX + (1 << 16) * 6, (key, count.encoded)
        monkeypatch.undo()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**20, 10**20)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=40),
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.text(max_size=8) | st.integers(-5, 5), children, max_size=5),
    max_leaves=30)


@settings(max_examples=400, deadline=None)
@given(value=json_values, key=st.text(min_size=1, max_size=10), limit=st.integers(0, 400))
def test_a_records_weight_is_its_json_size_or_says_it_is_over(value, key, limit):
    """The measured weight is exactly the record's compact ASCII JSON plus one when that
    fits ``limit``, and above ``limit`` otherwise (what the result budget relies on)."""
    record = {"key": key, "value": value, "create_index": 3, "mod_index": 4, "version": 2}
    exact = len(json.dumps(record, separators=(",", ":"))) + 1
    weight = kvmod._record_weight(record, limit)
    if exact <= limit:
        assert weight == exact
    else:
        assert weight > limit
    assert kvmod._record_weight(record, 1 << 40) == exact


@pytest.mark.parametrize("value", [
    "é" * 70_000, ["😀" * 100, {"k" * 80: "\n" * 65_537}], [1.5, -0.0, 10**30, None, True],
    {"a": [[["z" * 70_000]]], 3: "x"}, "",
])
def test_the_weight_is_exact_at_the_edge_for_long_and_wide_strings(value):
    record = {"key": "é", "value": value, "create_index": 1, "mod_index": 2, "version": 3}
    exact = len(json.dumps(record, separators=(",", ":"))) + 1
    for limit in (exact - 1, exact, exact + 1, exact // 2, 0):
        weight = kvmod._record_weight(record, limit)
        assert weight == exact if exact <= limit else weight > limit, (limit, weight)


def test_a_snapshot_keeps_the_last_lease_id_after_every_lease_is_gone():
    """Five grants in one entry (ids 10..14), all revoked, no promote: the snapshot left
    out the lease table, so a restored replica gave id 12 where the others gave 15."""
    kv = KVStateMachine()
    ids = [kv.apply(10, {"op": "lease_grant", "ttl_ms": 1000})["id"] for _ in range(5)]
    assert ids == [10, 11, 12, 13, 14]
    for lease in ids:
        kv.apply(11, {"op": "lease_revoke", "id": lease})
    assert len(kv.leases) == 0 and kv.leases.promoted_term == 0
    data = kv.snapshot()
    assert b"".join(kv.snapshot_chunks_copy()()) == data
    copy = KVStateMachine()
    copy.restore_chunks(kv.snapshot_chunks_copy()())
    assert copy.leases.last_id == kv.leases.last_id == 14
    assert copy.snapshot() == data
    grant = {"op": "lease_grant", "ttl_ms": 1000}
    assert kv.apply(12, dict(grant)) == copy.apply(12, dict(grant)) == {
        "op": "lease_grant", "id": 15, "ttl_ms": 1000}
    checker = kv.snapshot_checker()
    checker.feed(data)
    checker.close()


def test_old_snapshots_still_load():
    """A store that never granted writes no trailer; a trailer without last_id (before
    it was written) gives the highest live lease id."""
    plain = KVStateMachine()
    plain.apply(1, {"op": "put", "key": "a", "value": 1})
    assert cbor2.loads(plain.snapshot()) == [["a", 1, 1, 1, 1]]
    old = cbor2.dumps([["a", 1, 1, 1, 1, 7], [None, [3, [[7, 1000]]]]])
    kv = KVStateMachine()
    kv.restore(old)
    assert kv.leases.last_id == 7 and kv.leases.promoted_term == 3
    assert kv.apply(5, {"op": "lease_grant", "ttl_ms": 1000})["id"] == 8


def test_cas_does_not_take_true_for_1_or_false_for_0():
    kv = KVStateMachine()
    kv.apply(1, kv.validate({"op": "put", "key": "flag", "value": True}))
    failed = kv.apply(2, kv.validate({"op": "cas", "key": "flag", "value": "changed",
                                      "expected": 1}))
    assert failed["succeeded"] is False and kv.get("flag")["value"] is True
    kv.apply(3, kv.validate({"op": "put", "key": "n", "value": 0}))
    assert kv.apply(4, kv.validate({"op": "cas", "key": "n", "value": 5,
                                    "expected": False}))["succeeded"] is False
    assert kv.apply(5, kv.validate({"op": "cas", "key": "flag", "value": "changed",
                                    "expected": True}))["succeeded"] is True
    kv.apply(6, kv.validate({"op": "put", "key": "f", "value": 1.0}))
    assert kv.apply(7, kv.validate({"op": "cas", "key": "f", "value": 2,
                                    "expected": 1}))["succeeded"] is True


def _compare(kv: KVStateMachine, index: int, want, cmp: str = "==") -> bool:
    return kv.apply(index, kv.validate({
        "op": "txn", "compare": [{"key": "n", "target": "value", "cmp": cmp, "value": want}],
        "success": [], "failure": []}))["succeeded"]


def test_value_compares_are_type_strict_at_every_depth():
    kv = KVStateMachine()
    kv.apply(1, kv.validate({"op": "put", "key": "n", "value": [0, {"a": 1.0, "b": "1"}]}))
    assert _compare(kv, 2, [False, {"a": True, "b": "1"}]) is False
    assert _compare(kv, 3, [0, {"a": True, "b": "1"}]) is False
    assert _compare(kv, 4, [0, {"a": 1, "b": 1}]) is False
    assert _compare(kv, 5, [False, {"a": 1, "b": "1"}], "!=") is True
    assert _compare(kv, 6, [0, {"b": "1", "a": 1}]) is True           # 1 == 1.0
    assert _compare(kv, 7, [0, {"b": "1", "a": 1}], "!=") is False
    assert _compare(kv, 8, [0, {"a": 1.0}]) is False


@pytest.mark.parametrize("a, b, equal", [
    (True, 1, False), (False, 0, False), (1, 1.0, True), (0, -0.0, True),
    ([1, [True]], [1, [1]], False), ({"a": [False]}, {"a": [False]}, True),
    ({1: "x"}, {True: "x"}, False), ({1: "x"}, {1: "x"}, True), ("1", 1, False),
    (None, None, True), ([None], [False], False), ([], {}, False), ([1, 2], (1, 2), True),
    (float("nan"), float("nan"), False), (10**20, 10**20 + 1, False),
])
def test_json_equal(a, b, equal):
    assert txnmod.json_equal(a, b) is equal and txnmod.json_equal(b, a) is equal
