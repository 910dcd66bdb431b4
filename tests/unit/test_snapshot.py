"""Snapshot files: streamed zstd/CBOR round trips, every kind of damage detected, the store's
keep-K pruning and fallback, crash leftovers, and the SnapshotPolicy thresholds."""

from __future__ import annotations

import os
import tracemalloc

import pytest

from paxoslog.core.log import SnapshotMeta
from paxoslog.core.quorum import Config
from paxoslog.storage import failpoints
from paxoslog.storage.errors import CorruptSnapshot, StorageIOError
from paxoslog.storage.failpoints import FailpointPanic
from paxoslog.node.policy import SnapshotPolicy
from paxoslog.storage.snapshot import (SnapshotReader, SnapshotStore,
                                       encode_snapshot_bytes, snapshot_name, verify_snapshot,
                                       write_snapshot)

META = SnapshotMeta(42, 7, Config(frozenset({1, 2, 3}), learners=frozenset({4})))


def states():
    return [("kv", (b"%05d" % i * 200 for i in range(50))), ("counter", [b"\x01\x02"]),
            ("membership", [])]


@pytest.fixture(autouse=True)
def no_failpoints():
    failpoints.clear()
    yield
    failpoints.clear()


def test_round_trip_of_header_sessions_and_states():
    """Everything written is read back in order, with sizes and the checksum reported."""
    blob = encode_snapshot_bytes(META, states(), sessions={"client-1": [9, b"ok"]})
    reader = SnapshotReader(blob)
    assert reader.meta == META
    assert reader.names == ["kv", "counter", "membership"]
    assert reader.sessions == {"client-1": [9, b"ok"]}
    got = reader.read_all()
    assert got["kv"] == b"".join(b"%05d" % i * 200 for i in range(50))
    assert got["counter"] == b"\x01\x02" and got["membership"] == b""
    info = verify_snapshot(blob)
    assert info.sizes == {"kv": 50_000, "counter": 2, "membership": 0}
    assert info.chunks == {"kv": 50, "counter": 1, "membership": 0}
    assert info.ratio > 1 and info.checksum is not None
    assert info.compressed_bytes == len(blob)


def test_unread_chunk_iterators_are_drained():
    """A consumer that skips a state machine's chunks still gets the next one right."""
    reader = SnapshotReader(encode_snapshot_bytes(META, states()))
    seen = [name for name, _chunks in reader.states()]
    assert seen == ["kv", "counter", "membership"]
    assert reader.sizes["kv"] == 50_000


def test_writing_streams_chunks_without_holding_the_state():
    """64 MiB of state given as a generator of 1 MiB chunks never sits in memory at once."""
    def big():
        block = os.urandom(1 << 16) * 16               # 1 MiB, incompressible-ish
        for _ in range(64):
            yield block
    tracemalloc.start()
    try:
        with open(os.devnull, "wb") as sink:
            total, sizes = write_snapshot(sink, META, [("kv", big())], level=1)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert sizes == {"kv": 64 << 20}
    assert peak < 8 << 20, peak


@pytest.mark.parametrize("damage", ["flip-head", "flip-middle", "flip-checksum", "truncate-1",
                                    "truncate-5", "truncate-half", "trailing", "empty"])
def test_every_kind_of_damage_is_detected(damage):
    """Bit flips, truncation anywhere (even of the checksum) and trailing bytes all fail."""
    blob = bytearray(encode_snapshot_bytes(META, states()))
    if damage == "flip-head":
        blob[7] ^= 0x01
    elif damage == "flip-middle":
        blob[len(blob) // 2] ^= 0x80
    elif damage == "flip-checksum":
        blob[-1] ^= 0x01
    elif damage == "truncate-1":
        del blob[-1:]
    elif damage == "truncate-5":
        del blob[-5:]
    elif damage == "truncate-half":
        del blob[len(blob) // 2:]
    elif damage == "trailing":
        blob += b"\x00"
    else:
        blob = bytearray()
    with pytest.raises(CorruptSnapshot):
        verify_snapshot(bytes(blob))


def test_store_keeps_the_newest_k_and_falls_back_past_a_corrupt_one(tmp_path):
    """Only ``keep`` snapshots stay; newest_valid skips a damaged newest one."""
    store = SnapshotStore(str(tmp_path), keep=3, level=1)
    for index in (10, 20, 30, 40):
        store.save(SnapshotMeta(index, 1, META.config), [("kv", [b"%d" % index])])
    assert [s.index for s in store.list()] == [20, 30, 40]
    chosen, info = store.newest_valid()
    assert chosen.index == 40 and info.sizes == {"kv": 2}
    newest = store.list()[-1].path
    os.truncate(newest, os.path.getsize(newest) - 2)
    chosen, _ = store.newest_valid()
    assert chosen.index == 30
    assert store.skipped[0][0] == newest


def test_a_snapshot_whose_header_disagrees_with_its_name_is_skipped(tmp_path):
    """A file renamed to another index is not trusted."""
    store = SnapshotStore(str(tmp_path), keep=3, level=1)
    store.save(SnapshotMeta(10, 1, META.config), [("kv", [b"x"])])
    os.rename(store.list()[0].path, os.path.join(str(tmp_path), snapshot_name(99, 1)))
    assert store.newest_valid() is None
    assert "header says" in store.skipped[0][1]


def test_crash_before_rename_leaves_no_snapshot_and_the_temp_file_is_removed(tmp_path):
    """An interrupted write is never adopted; its temp file is cleaned up at the next open."""
    store = SnapshotStore(str(tmp_path), keep=2, level=1)
    store.save(SnapshotMeta(10, 1, META.config), [("kv", [b"old"])])
    failpoints.enable("snapshot.before_rename", "panic")
    with pytest.raises(FailpointPanic):
        store.save(SnapshotMeta(20, 1, META.config), [("kv", [b"new"])])
    failpoints.clear()
    assert [s.index for s in store.list()] == [10]
    # A real crash leaves the temp file behind: the next open deletes it.
    (tmp_path / (snapshot_name(30, 1) + ".tmp")).write_bytes(b"partial")
    store = SnapshotStore(str(tmp_path), keep=2, level=1)
    assert sorted(os.listdir(tmp_path)) == [snapshot_name(10, 1)]


def test_write_error_raises_storage_io_error_and_leaves_nothing(tmp_path):
    """An EIO while writing raises StorageIOError; no temp or partial snapshot remains."""
    store = SnapshotStore(str(tmp_path), keep=2, level=1)
    failpoints.enable("snapshot.before_fsync", "error")
    with pytest.raises(StorageIOError):
        store.save(SnapshotMeta(10, 1, META.config), [("kv", [b"x"])])
    assert os.listdir(tmp_path) == []


def test_duplicate_state_machine_names_are_refused():
    """Two states with one name would be ambiguous on restore."""
    with pytest.raises(ValueError, match="unique"):
        encode_snapshot_bytes(META, [("kv", [b"a"]), ("kv", [b"b"])])


def test_policy_triggers_on_entries_or_bytes_whichever_first():
    """The policy is due after N entries or B bytes since the last snapshot, once at a time."""
    policy = SnapshotPolicy(entries_threshold=100, bytes_threshold=1000, last_index=50)
    policy.note_applied(149, 10)
    assert not policy.due and policy.entries_since == 99
    policy.note_applied(150, 10)
    assert policy.due
    policy.started()
    assert not policy.due
    policy.taken(150)
    assert not policy.due and policy.entries_since == 0 and policy.bytes_since == 0
    policy.note_applied(151, 999)
    assert not policy.due
    policy.note_applied(152, 1)
    assert policy.due
    policy.started()
    policy.failed()
    assert not policy.due                  # a failed snapshot waits another threshold
    policy.note_applied(251, 1)
    assert not policy.due
    policy.note_applied(252, 1)
    assert policy.due

def test_policy_after_a_restart_that_applies_the_log_again():
    """Restored at 100 with the newest snapshot at 250: nothing is due while the entries
    up to 250 are applied again (their bytes do not count), the next one an interval
    after 250."""
    policy = SnapshotPolicy(entries_threshold=100, bytes_threshold=1000, last_index=100)
    policy.reapplying(250)
    policy.note_applied(250, 5000)
    assert not policy.due and policy.bytes_since == 0
    policy.note_applied(349, 10)
    assert not policy.due
    policy.note_applied(350, 10)
    assert policy.due and policy.bytes_since == 20
