"""The trace format of the scripted scenarios (paxoslog.sim.trace)."""

from dataclasses import dataclass, field, fields

from paxoslog.core.ballot import Ballot
from paxoslog.core.log import (ENTRY_NOOP, ENTRY_NORMAL, Entry, HardState, SnapshotMeta,
                               config_entry)
from paxoslog.core.messages import (MESSAGE_TYPES, Accept, AppendEntries, AppendEntriesReply,
                                    InstallSnapshot, Promise, RequestVote, TimeoutNow)
from paxoslog.core.quorum import Config
from paxoslog.core.ready import ConfigChanged, ProposalDropped, ReadState, Ready, RoleChanged
from paxoslog.node.commands import encode_command
from paxoslog.sim.trace import (Tracer, describe_command, describe_entry, describe_message,
                                describe_ready, describe_reply)

B = Ballot(2, 3)
VOTERS = Config(frozenset({1, 2, 3}))


def test_paxos_messages_show_ballots_entries_and_flags():
    """Multi-Paxos: ballots as round.node, entries as index@ballot:value, zero next_slot
    left out, a packed ballot in an int field shown as a ballot."""
    entries = (Entry(1, B.pack(), ENTRY_NORMAL, (b"x", b"y")),
               Entry(2, B.pack(), ENTRY_NOOP, ()))
    assert describe_message(Accept(3, 1, B, entries, 0), "multipaxos") == \
        "Accept 3->1 ballot=2.3 entries=[1@2.3:x+y 2@2.3:noop] commit=0"
    assert describe_message(Promise(1, 3, B, (), 4, 1, 0), "multipaxos") == \
        "Promise 1->3 ballot=2.3 accepted=[] chosen_upto=4 first_index=1"
    assert describe_message(TimeoutNow(3, 2, B.pack()), "multipaxos") == "TimeoutNow 3->2 term=2.3"


def test_raft_messages_show_terms_flags_and_rejections():
    """Raft: terms as integers, true flags by name, false flags omitted, granted/success
    always shown, a zero ctx and hint_term omitted."""
    assert describe_message(RequestVote(1, 2, 5, 7, 4, True, False), "raft") == \
        "RequestVote 1->2 term=5 last_index=7 last_term=4 pre"
    assert describe_message(AppendEntriesReply(2, 1, 5, False, 3, 2, 0), "raft") == \
        "AppendEntriesReply 2->1 term=5 success=false index=3 hint_term=2"
    assert describe_message(AppendEntries(1, 2, 5, 3, 4, (), 3, 7), "raft") == \
        "AppendEntries 1->2 term=5 prev_index=3 prev_term=4 entries=[] commit=3 ctx=7"
    snap = InstallSnapshot(1, 2, 5, 9, 4, VOTERS, b"abc")
    assert describe_message(snap, "raft") == \
        "InstallSnapshot 1->2 term=5 index=9 snap_term=4 config=(voters=1,2,3) data=3B"


def test_every_message_type_has_a_description():
    """Each registered message type formats (with placeholder field values) for both
    protocols, starting with its name and route."""
    samples = {"int": 1, "bool": True, "bytes": b"", "Ballot": B, "tuple[int, ...]": (1, 2),
               "tuple[Entry, ...]": (Entry(1, 1, ENTRY_NOOP, ()),), "Config": VOTERS}
    for cls in MESSAGE_TYPES.values():
        msg = cls(*(samples[f.type] for f in fields(cls)))
        for protocol in ("multipaxos", "raft"):
            assert describe_message(msg, protocol).startswith(f"{cls.__name__} 1->1")


def test_ready_lines_follow_the_order_the_shell_honours():
    """Persist (hard state, truncation, snapshot, entries), send, apply, reads, events."""
    entry = Entry(4, 2, ENTRY_NORMAL, (b"w",))
    ready = Ready(hard_state=HardState(2, 1, 3), truncate_from=4, entries=[entry],
                  snapshot=SnapshotMeta(2, 1, VOTERS), messages=[TimeoutNow(1, 2, 2)],
                  committed=[Entry(3, 2, ENTRY_NOOP, ())], reads=[ReadState("r", 3)],
                  events=[RoleChanged("leader", 2, 1), ConfigChanged(VOTERS, 2),
                          ProposalDropped((b"a", b"b"))])
    assert describe_ready(1, ready, "raft") == [
        "1 ready",
        "  persist hard-state term=2 vote=1 commit=3",
        "  persist truncate-from 4",
        "  persist snapshot 2@1 voters=1,2,3",
        "  persist entries 4@2:w",
        "  send TimeoutNow 1->2 term=2",
        "  apply 3@2:noop",
        "  read r@3",
        "  event role=leader term=2 leader=1",
        "  event config=voters=1,2,3 index=2",
        "  event dropped=a+b",
    ]
    assert describe_ready(2, Ready(hard_state=HardState(B.pack(), 0, 1)), "multipaxos") == \
        ["2 ready", "  persist hard-state promised=2.3 commit=1"]


def test_configuration_entries_show_the_configuration():
    """A CONFIG entry reads as config(voters=... outgoing=... learners=...)."""
    joint = Config(frozenset({2, 3, 4}), frozenset({1, 2, 3}), frozenset({5}))
    assert describe_entry(config_entry(7, 3, joint), "raft") == \
        "7@3:config(voters=2,3,4 outgoing=1,2,3 learners=5)"


def test_tracer_filters_by_node_and_can_leave_readies_out():
    """With nodes given, only messages from or to them and their Readies are kept; with
    readies=False only deliveries; take() empties the buffer."""
    tracer = Tracer("raft", readies=False, nodes=frozenset({3}))
    tracer.delivered(TimeoutNow(1, 2, 1))
    tracer.delivered(TimeoutNow(1, 3, 1))
    tracer.discarded(TimeoutNow(3, 2, 1), "blocked")
    tracer.ready(3, Ready(messages=[TimeoutNow(3, 1, 1)]))
    assert tracer.take() == ["deliver TimeoutNow 1->3 term=1", "blocked TimeoutNow 3->2 term=1"]
    assert tracer.take() == []
    full = Tracer("raft")
    full.held(2)
    full.ready(2, Ready(reads=[ReadState(7, 1)]))
    assert full.take() == ["2 ready held (fsync pending)", "2 ready", "  read 7@1"]


def test_commands_show_what_they_do():
    """A kv put whose key is its value shows as the value; other kv writes as k=v,
    delete(k), cas(k:expected->v); bytes that are no command map as text."""
    def kv(**fields_):
        return encode_command("kv", fields_, "c1", 1, 0)
    assert describe_command(kv(op="put", key="x", value="x")) == "x"
    assert describe_command(kv(op="put", key="k", value=3)) == "k=3"
    assert describe_command(kv(op="delete", key="k")) == "delete(k)"
    assert describe_command(kv(op="cas", key="k", value="b", expected="a")) == "cas(k:a->b)"
    assert describe_command(encode_command("counter", {"op": "add"}, "c1", 2, 0)) == \
        "counter.add"
    assert describe_command(b"plain") == "plain"
    entry = Entry(3, 1, ENTRY_NORMAL, (kv(op="put", key="a", value="a"), b"b"))
    assert describe_entry(entry, "raft") == "3@1:a+b"


def test_replies_show_commits_reads_and_errors():
    """A committed write shows its index, a read its index (and value when found), an
    error its status, code and message; a 504 leaves out its fixed advice."""
    assert describe_reply("x", 200, {"status": "committed", "index": 4, "term": 1}) == \
        "x committed index=4"
    assert describe_reply("r", 404, {"error": "not_found", "message": "m", "index": 2}) == \
        "r read index=2"
    assert describe_reply("r", 200, {"value": "v", "index": 2}) == "r read index=2 value=v"
    assert describe_reply("y", 503, {"error": "busy", "message": "the leader is busy"}) == \
        "y 503 busy: the leader is busy"
    assert describe_reply("z", 504, {"error": "outcome_unknown", "message": "retry"}) == \
        "z 504 outcome_unknown"
    tracer = Tracer("raft", nodes=frozenset({2}))
    tracer.replied(1, "x", 200, {"status": "committed", "index": 1})
    tracer.replied(2, "y", 200, {"status": "committed", "index": 2})
    assert tracer.take() == ["2 reply y committed index=2"]


def test_fields_marked_for_the_shell_only_are_left_out():
    """A message field declared with metadata trace=False does not appear."""
    @dataclass(frozen=True)
    class Note:
        frm: int
        to: int
        text: str
        secret: object = field(default=None, metadata={"trace": False})
    assert describe_message(Note(1, 2, "hi", object()), "raft") == "Note 1->2 text=hi"
