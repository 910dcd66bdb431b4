"""kv leases and transactions as a state machine: apply, snapshot, restore, limits."""

import pytest

from statemachines.base import BadCommand, CommandTooLarge
from statemachines.kv import KVStateMachine


def _kv(**options) -> KVStateMachine:
    return KVStateMachine(**options)


def _apply(kv: KVStateMachine, index: int, command: dict):
    return kv.apply(index, kv.validate(command))


def test_grant_gives_the_log_index_as_lease_id_and_revoke_deletes_attached_keys():
    """A lease's id is its grant index; revoking it deletes exactly its keys."""
    kv = _kv()
    assert _apply(kv, 3, {"op": "lease_grant", "ttl_ms": 5000}) == {
        "op": "lease_grant", "id": 3, "ttl_ms": 5000}
    _apply(kv, 4, {"op": "put", "key": "a", "value": 1, "lease": 3})
    _apply(kv, 5, {"op": "put", "key": "b", "value": 2, "lease": 3})
    _apply(kv, 6, {"op": "put", "key": "c", "value": 3})
    assert kv.get("a")["lease"] == 3 and "lease" not in kv.get("c")
    assert kv.lease_info(3, keys_max=10) == {"id": 3, "ttl_ms": 5000, "key_count": 2,
                                             "keys": ["a", "b"]}
    assert _apply(kv, 7, {"op": "lease_revoke", "id": 3}) == {
        "op": "lease_revoke", "id": 3, "deleted": 2}
    assert kv.get("a") is None and kv.get("b") is None and kv.get("c")["value"] == 3
    assert _apply(kv, 8, {"op": "lease_revoke", "id": 3})["error"] == "lease_not_found"


def test_grants_in_one_entry_get_distinct_ids():
    """An entry carries a batch of commands: two grants at one index get two ids."""
    kv = _kv()
    first = _apply(kv, 5, {"op": "lease_grant", "ttl_ms": 1000})["id"]
    second = _apply(kv, 5, {"op": "lease_grant", "ttl_ms": 1000})["id"]
    third = _apply(kv, 9, {"op": "lease_grant", "ttl_ms": 1000})["id"]
    assert (first, second, third) == (5, 6, 9)
    copy = _kv()
    copy.restore(kv.snapshot())
    assert _apply(copy, 9, {"op": "lease_grant", "ttl_ms": 1000})["id"] == 10


def test_put_without_lease_detaches_and_put_on_a_missing_lease_fails():
    """As etcd: a put without a lease detaches the key; an unknown lease is refused."""
    kv = _kv()
    _apply(kv, 1, {"op": "lease_grant", "ttl_ms": 1000})
    _apply(kv, 2, {"op": "put", "key": "a", "value": 1, "lease": 1})
    _apply(kv, 3, {"op": "put", "key": "a", "value": 2})
    assert _apply(kv, 4, {"op": "put", "key": "x", "value": 1, "lease": 99})["error"] == \
        "lease_not_found"
    assert kv.get("x") is None
    _apply(kv, 5, {"op": "lease_revoke", "id": 1})
    assert kv.get("a")["value"] == 2


def test_expiry_from_a_term_older_than_the_last_promotion_is_ignored():
    """A deposed leader's late expiry cannot delete a lease a newer leader keeps alive."""
    kv = _kv()
    _apply(kv, 1, {"op": "lease_grant", "ttl_ms": 1000})
    _apply(kv, 2, {"op": "put", "key": "k", "value": 1, "lease": 1})
    kv.apply(3, {"op": "lease_promote", "term": 7})
    assert kv.apply(4, {"op": "lease_expire", "ids": [1], "term": 6})["stale_term"] is True
    assert kv.get("k") is not None
    assert kv.apply(5, {"op": "lease_expire", "ids": [1, 42], "term": 7}) == {
        "op": "lease_expire", "expired": [1], "deleted": 1}
    assert kv.get("k") is None and len(kv.leases) == 0


def test_snapshot_round_trip_keeps_leases_attachments_and_promoted_term():
    """Snapshots carry the lease table; a store without leases keeps its old format."""
    plain = _kv()
    _apply(plain, 1, {"op": "put", "key": "a", "value": 1})
    assert b"".join(plain.snapshot_chunks_copy()()) == plain.snapshot()
    old_format = plain.snapshot()
    kv = _kv()
    kv.restore(old_format)
    assert kv.get("a")["value"] == 1 and len(kv.leases) == 0
    _apply(kv, 2, {"op": "lease_grant", "ttl_ms": 1000})
    _apply(kv, 3, {"op": "put", "key": "b", "value": 2, "lease": 2})
    kv.apply(4, {"op": "lease_promote", "term": 5})
    data = kv.snapshot()
    assert b"".join(kv.snapshot_chunks_copy()()) == data
    copy = _kv()
    copy.restore(data)
    assert copy.snapshot() == data
    assert copy.leases.promoted_term == 5 and copy.lease_info(2)["key_count"] == 1
    _apply(copy, 5, {"op": "lease_revoke", "id": 2})
    assert copy.get("b") is None and copy.get("a") is not None


def test_txn_applies_one_branch_in_order_with_per_op_results():
    """Compares on several keys pick the branch; ops see earlier writes of the txn."""
    kv = _kv()
    _apply(kv, 1, {"op": "put", "key": "x", "value": 10})
    txn = {"op": "txn",
           "compare": [{"key": "x", "target": "value", "cmp": ">=", "value": 5},
                       {"key": "y", "target": "exists", "value": False},
                       {"key": "x", "target": "version", "value": 1},
                       {"key": "x", "target": "create_index", "cmp": "<", "value": 2}],
           "success": [{"op": "put", "key": "y", "value": "new"}, {"op": "get", "key": "y"},
                       {"op": "delete", "key": "x"}, {"op": "range", "prefix": ""}],
           "failure": [{"op": "get", "key": "x"}]}
    result = _apply(kv, 2, txn)
    assert result["succeeded"] is True
    assert [r["op"] for r in result["results"]] == ["put", "get", "delete", "range"]
    assert result["results"][1]["kv"]["value"] == "new"
    assert result["results"][3]["kvs"] == [kv.get("y")]
    again = _apply(kv, 3, txn)
    assert again["succeeded"] is False and again["results"] == [{"op": "get", "kv": None}]


def test_txn_with_a_missing_lease_changes_nothing():
    """Atomic: a put on an unknown lease fails the whole branch before any op runs."""
    kv = _kv()
    result = _apply(kv, 1, {"op": "txn", "success": [
        {"op": "put", "key": "a", "value": 1}, {"op": "put", "key": "b", "value": 1,
                                                "lease": 9}]})
    assert result["error"] == "lease_not_found" and kv.get("a") is None


def test_txn_and_lease_limits_come_from_the_conf():
    """Op counts, encoded size and TTL range are bounded; bad shapes are refused."""
    kv = _kv(txn_ops_max=2, txn_bytes_max=200, lease_ttl_ms_min=50, leases_max=1)
    with pytest.raises(BadCommand, match="txn_ops_max"):
        kv.validate({"op": "txn", "success": [{"op": "get", "key": "a"}] * 3})
    with pytest.raises(CommandTooLarge, match="txn_bytes_max"):
        kv.validate({"op": "txn", "success": [{"op": "put", "key": "a", "value": "x" * 300}]})
    with pytest.raises(BadCommand, match="ttl_ms"):
        kv.validate({"op": "lease_grant", "ttl_ms": 10})
    for bad in ({"key": "a", "target": "colour", "value": 1},
                {"key": "a", "target": "exists", "cmp": "<", "value": True},
                {"key": "a", "target": "version", "value": -1}, {"key": "a"}):
        with pytest.raises(BadCommand):
            kv.validate({"op": "txn", "compare": [bad]})
    _apply(kv, 1, {"op": "lease_grant", "ttl_ms": 100})
    with pytest.raises(BadCommand, match="leases_max"):
        kv.validate({"op": "lease_grant", "ttl_ms": 100})


def test_a_snapshot_copy_is_the_state_at_the_copy_whatever_changes_after_it():
    """The copy keeps references (keys, immutable records, the lease attachments), and the
    rows are built only as they are encoded: overwrites, deletes, lease attachments and
    revokes after the copy do not reach it."""
    kv = _kv()
    _apply(kv, 1, {"op": "lease_grant", "ttl_ms": 1000})
    for i in range(40):
        command = {"op": "put", "key": f"k{i:03d}", "value": {"i": i}}
        if i % 3 == 0:
            command["lease"] = 1
        _apply(kv, i + 2, command)
    expected = kv.snapshot()
    pieces = kv.snapshot_chunks_copy()
    whole = kv.snapshot_copy()
    _apply(kv, 50, {"op": "put", "key": "k001", "value": "changed", "lease": 1})
    _apply(kv, 51, {"op": "delete", "key": "k002"})
    _apply(kv, 52, {"op": "put", "key": "k003", "value": "detached"})
    _apply(kv, 53, {"op": "put", "key": "new", "value": 1})
    _apply(kv, 54, {"op": "lease_grant", "ttl_ms": 2000})
    _apply(kv, 55, {"op": "lease_revoke", "id": 1})
    kv.apply(56, {"op": "lease_promote", "term": 9})
    assert b"".join(pieces()) == expected
    assert b"".join(pieces()) == expected          # the producer may be read again
    assert whole() == expected
    assert kv.snapshot() != expected


def test_a_snapshot_copy_costs_references_not_a_list_per_row():
    """Copying 20,000 records allocates about two pointers per key on the event loop
    (the rows' lists used to be built up front: about 110 bytes per key, some 100 MiB
    at a million keys on every snapshot)."""
    import tracemalloc
    kv = _kv()
    for i in range(20_000):
        kv.apply(i + 1, {"op": "put", "key": f"k{i:06d}", "value": "v"})
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        producer = kv.snapshot_chunks_copy()
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert held < 20_000 * 24, held
    restored = _kv()
    restored.restore_chunks(producer())
    assert restored.snapshot() == kv.snapshot()


def _reference_rows(kv: KVStateMachine) -> list:
    return [[key, *kv._data[key]] for key in kv._data]


def test_cuts_read_while_the_store_changes_give_the_state_at_their_cut():
    """Random puts, deletes, lease revokes and restores interleaved with several live
    cuts, each read a little at a time between the changes (as the snapshot thread does):
    every cut yields exactly the records at its cut, in key order; a dropped cut stops
    being kept."""
    from hypothesis import given, settings, strategies as st

    step = st.tuples(st.sampled_from(["put", "put", "delete", "cut", "read", "drop",
                                      "revoke", "restore"]),
                     st.integers(0, 30), st.integers(0, 5))

    @settings(max_examples=150, deadline=None)
    @given(st.lists(step, max_size=120))
    def run(steps):
        kv = _kv()
        index = 1
        _apply(kv, index, {"op": "lease_grant", "ttl_ms": 1000})
        lease = index
        live = []            # [expected rows, iterator, rows read so far]
        for kind, n, m in steps:
            index += 1
            key = f"k{n:02d}"
            if kind == "put":
                command = {"op": "put", "key": key, "value": [n, m, index]}
                if m == 0 and lease is not None:
                    command["lease"] = lease
                _apply(kv, index, command)
            elif kind == "delete":
                _apply(kv, index, {"op": "delete", "key": key})
            elif kind == "revoke" and lease is not None:
                _apply(kv, index, {"op": "lease_revoke", "id": lease})
                lease = None
            elif kind == "restore":
                fresh = _kv()
                fresh.restore(kv.snapshot())
                kv._data, kv._cuts = fresh._data, []
                # keep the lease table as is; only the store is swapped
            elif kind == "cut":
                count, rows = kv._copy_rows()
                live.append([_reference_rows(kv), rows(), []])
            elif kind == "read" and live:
                entry = live[n % len(live)]
                for _ in range(m + 1):
                    row = next(entry[1], None)
                    if row is None:
                        break
                    entry[2].append(row[:5])
            elif kind == "drop" and live:
                live.pop(n % len(live))
        for expected, rows, read in live:
            read += [row[:5] for row in rows]
            assert [row for row in read if row[0] is not None] == expected

    run()


def test_a_cut_read_on_another_thread_while_the_loop_writes_is_the_state_at_the_cut():
    """The snapshot thread reads a cut while this thread keeps writing, deleting and
    overwriting the same keys: the rows are the records at the cut.  The GIL changes
    hands every 10 us, so the two threads interleave within the read."""
    import sys
    import threading
    kv = _kv()
    for i in range(20_000):
        kv.apply(i + 1, {"op": "put", "key": f"k{i:05d}", "value": i})
    expected = kv.snapshot()
    producer = kv.snapshot_chunks_copy()
    out = []
    reader = threading.Thread(target=lambda: out.append(b"".join(producer())))
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    try:
        reader.start()
        index = 20_001
        while reader.is_alive() and index < 400_000:
            i = index % 20_000
            if index % 3:
                kv.apply(index, {"op": "put", "key": f"k{i:05d}", "value": -index})
            else:
                kv.apply(index, {"op": "delete", "key": f"k{i:05d}"})
            index += 1
        reader.join()
    finally:
        sys.setswitchinterval(interval)
    assert index > 20_100            # the writes ran while the rows were read
    assert out == [expected]
    assert kv.snapshot() != expected
