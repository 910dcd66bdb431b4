"""The Raft leader's view of one follower, and its replication flow control.

Three states, as in etcd-raft's tracker:

* ``PROBE``: one AppendEntries at a time (``paused`` until its reply or the next heartbeat)
  until the follower's match point is found;
* ``REPLICATE``: optimistic; ``next`` advances as entries are sent, at most
  ``pipeline_window`` beyond ``match``; in-flight entries unacknowledged for two heartbeat
  intervals are assumed lost (back to probing from ``match``);
* ``SNAPSHOT``: an InstallSnapshot is in flight; appends wait for its reply, and a snapshot
  unanswered for an election timeout is sent again.

Every transition is a method here, so the protocol code reads as "what happened", and the
indices keep ``match < next``.  Pure: ticks come from the caller.
"""

from __future__ import annotations

__all__ = ["Progress", "PROBE", "REPLICATE", "SNAPSHOT"]

PROBE = "probe"
REPLICATE = "replicate"
SNAPSHOT = "snapshot"


class Progress:
    """Replication state of one follower (leader only)."""

    __slots__ = ("match", "next", "state", "paused", "progress_tick", "snapshot_index",
                 "snapshot_tick")

    def __init__(self, next_index: int, now: int) -> None:
        self.match = 0
        self.next = next_index
        self.state = PROBE
        self.paused = False        # probe sent, waiting for a reply (or the next heartbeat)
        self.progress_tick = now   # last tick match advanced or the pipeline started filling
        self.snapshot_index = 0
        self.snapshot_tick = 0

    def probe(self) -> None:
        """Back to probing from the match point (entries lost, a snapshot installed, or a
        transfer target that must be sent what it lacks)."""
        self.state, self.next, self.paused = PROBE, self.match + 1, False

    def can_send(self, last: int, window: int) -> bool:
        """Whether an AppendEntries with entries (or a probe) may go out now."""
        if self.state == PROBE:
            return not self.paused
        return (self.state == REPLICATE and self.next <= last
                and self.next <= self.match + window)

    def on_heartbeat(self, now: int, stall_ticks: int, snapshot_ticks: int) -> None:
        """A heartbeat round starts: give up on a lost snapshot or a stalled pipeline."""
        if self.state == SNAPSHOT:
            if now - self.snapshot_tick >= snapshot_ticks:
                self.state, self.paused = PROBE, False  # the snapshot got lost: send again
        elif self.state == REPLICATE:
            if self.next - 1 > self.match and now - self.progress_tick >= stall_ticks:
                self.probe()  # in-flight entries unacknowledged for too long: assume lost

    def acknowledged(self, index: int, now: int) -> bool:
        """The follower holds our log through ``index``; True when ``match`` advanced."""
        advanced = index > self.match
        if advanced:
            self.match = index
            self.progress_tick = now
        if self.state == SNAPSHOT:
            if self.match >= self.snapshot_index:  # installed (its reply may have been lost)
                self.probe()
        elif self.state == PROBE and index >= self.next - 1:
            self.state, self.next = REPLICATE, index + 1  # the probe found the match point
            self.progress_tick = now
        if self.next <= self.match:
            self.next = self.match + 1
        return advanced

    def snapshot_installed(self, index: int, now: int) -> bool:
        """The follower answered our InstallSnapshot at ``index``; True when ``match``
        advanced."""
        advanced = index > self.match
        if advanced:
            self.match = index
            self.progress_tick = now
        if self.state == SNAPSHOT:
            self.probe()
        elif self.next <= self.match:
            self.next = self.match + 1
        return advanced

    def rejected(self, next_index: int, last: int) -> None:
        """The follower's log does not match below ``next_index`` (its hint): probe from
        there, never below ``match`` nor at or above what was already tried."""
        if self.state == SNAPSHOT:
            return
        self.next = max(self.match + 1, min(next_index, self.next - 1, last + 1))
        self.state = PROBE

    def sending_snapshot(self, index: int, now: int) -> None:
        self.state = SNAPSHOT
        self.snapshot_index = index
        self.snapshot_tick = now
