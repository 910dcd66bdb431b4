"""Terms as users see them, the same in every output (API, CLI, logs, tools).

Raft has terms.  Multi-Paxos has ballots ``(round, node_id)``, written ``round.node`` (e.g.
``2.1``: round 2, proposed by node 1).  Storage keeps a ballot packed into one integer
(``round << 32 | node_id``, core/ballot.py) so that the WAL and the hard state treat both
protocols alike and keep their order; ``8589934593`` is ballot ``2.1``.

**The term users see is the ballot's round.**  A new leader in Multi-Paxos prepares with a
round above every round it has seen, so, as with Raft terms, the term grows at every
election and one leader holds a term at a time (the node id in the ballot only breaks ties
between candidates of the same round).  Every output shows ``term`` as that number; outputs
of Multi-Paxos data add ``ballot`` (``"2.1"``) where the full ballot matters (the WAL, the
hard state, snapshots, election debug lines).  Nothing prints the packed integer.
"""

from __future__ import annotations

from paxoslog.core.ballot import NODE_ID_BITS, Ballot

__all__ = ["user_term", "ballot_text", "term_fields", "describe_term", "describe_hard_state"]


def _is_paxos(stored: int, protocol: str | None) -> bool:
    if protocol is not None:
        return protocol == "multipaxos"
    # Unknown protocol (a snapshot file on its own): a packed ballot of round >= 1 is at
    # least 2**32, which no Raft term reaches.
    return stored >= 1 << NODE_ID_BITS


def user_term(stored: int, protocol: str | None) -> int:
    """The term users see for a stored term (a Raft term, or a packed Paxos ballot)."""
    return Ballot.unpack(stored).round if _is_paxos(stored, protocol) else stored


def ballot_text(stored: int) -> str:
    """A packed ballot as ``round.node``."""
    return str(Ballot.unpack(stored))


def term_fields(stored: int, protocol: str | None) -> dict:
    """``{"term": n}``, plus ``"ballot": "r.n"`` for Multi-Paxos (JSON outputs)."""
    if _is_paxos(stored, protocol):
        return {"term": user_term(stored, protocol), "ballot": ballot_text(stored)}
    return {"term": stored}


def describe_term(stored: int, protocol: str | None) -> str:
    """``term 2`` or ``term 2 (ballot 2.1)`` (text outputs)."""
    if _is_paxos(stored, protocol):
        return f"term {user_term(stored, protocol)} (ballot {ballot_text(stored)})"
    return f"term {stored}"


def describe_hard_state(hard_state, protocol: str | None) -> str:
    """A hard state (term, vote, commit) in words."""
    term, vote, commit = tuple(hard_state)
    if _is_paxos(term, protocol):
        return f"{describe_term(term, 'multipaxos')} promised, commit {commit}"
    return f"term {term}, voted for {vote or 'nobody'}, commit {commit}"
