"""Errors raised by the core.

``NotLeader``, ``Busy`` and ``ConfigChangeInProgress`` are answers the caller handles (route
elsewhere, retry later).  Like h11, we keep "the peer sent garbage" (``MalformedMessage``)
apart from "you misused me" (``ContractViolation``): the latter is a bug in the shell,
never retryable and never the peer's fault."""

from __future__ import annotations

__all__ = ["ConsensusError", "NotLeader", "Busy", "ConfigChangeInProgress", "MalformedMessage",
           "ContractViolation"]


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


class ContractViolation(ConsensusError):
    """The caller broke the core contract (DESIGN.md section 2), e.g. asked for a second
    Ready before advancing the first, or advanced a Ready the replica did not hand out.
    The replica's state is unchanged by the refused call; the shell has a bug to fix."""
