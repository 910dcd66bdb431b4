"""Replicated state machines: the interface and the built-in plug-ins.

A state machine sees every committed command addressed to it (``{"sm": name, ...}`` in the
log), in log order, on every node; ``apply`` must be deterministic (same commands, same
results, same state everywhere).  The node calls, all on the reactor thread:

``validate(command) -> dict``   at the API edge, before proposing: the normalized command,
                                 or ``BadCommand`` (bad input never reaches the log)
``apply(index, command)``       a committed command; returns the client-visible result
``query(request)``              a read-only request against the current state
``snapshot() -> bytes``         the whole state, deterministic
``snapshot_copy()``             optional: a zero-argument callable producing the same bytes
                                 later, on a worker thread (take a cheap copy now)
``restore(data)``               replace the state with a snapshot's bytes

The entry-point registry (``paxoslog.state_machines``) and more plug-ins come with the next
issue; ``BUILTIN`` maps the names a conf file may enable to their classes.
"""

from __future__ import annotations

from typing import Callable, Protocol

__all__ = ["StateMachine", "BadCommand", "BUILTIN", "create", "snapshot_producer"]


class BadCommand(ValueError):
    """A command or query a state machine refuses (maps to HTTP 400)."""


class StateMachine(Protocol):
    name: str

    def validate(self, command: dict) -> dict: ...
    def apply(self, index: int, command: dict) -> object: ...
    def query(self, request: dict) -> object: ...
    def snapshot(self) -> bytes: ...
    def restore(self, data: bytes) -> None: ...


def snapshot_producer(sm: StateMachine) -> Callable[[], bytes]:
    """A callable that yields ``sm``'s snapshot bytes as of now, safe to call on a thread."""
    copy = getattr(sm, "snapshot_copy", None)
    if copy is not None:
        return copy()
    data = sm.snapshot()
    return lambda: data


def _builtin() -> dict[str, type]:
    from .kv import KVStateMachine
    return {"kv": KVStateMachine}


BUILTIN = _builtin()


def create(name: str, **options) -> StateMachine:
    try:
        cls = BUILTIN[name]
    except KeyError:
        raise ValueError(f"unknown state machine {name!r}") from None
    return cls(**options)
