"""``Watch``: tells the operator, in the log, about every condition they must act on.

Each condition is an episode (episodes.py): one WARN (or ERROR) when it starts, one line
with its duration when it ends, nothing in between however long it lasts.

=====================  ==========================================  =====================
condition              starts when                                 ends when
=====================  ==========================================  =====================
no leader              no leader known for an election timeout     a leader is known
quorum lost            fewer voters than a quorum (this node       a quorum is heard
                       included) were heard from in the last        from again
                       ``heard_window_s``
peer unreachable       nothing heard from a member for              a frame arrives
                       ``peer_unreachable_s``
slow fsync             an fsync of one Ready took over              ``quiet_s`` without
                       ``fsync_slow_s``                             a slow one
slow apply             one event-loop step that applied committed   ``quiet_s`` without
                       entries took over ``apply_slow_s``           a slow one
snapshot failures      taking a local snapshot failed (ERROR)       a snapshot succeeds
=====================  ==========================================  =====================

"Heard from" counts every frame of an authenticated peer connection, PINGs included
(peers.py pings each peer a few times per election timeout): a process that is stopped
(SIGSTOP, a VM paused) keeps its TCP connection, so being connected proves nothing.

A removed node (addressbook.py), a storage error (fatal: runner.py) and a refused peer
(peers.py: its state machines differ) are logged where they happen: each ends the node or
the connection, so there is no episode to close.

The ``Watch`` samples every ``period_s`` on the injected reactor (tests drive a
``task.Clock``); the slow-fsync, slow-apply and snapshot events come from the runner.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

from twisted.logger import Logger

from .episodes import Condition, Occurrences
from .periodic import PeriodicService

__all__ = ["Watch", "WatchLimits", "NodeLook"]

log = Logger(namespace="paxoslog.watch")


@dataclass(frozen=True)
class WatchLimits:
    """Thresholds, in seconds (derived from the conf's timing by ``for_timing``)."""

    election_s: float
    heard_window_s: float
    peer_unreachable_s: float
    fsync_slow_s: float = 1.0       # etcd warns on a WAL fsync over 1 s
    apply_slow_s: float = 0.1       # etcd warns on an apply over 100 ms
    quiet_s: float = 10.0

    @classmethod
    def for_timing(cls, election_s: float, ping_interval_s: float) -> "WatchLimits":
        return cls(election_s=election_s,
                   heard_window_s=max(election_s, 3 * ping_interval_s),
                   peer_unreachable_s=max(5.0, 5 * election_s))


@dataclass(frozen=True)
class NodeLook:
    """What the watch may read of the node (narrow callables)."""

    node_id: int
    role: Callable[[], str]
    leader_id: Callable[[], int | None]
    term: Callable[[], int]
    config: Callable[[], object]               # core quorum.Config: voters, is_quorum
    peers: Callable[[], Iterable[int]]         # members to be connected to (not self)
    last_heard_s: Callable[[int], float | None]
    removed: Callable[[], bool]


def _emitter(level: str, text: str) -> None:
    getattr(log, level)("{text}", text=text)


class Watch(PeriodicService):
    """One node's episodes.  ``emit(level, text)`` defaults to this module's logger."""

    name = "watch"

    def __init__(self, look: NodeLook, limits: WatchLimits, reactor, period_s: float,
                 emit: Callable[[str, str], None] = _emitter) -> None:
        self.look = look
        self.limits = limits
        self.reactor = reactor
        self.period_s = period_s
        self.emit = emit
        clock = reactor.seconds
        self.no_leader = Condition(
            clock, emit, level="warn", after_s=limits.election_s,
            start_text="no leader for {duration}, longer than the election timeout: "
                       "{detail}",
            end_text="{detail} after {duration} without a leader")
        self.quorum_lost = Condition(
            clock, emit, level="warn", after_s=limits.heard_window_s,
            start_text="quorum lost: {detail}; writes and linearizable reads wait until "
                       "a quorum is back",
            end_text="quorum regained after {duration}: {detail}")
        self.slow_fsync = Occurrences(
            clock, emit, level="warn", quiet_s=limits.quiet_s,
            start_text="slow fsync: {detail} (over " + f"{limits.fsync_slow_s:g}"
                       + " s; is the disk overloaded or failing?)",
            end_text="fsyncs fast again: {count} slow ones over {duration}, the last {detail}")
        self.slow_apply = Occurrences(
            clock, emit, level="warn", quiet_s=limits.quiet_s,
            start_text="slow apply: {detail} (over " + f"{limits.apply_slow_s:g}"
                       + " s; the event loop stalls meanwhile)",
            end_text="applies fast again: {count} slow ones over {duration}, the last "
                     "{detail}")
        self.snapshot_failures = Occurrences(
            clock, emit, level="error", quiet_s=float("inf"),
            start_text="snapshot failed: {detail}; the log is not compacted until one "
                       "succeeds",
            end_text="snapshots work again ({detail}) after {count} failure(s) over "
                     "{duration}")
        self.unreachable: dict[int, Condition] = {}

    # ------------------------------------------------------------------ service

    def periodic(self) -> None:
        self.sample()

    # ------------------------------------------------------------------ events

    def fsynced(self, seconds: float) -> None:
        if seconds > self.limits.fsync_slow_s:
            self.slow_fsync.occurred(f"{seconds:.3f} s")

    def applied(self, seconds: float, entries: int) -> None:
        if seconds > self.limits.apply_slow_s:
            self.slow_apply.occurred(f"{seconds:.3f} s for {entries} entries")

    def snapshot_failed(self, index: int, error: str) -> None:
        self.snapshot_failures.occurred(f"at index {index}: {error}")

    def snapshot_saved(self, index: int) -> None:
        self.snapshot_failures.recovered(f"snapshot at index {index}")

    # ------------------------------------------------------------------ sampling

    def heard_voters(self) -> tuple[set[int], frozenset[int]]:
        """(voters heard from within the window, this node included; all voters)."""
        look = self.look
        config = look.config()
        voters = frozenset(config.all_voters)
        window = self.limits.heard_window_s
        heard = {look.node_id} & voters
        for peer in voters - {look.node_id}:
            ago = look.last_heard_s(peer)
            if ago is not None and ago <= window:
                heard.add(peer)
        return heard, voters

    def quorum_reachable(self) -> bool:
        heard, _ = self.heard_voters()
        return self.look.config().is_quorum(heard)

    def sample(self) -> None:
        look = self.look
        if look.removed():
            return
        leader = look.leader_id()
        heard, voters = self.heard_voters()
        seen = (f"heard from voters {sorted(heard)} of {sorted(voters)} within "
                f"{self.limits.heard_window_s:g} s")
        if leader is None:
            self.no_leader.update(True, f"this node is {look.role()} in term {look.term()}, "
                                        f"{seen}")
        else:
            self.no_leader.update(False, f"node {leader} leads (term {look.term()})")
        self.quorum_lost.update(not look.config().is_quorum(heard), seen)
        self._sample_peers()
        self.slow_fsync.tick()
        self.slow_apply.tick()

    def _sample_peers(self) -> None:
        look = self.look
        peers = set(look.peers())
        for gone in set(self.unreachable) - peers:
            del self.unreachable[gone]
        for peer in sorted(peers):
            episode = self.unreachable.get(peer)
            if episode is None:
                episode = self.unreachable[peer] = Condition(
                    self.reactor.seconds, self.emit, level="warn",
                    after_s=self.limits.peer_unreachable_s,
                    start_text=f"node {peer} unreachable for " + "{duration}: {detail}",
                    end_text=f"node {peer} reachable again after " + "{duration}")
            ago = look.last_heard_s(peer)
            if ago is None:
                episode.update(True, "never heard from since this node started")
            else:
                episode.update(ago > self.limits.heard_window_s,
                               f"nothing heard for {ago:.1f} s")
