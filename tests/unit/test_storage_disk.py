"""DiskStorage on real data directories: what one Ready persists, group commit, snapshots,
installs, compaction, fallbacks, fail-stop after EIO, locking, and a property test that
checks DiskStorage and MemoryStorage against a plain model of the replay semantics."""

from __future__ import annotations

import os
import random
import shutil
import tempfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from paxoslog.core.log import ENTRY_NORMAL, Entry, HardState, SnapshotMeta
from paxoslog.core.quorum import Config
from paxoslog.core.ready import Ready
from paxoslog.storage import (CorruptLog, DataDirLocked, DiskStorage, MemoryStorage,
                              SnapshotUnavailable, StorageError, StorageIOError, StorageOptions,
                              encode_snapshot_bytes, failpoints)
from paxoslog.storage.walscan import (REC_ENTRIES, REC_HARDSTATE, REC_TRUNCATE, list_segments,
                                      scan_segment)
from walfiles import unpreallocated, written_end

CONFIG = Config(frozenset({1, 2, 3}))
SMALL = StorageOptions(segment_bytes=4096)


def entry(index: int, term: int = 1, data: bytes | None = None) -> Entry:
    return Entry(index, term, ENTRY_NORMAL, (data if data is not None else b"v%d" % index + b"." * 60,))


def open_disk(path, protocol="raft", options=SMALL, **kw) -> DiskStorage:
    storage = DiskStorage(str(path), "test", 1, protocol, options, **kw)
    storage.load()
    return storage


def reopen(path, protocol="raft", options=SMALL):
    storage = DiskStorage(str(path), "test", 1, protocol, options)
    restored, reader = storage.load()
    return storage, restored, reader


def kv_state(tag: bytes, chunks: int = 3):
    return [("kv", [tag * 500 for _ in range(chunks)]), ("counter", [tag])]


@pytest.fixture(autouse=True)
def no_failpoints():
    failpoints.clear()
    yield
    failpoints.clear()


def test_round_trip_with_raft_truncation(tmp_path):
    """Hard state, entries and a truncate_from survive a restart as the Raft log expects."""
    storage = open_disk(tmp_path)
    storage.save(Ready(hard_state=HardState(1, 1, 0), entries=[entry(i) for i in range(1, 8)]))
    storage.save(Ready(hard_state=HardState(2, 2, 4), truncate_from=5,
                       entries=[entry(5, 2), entry(6, 2)]))
    storage.close()
    storage, restored, reader = reopen(tmp_path)
    assert restored.hard_state == HardState(2, 2, 4)
    assert restored.entries == [entry(i) for i in range(1, 5)] + [entry(5, 2), entry(6, 2)]
    assert restored.snapshot is None and reader is None


def test_multipaxos_reaccept_replaces_only_that_slot(tmp_path):
    """A slot accepted again at a higher ballot replaces the old value; holes stay holes."""
    storage = open_disk(tmp_path, "multipaxos")
    storage.save(Ready(hard_state=HardState(10, 0, 0), entries=[entry(1, 10), entry(3, 10), entry(4, 10)]))
    storage.save(Ready(hard_state=HardState(20, 0, 1), entries=[entry(3, 20, b"new")]))
    storage.close()
    _, restored, _ = reopen(tmp_path, "multipaxos")
    assert restored.entries == [entry(1, 10), entry(3, 20, b"new"), entry(4, 10)]
    assert restored.hard_state == HardState(20, 0, 1)


def test_one_ready_costs_one_fsync(tmp_path, monkeypatch):
    """Hard state, truncation and many entries of one Ready share a single fdatasync."""
    storage = open_disk(tmp_path, options=StorageOptions())
    calls = []
    for name in ("fsync", "fdatasync"):
        real = getattr(os, name)
        monkeypatch.setattr(os, name, lambda fd, real=real, name=name: (calls.append(name), real(fd)))
    storage.save(Ready(hard_state=HardState(1, 1, 0), truncate_from=1,
                       entries=[entry(i) for i in range(1, 300)]))
    assert calls == ["fdatasync"]
    storage.save(Ready())                # nothing durable: no fsync at all
    assert calls == ["fdatasync"]


def test_truncation_and_entries_are_written_before_the_hard_state(tmp_path):
    """The hard state is the last record of a batch (a torn batch keeps no bare commit)."""
    storage = open_disk(tmp_path, options=StorageOptions())
    storage.save(Ready(hard_state=HardState(1, 1, 2), truncate_from=1, entries=[entry(1), entry(2)]))
    storage.close()
    (seq, path), = list_segments(str(tmp_path / "wal"))
    types = [r.rtype for r in scan_segment(path, seq, open(path, "rb").read(), last=True).records]
    assert [t for t in types if t in (REC_TRUNCATE, REC_ENTRIES, REC_HARDSTATE)] == \
        [REC_TRUNCATE, REC_ENTRIES, REC_HARDSTATE]


def test_hard_state_survives_compaction_of_its_segment(tmp_path):
    """When the segment holding the last hard-state record is deleted, the checkpoint has it."""
    storage = open_disk(tmp_path)
    storage.save(Ready(hard_state=HardState(5, 3, 1), entries=[entry(1)]))
    for i in range(2, 200):
        storage.save(Ready(entries=[entry(i)]))
    storage.save_snapshot(SnapshotMeta(100, 1, CONFIG), kv_state(b"a"))
    storage.save_snapshot(SnapshotMeta(150, 1, CONFIG), kv_state(b"b"))
    assert storage.compact(150) > 0
    first_seq = storage.wal_segments[0][0]
    assert first_seq > 1
    storage.close()
    _, restored, reader = reopen(tmp_path)
    assert restored.hard_state == HardState(5, 3, 1)
    assert restored.snapshot.index == 150
    assert [e.index for e in restored.entries] == list(range(151, 200))
    assert reader.sessions is None and reader.read_all()["kv"] == b"b" * 1500


def test_compaction_keeps_the_log_back_to_the_previous_snapshot(tmp_path):
    """With one snapshot nothing is compacted; with two, only what the older one covers."""
    storage = open_disk(tmp_path)
    for i in range(1, 300):
        storage.save(Ready(entries=[entry(i)]))
    storage.save_snapshot(SnapshotMeta(100, 1, CONFIG), kv_state(b"a"))
    assert storage.compact(100) == 0
    storage.save_snapshot(SnapshotMeta(250, 1, CONFIG), kv_state(b"b"))
    assert storage.compact(250) > 0
    assert storage.floor == 100
    remaining = storage.wal_segments
    assert remaining[0][3] > 100         # the first segment left holds entries above 100


def test_corrupt_newest_snapshot_falls_back_to_the_previous_one_plus_the_log(tmp_path):
    """A damaged newest snapshot is skipped; the previous one and the kept log rebuild all."""
    storage = open_disk(tmp_path)
    for i in range(1, 300):
        storage.save(Ready(hard_state=HardState(1, 1, i), entries=[entry(i)]))
    storage.save_snapshot(SnapshotMeta(100, 1, CONFIG), kv_state(b"a"))
    newest = storage.save_snapshot(SnapshotMeta(250, 1, CONFIG), kv_state(b"b"))
    storage.compact(250)
    storage.close()
    with open(newest.path, "r+b") as f:
        f.seek(os.path.getsize(newest.path) // 2)
        byte = f.read(1)[0]
        f.seek(os.path.getsize(newest.path) // 2)
        f.write(bytes((byte ^ 0x20,)))
    storage, restored, reader = reopen(tmp_path)
    assert restored.snapshot.index == 100
    assert [e.index for e in restored.entries] == list(range(101, 300))
    assert reader.read_all()["kv"] == b"a" * 1500
    assert storage.skipped_snapshots and storage.skipped_snapshots[0][0] == newest.path


def test_no_snapshot_reaching_the_compacted_log_raises_snapshot_unavailable(tmp_path):
    """If every snapshot that covers the deleted log is corrupt, the node must fetch one."""
    storage = open_disk(tmp_path)
    for i in range(1, 300):
        storage.save(Ready(entries=[entry(i)]))
    first = storage.save_snapshot(SnapshotMeta(100, 1, CONFIG), kv_state(b"a"))
    second = storage.save_snapshot(SnapshotMeta(250, 1, CONFIG), kv_state(b"b"))
    storage.compact(250)
    storage.close()
    for snap in (first, second):
        os.truncate(snap.path, os.path.getsize(snap.path) - 10)
    with pytest.raises(SnapshotUnavailable, match="fetch a snapshot from a peer"):
        reopen(tmp_path)


def test_install_snapshot_adopts_the_file_and_drops_the_log_below_it(tmp_path):
    """A received snapshot replaces the log up to its index; later entries stay."""
    storage = open_disk(tmp_path)
    for i in range(1, 200):
        storage.save(Ready(entries=[entry(i)]))
    meta = SnapshotMeta(500, 3, CONFIG)
    received = os.path.join(storage.transfer_dir, "incoming.snap.zst")
    with open(received, "wb") as f:
        f.write(encode_snapshot_bytes(meta, kv_state(b"L"), sessions={"c": [1, 2]}))
    storage.install_snapshot(meta, received)
    assert not os.path.exists(received)
    storage.save(Ready(hard_state=HardState(3, 0, 500), entries=[entry(501, 3)]))
    storage.close()
    storage, restored, reader = reopen(tmp_path)
    assert restored.snapshot == meta
    assert restored.entries == [entry(501, 3)]
    assert reader.sessions == {"c": [1, 2]}
    assert reader.read_all() == {"kv": b"L" * 1500, "counter": b"L"}
    assert storage.floor == 500
    assert len(storage.wal_segments) == 1


def test_install_refuses_a_file_that_is_not_the_announced_snapshot(tmp_path):
    """The file's header must match the (index, term) being installed."""
    storage = open_disk(tmp_path)
    received = os.path.join(storage.transfer_dir, "x.snap.zst")
    with open(received, "wb") as f:
        f.write(encode_snapshot_bytes(SnapshotMeta(10, 1, CONFIG), kv_state(b"x")))
    with pytest.raises(StorageError, match="install was asked for"):
        storage.install_snapshot(SnapshotMeta(11, 1, CONFIG), received)


def test_save_of_a_ready_with_snapshot_data_installs_it(tmp_path):
    """Ready.snapshot with snapshot_data (a snapshot file's bytes) is installed by save()."""
    storage = open_disk(tmp_path)
    storage.save(Ready(entries=[entry(i) for i in range(1, 5)]))
    meta = SnapshotMeta(40, 2, CONFIG)
    storage.save(Ready(hard_state=HardState(2, 0, 40), snapshot=meta,
                       snapshot_data=encode_snapshot_bytes(meta, kv_state(b"s"))))
    storage.close()
    _, restored, reader = reopen(tmp_path)
    assert restored.snapshot == meta and restored.entries == []
    assert restored.hard_state == HardState(2, 0, 40)
    assert reader.read_all()["counter"] == b"s"


def test_install_then_corrupt_snapshot_cannot_fall_back_below_it(tmp_path):
    """After an install the log below it never existed here: no silent fallback."""
    storage = open_disk(tmp_path)
    storage.save(Ready(entries=[entry(i) for i in range(1, 50)]))
    storage.save_snapshot(SnapshotMeta(20, 1, CONFIG), kv_state(b"a"))
    meta = SnapshotMeta(900, 5, CONFIG)
    received = os.path.join(storage.transfer_dir, "in.snap.zst")
    with open(received, "wb") as f:
        f.write(encode_snapshot_bytes(meta, kv_state(b"z")))
    installed = storage.install_snapshot(meta, received)
    storage.close()
    os.truncate(installed.path, 20)
    with pytest.raises(SnapshotUnavailable):
        reopen(tmp_path)


def test_commit_point_beyond_the_log_is_detected(tmp_path):
    """A hard state claiming commits the log does not hold means lost entries (R13)."""
    storage = open_disk(tmp_path)
    storage.save(Ready(entries=[entry(i) for i in range(1, 6)]))
    storage.save(Ready(hard_state=HardState(1, 1, 9)))
    storage.close()
    with pytest.raises(CorruptLog, match="acknowledged entries were lost"):
        reopen(tmp_path)


def test_fsync_error_makes_the_store_refuse_every_later_write(tmp_path):
    """EIO on fsync: save raises, every later call raises, nothing is retried or believed."""
    storage = open_disk(tmp_path)
    storage.save(Ready(hard_state=HardState(1, 1, 0), entries=[entry(1)]))
    failpoints.enable("wal.before_fsync", "error")
    with pytest.raises(StorageIOError) as caught:
        storage.save(Ready(hard_state=HardState(2, 2, 0), entries=[entry(2)]))
    assert caught.value.errno == 5
    failpoints.clear()
    assert not storage.usable
    for attempt in (lambda: storage.save(Ready(entries=[entry(3)])),
                    lambda: storage.save_snapshot(SnapshotMeta(1, 1, CONFIG), kv_state(b"q")),
                    lambda: storage.compact(1),
                    storage.sync):
        with pytest.raises(StorageIOError, match="unusable"):
            attempt()
    storage.close()
    _, restored, _ = reopen(tmp_path)
    assert restored.hard_state == HardState(1, 1, 0)
    assert restored.entries == [entry(1)]


def test_write_error_on_append_also_fails_stop(tmp_path):
    """An injected EIO while appending makes the store unusable just like a failed fsync."""
    storage = open_disk(tmp_path)
    failpoints.enable("wal.before_append", "error")
    with pytest.raises(StorageIOError):
        storage.save(Ready(entries=[entry(1)]))
    failpoints.clear()
    with pytest.raises(StorageIOError):
        storage.save(Ready(entries=[entry(1)]))


def test_snapshot_write_error_before_rename_keeps_the_store_usable(tmp_path):
    """A snapshot that fails before its rename changed nothing durable: the log goes on."""
    storage = open_disk(tmp_path)
    storage.save(Ready(entries=[entry(1)]))
    failpoints.enable("snapshot.before_fsync", "error")
    with pytest.raises(StorageIOError):
        storage.save_snapshot(SnapshotMeta(1, 1, CONFIG), kv_state(b"a"))
    failpoints.clear()
    assert storage.usable
    assert os.listdir(tmp_path / "snap") == []
    storage.save(Ready(entries=[entry(2)]))
    storage.close()
    _, restored, reader = reopen(tmp_path)
    assert [e.index for e in restored.entries] == [1, 2] and reader is None


def test_second_writer_is_locked_out_but_a_reader_is_not(tmp_path):
    """Two writers on one directory are refused; read-only inspection takes no lock."""
    storage = open_disk(tmp_path)
    storage.save(Ready(entries=[entry(1), entry(2)]))
    with pytest.raises(DataDirLocked, match=str(os.getpid())):
        DiskStorage(str(tmp_path), "test", 1, "raft", SMALL)
    reader = DiskStorage(str(tmp_path), None, None, None, SMALL, read_only=True)
    restored, _ = reader.load()
    assert [e.index for e in restored.entries] == [1, 2]
    with pytest.raises(StorageError, match="read-only"):
        reader.save(Ready(entries=[entry(3)]))
    storage.close()
    storage = open_disk(tmp_path)          # the lock was released
    storage.close()


def test_read_only_open_modifies_nothing(tmp_path):
    """A torn tail seen read-only is reported and left in place for the owner to cut."""
    storage = open_disk(tmp_path)
    storage.save(Ready(entries=[entry(1), entry(2)]))
    storage.save(Ready(entries=[entry(3)]))
    (_, path), = list_segments(str(tmp_path / "wal"))
    os.truncate(unpreallocated(path), written_end(path) - 1)
    before = {name: os.stat(os.path.join(root, name)).st_mtime_ns
              for root, _, names in os.walk(tmp_path) for name in names}
    reader = DiskStorage(str(tmp_path), "test", 1, "raft", SMALL, read_only=True)
    restored, _ = reader.load()
    assert [e.index for e in restored.entries] == [1, 2] and reader.torn is not None
    after = {name: os.stat(os.path.join(root, name)).st_mtime_ns
             for root, _, names in os.walk(tmp_path) for name in names}
    assert before == after


# ---------------------------------------------------------------------- property test

class Model:
    """The replay semantics in a dozen lines: the reference both stores must match."""

    def __init__(self) -> None:
        self.hard_state = HardState()
        self.entries: dict[int, Entry] = {}

    def apply(self, ready: Ready) -> None:
        if ready.truncate_from is not None:
            self.entries = {i: e for i, e in self.entries.items() if i < ready.truncate_from}
        for e in ready.entries:
            self.entries[e.index] = e
        if ready.hard_state is not None:
            self.hard_state = ready.hard_state

    def entry_list(self) -> list[Entry]:
        return [self.entries[i] for i in sorted(self.entries)]


readies = st.lists(st.tuples(
    st.one_of(st.none(), st.integers(1, 30)),                       # truncate_from
    st.lists(st.tuples(st.integers(1, 30), st.integers(0, 9), st.binary(max_size=300)),
             max_size=6),                                           # entries
    st.one_of(st.none(), st.tuples(st.integers(0, 99), st.integers(0, 5))),   # term, vote
    st.booleans(),                                                  # restart after it
), min_size=1, max_size=25)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(readies)
def test_disk_and_memory_storage_replay_like_the_model(steps):
    """Random Readies with restarts: both stores restore exactly what the model says."""
    with tempfile.TemporaryDirectory() as tmp:
        disk = open_disk(tmp, "multipaxos", StorageOptions(segment_bytes=4096))
        memory = MemoryStorage(1)
        memory.load()
        model = Model()
        for truncate_from, raw_entries, hard, restart in steps:
            entries = [Entry(i, t, ENTRY_NORMAL, (b,)) for i, t, b in raw_entries]
            ready = Ready(truncate_from=truncate_from, entries=entries,
                          hard_state=HardState(hard[0], hard[1], 0) if hard else None)
            model.apply(ready)
            disk.save(ready)
            memory.save(ready)
            if restart:
                disk.close()
                disk = DiskStorage(tmp, "test", 1, "multipaxos", StorageOptions(segment_bytes=4096))
                memory.crash()
                for restored, _ in (disk.load(), memory.load()):
                    assert restored.entries == model.entry_list()
                    assert restored.hard_state == model.hard_state
        disk.close()


def test_random_crash_points_never_lose_a_synced_ready(tmp_path):
    """A torn last batch at random offsets (zeros from a sector boundary, or the file's
    end): earlier Readies survive, the last is all or none."""
    rng = random.Random(7)
    for trial in range(40):
        directory = tmp_path / f"t{trial}"
        storage = open_disk(directory, options=StorageOptions())
        model = Model()
        for i in range(1, rng.randint(2, 12)):
            ready = Ready(hard_state=HardState(i, 1, 0), entries=[entry(i)])
            storage.save(ready)
            model.apply(ready)
        (_, path), = list_segments(str(directory / "wal"))
        synced = written_end(path)
        pending = Ready(entries=[entry(100 + j) for j in range(rng.randint(1, 4))])
        storage.save(pending)
        crashed = tmp_path / f"crashed{trial}"
        shutil.copytree(directory, crashed, ignore=shutil.ignore_patterns("LOCK"))
        storage.close()
        copy = crashed / "wal" / os.path.basename(path)
        end = written_end(copy)
        cut = rng.randint(synced, end)
        if rng.random() < 0.5:
            os.truncate(copy, cut)                  # the file ends there
        else:
            # The preallocated rest reads as zeros from a sector boundary (a disk writes
            # whole 512-byte sectors; the one holding the synced end is old or new whole).
            cut = max(synced, cut - cut % 512)
            with open(copy, "r+b") as f:
                f.seek(cut)
                f.write(bytes(end - cut))
        _, restored, _ = reopen(crashed)
        after = Model()
        after.entries, after.hard_state = dict(model.entries), model.hard_state
        after.apply(pending)
        assert restored.entries in (model.entry_list(), after.entry_list())
        assert restored.hard_state == model.hard_state


def _two_snapshots_and_a_log(path, hard_commit: int = 0):
    """Entries 1..299, snapshots at 100 and 250, the log compacted to 100 (the one
    before the newest); ``hard_commit``: the commit hint last persisted."""
    storage = open_disk(path)
    for i in range(1, 300):
        storage.save(Ready(hard_state=HardState(1, 1, min(i, hard_commit)),
                           entries=[entry(i)]))
    storage.save_snapshot(SnapshotMeta(100, 1, CONFIG), kv_state(b"a"))
    storage.save_snapshot(SnapshotMeta(250, 1, CONFIG), kv_state(b"b"))
    storage.compact(250)
    storage.close()


def test_a_starting_node_restores_the_snapshot_before_the_newest_and_applies_the_log_again(
        tmp_path):
    """load(reapply=True): the previous snapshot, every entry after it, and the commit hint
    raised to the newest snapshot's index (it was applied, so committed); snapshot_meta
    stays the newest.  load() alone still restores the newest."""
    _two_snapshots_and_a_log(tmp_path, hard_commit=180)
    storage = DiskStorage(str(tmp_path), "test", 1, "raft", SMALL)
    restored, reader = storage.load(reapply=True)
    assert restored.snapshot.index == 100
    assert [e.index for e in restored.entries] == list(range(101, 300))
    assert restored.hard_state == HardState(1, 1, 250)
    assert reader.read_all()["kv"] == b"a" * 1500
    assert storage.snapshot_meta.index == 250
    storage.close()
    _, restored, reader = reopen(tmp_path)
    assert restored.snapshot.index == 250 and restored.hard_state.commit == 180
    assert reader.read_all()["kv"] == b"b" * 1500


def test_reapply_keeps_a_higher_commit_hint(tmp_path):
    """A persisted commit above the newest snapshot is not lowered."""
    _two_snapshots_and_a_log(tmp_path, hard_commit=290)
    storage = DiskStorage(str(tmp_path), "test", 1, "raft", SMALL)
    restored, _ = storage.load(reapply=True)
    assert restored.snapshot.index == 100 and restored.hard_state.commit == 290


def test_reapply_falls_back_to_the_newest_when_the_log_does_not_reach_the_older_one(tmp_path):
    """With the log compacted past the older snapshot (snapshot.keep = 1 style) or a hole
    in it, the newest snapshot is restored as before; a corrupt older one is skipped."""
    storage = open_disk(tmp_path, options=StorageOptions(segment_bytes=4096,
                                                         keep_log_for_fallback=False))
    for i in range(1, 300):
        storage.save(Ready(entries=[entry(i)]))
    storage.save_snapshot(SnapshotMeta(100, 1, CONFIG), kv_state(b"a"))
    storage.save_snapshot(SnapshotMeta(250, 1, CONFIG), kv_state(b"b"))
    storage.compact(250)                          # floor 250: the log above 100 is gone
    storage.close()
    storage = DiskStorage(str(tmp_path), "test", 1, "raft", SMALL)
    restored, reader = storage.load(reapply=True)
    assert restored.snapshot.index == 250 and reader.read_all()["kv"] == b"b" * 1500
    storage.close()

    other = tmp_path / "older-corrupt"
    _two_snapshots_and_a_log(other)
    path = other / "snap" / sorted(os.listdir(other / "snap"))[0]      # the one at 100
    os.truncate(path, os.path.getsize(path) - 10)
    storage = DiskStorage(str(other), "test", 1, "raft", SMALL)
    restored, _ = storage.load(reapply=True)
    assert restored.snapshot.index == 250
    assert storage.skipped_snapshots and storage.skipped_snapshots[-1][0] == str(path)


def test_replay_reapplies_only_over_a_whole_log_of_the_newest_term():
    """Replay.reapplies: the older snapshot at or above the floor, every entry between
    present, the last one of the newest snapshot's term."""
    from paxoslog.storage.wal import Replay
    replay = Replay()
    for i in range(101, 300):
        replay.entries[i] = entry(i, 2 if i > 200 else 1)
    older, newest = SnapshotMeta(100, 1, CONFIG), SnapshotMeta(250, 2, CONFIG)
    assert replay.reapplies(older, newest)
    assert not replay.reapplies(older, SnapshotMeta(250, 1, CONFIG))      # other term
    assert not replay.reapplies(newest, older)
    replay.floor = (120, 1)
    assert not replay.reapplies(older, newest)                           # below the floor
    replay.floor = None
    del replay.entries[170]
    assert not replay.reapplies(older, newest)                           # a hole
