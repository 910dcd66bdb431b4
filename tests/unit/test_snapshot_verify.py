"""A snapshot whose state would not restore is refused before it is written, and a large
state is checked and restored piece by piece (never held twice)."""

from __future__ import annotations

import random

import cbor2
import pytest

from paxoslog.node.sessions import SessionTable
from paxoslog.server.local_snapshots import SnapshotRefused, verify_states
from statemachines.base import CborArrayReader, read_array
from statemachines.kv import KVStateMachine


def consumed(states: list) -> list:
    """Write the checked states (as the snapshot writer does): read every piece."""
    return [(name, list(pieces)) for name, pieces in states]


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
    out = consumed(verify_states([("kv", [kv.snapshot()])], SessionTable().snapshot(),
                                 _create, SessionTable))
    assert out == [("kv", [kv.snapshot()])]


def test_unreadable_state_machine_snapshot_is_refused():
    """The state machine whose restore fails is named in the refusal."""
    with pytest.raises(SnapshotRefused, match="'broken' would not restore"):
        consumed(verify_states([("kv", [KVStateMachine().snapshot()]), ("broken", [b"\x00"])],
                               SessionTable().snapshot(), _create, SessionTable))


def test_too_deep_state_is_refused():
    """A kv state holding a value deeper than the CBOR decoder reads is refused."""
    value = 1
    for _ in range(450):
        value = [value]
    data = cbor2.dumps([["k", value, 1, 1, 1]])
    with pytest.raises(SnapshotRefused, match="'kv' would not restore"):
        consumed(verify_states([("kv", [data])], SessionTable().snapshot(), _create,
                               SessionTable))


def test_unreadable_session_table_is_refused():
    """A session table whose results do not decode back is refused."""
    deep = 1
    for _ in range(450):
        deep = [deep]
    table = {"clock": 0, "swept_at": 0, "sessions": [["c", 0, 1, [[1, 1, 0, deep]], 0]]}
    with pytest.raises(SnapshotRefused, match="session table"):
        verify_states([], table, _create, SessionTable)


def big_kv(keys: int = 2000) -> KVStateMachine:
    rng = random.Random(7)
    kv = KVStateMachine()
    for i in range(keys):
        kv.apply(i + 1, {"op": "put", "key": f"k{i:05d}", "value": "v" * rng.randint(1, 3000)})
    return kv


def test_a_large_kv_state_is_checked_piece_by_piece():
    """The kv check reads the pieces as they are written and keeps none of them; a
    damaged piece in the middle is refused before the last piece is written."""
    kv = big_kv()
    pieces = list(kv.snapshot_chunks_copy()())
    assert len(pieces) > 3
    checked = verify_states([("kv", iter(pieces))], SessionTable().snapshot(), _create,
                            SessionTable)
    assert consumed(checked) == [("kv", pieces)]
    damaged = pieces[:2] + [b"\xff" + pieces[2][1:]] + pieces[3:]
    written = []
    with pytest.raises(SnapshotRefused, match="'kv' would not restore"):
        for piece in verify_states([("kv", damaged)], SessionTable().snapshot(), _create,
                                   SessionTable)[0][1]:
            written.append(piece)
    assert len(written) < len(damaged)


def test_a_truncated_kv_state_is_refused():
    pieces = list(big_kv(300).snapshot_chunks_copy()())
    with pytest.raises(SnapshotRefused, match="truncated"):
        consumed(verify_states([("kv", pieces[:-1])], SessionTable().snapshot(), _create,
                               SessionTable))


def test_kv_restores_from_pieces_cut_anywhere():
    """restore_chunks gives the state restore gives, whatever the cuts (a piece may end
    inside a row, or inside the array head)."""
    kv = big_kv(500)
    whole = kv.snapshot()
    rng = random.Random(3)
    for _ in range(5):
        pieces, at = [], 0
        while at < len(whole):
            n = rng.choice((1, 2, 7, 100, 5000))
            pieces.append(whole[at:at + n])
            at += n
        restored = KVStateMachine()
        restored.restore_chunks(pieces)
        assert restored.snapshot() == whole


def test_array_reader_refuses_what_is_not_one_whole_array():
    assert list(read_array([cbor2.dumps([1, [2], "three"])])) == [1, [2], "three"]
    assert list(read_array([])) == []
    for bad in (cbor2.dumps({"a": 1}), cbor2.dumps([1, 2]) + b"\x01", cbor2.dumps([1, 2])[:-1]):
        with pytest.raises(ValueError):
            list(read_array([bad]))
    reader = CborArrayReader()
    assert reader.feed(b"\x98") == []          # the head continues in the next piece
    assert reader.feed(b"\x02\x01") == [1]
    assert reader.feed(b"\x02") == [2]
    reader.close()
