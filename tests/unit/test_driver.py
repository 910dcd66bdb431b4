"""The node driver (paxoslog/node/driver.py) on real replicas, state machines and session
table, with exact instruction lists: what the server's runner and the simulator carry out.

``Cluster`` is a tiny hand-cranked shell: it delivers ``Send`` messages between drivers
and completes ``Persist`` instructions only when the test says so, so every assertion sees
exactly what one event produced."""

from __future__ import annotations

import random
import weakref

import pytest

from paxoslog.core.log import ENTRY_NORMAL, Entry, HardState, SnapshotMeta
from paxoslog.core.quorum import Config
from paxoslog.core.ready import Role
from paxoslog.core.replica import ReplicaOptions, create_replica
from paxoslog.core.types import Restored
from paxoslog.node.driver import ApplyGap, DriverOptions, NodeDriver
from paxoslog.node.instructions import (EXECUTED, Applied, CommandApplied, CompactLog, Forward,
                                        OfferSnapshot, Persist, Reply, RestoreSnapshot,
                                        RoleChange, Send, TakeSnapshot)
from paxoslog.node.machines import StateMachines
from paxoslog.node.sessions import SessionTable
from statemachines.kv import KVStateMachine

PROTOCOLS = ["multipaxos", "raft"]
TIMEOUT_TICKS = 20


def machines(protocol: str) -> StateMachines:
    return StateMachines({"kv": KVStateMachine()}, SessionTable(), lambda name: KVStateMachine(),
                         record_terms=protocol == "raft")


def driver(protocol: str, node_id: int = 1, voters=(1,), snapshot=None,
           snapshot_entries: int = 10_000) -> NodeDriver:
    config = Config(frozenset(voters))
    replica = create_replica(protocol, node_id, config,
                             ReplicaOptions(heartbeat_ticks=1, election_ticks=5),
                             random.Random(node_id), Restored(HardState(), [], snapshot))
    return NodeDriver(DriverOptions(node_id, protocol, 10.0, request_timeout_ticks=TIMEOUT_TICKS,
                                    snapshot_entries=snapshot_entries),
                      replica, machines(protocol), snapshot, config)


def put(d: NodeDriver, key: str, value, client="c1", seq=1) -> tuple:
    data = d.machines.encode_write("kv", {"op": "put", "key": key, "value": value}, client, seq,
                                   ts=1000)
    return (client, seq), data


def kinds(instructions: list) -> list[str]:
    return [type(op).__name__ for op in instructions]


def settle(d: NodeDriver, rounds: int = 20) -> list:
    """Pump and complete every persist at once (a single node); all instructions."""
    out = []
    for _ in range(rounds):
        step = d.pump()
        out += step
        synced = [op for op in step if type(op) is Persist and op.sync]
        if not synced and not d.replica.has_ready():
            break
        for op in synced:
            out += d.persisted(op.ready)
    return out


def leader(protocol: str, **kw) -> NodeDriver:
    d = driver(protocol, **kw)
    for _ in range(15):
        settle(d)
        d.tick()
        if d.replica.role == Role.LEADER:
            break
    settle(d)
    assert d.replica.role == Role.LEADER
    return d


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_write_is_answered_only_once_its_entry_is_persisted_and_applied(protocol):
    """submit_write -> nothing; pump -> exactly one synced Persist; persisted -> the lone
    voter's copy is durable and the entry committed; the next pump applies the entry and
    answers it, in that order (the log view sees it first), then writes the commit point
    (no fsync: nothing waits for it, so it comes after the answer)."""
    d = leader(protocol)
    key, data = put(d, "a", 1)
    assert d.submit_write("H", key, data) == []
    out = d.pump()
    assert kinds(out) == ["Persist"] and out[0].sync
    ready = out[0].ready
    assert [e.payload for e in ready.entries] == [(data,)] and ready.committed == []
    assert d.pump() == []                      # one Ready at a time
    assert d.persisted(ready) == []
    index = ready.entries[0].index
    out = d.pump()
    assert kinds(out) == ["Applied", "Reply", "Persist"] and not out[2].sync
    assert out[2].ready.hard_state.commit == index
    out = out[:2]
    result = {"op": "put", "created": True, "version": 1, "create_index": index,
              "mod_index": index}
    assert out == [
        Applied([ready.entries[0]],
                [CommandApplied(index, ready.entries[0].term, "kv",
                                {"sm": "kv", "op": "put", "key": "a", "value": 1,
                                 "client_id": "c1", "sequence": 1}, key, EXECUTED, result,
                                (("a", (1, index, index, 1), None),))]),
        Reply("H", 200, {"status": "committed", "index": index, "term": d.replica.term,
                         "leader": 1, "result": result})]
    assert d.machines.kv.get("a")["value"] == 1 and d.applied_index == index


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_writes_arriving_during_an_fsync_share_the_next_one(protocol):
    """Group commit: three writes that arrive while a Ready is being persisted go into
    one next Ready (one fsync) and are answered together after it.  (A lone voter commits
    an entry once the Ready persisting it is advanced, so the first write's commit rides
    with the next batch; it is applied and answered while that batch is persisted, not
    after: it is durable already.)"""
    d = leader(protocol)
    key, data = put(d, "a", 0)
    d.submit_write("first", key, data)
    first = d.pump()[0].ready
    for seq in (2, 3, 4):
        key, data = put(d, "a", seq, seq=seq)
        assert d.submit_write(f"w{seq}", key, data) == []
    assert d.pump() == []                      # the first fsync has not finished
    assert d.persisted(first) == []
    out = d.pump()
    assert kinds(out) == ["Persist", "Applied", "Reply"] and out[0].sync
    assert (out[2].handle, out[2].status) == ("first", 200)
    second = out[0].ready
    assert [e.payload for e in second.committed] == [(first.entries[0].payload)]
    assert len(second.entries) == 1 and len(second.entries[0].payload) == 3
    assert d.stats["applied_while_persisting"] == 1
    assert d.persisted(second) == []           # the rest of a persisted Ready: next pump
    out = d.pump()
    assert kinds(out) == ["Applied", "Reply", "Reply", "Reply", "Persist"]   # the commit hint last
    assert [(op.handle, op.status) for op in out if type(op) is Reply] == [
        ("w2", 200), ("w3", 200), ("w4", 200)]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_retry_of_an_applied_write_is_answered_from_the_session_table(protocol):
    """The same (client_id, sequence) again: the first result at once, nothing proposed."""
    d = leader(protocol)
    key, data = put(d, "a", 1)
    d.submit_write("first", key, data)
    first = next(op for op in settle(d) if type(op) is Reply)
    key2, data2 = put(d, "a", 99)               # same session pair, another value
    assert key2 == key
    assert d.submit_write("retry", key2, data2) == [Reply("retry", 200, first.body)]
    assert d.pump() == [] and d.machines.kv.get("a")["value"] == 1
    assert d.stats["duplicates"] == 1


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_reads_stale_at_once_and_linearizable_after_a_read_index_round(protocol):
    """A stale read answers from local state with how far behind it may be; a
    linearizable one waits for its read point (one node: confirmed by itself)."""
    d = leader(protocol)
    key, data = put(d, "a", 7)
    d.submit_write("w", key, data)
    settle(d)
    (reply,) = d.submit_read("s", {"key": "a"}, "stale")
    assert reply.status == 200 and reply.body["value"] == 7 and reply.body["stale"] is True
    assert reply.body["ms_since_leader"] == 0 and reply.body["node"] == 1
    assert d.submit_read("r", {"key": "a"}, "linearizable") == []
    out = settle(d)
    (answer,) = [op for op in out if type(op) is Reply]
    assert answer.handle == "r" and answer.body["value"] == 7
    assert answer.body["index"] == d.applied_index
    (missing,) = d.submit_read("m", {"key": "nope"}, "stale")
    assert missing.status == 404 and missing.body["error"] == "not_found"
    assert missing.body["index"] == d.applied_index


class _Handle:
    """A client's handle that a weak reference can watch."""


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_answered_requests_are_not_kept_until_their_deadlines(protocol):
    """Every request has a deadline timer; once answered, the driver lets go of it at
    once (its handle holds the server's answer path), not when the deadline comes."""
    d = leader(protocol)
    watched = []
    for seq in range(1, 4):
        handle = _Handle()
        key, data = put(d, "a", seq, seq=seq)
        d.submit_write(handle, key, data)
        watched.append(weakref.ref(handle))
        handle = _Handle()
        d.submit_read(handle, {"key": "a"}, "linearizable")
        watched.append(weakref.ref(handle))
    out = settle(d)
    assert len([op for op in out if type(op) is Reply]) == 6
    del out, handle
    assert [ref() for ref in watched] == [None] * 6
    for _ in range(TIMEOUT_TICKS + 1):           # their deadlines pass: nothing fires
        assert [op for op in d.tick() if type(op) is Reply] == []


class Trio:
    """Three drivers, messages delivered and persists completed at once; snapshots are
    saved in memory (compacting to the snapshot itself); nodes in ``cut`` get nothing."""

    def __init__(self, protocol: str, snapshot_entries: int = 10_000) -> None:
        self.drivers = {n: driver(protocol, n, voters=(1, 2, 3),
                                  snapshot_entries=snapshot_entries) for n in (1, 2, 3)}
        self.inbox: list = []
        self.cut: set[int] = set()
        self.saved: dict = {}
        self.log: list = []          # every (node, instruction) settle() handed back
        for n, d in self.drivers.items():
            for peer in self.drivers:
                if peer != n:
                    d.peer_up(peer)

    def run(self, instructions: list, node: int) -> list:
        """Carry out ``instructions`` of ``node``; what is left for the test."""
        rest = []
        for op in instructions:
            if type(op) is Send:
                self.inbox += op.messages
            elif type(op) is Persist and op.sync:
                rest += self.run(self.drivers[node].persisted(op.ready), node)
            elif type(op) is TakeSnapshot:
                states = [(name, list(produce())) for name, produce in op.producers]
                self.saved[(op.meta.index, op.meta.term)] = (op.meta, states, op.sessions())
                rest += self.run(self.drivers[node].snapshot_saved(op.meta, op.meta), node)
            elif type(op) not in (Persist, CompactLog):
                rest.append(op)
        return rest

    def settle(self, rounds: int = 50) -> list:
        out = []
        for _ in range(rounds):
            for n, d in self.drivers.items():
                out += [(n, op) for op in self.run(d.pump(), n)]
            if not self.inbox:
                break
            batch, self.inbox = self.inbox, []
            for msg in batch:
                if msg.to in self.cut or msg.frm in self.cut:
                    continue
                d = self.drivers[msg.to]
                out += [(msg.to, op) for op in self.run(d.receive([msg]), msg.to)]
        self.log += out
        return out

    def elect(self, among=(1, 2, 3)) -> int:
        """Tick the nodes ``among`` until one of them leads; its id."""
        for _ in range(80):
            for n in among:
                self.run(self.drivers[n].tick(), n)
            self.settle()
            leaders = [n for n in among if self.drivers[n].replica.role == Role.LEADER]
            if leaders:
                return leaders[0]
        raise AssertionError("no leader")

    def others(self, node: int) -> list[int]:
        return [n for n in self.drivers if n != node]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_follower_forwards_a_write_and_relays_the_leaders_answer(protocol):
    """The follower's write becomes a Forward to the leader; the leader's answer is the
    client's answer; a lost connection re-forwards it after retry_ticks."""
    trio = Trio(protocol)
    lead = trio.elect()
    follower = trio.drivers[trio.others(lead)[0]]
    key, data = put(follower, "a", 1)
    assert id(data) in follower.machines._encoded
    (fwd,) = follower.submit_write("H", key, data)
    assert type(fwd) is Forward and fwd.peer == lead and fwd.op == "propose"
    assert fwd.payload == data
    assert not follower.machines._encoded          # the leader applies its own copy
    assert follower.machines._encoded_bytes == 0
    assert follower.forward_failed(fwd.request) == []     # connection lost: retry later
    assert follower.tick() == []
    (again,) = follower.tick()
    assert again == fwd                                   # same request, to the leader again
    leader_ops = trio.run(trio.drivers[lead].submit_forwarded_write(("from", 2), data), lead)
    assert leader_ops == []
    answers = [op for n, op in trio.settle() if n == lead and type(op) is Reply]
    assert [op.handle for op in answers] == [("from", 2)] and answers[0].status == 200
    assert follower.forward_answered(fwd.request, 200, answers[0].body) == [
        Reply("H", 200, answers[0].body)]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_the_leader_sends_its_new_entries_before_persisting_them(protocol):
    """pump -> Send(the Accepts / AppendEntries carrying the new entry) before its synced
    Persist; one follower's acknowledgement commits nothing until the leader's own fsync
    is reported (persisted), and then the write is applied and answered."""
    trio = Trio(protocol)
    lead = trio.elect()
    d = trio.drivers[lead]
    key, data = put(d, "a", 1)
    assert d.submit_write("H", key, data) == []
    out = d.pump()
    assert kinds(out) == ["Send", "Persist"] and out[1].sync
    ready = out[1].ready
    (entry,) = ready.entries
    assert {m.to for m in out[0].messages} == set(trio.others(lead))
    assert all(entry in m.entries for m in out[0].messages)
    peer = trio.others(lead)[0]                 # one follower persists, then acknowledges
    follower = trio.drivers[peer]
    assert follower.receive([m for m in out[0].messages if m.to == peer]) == []
    trio.run(follower.pump(), peer)
    (ack,), trio.inbox = trio.inbox, []
    assert ack.to == lead
    assert not any(type(op) is Reply for op in d.receive([ack]) + d.pump())
    assert d.replica.commit_index < entry.index
    assert d.persisted(ready) == []
    answers = [op for op in trio.run(d.pump(), lead) if type(op) is Reply]
    assert [(op.handle, op.status) for op in answers] == [("H", 200)]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_follower_acknowledges_a_persisted_append_before_applying_what_it_commits(protocol):
    """persisted -> only the Ready's messages (the acknowledgement the leader waits for);
    the entries the same Ready commits are applied at the next pump, so the apply does not
    delay the acknowledgement (issue 17)."""
    trio = Trio(protocol)
    lead = trio.elect()
    trio.settle()
    d = trio.drivers[lead]
    peer = trio.others(lead)[0]
    follower = trio.drivers[peer]
    for n in (1, 2):
        key, data = put(d, "a", n, seq=n)
        d.submit_write(f"w{n}", key, data)
        out = d.pump()
        sends = [m for op in out if type(op) is Send for m in op.messages if m.to == peer]
        assert follower.receive(sends) == []
        (persist,) = follower.pump()
        ready = persist.ready
        assert persist.sync and ready.entries
        acks = follower.persisted(ready)
        assert kinds(acks) == ["Send"] and {m.to for m in acks[0].messages} == {lead}
        applied_before = follower.applied_index
        after = follower.pump()
        if n == 2:          # the second append carries the first write's commit
            assert ready.committed and follower.applied_index > applied_before
            assert "Applied" in kinds(after)
        (op,) = [op for op in out if type(op) is Persist and op.sync]
        d.persisted(op.ready)
        d.receive(acks[0].messages)
        trio.run(d.pump(), lead)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_the_leaders_connection_lost_makes_a_follower_campaign_at_once(protocol):
    """peer_down of the leader (its process died: the kernel reset the connection) tells the
    core, which forgets the leader and campaigns within a couple of ticks; peer_down of
    another peer changes nothing.  The driver counts it (leader_connection_lost)."""
    trio = Trio(protocol)
    lead = trio.elect()
    others = trio.others(lead)
    trio.cut.add(lead)                                  # the leader is dead from now on
    first, second = (trio.drivers[n] for n in others)
    first.peer_down(others[1])
    assert first.replica.leader_id == lead and first.stats["leader_connection_lost"] == 0
    for n in others:
        assert trio.run(trio.drivers[n].peer_down(lead), n) == []
        assert trio.drivers[n].stats["leader_connection_lost"] == 1
    trio.settle()
    assert first.leader_id is None and second.leader_id is None
    for ticks in range(1, 10):
        for n in others:
            trio.run(trio.drivers[n].tick(), n)
        trio.settle()
        if any(trio.drivers[n].replica.role == Role.LEADER for n in others):
            break
    assert ticks <= 2


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_deadlines_answer_503_when_never_sent_and_504_when_maybe_applied(protocol):
    """No leader to send to: 503 at the deadline (definitely not applied).  Forwarded and
    unanswered: 504 (outcome unknown: retry with the same session pair)."""
    trio = Trio(protocol)
    lonely = trio.drivers[3]             # no leader yet
    key, data = put(lonely, "a", 1)
    assert lonely.submit_write("never", key, data) == []
    out = []
    for _ in range(TIMEOUT_TICKS):
        out += [op for op in lonely.tick() if type(op) is Reply]
    assert [(op.handle, op.status, op.body["error"]) for op in out] == [
        ("never", 503, "unavailable")]
    lead = trio.elect()
    follower = trio.drivers[trio.others(lead)[0]]
    key, data = put(follower, "b", 1, seq=2)
    (fwd,) = follower.submit_write("maybe", key, data)
    out = []
    for _ in range(TIMEOUT_TICKS):
        out += [op for op in follower.tick() if type(op) is Reply]
    assert [(op.handle, op.status, op.body["error"]) for op in out] == [
        ("maybe", 504, "outcome_unknown")]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_write_forwarded_to_a_deposed_leader_goes_back_as_not_leader(protocol):
    """A leader that loses leadership answers the writes other nodes forwarded to it 503
    not_leader (their node re-routes them), and keeps its own clients' writes to retry."""
    trio = Trio(protocol)
    lead = trio.elect()
    old = trio.drivers[lead]
    key, data = put(old, "a", 1)
    assert trio.run(old.submit_forwarded_write("fwd", data), lead) == []
    key2, data2 = put(old, "b", 2, seq=2)
    assert trio.run(old.submit_write("own", key2, data2), lead) == []
    trio.cut = {lead}                         # its proposals never reach the others
    trio.elect(trio.others(lead))
    trio.cut = set()
    out = []                                  # the new leader's messages depose it
    for _ in range(10):
        out += [op for n, op in trio.settle() if n == lead]
        if old.replica.role != Role.LEADER:
            break
        for n in trio.others(lead):
            trio.run(trio.drivers[n].tick(), n)
    assert [op for op in out if type(op) is Reply and op.handle == "fwd"][0].body[
        "error"] == "not_leader"
    assert not [op for op in out if type(op) is Reply and op.handle == "own"]
    assert any(type(op) is RoleChange and op.old_role == Role.LEADER for op in out)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_snapshots_are_taken_when_due_and_compact_the_log_when_saved(protocol):
    """After snapshot_entries applied entries the driver asks for a snapshot at the applied
    index; once saved, the core and the WAL are compacted to the point given."""
    d = leader(protocol, snapshot_entries=3)
    taken = []
    for seq in range(1, 5):
        key, data = put(d, f"k{seq}", seq, seq=seq)
        d.submit_write(seq, key, data)
        taken += [op for op in settle(d) if type(op) is TakeSnapshot]
    (snap,) = taken
    assert snap.meta.index == d.policy.applied_index - (d.applied_index - snap.meta.index)
    assert [name for name, _ in snap.producers] == ["kv"]
    assert KVStateMachine().restore_chunks(snap.producers[0][1]()) is None
    point = SnapshotMeta(snap.meta.index - 1, snap.meta.term, snap.meta.config)
    assert d.snapshot_saved(snap.meta, point) == [CompactLog(point.index)]
    assert d.replica.status().first_index == point.index + 1
    assert d.stats["snapshots_taken"] == 1


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_received_snapshot_is_restored_before_anything_after_it_is_applied(protocol):
    """A follower cut off while the leader compacted gets the snapshot: persisted(Ready
    with the snapshot) sends at once and asks for the restore; nothing is applied and
    pump gives nothing until snapshot_restored swaps the state in; then the entries after
    the snapshot are applied on the new state."""
    trio = Trio(protocol, snapshot_entries=4)
    lead = trio.elect()
    behind = trio.others(lead)[1]
    lagging = trio.drivers[behind]
    trio.cut = {behind}
    leader_driver = trio.drivers[lead]
    for seq in range(1, 12):
        key, data = put(leader_driver, f"k{seq}", seq, seq=seq)
        trio.run(leader_driver.submit_write(seq, key, data), lead)
        trio.settle()
    assert trio.saved, "the leader took no snapshot"
    trio.cut = set()
    offers = [op for n, op in trio.settle() if type(op) is OfferSnapshot]
    for _ in range(10):
        if offers:
            break
        trio.run(leader_driver.tick(), lead)
        offers = [op for n, op in trio.settle() if type(op) is OfferSnapshot]
    offer = offers[0].message
    assert offer.to == behind and offer.data == b""
    meta, states, sessions = trio.saved[(offer.index, offer.snap_term)]
    assert lagging.install_snapshot(offer, b"snapshot-file") == []
    out = lagging.pump()
    persist = [op for op in out if type(op) is Persist and op.sync]
    assert persist and persist[0].ready.snapshot == meta
    ready = persist[0].ready
    out = lagging.persisted(ready)
    assert kinds(out) == ["Send", "RestoreSnapshot"] and out[1] == RestoreSnapshot(meta)
    assert lagging.pump() == [] and lagging.applied_index < meta.index
    fresh = lagging.machines.fresh()
    for name, data in states:
        fresh.get(name).restore(b"".join(data))
    fresh.sessions.restore(sessions)
    out = lagging.snapshot_restored(meta, fresh)
    assert lagging.machines is fresh and lagging.applied_index >= meta.index
    assert lagging.machines.kv.get("k1")["value"] == 1
    assert all(type(op) is not RestoreSnapshot for op in out)
    trio.run(out, behind)
    for _ in range(10):                      # the log after the snapshot follows
        trio.settle()
        for n, d in trio.drivers.items():
            trio.run(d.tick(), n)
    assert lagging.applied_index == leader_driver.applied_index
    assert lagging.machines.kv.get("k11")["value"] == 11


def test_an_apply_gap_is_refused():
    """A committed entry that does not follow the applied index stops the driver."""
    d = leader("raft")
    with pytest.raises(ApplyGap, match="apply gap"):
        d._apply([Entry(d.applied_index + 2, 1, ENTRY_NORMAL, ())])


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_stop_answers_every_pending_request_503(protocol):
    """Stopping answers what is pending 503 and refuses new requests."""
    trio = Trio(protocol)
    lonely = trio.drivers[3]
    key, data = put(lonely, "a", 1)
    lonely.submit_write("w", key, data)
    lonely.submit_read("r", {"key": "a"}, "linearizable")
    out = lonely.stop()
    assert sorted((op.handle, op.status) for op in out) == [("r", 503), ("w", 503)]
    key, data = put(lonely, "b", 1, seq=2)
    (refused,) = lonely.submit_write("late", key, data)
    assert refused.status == 503 and "shutting down" in refused.body["message"]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_write_waiting_on_a_stalled_leader_is_forwarded_to_the_next_one(protocol):
    """A follower whose forwarded write gets no answer (the leader stalled) sends the same
    command to the new leader as soon as it learns of it, instead of waiting out the
    deadline; the new leader commits it and the follower answers its client."""
    trio = Trio(protocol)
    old = trio.elect()
    f = trio.others(old)[0]
    follower = trio.drivers[f]
    key, data = put(follower, "a", 1)
    (fwd,) = follower.submit_write("H", key, data)
    assert fwd.peer == old                          # the old leader never answers it
    trio.cut = {old}
    seen = len(trio.log)
    new = trio.elect(trio.others(old))
    trio.settle()
    forwards = [op for n, op in trio.log[seen:] if n == f and type(op) is Forward]
    if new != f:
        assert [(op.request, op.peer) for op in forwards] == [(fwd.request, new)]
        answer = trio.run(trio.drivers[new].submit_forwarded_write(("from", f), data), new)
        answers = answer + [op for n, op in trio.settle() if n == new and type(op) is Reply]
        (reply,) = [op for op in answers if op.handle == ("from", f)]
        assert follower.forward_answered(fwd.request, reply.status, reply.body) == [
            Reply("H", 200, reply.body)]
    else:                                           # it leads now: it proposes itself
        replies = [op for n, op in trio.log[seen:] if n == f and type(op) is Reply]
        assert [op.handle for op in replies] == ["H"] and replies[0].status == 200


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_forwarded_read_the_leader_refuses_for_its_min_revision_is_answered_at_once(protocol):
    """The leader's 503 revision_not_reached is relayed, not retried until the deadline
    (other 503s, such as not-leader, still go round again)."""
    trio = Trio(protocol)
    lead = trio.elect()
    follower = trio.drivers[trio.others(lead)[0]]
    query = {"key": "a", "min_revision": 2**63 - 1}
    (fwd,) = follower.submit_read("R", query, "linearizable")
    assert type(fwd) is Forward and fwd.peer == lead and fwd.op == "read"
    trio.run(trio.drivers[lead].submit_read(("from", 2), query, "linearizable",
                                            forwarded=True), lead)
    answers = [op for n, op in trio.settle() if n == lead and type(op) is Reply]
    assert [op.handle for op in answers] == [("from", 2)] and answers[0].status == 503
    assert answers[0].body["error"] == "revision_not_reached"
    assert follower.forward_answered(fwd.request, 503, answers[0].body) == [
        Reply("R", 503, answers[0].body)]
    (again,) = follower.submit_read("S", {"key": "a"}, "linearizable")
    unavailable = {"error": "unavailable", "message": "no leader confirmed the read in time"}
    assert follower.forward_answered(again.request, 503, unavailable) == []   # retried later
