"""A snapshot whose state would not restore is refused before it is written."""

from __future__ import annotations

import pytest

from paxoslog.node.sessions import SessionTable
from paxoslog.server.local_snapshots import SnapshotRefused, verify_states
from statemachines.kv import KVStateMachine


class _Unreadable:
    """A plug-in whose snapshot cannot be read back (a bug the check must catch)."""

    name = "broken"

    def restore(self, data: bytes) -> None:
        raise ValueError("cannot parse my own format")


def _create(name):
    return KVStateMachine() if name == "kv" else _Unreadable()


def test_restorable_states_pass():
    """A kv snapshot and a session table that restore are accepted."""
    kv = KVStateMachine()
    kv.apply(1, {"op": "put", "key": "a", "value": {"b": [1, 2]}})
    verify_states([("kv", [kv.snapshot()])], SessionTable().snapshot(), _create, SessionTable)


def test_unreadable_state_machine_snapshot_is_refused():
    """The state machine whose restore fails is named in the refusal."""
    with pytest.raises(SnapshotRefused, match="'broken' would not restore"):
        verify_states([("kv", [KVStateMachine().snapshot()]), ("broken", [b"\x00"])],
                      SessionTable().snapshot(), _create, SessionTable)


def test_too_deep_state_is_refused():
    """A kv state holding a value deeper than the CBOR decoder reads is refused."""
    import cbor2
    value = 1
    for _ in range(450):
        value = [value]
    data = cbor2.dumps([["k", value, 1, 1, 1]])
    with pytest.raises(SnapshotRefused, match="'kv' would not restore"):
        verify_states([("kv", [data])], SessionTable().snapshot(), _create, SessionTable)


def test_unreadable_session_table_is_refused():
    """A session table whose results do not decode back is refused."""
    deep = 1
    for _ in range(450):
        deep = [deep]
    table = {"clock": 0, "swept_at": 0, "sessions": [["c", 0, 1, [[1, 1, 0, deep]], 0]]}
    with pytest.raises(SnapshotRefused, match="session table"):
        verify_states([], table, _create, SessionTable)
