"""A node's own sessions (writes whose client gave none) are released once answered: the
router names each finished generation in a later write's ``release`` field, and applying
it drops the generation's results on every replica, leaving a tombstone that refuses late
copies as stale.  And the session table's snapshot rows are built off the loop from a copy
taken at the cut."""

from __future__ import annotations

import cbor2

from paxoslog.node.commands import decode_command
from paxoslog.node.instructions import DUPLICATE, EXECUTED, STALE
from paxoslog.node.machines import StateMachines
from paxoslog.node.sessions import RELEASE_MAX, SessionTable
from paxoslog.server.errors import ApiError
from paxoslog.server.router import RequestRouter, ServerSessions
from paxoslog.server.runner import ClientRequest
from statemachines.kv import KVStateMachine


def machines() -> StateMachines:
    return StateMachines({"kv": KVStateMachine()}, SessionTable(), lambda name: KVStateMachine(),
                         record_terms=True)


def put(m: StateMachines, key: str, client: str, seq: int, release=None) -> bytes:
    return m.encode_write("kv", {"op": "put", "key": key, "value": 1}, client, seq, ts=1000,
                          release=release)


# ---------------------------------------------------------------------- the table

def test_release_drops_the_results_and_a_late_copy_is_refused_as_stale():
    m = machines()
    table = m.sessions
    for seq in (1, 2, 3):
        assert m.apply_command(seq, 1, put(m, f"k{seq}", "node1-x-0", seq)).outcome == EXECUTED
    late = put(m, "k2", "node1-x-0", 2)             # a copy still in some log
    assert m.apply_command(4, 1, late).outcome == DUPLICATE
    assert table.results_total == 3
    carrier = put(m, "k9", "node1-x-1", 1, release=[["node1-x-0", 128]])
    assert decode_command(carrier)["release"] == [["node1-x-0", 128]]
    assert m.apply_command(5, 1, carrier).outcome == EXECUTED
    assert table.results_total == 1                 # only the carrier's own result
    assert len(table) == 2                          # the tombstone stays
    again = m.apply_command(6, 1, late)
    assert again.outcome == STALE                   # not applied twice
    assert m.machines["kv"].get("k2")["version"] == 1
    # Any sequence of the generation, even one never applied before, is refused.
    assert m.apply_command(7, 1, put(m, "k100", "node1-x-0", 100)).outcome == STALE
    assert m.machines["kv"].get("k100") is None


def test_release_of_an_unknown_generation_leaves_a_tombstone():
    m = machines()
    m.apply_command(1, 1, put(m, "a", "node1-x-5", 1, release=[["node1-x-4", 128]]))
    assert m.apply_command(2, 1, put(m, "b", "node1-x-4", 7)).outcome == STALE


def test_a_malformed_release_is_ignored_whole_on_every_replica():
    for bad in ([["c", -1]], [["c"]], [[1, 2]], "c", [["c", 1.5]],
                [["x", 1]] * (RELEASE_MAX + 1), [["c", 128], ["d", "1"]]):
        table = SessionTable()
        table.record("c", 1, 1, 1, {"ok": True})
        table.release(bad)
        assert table.results_total == 1 and table.lookup("c", 1)[0] == 1, bad
        assert len(table) == 1, bad


def test_released_tombstones_survive_a_snapshot_and_are_evicted_first():
    table = SessionTable(sessions_max=10, results_total_max=1000)
    for i in range(5):
        table.record(f"client-{i}", 1, 100 + i, 1, {"i": i})
    table.release([[f"node-g{i}", 128] for i in range(5)])
    restored = SessionTable(sessions_max=10, results_total_max=1000)
    restored.restore(cbor2.loads(cbor2.dumps(table.snapshot())))
    assert restored.snapshot() == table.snapshot()
    assert restored.lookup("node-g3", 128)[0] == 2      # STALE after the restore too
    for i in range(5, 8):                               # 13 sessions: over the 10
        restored.record(f"client-{i}", 1, 100 + i, 1, {"i": i})
    kept = {row[0] for row in restored.snapshot()["sessions"]}
    assert len(kept) == 9 and {f"client-{i}" for i in range(8)} <= kept, kept


def test_snapshot_producer_returns_the_table_as_it_was_at_the_cut():
    table = SessionTable(results_max=4)
    for seq in range(1, 4):
        table.record("b", seq, seq, 1, {"seq": seq})
    table.record("a", 1, 9, 1, {"batch": True})
    expected = cbor2.dumps(table.snapshot())
    produce = table.snapshot_producer()
    for seq in range(4, 9):                             # changes after the cut
        table.record("b", seq, 10 + seq, 1, {"seq": seq})
    table.release([["a", 5]])
    table.observe(99_000)
    assert cbor2.dumps(produce()) == expected
    assert cbor2.dumps(table.snapshot_producer()()) == cbor2.dumps(table.snapshot())


# ---------------------------------------------------------------------- the node's side

def test_a_generation_is_finished_when_retired_and_every_write_answered():
    s = ServerSessions("n1-ab", per_generation=3)
    pairs = [s.next() for _ in range(3)]
    assert pairs == [("n1-ab-0", 1), ("n1-ab-0", 2), ("n1-ab-0", 3)]
    for client_id, _ in pairs:
        s.sent(client_id)
    for client_id, _ in pairs:
        s.answered(client_id)
    assert s.take_release() == []                   # still the current generation
    assert s.next() == ("n1-ab-1", 1)
    assert s.take_release() == [["n1-ab-0", 3]]
    s.sent("n1-ab-1")
    s.next(), s.next()
    assert s.next() == ("n1-ab-2", 1)               # n1-ab-1 retired, one write unanswered
    assert s.take_release() == []
    s.answered("n1-ab-1")
    assert s.take_release() == [["n1-ab-1", 3]]
    s.put_back([["n1-ab-1", 3]])
    assert s.pending_release() == 1


class FakeRunner:
    """The runner seen by the router: each write applied at the next index and answered,
    or failed with 504 when ``fail`` (and then not applied)."""

    def __init__(self, m: StateMachines) -> None:
        self.m = m
        self.index = 0
        self.fail = False
        self.sent: list[dict] = []

    def write(self, key, data: bytes, done=None) -> ClientRequest:
        self.sent.append(decode_command(data))
        request = ClientRequest(True)
        if self.fail:
            if done is not None:
                done(True)
            request.answer(ApiError(504, "timeout", "no commit before the deadline"))
            return request
        self.index += 1
        applied = self.m.apply_command(self.index, 1, data)
        if done is not None:
            done(False)
        request.answer(applied)
        return request


def test_writes_without_a_session_keep_about_one_generation_of_results():
    m = machines()
    runner = FakeRunner(m)
    router = RequestRouter(runner, lambda: m, lambda: 0, node_id=1, command_bytes_max=1 << 20,
                           stamp_ms=lambda: 1000)
    for i in range(1000):
        router.write("kv", {"op": "put", "key": f"k{i % 10}", "value": i})
    assert m.sessions.results_total <= 2 * 128, m.sessions.results_total
    released = [pair for c in runner.sent for pair in c.get("release", ())]
    # Generations 0..6 are finished (7 is current), each released once, by the first
    # write of the next one.
    assert sorted(int(c.rsplit("-", 1)[1]) for c, _ in released) == list(range(7)), released
    assert all(last == 128 for _, last in released)
    # A failed carrier puts its releases back: the next write carries them again.
    for _ in range(1024 - 1000):                    # generation 7 full: the next is 8's first
        router.write("kv", {"op": "put", "key": "x", "value": 0})
    runner.fail = True
    router.write("kv", {"op": "put", "key": "x", "value": 1}).deferred.addErrback(lambda f: None)
    lost = runner.sent[-1].get("release")
    assert lost
    runner.fail = False
    router.write("kv", {"op": "put", "key": "x", "value": 2})
    assert runner.sent[-1]["release"][:len(lost)] == lost


def test_a_write_refused_before_the_log_keeps_its_releases_for_the_next():
    m = machines()
    runner = FakeRunner(m)
    router = RequestRouter(runner, lambda: m, lambda: 0, node_id=1, command_bytes_max=1 << 20)
    for _ in range(128):
        router.write("kv", {"op": "put", "key": "x", "value": 0})
    assert router.server_sessions.pending_release() == 0
    # The next write starts generation 1 and would carry 0's release, but is refused.
    failed = []
    router.write("kv", {"op": "put", "key": ""}).deferred.addErrback(failed.append)
    assert failed[0].value.status == 400 and len(runner.sent) == 128
    assert router.server_sessions.pending_release() == 1
    router.write("kv", {"op": "put", "key": "y", "value": 0})
    assert runner.sent[-1]["release"][0][1] == 128
    assert router.server_sessions.pending_release() == 0
