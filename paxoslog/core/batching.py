"""The leader's proposal queue and how it packs commands into log entries (both protocols).

A slot (Multi-Paxos) or an entry (Raft) carries a batch of commands.  Both leaders cut
batches with the same rule, so the same ``Limits`` give the same batches in both modes and
the protocol comparison measures the protocols, not two packers:

* at most ``batch_commands_max`` commands per entry;
* at most ``batch_bytes_max`` bytes per entry as ``log.entry_bytes`` counts them (the entry
  header plus each command with its own header), except that a single command larger than
  that still goes, alone (refusing it would wedge the queue behind it).

The queue is bounded by ``proposal_queue_max`` commands; ``add`` raises ``Busy`` beyond it.
Commands a leader accepted but never put in its log are handed back as one
``ProposalDropped`` event when it loses leadership: they were never sent, so their outcome
is definitely "not applied".
"""

from __future__ import annotations

from collections import deque
from typing import Sequence

from .errors import Busy
from .limits import Limits
from .log import COMMAND_HEADER_BYTES, ENTRY_HEADER_BYTES
from .ready import ProposalDropped

__all__ = ["ProposalQueue"]


class ProposalQueue:
    """Commands waiting for a place in the log, in arrival order."""

    __slots__ = ("_limits", "_commands")

    def __init__(self, limits: Limits) -> None:
        self._limits = limits
        self._commands: deque[bytes] = deque()

    def __len__(self) -> int:
        return len(self._commands)

    def __bool__(self) -> bool:
        return bool(self._commands)

    def add(self, commands: Sequence[bytes]) -> None:
        """Queue ``commands`` (all or none).  Raises ValueError unless every command is a
        byte string, Busy when the queue would exceed ``proposal_queue_max``."""
        commands = tuple(commands)
        if not all(type(c) is bytes for c in commands):
            raise ValueError("commands must be byte strings")
        queue_max = self._limits.proposal_queue_max
        if len(self._commands) + len(commands) > queue_max:
            raise Busy(f"proposal queue full ({queue_max} commands)")
        self._commands.extend(commands)

    def take_batch(self) -> tuple[bytes, ...]:
        """Pop the commands of one entry (see the module docstring); () when empty."""
        queue = self._commands
        commands_max = self._limits.batch_commands_max
        bytes_max = self._limits.batch_bytes_max
        batch: list[bytes] = []
        size = ENTRY_HEADER_BYTES
        while queue and len(batch) < commands_max:
            cost = len(queue[0]) + COMMAND_HEADER_BYTES
            if batch and size + cost > bytes_max:
                break
            batch.append(queue.popleft())
            size += cost
        return tuple(batch)

    def drop_all(self) -> ProposalDropped | None:
        """Empty the queue (leadership lost); the event that tells the shell, if any."""
        if not self._commands:
            return None
        dropped = ProposalDropped(tuple(self._commands))
        self._commands.clear()
        return dropped
