"""Trace mode of the scripted scenarios: every message delivered and every Ready processed,
as stable, readable text (in the spirit of etcd-io/raft's datadriven test output).

The tracer is a passive observer: a cluster driver calls ``delivered`` for each message it
takes off the network, ``discarded`` for messages that never arrive, ``held`` when a node's
Ready waits for its fsync, ``ready`` when a Ready is completed (persisted, sent, applied)
and ``replied`` when a node answers a client, and the script interpreter collects the
lines with ``take()`` after each command.  Nothing here changes what the cluster does, so
the same hooks fit any driver that honours the Ready contract.

Commands in the log are the node driver's CBOR maps (paxoslog/node/commands.py); they are
shown by what they do: a kv put whose key and value are the same text (what the scripts'
``propose`` writes) as that text, other kv writes as ``k=v``, ``delete(k)``,
``cas(k:expected->v)``; bytes that are not a command map as text.

Formats (``@`` separates an index from the term, or the ballot for Multi-Paxos)::

    deliver Accept 1->2 ballot=1.1 entries=[1@1.1:x] commit=0
    blocked Heartbeat 1->3 ballot=1.1 commit=1 chosen=[] ctx=4      (link cut or partition)
    lost Promise 3->1 ...                                           (receiver down)
    drop Accept 1->2 ...                                            (the script dropped it)
    1 ready
      send-early Accept 1->2 ballot=1.1 entries=[2@1.1:y] commit=1
      persist entries 2@1.1:y
    2 ready
      persist hard-state promised=1.1 commit=0
      persist entries 1@1.1:x
      persist truncate-from 3
      persist snapshot 5@1.1 voters=1,2,3
      send Accepted 2->1 ballot=1.1 slots=[1]
      apply 1@1.1:x
      read r1@1
      event role=leader term=1 leader=1
      event config=voters=1,2,3 index=4
      event dropped=a+b
    3 ready held (fsync pending)
    1 reply x committed index=1
    1 reply r1 read index=1
    2 reply y 503 not_leader: node 2 is not the leader

(A Ready's ``read`` line names the node driver's read batch: the reads it answers follow
as ``reply`` lines.  ``send-early`` lines are the leader's messages that the shell sends
before persisting the Ready: they left when the Ready was handed out, also when the trace
shows ``ready held`` first.)

Message fields appear in declaration order as ``name=value``, except: the sender and
receiver (in the header), boolean flags (``pre``, ``transfer``, ``force``: the name alone
when true, nothing when false; ``granted`` and ``success`` always), and a few fields left
out at their zero value (``ctx``, ``next_slot``, ``hint_term``, an empty ``data``), and
fields declared with ``metadata={"trace": False}`` (what a script's own message types carry
for the shell only).
"""

from __future__ import annotations

from dataclasses import fields

from ..core.ballot import Ballot
from ..core.log import ENTRY_CONFIG, ENTRY_NOOP, Entry, HardState, entry_config
from ..core.quorum import Config
from ..core.ready import ConfigChanged, ProposalDropped, Ready, RoleChanged
from ..node.commands import decode_command

__all__ = ["Tracer", "describe_value", "describe_command", "describe_entry",
           "describe_message", "describe_hard_state", "describe_ready", "describe_reply"]

_ALWAYS_SHOWN_BOOLS = frozenset({"granted", "success"})
_OMITTED_AT_ZERO = frozenset({"ctx", "next_slot", "hint_term"})
# Integer fields that carry a packed ballot in Multi-Paxos (a term in Raft).
_PACKED_BALLOT_FIELDS = frozenset({"term", "snap_term"})


def _text(value) -> str:
    return value if isinstance(value, str) else repr(value)


def describe_command(data: bytes) -> str:
    """One command as it sits in the log, by what it does (see the module docstring)."""
    command = decode_command(data) if data[:1] and 0xa0 <= data[0] <= 0xbf else None
    if command is None:
        return data.decode(errors="replace")
    op, key = command.get("op"), command.get("key")
    if command.get("sm") != "kv":
        return f"{command.get('sm')}.{op}"
    if op == "put":
        value = command.get("value")
        return _text(value) if value == key else f"{_text(key)}={_text(value)}"
    if op == "delete":
        return f"delete({_text(key)})"
    if op == "cas":
        expected = command.get("expected", command.get("expected_version"))
        return f"cas({_text(key)}:{_text(expected)}->{_text(command.get('value'))})"
    return f"kv.{op}"


def describe_value(entry: Entry) -> str:
    """What a slot or log entry holds: ``noop``, ``config(...)`` or the commands joined by +."""
    if entry.kind == ENTRY_NOOP:
        return "noop"
    if entry.kind == ENTRY_CONFIG:
        return "config(" + entry_config(entry).describe() + ")"
    return "+".join(describe_command(command) for command in entry.payload)


def _term(value: int, protocol: str) -> str:
    return str(Ballot.unpack(value)) if protocol == "multipaxos" else str(value)


def describe_entry(entry: Entry, protocol: str) -> str:
    """``index@term:value`` (the term is a ballot ``round.node`` in Multi-Paxos)."""
    return f"{entry.index}@{_term(entry.term, protocol)}:{describe_value(entry)}"


def _field(name: str, value, protocol: str) -> str | None:
    if isinstance(value, bool):
        if name in _ALWAYS_SHOWN_BOOLS:
            return f"{name}={'true' if value else 'false'}"
        return name if value else None
    if name in _OMITTED_AT_ZERO and value == 0:
        return None
    if isinstance(value, Ballot):
        return f"{name}={value}"
    if isinstance(value, Config):
        return f"{name}=({value.describe()})"
    if isinstance(value, bytes):
        return f"{name}={len(value)}B" if value else None
    if isinstance(value, tuple):
        if all(isinstance(item, Entry) for item in value) and value:
            return f"{name}=[" + " ".join(describe_entry(e, protocol) for e in value) + "]"
        return f"{name}=[" + ",".join(map(str, value)) + "]"
    if isinstance(value, int) and name in _PACKED_BALLOT_FIELDS:
        return f"{name}={_term(value, protocol)}"
    return f"{name}={value}"


def describe_message(msg, protocol: str) -> str:
    """``Type from->to field=value ...`` (see the module docstring for the field rules)."""
    parts = [f"{type(msg).__name__} {msg.frm}->{msg.to}"]
    for f in fields(msg):
        if f.name in ("frm", "to") or f.metadata.get("trace") is False:
            continue
        text = _field(f.name, getattr(msg, f.name), protocol)
        if text is not None:
            parts.append(text)
    return " ".join(parts)


def describe_hard_state(hard_state: HardState, protocol: str) -> str:
    """``promised=R.N commit=C`` (Multi-Paxos) or ``term=T vote=V commit=C`` (Raft)."""
    if protocol == "multipaxos":
        return f"promised={Ballot.unpack(hard_state.term)} commit={hard_state.commit}"
    return f"term={hard_state.term} vote={hard_state.vote} commit={hard_state.commit}"


def _describe_event(event) -> str:
    if isinstance(event, RoleChanged):
        leader = "-" if event.leader is None else event.leader
        return f"role={event.role} term={event.term} leader={leader}"
    if isinstance(event, ConfigChanged):
        return f"config={event.config.describe()} index={event.index}"
    if isinstance(event, ProposalDropped):
        return "dropped=" + "+".join(describe_command(c) for c in event.commands)
    return repr(event)


def describe_ready(node_id: int, ready: Ready, protocol: str) -> list[str]:
    """The lines of one completed Ready, in the order the shell honours it."""
    lines = [f"{node_id} ready"]
    for msg in ready.early_messages:
        lines.append("  send-early " + describe_message(msg, protocol))
    if ready.hard_state is not None:
        lines.append("  persist hard-state " + describe_hard_state(ready.hard_state, protocol))
    if ready.truncate_from is not None:
        lines.append(f"  persist truncate-from {ready.truncate_from}")
    if ready.snapshot is not None:
        meta = ready.snapshot
        lines.append(f"  persist snapshot {meta.index}@{_term(meta.term, protocol)} "
                     f"{meta.config.describe()}")
    if ready.entries:
        lines.append("  persist entries "
                     + " ".join(describe_entry(e, protocol) for e in ready.entries))
    for msg in ready.messages:
        lines.append("  send " + describe_message(msg, protocol))
    for entry in ready.committed:
        lines.append("  apply " + describe_entry(entry, protocol))
    for read in ready.reads:
        lines.append(f"  read {read.request_id}@{read.index}")
    for event in ready.events:
        lines.append("  event " + _describe_event(event))
    return lines


def describe_reply(name: str, status: int, body: dict) -> str:
    """A node's answer to the client request ``name``: ``committed index=I`` for a write,
    ``read index=I`` (`` value=V`` when the key exists) for a read, else the status, the
    error code and its message (not for 504 outcome_unknown, whose message is always the
    same advice to retry)."""
    if status == 200 and body.get("status") == "committed":
        return f"{name} committed index={body['index']}"
    if status in (200, 404) and "index" in body and body.get("error") in (None, "not_found"):
        found = f" value={_text(body['value'])}" if status == 200 and "value" in body else ""
        return f"{name} read index={body['index']}{found}"
    if status == 504:
        return f"{name} {status} {body.get('error')}"
    return f"{name} {status} {body.get('error')}: {body.get('message')}"


class Tracer:
    """Collects trace lines while switched on.  ``readies=False`` shows the messages only;
    ``nodes`` (when given) keeps only the messages from or to those nodes and their Readies."""

    def __init__(self, protocol: str, readies: bool = True,
                 nodes: frozenset[int] | None = None) -> None:
        self.protocol = protocol
        self.readies = readies
        self.nodes = nodes
        self.lines: list[str] = []

    def _shows(self, *node_ids: int) -> bool:
        return self.nodes is None or any(n in self.nodes for n in node_ids)

    def delivered(self, msg) -> None:
        if self._shows(msg.frm, msg.to):
            self.lines.append("deliver " + describe_message(msg, self.protocol))

    def discarded(self, msg, why: str) -> None:
        """``why``: ``blocked`` (cut link), ``lost`` (receiver down) or ``drop`` (script)."""
        if self._shows(msg.frm, msg.to):
            self.lines.append(f"{why} " + describe_message(msg, self.protocol))

    def held(self, node_id: int) -> None:
        if self.readies and self._shows(node_id):
            self.lines.append(f"{node_id} ready held (fsync pending)")

    def ready(self, node_id: int, ready: Ready) -> None:
        if self.readies and self._shows(node_id):
            self.lines.extend(describe_ready(node_id, ready, self.protocol))

    def replied(self, node_id: int, name: str, status: int, body: dict) -> None:
        if self._shows(node_id):
            self.lines.append(f"{node_id} reply {describe_reply(name, status, body)}")

    def take(self) -> list[str]:
        lines, self.lines = self.lines, []
        return lines
