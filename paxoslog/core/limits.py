"""Every bound of the consensus core in one place.

Names carry the unit last (``batch_bytes_max``, ``election_ticks``).  The shell may
override these through the conf file; the core only reads the ``Limits`` instance it is
given, never module globals, so the simulator can shrink them to provoke edge cases.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Limits", "DEFAULT_LIMITS"]


@dataclass(frozen=True)
class Limits:
    """Bounds on batching, pipelining, message sizes and queues."""

    # Commands per slot (one slot/entry carries a batch).
    batch_commands_max: int = 256
    # Payload bytes per slot.
    batch_bytes_max: int = 1 << 20
    # Slots in flight beyond the commit point (Multi-Paxos) / entries in flight (Raft).
    pipeline_window: int = 64
    # Entries carried by one Accept / AppendEntries / catch-up reply.
    entries_per_message_max: int = 64
    # Bytes carried by one replication message (soft: one oversized entry still goes alone).
    message_bytes_max: int = 4 << 20
    # A frame larger than this is rejected by the codec before decoding.
    frame_bytes_max: int = 16 << 20
    # Proposals queued at the leader waiting for a free pipeline slot.
    proposal_queue_max: int = 65536
    # Pending linearizable reads at the leader.
    pending_reads_max: int = 65536

    def __post_init__(self) -> None:
        assert self.batch_commands_max >= 1
        assert self.batch_bytes_max >= 1
        assert self.pipeline_window >= 1
        assert self.entries_per_message_max >= 1
        assert self.frame_bytes_max >= self.message_bytes_max


DEFAULT_LIMITS = Limits()
