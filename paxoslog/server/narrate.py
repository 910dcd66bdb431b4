"""DEBUG sentences for the peer messages that explain elections and catch-up.

``--log-level debug`` should answer "why did node 3 become leader?" and "why is node 2
behind?" without a packet capture: every vote, promise, refusal and catch-up message a node
receives is told in one line, in the vocabulary of the API (a Paxos ballot is written
``round.node``; its round is the term users see).  Heartbeats and log replication are not
told (they are the steady state and would drown the rest).
"""

from __future__ import annotations

from paxoslog.core.ballot import Ballot
from paxoslog.core.messages import (AppendEntriesReply, CatchupReply, CatchupRequest, Nack,
                                    Prepare, PreVote, PreVoteReply, Promise, RequestVote,
                                    RequestVoteReply, TimeoutNow)

__all__ = ["narrate", "TOLD"]


# Message types that may be told (a cheap test on the receive path).
TOLD = frozenset((PreVote, PreVoteReply, Prepare, Promise, Nack, RequestVote,
                  RequestVoteReply, TimeoutNow, CatchupRequest, CatchupReply,
                  AppendEntriesReply))


def _granted(yes: bool) -> str:
    return "grants" if yes else "refuses"


def _slots(slots: tuple) -> str:
    if len(slots) <= 6:
        return ", ".join(map(str, slots))
    return f"{slots[0]}..{slots[-1]} ({len(slots)} slots)"


def narrate(msg) -> str | None:
    """A sentence for ``msg`` (received by this node), or None for the steady-state
    messages that are not told."""
    kind = type(msg)
    frm = msg.frm
    if kind is PreVote:
        return (f"election: node {frm} asks for a pre-vote for ballot {msg.ballot} (term "
                f"{msg.ballot.round}); its first unchosen slot is {msg.first_unchosen}")
    if kind is PreVoteReply:
        return (f"election: node {frm} {_granted(msg.granted)} the pre-vote for ballot "
                f"{msg.ballot}; it has chosen up to slot {msg.chosen_upto}")
    if kind is Prepare:
        return (f"election: node {frm} prepares ballot {msg.ballot} (term "
                f"{msg.ballot.round}) from slot {msg.from_slot}"
                + (" (leader transfer)" if msg.force else ""))
    if kind is Promise:
        return (f"election: node {frm} promises ballot {msg.ballot} with "
                f"{len(msg.accepted)} accepted slot(s); chosen up to {msg.chosen_upto}")
    if kind is Nack:
        return (f"election: node {frm} refuses ballot {msg.ballot}: it promised "
                f"{msg.promised} (term {msg.promised.round})")
    if kind is RequestVote:
        what = "pre-vote" if msg.pre else "vote"
        return (f"election: node {frm} asks for a {what} in term {msg.term}; its log ends "
                f"at index {msg.last_index} (term {msg.last_term})"
                + (" (leader transfer)" if msg.transfer else ""))
    if kind is RequestVoteReply:
        what = "pre-vote" if msg.pre else "vote"
        return f"election: node {frm} {_granted(msg.granted)} its {what} in term {msg.term}"
    if kind is TimeoutNow:
        return (f"election: node {frm} hands leadership over: campaign now (its term "
                f"{_term(msg.term)})")
    if kind is CatchupRequest:
        if not msg.slots:
            return f"catch-up: node {frm} hears no leader and asks how far slots are chosen"
        return f"catch-up: node {frm} asks for the chosen values of slots {_slots(msg.slots)}"
    if kind is CatchupReply:
        return (f"catch-up: node {frm} sends {len(msg.entries)} chosen entr"
                f"{'y' if len(msg.entries) == 1 else 'ies'}; chosen up to {msg.commit}")
    if kind is AppendEntriesReply and not msg.success:
        return (f"catch-up: node {frm} refused entries (its log differs or is short); it "
                f"hints index {msg.index} (term {msg.hint_term}): backing up")
    return None


def _term(value: int) -> str:
    """TimeoutNow carries a Raft term or a packed ballot; a packed ballot is huge."""
    if value >= 1 << 32:
        ballot = Ballot.unpack(value)
        return f"{ballot.round} (ballot {ballot})"
    return str(value)
