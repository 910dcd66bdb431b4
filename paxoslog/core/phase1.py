"""Multi-Paxos phase 1 of one candidacy, and the configuration timeline of a slot log.

``promise_page`` is the acceptor's side: the slots it accepted from the candidate's first
unchosen slot up, a page at a time.  ``PhaseOne`` collects the Promises for one ballot: each acceptor's promise may arrive in
pages (at most ``message_bytes_max`` each), duplicates are dropped, and once complete a
promise counts.  It answers what the candidate needs to decide: which configurations its
quorum must cover (its own view plus every CONFIG value a promise reports), whom it has
not asked yet, whether an acceptor already compacted slots it lacks, and, on winning, the
value of the highest ballot for each slot (the value it must re-propose).

``ConfigTimeline`` answers "which configuration governs slot s" for Multi-Paxos, where a
CONFIG entry at slot s governs every slot above it and slots are chosen out of order: the
snapshot's configuration, the CONFIG entries known chosen, and (on the leader) those
proposed but not chosen yet.  (Raft keeps its configurations in raftlog.py, applied on
append.)
"""

from __future__ import annotations

from typing import Iterable, Iterator

from sortedcontainers import SortedDict

from .ballot import Ballot
from .chunking import MessageBudget
from .log import ENTRY_CONFIG, Entry, SlotLog, entry_config
from .messages import Promise
from .quorum import Config

__all__ = ["PhaseOne", "ConfigTimeline", "promise_page"]


def promise_page(log: SlotLog, node_id: int, to: int, ballot: Ballot, from_slot: int,
                 budget: MessageBudget | None) -> Promise:
    """Our accepted slots from ``from_slot`` up, as many as ``budget`` admits (all when
    None); ``next_slot`` says where the next page starts, 0 when this is the last."""
    accepted: list[Entry] = []
    next_slot = 0
    for entry in log.range(max(from_slot, log.first_index), log.last_index + 1):
        if budget is not None and not budget.admit(entry):
            next_slot = entry.index
            break
        accepted.append(entry)
    return Promise(node_id, to, ballot, tuple(accepted), log.chosen_upto, log.first_index,
                   next_slot)


class PhaseOne:
    """Promises gathered for ``ballot`` covering every slot from ``from_slot`` up."""

    __slots__ = ("ballot", "from_slot", "promises", "prepared", "_pages")

    def __init__(self, ballot: Ballot, from_slot: int, own: Promise,
                 asked: Iterable[int]) -> None:
        self.ballot = ballot
        self.from_slot = from_slot
        self.promises: dict[int, Promise] = {own.frm: own}
        self.prepared = set(asked)          # peers sent a Prepare for this ballot
        self._pages: dict[int, dict[int, Promise]] = {}

    def add_page(self, msg: Promise) -> bool:
        """File one page of ``msg.frm``'s promise (complete when ``msg.next_slot`` is 0);
        False when it is stale, a duplicate or from an acceptor already counted."""
        if msg.ballot != self.ballot or msg.frm in self.promises:
            return False
        pages = self._pages.setdefault(msg.frm, {})
        first = msg.accepted[0].index if msg.accepted else 0
        if first in pages:
            return False
        pages[first] = msg
        if not msg.next_slot:
            accepted = tuple(e for key in sorted(pages) for e in pages[key].accepted)
            self.promises[msg.frm] = Promise(msg.frm, msg.to, msg.ballot, accepted,
                                             msg.chosen_upto, msg.first_index, 0)
            del self._pages[msg.frm]
        return True

    def configs(self, known: Iterable[Config]) -> list[Config]:
        """Every configuration the candidate needs a quorum of: ``known`` (its own view of
        the slots from ``from_slot`` up) and every CONFIG value a promise reports."""
        configs = set(known)
        for promise in self.promises.values():
            for entry in promise.accepted:
                if entry.kind == ENTRY_CONFIG:
                    configs.add(entry_config(entry))
        return list(configs)

    def won(self, configs: Iterable[Config]) -> bool:
        return all(config.is_quorum(self.promises) for config in configs)

    def unasked(self, configs: Iterable[Config]) -> list[int]:
        """Voters of ``configs`` not sent a Prepare yet (marked asked now)."""
        wanted = frozenset().union(*(c.all_voters for c in configs)) - self.prepared
        wanted -= set(self.promises)
        self.prepared |= wanted
        return sorted(wanted)

    def compacted_at(self, node_id: int) -> int | None:
        """An acceptor whose promise starts above ``from_slot``: it compacted slots that
        are chosen but that we do not hold (we cannot lead before fetching them)."""
        for peer, promise in self.promises.items():
            if promise.first_index > self.from_slot and peer != node_id:
                return peer
        return None

    def highest_values(self) -> dict[int, Entry]:
        """For each slot from ``from_slot`` up that a promise reports, the entry accepted at
        the highest ballot (the value a new leader must propose again)."""
        best: dict[int, Entry] = {}
        for promise in self.promises.values():
            for entry in promise.accepted:
                if entry.index < self.from_slot:
                    continue
                current = best.get(entry.index)
                if current is None or entry.term > current.term:
                    best[entry.index] = entry
        return best


class ConfigTimeline:
    """Which configuration governs each slot (a CONFIG entry at slot s governs s + 1 on)."""

    __slots__ = ("base", "chosen", "proposed")

    def __init__(self, base: Config) -> None:
        self.base = base                      # the snapshot's (or the bootstrap) config
        self.chosen: SortedDict = SortedDict()    # slot of a chosen CONFIG entry -> Config
        self.proposed: SortedDict = SortedDict()  # the leader's, not chosen yet

    def latest(self) -> Config:
        """The newest configuration known chosen (or proposed, on the leader)."""
        if self.proposed:
            return self.proposed.peekitem(-1)[1]
        if self.chosen:
            return self.chosen.peekitem(-1)[1]
        return self.base

    def at(self, slot: int) -> Config:
        """The configuration that governs ``slot``: the latest CONFIG entry before it."""
        best_slot, best = -1, self.base
        index = self.chosen.bisect_left(slot) - 1
        if index >= 0:
            best_slot, best = self.chosen.peekitem(index)
        index = self.proposed.bisect_left(slot) - 1
        if index >= 0:
            proposed_slot, proposed = self.proposed.peekitem(index)
            if proposed_slot > best_slot:
                best = proposed
        return best

    def chosen_from(self, slot: int) -> Iterator[Config]:
        """The chosen configurations at ``slot`` and above."""
        for at in self.chosen.irange(slot, None):
            yield self.chosen[at]

    def prune(self, index: int, config: Config) -> None:
        """A snapshot through ``index`` with ``config`` replaces the entries it covers."""
        for slot in list(self.chosen.irange(None, index)):
            del self.chosen[slot]
        self.base = config
