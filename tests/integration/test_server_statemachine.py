"""In-process checks (no processes, no network) of what every node applies: the kv state
machine and the replicated session table.  Both must be deterministic: the same commands
give the same results and the same snapshot bytes on every replica."""

from __future__ import annotations

import random

import pytest

from paxoslog.node.sessions import DUPLICATE, NEW, STALE, SessionTable
from statemachines import BadCommand, snapshot_producer
from statemachines.kv import KVStateMachine


def test_kv_put_versions_delete_and_cas():
    """put counts versions from creation; delete resets; cas compares value or version."""
    kv = KVStateMachine()
    assert kv.apply(1, {"op": "put", "key": "a", "value": 1}) == {
        "op": "put", "created": True, "version": 1, "create_index": 1, "mod_index": 1}
    assert kv.apply(2, {"op": "put", "key": "a", "value": 2})["version"] == 2
    assert kv.get("a") == {"key": "a", "value": 2, "create_index": 1, "mod_index": 2,
                           "version": 2}
    failed = kv.apply(3, {"op": "cas", "key": "a", "value": 9, "expected": 1})
    assert failed == {"op": "cas", "succeeded": False, "current_version": 2,
                      "current_mod_index": 2}
    ok = kv.apply(4, {"op": "cas", "key": "a", "value": 3, "expected_version": 2})
    assert ok["succeeded"] and ok["version"] == 3
    assert kv.apply(5, {"op": "delete", "key": "a"}) == {"op": "delete", "deleted": True,
                                                         "version": 3}
    assert kv.apply(6, {"op": "delete", "key": "a"})["deleted"] is False
    assert kv.apply(7, {"op": "cas", "key": "a", "value": 1, "expected": None})["succeeded"]
    assert kv.get("a")["create_index"] == 7 and kv.get("a")["version"] == 1


@pytest.mark.parametrize("command, words", [
    ({"op": "incr", "key": "a"}, '"op"'),
    ({"key": 5, "value": 1}, '"key" must be a string'),
    ({"key": "", "value": 1}, "must not be empty"),
    ({"key": "a"}, "non-null"),
    ({"key": "a", "value": None}, "non-null"),
    ({"op": "cas", "key": "a", "value": 1}, "exactly one"),
    ({"op": "cas", "key": "a", "value": 1, "expected": 1, "expected_version": 1}, "exactly one"),
    ({"op": "cas", "key": "a", "value": 1, "expected_version": "1"}, "non-negative"),
    ({"key": "k" * 5000, "value": 1}, "longer than"),
])
def test_kv_validation_refuses_bad_commands(command, words):
    """validate() names what is wrong; nothing invalid gets through."""
    with pytest.raises(BadCommand, match=words):
        KVStateMachine().validate(command)


def test_kv_validation_keeps_only_what_apply_reads():
    """The normalized command carries op/key/value/expected* only."""
    out = KVStateMachine().validate({"key": "k", "value": [1], "sm": "kv", "extra": 1})
    assert out == {"op": "put", "key": "k", "value": [1]}


def test_kv_prefix_query_and_snapshot_round_trip():
    """Prefix reads come in key order with a limit; a snapshot restores exactly, and the
    bytes are identical for identical histories."""
    a, b = KVStateMachine(), KVStateMachine()
    rng = random.Random(3)
    for index in range(1, 300):
        command = {"op": rng.choice(["put", "put", "delete"]), "key": f"k{rng.randrange(40)}",
                   "value": {"n": index}}
        assert a.apply(index, dict(command)) == b.apply(index, dict(command))
    data = a.snapshot()
    assert data == b.snapshot() == snapshot_producer(b)()
    c = KVStateMachine()
    c.restore(data)
    assert c.snapshot() == data and len(c) == len(a)
    page = a.query({"prefix": "k1", "limit": 3})
    keys = [kv["key"] for kv in page["kvs"]]
    assert keys == sorted(keys) and all(k.startswith("k1") for k in keys) and len(keys) <= 3
    with pytest.raises(ValueError):
        c.restore(b"\xff not cbor")


def test_sessions_deduplicate_and_refuse_stale_sequences():
    """A recorded (client, sequence) is a duplicate with its result; sequences that fell out
    of the window are stale; unknown ones are new."""
    table = SessionTable(sessions_max=10, results_max=3, results_total_max=100)
    assert table.lookup("c", 1) == (NEW, None)
    for seq in (1, 2, 3):
        table.record("c", seq, 10 + seq, 1, {"r": seq})
    assert table.lookup("c", 2) == (DUPLICATE, (12, 1, {"r": 2}))
    table.record("c", 5, 15, 1, {"r": 5})           # evicts sequence 1: floor = 1
    assert table.lookup("c", 1) == (STALE, None)
    assert table.lookup("c", 4) == (NEW, None)      # never applied, above the floor
    assert table.lookup("c", 5)[0] == DUPLICATE


def test_session_table_bounds_are_deterministic_and_snapshotted():
    """Eviction of idle sessions keeps both bounds, identically on two replicas, and a
    snapshot restores the same table."""
    a = SessionTable(sessions_max=20, results_max=4, results_total_max=50)
    b = SessionTable(sessions_max=20, results_max=4, results_total_max=50)
    rng = random.Random(9)
    for index in range(1, 500):
        client, seq = f"c{rng.randrange(40)}", rng.randrange(1, 30)
        if a.lookup(client, seq)[0] == NEW:
            a.record(client, seq, index, 2, {"i": index})
            b.record(client, seq, index, 2, {"i": index})
        assert len(a) <= 20 and a.results_total <= 50
    assert a.snapshot() == b.snapshot()
    c = SessionTable(sessions_max=20, results_max=4, results_total_max=50)
    c.restore(a.snapshot())
    assert c.snapshot() == a.snapshot() and c.results_total == a.results_total


def test_sessions_expire_after_idle_time_on_the_log_clock():
    """A session whose newest command is older than idle_ms (on the clock of command
    stamps, never the replica's own) is dropped: a retry of it is new again.  Stamps that
    go backwards (another proposer's slower clock) do not move the clock back."""
    table = SessionTable(sessions_max=10, results_max=3, results_total_max=100, idle_ms=1000)
    table.observe(10_000)
    table.record("old", 1, 1, 1, "r1")
    table.observe(10_500)
    table.record("busy", 1, 2, 1, "r2")
    table.observe(10_900)
    table.observe(10_200)                     # a stamp from a slower clock
    assert table.clock == 10_900
    assert table.lookup("old", 1)[0] == DUPLICATE
    table.observe(11_100)                     # "old" idle for 1100 ms > 1000: dropped
    assert table.lookup("old", 1) == (NEW, None)
    assert table.lookup("busy", 1)[0] == DUPLICATE
    assert table.expired == 1 and table.results_total == 1
    # The stamps of the snapshot restore the same clock and expiry decisions.
    copy = table.like()
    copy.restore(table.snapshot())
    assert copy.clock == 11_100 and copy.snapshot() == table.snapshot()
    for ts in (11_150, 11_300, 11_200, 11_600):
        copy.observe(ts)
        table.observe(ts)
        assert copy.snapshot() == table.snapshot()
    assert table.snapshot()["sessions"] == []
    # idle_ms 0 keeps sessions forever (bounded only by the count limits).
    keep = SessionTable(idle_ms=0)
    keep.observe(1)
    keep.record("c", 1, 1, 1, None)
    keep.observe(10 ** 12)
    assert keep.lookup("c", 1)[0] == DUPLICATE


def test_sessions_restore_snapshots_written_before_stamps():
    table = SessionTable()
    table.restore([["c", 0, 5, [[1, 5, 1, "r"]]]])
    assert table.lookup("c", 1) == (DUPLICATE, (5, 1, "r")) and table.clock == 0
