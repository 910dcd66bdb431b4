"""Errors raised by the core.  ``NotLeader`` and ``Busy`` are the caller's to handle."""

from __future__ import annotations

__all__ = ["ConsensusError", "NotLeader", "Busy", "ConfigChangeInProgress", "MalformedMessage"]


class ConsensusError(Exception):
    """Base class of the core's errors."""


class NotLeader(ConsensusError):
    """This replica cannot serve the request; ``leader_hint`` is the node believed to lead, or None."""

    def __init__(self, leader_hint: int | None) -> None:
        super().__init__(f"not the leader (leader hint: {leader_hint})")
        self.leader_hint = leader_hint


class Busy(ConsensusError):
    """A bounded queue is full; the caller should retry later (maps to HTTP 503)."""


class ConfigChangeInProgress(ConsensusError):
    """A membership change is already under way; one at a time."""


class MalformedMessage(ConsensusError):
    """A peer frame could not be decoded into a valid message (the peer sent garbage)."""
