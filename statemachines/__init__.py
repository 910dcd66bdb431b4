"""Replicated state machines: the plug-in interface (base.py) and the registry.

State machines are found through the entry-point group ``paxoslog.state_machines``
(``importlib.metadata``): each entry point names a class (or factory) whose instances follow
``statemachines.base.StateMachine``.  The built-ins (``kv``, ``counter``, ``membership``: a
skeleton) are registered in paxoslog's own pyproject.toml and are also known here directly, so
a source checkout works without installed metadata.  A conf file enables state machines by name
(``[state_machines] enabled = [...]``); see docs/statemachines.md.
"""

from __future__ import annotations

from importlib import metadata

from .base import (REQUIRED, BadCommand, StateMachine, is_internal, snapshot_chunks_producer,
                   snapshot_producer)

__all__ = ["StateMachine", "BadCommand", "BUILTIN", "ENTRY_POINT_GROUP", "available", "create",
           "is_internal", "snapshot_producer", "snapshot_chunks_producer"]

ENTRY_POINT_GROUP = "paxoslog.state_machines"


def _builtin() -> dict[str, object]:
    from .counter import CounterStateMachine
    from .kv import KVStateMachine
    from .membership import MembershipStateMachine
    return {"kv": KVStateMachine, "counter": CounterStateMachine,
            "membership": MembershipStateMachine}


BUILTIN = _builtin()


def _entry_points() -> dict[str, metadata.EntryPoint]:
    try:
        found = metadata.entry_points(group=ENTRY_POINT_GROUP)
    except Exception:  # broken metadata of some unrelated distribution
        return {}
    return {ep.name: ep for ep in found}


def available() -> list[str]:
    """Every state machine name a conf may enable: built-ins plus installed entry points."""
    return sorted(set(BUILTIN) | set(_entry_points()))


def create(name: str, **options) -> StateMachine:
    """An instance of the state machine registered as ``name``; ValueError if there is none
    or it does not implement the protocol."""
    factory = BUILTIN.get(name)
    if factory is None:
        ep = _entry_points().get(name)
        if ep is None:
            raise ValueError(f"unknown state machine {name!r} (known: {', '.join(available())})")
        try:
            factory = ep.load()
        except Exception as exc:
            raise ValueError(f"state machine {name!r}: cannot load entry point "
                             f"{ep.value!r}: {exc}") from None
    sm = factory(**options)
    missing = [m for m in REQUIRED if not callable(getattr(sm, m, None))]
    if missing:
        raise ValueError(f"state machine {name!r} lacks {', '.join(missing)}")
    if getattr(sm, "name", None) != name:
        try:
            sm.name = name
        except AttributeError:
            raise ValueError(f"state machine {name!r} names itself "
                             f"{getattr(sm, 'name', None)!r}") from None
    return sm
