"""Tick timers of both protocols: the randomized election timeout, fixed intervals
(heartbeat, check-quorum period, leadership-transfer deadline), when each peer was last
heard (check-quorum, status), and when to campaign after the leader's connection was reset
(``ResetFailover``).

A node's own stall (``Replica.stalled``, called before the ticks that make it up) is held
against nobody: what the others sent meanwhile is still unread.  A leader moves its peers'
last contact (``PeerContact.shift``: check-quorum), a follower of a known leader holds its
election timer (``ElectionTimer.hold``: that leader's heartbeats are as unread); a node
with no leader to wait for counts the stall.  Leases and stickiness, which bound what the
node itself may do, count the stall's ticks in full.

Time is ticks; the only randomness is the replica's seeded ``Rng``.  Election timeouts are
drawn uniformly from [election_ticks, 2 * election_ticks), so two candidates rarely time
out together (dueling candidates back off with a fresh draw).
"""

from __future__ import annotations

from typing import Iterable

from .quorum import Config
from .types import Rng

__all__ = ["ElectionTimer", "Interval", "PeerContact", "ResetFailover"]


class ElectionTimer:
    """Counts ticks without news from a leader; expires after a randomized timeout, or
    sooner once ``expire_after`` shortened it (the leader's connection was reset).  Ticks
    this node makes up after a stall of its own count as one (``hold``)."""

    __slots__ = ("_base", "_rng", "elapsed", "timeout", "shortened")

    def __init__(self, election_ticks: int, rng: Rng) -> None:
        assert election_ticks >= 1
        self._base = election_ticks
        self._rng = rng
        self.elapsed = 0
        self.timeout = self._draw()
        self.shortened = False

    def _draw(self) -> int:
        return self._base + self._rng.randrange(self._base)

    def tick(self) -> bool:
        """One tick; True when the timeout is reached (the caller acts and resets)."""
        self.elapsed += 1
        return self.elapsed >= self.timeout

    def restart(self) -> None:
        """Count again from zero toward the same timeout (news from a leader); a shortened
        timeout is replaced by a fresh draw (the shortcut was for one election)."""
        self.elapsed = 0
        if self.shortened:
            self.redraw()

    def redraw(self) -> None:
        """Draw a new timeout, keeping the ticks counted so far."""
        self.timeout = self._draw()
        self.shortened = False

    def reset(self) -> None:
        """Count from zero toward a freshly drawn timeout."""
        self.elapsed = 0
        self.redraw()

    def hold(self, ticks: int) -> None:
        """The next ``ticks`` ticks do not count: this node did not run for that long, so
        the leader's silence meanwhile is no evidence (``Replica.stalled``)."""
        self.elapsed -= ticks

    def expire_after(self, ticks: int) -> None:
        """Expire ``ticks`` ticks from now (at most), instead of at the drawn timeout."""
        assert ticks >= 1
        self.timeout = min(self.timeout, self.elapsed + ticks)
        self.shortened = True

    def cancel_shortcut(self) -> None:
        """Back to a drawn timeout if ``expire_after`` shortened it (another node is
        campaigning already: two early candidates would split the vote)."""
        if self.shortened:
            self.redraw()


class Interval:
    """Fires every ``ticks`` ticks, counted from the last firing or ``reset``."""

    __slots__ = ("ticks", "elapsed")

    def __init__(self, ticks: int) -> None:
        assert ticks >= 1
        self.ticks = ticks
        self.elapsed = 0

    def tick(self) -> bool:
        self.elapsed += 1
        if self.elapsed >= self.ticks:
            self.elapsed = 0
            return True
        return False

    def reset(self) -> None:
        self.elapsed = 0


class PeerContact:
    """The tick at which the leader last heard from each peer (a reply of its own term).

    Check-quorum asks whether a quorum was heard since some tick: Raft asks every tick
    about the last election timeout (its peers count as heard when it starts leading),
    Multi-Paxos asks once per election timeout about the period just ended.  Ticks the
    leader made up after a stall of its own are not held against its peers (``shift``):
    their answers were waiting unread in its sockets."""

    __slots__ = ("_heard",)

    def __init__(self) -> None:
        self._heard: dict[int, int] = {}

    def heard(self, peer: int, now: int) -> None:
        self._heard[peer] = now

    def shift(self, ticks: int) -> None:
        """Move every peer's last contact ``ticks`` later: the leader itself did not run
        for that long (``Replica.stalled``), so their silence meanwhile says nothing."""
        heard = self._heard
        for peer in heard:
            heard[peer] += ticks

    def last(self, peer: int, default: int) -> int:
        return self._heard.get(peer, default)

    def forget(self, peer: int) -> None:
        self._heard.pop(peer, None)

    def clear(self) -> None:
        self._heard.clear()

    def quorum_since(self, since: int, configs: Iterable[Config], node_id: int) -> bool:
        """True when we and the peers heard at or after tick ``since`` form a quorum of
        every one of ``configs``."""
        active = {node_id}
        active.update(peer for peer, tick in self._heard.items() if tick >= since)
        return all(config.is_quorum(active) for config in configs)


class ResetFailover:
    """When a follower campaigns after the shell reported its leader's connection reset
    (``replica.leader_unreachable``), in both protocols.

    A reset by the peer's kernel usually means the leader process is gone (kill -9, a
    crash): waiting out a whole election timeout buys nothing.  A partition or a stalled
    process resets nothing and still takes the timeout.  Followers stagger by rank (their
    position among the other voters, by id): the first campaigns on its next tick, the
    next two ticks later, and so on, so that the usual case (every follower sees the reset
    within the same tick) gives one candidate, not a split vote; a candidate whose log is
    behind is refused and the next one campaigns two ticks later.  Two ticks, because the
    ticks of different nodes are not aligned (one tick apart could be a few milliseconds),
    and a follower that grants a pre-vote gives up its own early campaign
    (``ElectionTimer.cancel_shortcut``) once the first candidate's request has arrived.

    An early pre-vote that does not win at once (a follower that has not seen the reset
    yet still hears the leader and refuses) is repeated every ``2 x others`` ticks (so that
    the staggered candidates keep their order) for an election timeout (``retry``):
    without that, the most up-to-date follower, refused once, would wait out its whole
    timeout while the others, behind it, cannot win (sim failover seed 18, Raft).  Only
    pre-votes repeat, and pre-votes change no term, ballot or vote.

    A reset while the leader lives (a flapping connection, a middlebox) costs a few
    refused pre-votes: pre-vote is the guard against disruption (the followers that still
    hear the leader, and the leader itself, refuse them; nothing durable changes), and the
    next message from the leader makes the follower follow it again.  So with pre-vote
    every reset of the leader's connection is taken at its word: once a flapping
    connection had used up the early campaign, the real death of the leader soon after
    would otherwise take a whole timeout (sim failover seed 20, Raft).  Without pre-vote
    (``throttle``) an early campaign bumps the term or ballot and deposes a live leader, so
    a follower campaigns early at most once per election timeout: a flapping connection
    cannot make it campaign more often than its election timeout would."""

    __slots__ = ("_election_ticks", "_throttle", "_last", "_retry_ticks", "_retry_until",
                 "early_campaigns")

    def __init__(self, election_ticks: int, throttle: bool = False) -> None:
        self._election_ticks = election_ticks
        self._throttle = throttle
        self._last: int | None = None
        self._retry_ticks = 2
        self._retry_until = 0
        self.early_campaigns = 0        # campaigns started early, retries included (status)

    def delay(self, now: int, voters: frozenset[int], node_id: int, leader: int,
              wait_ticks: int = 0) -> int | None:
        """Ticks until this node should campaign (after ``wait_ticks`` it must wait anyway),
        or None when ``throttle`` and it campaigned early less than an election timeout ago."""
        if self._throttle and self._last is not None \
                and now - self._last < self._election_ticks:
            return None
        self._last = now
        others = sorted(voters - {leader})
        rank = others.index(node_id) if node_id in others else 0
        delay = max(0, wait_ticks) + 1 + 2 * rank
        self._retry_ticks = 2 * max(1, len(others))
        self._retry_until = now + delay + self._election_ticks
        return delay

    def schedule(self, election: ElectionTimer, now: int, voters: frozenset[int],
                 node_id: int, leader: int, wait_ticks: int = 0) -> None:
        """The leader's connection was reset: shorten ``election`` to ``delay``'s answer.

        With leases (``wait_ticks`` > 0: ticks left until an election timeout after the
        leader's last message) a reset is no proof that the leader stopped serving lease
        reads (a process that closed the connection itself, a middlebox): the follower
        keeps its leader and refuses campaigns until then, as the lease bound assumes, and
        only skips the random extra wait.  Without leases the caller also forgets the
        leader, so that it grants pre-votes, Prepares and votes at once."""
        delay = self.delay(now, voters, node_id, leader, wait_ticks)
        if delay is not None:
            election.expire_after(delay)

    def campaigned(self, election: ElectionTimer, now: int, early: bool,
                   pre_candidate: bool) -> None:
        """A campaign just started because ``election`` expired (``early``: it had been
        shortened by ``schedule``): while its pre-vote is not won, try again soon."""
        if not early:
            return
        retry = self.retry(now)
        if retry is not None and pre_candidate:
            election.expire_after(retry)

    def retry(self, now: int) -> int | None:
        """An early campaign just started (at ``now``; counted): ticks until the next
        pre-vote should, if this one is not granted, or None once an election timeout has
        passed since the first (the drawn timeout takes over)."""
        self.early_campaigns += 1
        if now + self._retry_ticks >= self._retry_until:
            return None
        return self._retry_ticks
