"""State hashes: ``statemachines.base.state_hash`` digests a state machine's deterministic
snapshot (equal states, equal digests, whatever the history that built them), and the
chaos checker's ``check_state_hashes`` compares the digests of nodes at the same applied
index, failing with a message that names the state machine, the index and the nodes."""

from __future__ import annotations

from paxoslog.chaos import checks
from statemachines.base import state_hash, state_hash_producer
from statemachines.counter import CounterStateMachine
from statemachines.kv import KVStateMachine


def report(applied, **hashes):
    return {"applied_index": applied, "state_hashes": dict(hashes)}


# ---------------------------------------------------------------------- state_hash

def test_equal_states_have_equal_hashes_whatever_their_history():
    """Same records -> same digest, whether applied in another order or restored from a
    snapshot; one different record -> another digest."""
    a, b = KVStateMachine(), KVStateMachine()
    a.apply(1, {"op": "put", "key": "x", "value": 1})
    a.apply(2, {"op": "put", "key": "y", "value": {"n": [1, 2]}})
    b.apply(1, {"op": "put", "key": "x", "value": 1})
    b.apply(2, {"op": "put", "key": "y", "value": {"n": [1, 2]}})
    c = KVStateMachine()
    c.restore(a.snapshot())
    assert state_hash(a) == state_hash(b) == state_hash(c)
    assert len(state_hash(a)) == 32 and int(state_hash(a), 16) >= 0
    b.apply(3, {"op": "put", "key": "y", "value": {"n": [1, 2]}})   # same value, version 2
    assert state_hash(b) != state_hash(a)
    assert state_hash(KVStateMachine()) == state_hash(KVStateMachine())


def test_the_deferred_digest_equals_state_hash_and_ignores_later_changes():
    """state_hash_producer (copy now, digest later on a thread) gives state_hash's digest
    for every size around the CBOR array heads and chunk boundaries, kv pieces join to
    exactly snapshot(), and writes after the copy do not change the digest."""
    for count in (0, 1, 23, 24, 511, 512, 513, 1500):
        kv = KVStateMachine()
        for i in range(count):
            value = "x" * (300_000 if i == 7 else 10) if i % 2 else {"i": [i]}
            kv.apply(i + 1, {"op": "put", "key": f"k{i:05d}", "value": value})
        assert b"".join(kv.snapshot_chunks_copy()()) == kv.snapshot(), count
        later = state_hash_producer(kv)
        expected = state_hash(kv)
        kv.apply(count + 1, {"op": "put", "key": "after", "value": 1})
        assert later() == expected, count
    counter = CounterStateMachine()
    counter.apply(1, {"op": "add", "name": "a", "delta": 2})
    assert state_hash_producer(counter)() == state_hash(counter)


def test_counter_hash_ignores_insertion_order():
    """Counters added in a different order hash the same (the snapshot is sorted)."""
    a, b = CounterStateMachine(), CounterStateMachine()
    for name in ("a", "b", "c"):
        a.apply(1, {"op": "add", "name": name, "delta": 2})
    for name in ("c", "a", "b"):
        b.apply(1, {"op": "add", "name": name, "delta": 2})
    assert state_hash(a) == state_hash(b)
    b.apply(2, {"op": "add", "name": "a", "delta": 1})
    assert state_hash(a) != state_hash(b)


# ---------------------------------------------------------------------- the checker

def test_nodes_at_the_same_index_with_the_same_hashes_pass():
    """Three nodes, one index, every digest equal: pass, naming the state machines."""
    outcome = checks.check_state_hashes({n: report(50, kv="aa", counter="bb")
                                         for n in (1, 2, 3)}, [1, 2, 3])
    assert outcome.ok is True, outcome
    assert "3 nodes agree" in outcome.message and "counter, kv" in outcome.message
    assert outcome.data["hashes"]["2"] == {"kv": "aa", "counter": "bb"}


def test_a_differing_digest_fails_naming_machine_index_and_nodes():
    """One node's kv digest differs: fail; the message says which state machine, at which
    applied index, and every node's digest."""
    outcome = checks.check_state_hashes({1: report(50, kv="aa", counter="bb"),
                                         2: report(50, kv="aa", counter="bb"),
                                         3: report(50, kv="ff", counter="bb")}, [1, 2, 3])
    assert outcome.ok is False
    assert outcome.message.startswith("state machine 'kv' differs between nodes at applied "
                                      "index 50: node 1: aa, node 2: aa, node 3: ff")
    assert outcome.data["mismatches"] == [{"state_machine": "kv", "applied_index": 50,
                                           "digests": {"1": "aa", "2": "aa", "3": "ff"}}]


def test_a_state_machine_missing_on_one_node_is_a_difference():
    """A node that lacks a state machine the others report differs from them."""
    outcome = checks.check_state_hashes({1: report(7, kv="aa", counter="bb"),
                                         2: report(7, kv="aa")})
    assert outcome.ok is False
    assert "'counter'" in outcome.message and "node 2: not reported" in outcome.message


def test_only_nodes_at_the_same_index_are_compared():
    """Different digests at different applied indexes are no mismatch, but a node with no
    peer at its index could not be checked: undecided (which counts as a failure)."""
    outcome = checks.check_state_hashes({1: report(50, kv="aa"), 2: report(50, kv="aa"),
                                         3: report(49, kv="zz")}, [1, 2, 3])
    assert outcome.ok is None and outcome.data["not_compared"] == [3]
    assert "nodes [3] could not be compared" in outcome.message
    # ... but a real mismatch among the comparable ones still fails.
    outcome = checks.check_state_hashes({1: report(50, kv="aa"), 2: report(50, kv="ab"),
                                         3: report(49, kv="zz")}, [1, 2, 3])
    assert outcome.ok is False and "applied index 50" in outcome.message


def test_a_node_without_a_report_leaves_the_check_undecided():
    """An expected node that did not answer cannot be vouched for."""
    outcome = checks.check_state_hashes({1: report(5, kv="aa"), 2: report(5, kv="aa")},
                                        [1, 2, 3])
    assert outcome.ok is None and outcome.data["not_compared"] == [3]


def test_an_api_without_state_hashes_is_noted_not_failed():
    """Status bodies without state_hashes (an older API): pass, marked skipped."""
    outcome = checks.check_state_hashes({1: {"applied_index": 5}, 2: {"applied_index": 5}},
                                        [1, 2])
    assert outcome.ok is True and outcome.data["skipped"] is True
    assert "not compared" in outcome.message
