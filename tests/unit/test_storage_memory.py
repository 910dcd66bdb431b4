"""MemoryStorage, the simulator's disk model: written vs synced, crashes that keep only what
was synced (or a random prefix, or a torn record), kills that keep everything written, EIO
on fsync, bit flips, snapshots."""

from __future__ import annotations

import random

import pytest

from paxoslog.core.log import ENTRY_NORMAL, Entry, HardState, SnapshotMeta
from paxoslog.core.quorum import Config
from paxoslog.core.ready import Ready
from paxoslog.storage import (CorruptLog, MemoryStorage, SnapshotUnavailable, StorageIOError,
                              encode_snapshot_bytes)

CONFIG = Config(frozenset({1, 2, 3}))


def entry(index: int, term: int = 1) -> Entry:
    return Entry(index, term, ENTRY_NORMAL, (b"c%d" % index,))


def started() -> MemoryStorage:
    storage = MemoryStorage(1)
    storage.load()
    return storage


def indexes(restored) -> list[int]:
    return [e.index for e in restored.entries]


def test_crash_keeps_only_what_was_synced():
    """Records appended but not synced vanish on a crash; synced ones stay."""
    storage = started()
    storage.save(Ready(hard_state=HardState(1, 1, 0), entries=[entry(1), entry(2)]))
    storage.append(Ready(hard_state=HardState(2, 2, 0), entries=[entry(3)]))
    assert storage.unsynced == 2
    storage.crash()
    restored, _ = storage.load()
    assert indexes(restored) == [1, 2]
    assert restored.hard_state == HardState(1, 1, 0)


def test_kill_keeps_every_written_record_synced_or_not():
    """A killed process (kill -9) loses nothing it wrote: the page cache survives it, even
    with an fsync failure armed (it never ran)."""
    storage = started()
    storage.save(Ready(hard_state=HardState(1, 1, 0), entries=[entry(1), entry(2)]))
    storage.append(Ready(hard_state=HardState(2, 2, 0), entries=[entry(3)]))
    storage.fail_next_sync()
    storage.kill()
    restored, _ = storage.load()
    assert indexes(restored) == [1, 2, 3]
    assert restored.hard_state == HardState(2, 2, 0)
    storage.save(Ready(entries=[entry(4)]))          # the armed failure went with the process


def test_crash_with_an_rng_keeps_a_random_prefix_of_unsynced_records():
    """A crash keeps a seed-reproducible prefix of the unsynced records, never a gap."""
    outcomes = set()
    for seed in range(30):
        storage = started()
        storage.save(Ready(entries=[entry(1)]))
        for i in range(2, 6):
            storage.append(Ready(entries=[entry(i)]))
        kept = storage.crash(random.Random(seed))
        restored, _ = storage.load()
        assert indexes(restored) == list(range(1, 2 + kept))
        again = started()
        again.save(Ready(entries=[entry(1)]))
        for i in range(2, 6):
            again.append(Ready(entries=[entry(i)]))
        assert again.crash(random.Random(seed)) == kept
        outcomes.add(kept)
    assert len(outcomes) > 2


def test_crash_can_tear_the_next_unsynced_record():
    """A torn record is cut on load (reported in ``torn``), the records before it stay."""
    storage = started()
    storage.save(Ready(entries=[entry(1)]))
    storage.append(Ready(entries=[entry(2)]))
    storage.crash(tear=True)
    restored, _ = storage.load()
    assert indexes(restored) == [1]
    assert storage.torn is not None
    storage.save(Ready(entries=[entry(2, term=3)]))
    storage.crash()
    restored, _ = storage.load()
    assert restored.entries[-1] == entry(2, term=3)


def test_failed_sync_makes_the_store_unusable_until_restart():
    """fail_next_sync: save raises StorageIOError, every later write raises, crash() restarts."""
    storage = started()
    storage.save(Ready(entries=[entry(1)]))
    storage.fail_next_sync()
    with pytest.raises(StorageIOError):
        storage.save(Ready(hard_state=HardState(5, 5, 0), entries=[entry(2)]))
    with pytest.raises(StorageIOError):
        storage.save(Ready(entries=[entry(3)]))
    with pytest.raises(StorageIOError):
        storage.compact(1)
    storage.crash()
    restored, _ = storage.load()
    assert indexes(restored) == [1] and restored.hard_state == HardState()
    storage.save(Ready(entries=[entry(2)]))


def test_flip_bit_makes_load_raise_corrupt_log_naming_the_record():
    """A damaged durable record is never skipped: load names it and its entries."""
    storage = started()
    for i in range(1, 6):
        storage.save(Ready(entries=[entry(i)]))
    number = storage.flip_bit(3)
    storage.crash()
    with pytest.raises(CorruptLog) as caught:
        storage.load()
    assert caught.value.offset == number
    assert caught.value.path == "memory:node1"
    assert "entries up to index 3" in str(caught.value)


def test_flip_bit_in_the_last_record_is_still_corruption():
    """Unlike a tear, a flipped bit in the newest durable record is not silently dropped."""
    storage = started()
    storage.save(Ready(entries=[entry(1)]))
    storage.save(Ready(entries=[entry(2)]))
    storage.flip_bit(2)
    storage.crash()
    with pytest.raises(CorruptLog):
        storage.load()


def test_snapshot_round_trip_and_fallback_on_corruption():
    """Snapshots load back; a corrupt newest one falls back to the previous plus the log."""
    storage = started()
    for i in range(1, 40):
        storage.save(Ready(entries=[entry(i)]))
    storage.save_snapshot(SnapshotMeta(10, 1, CONFIG), [("kv", [b"ten"])], {"s": 1})
    storage.save_snapshot(SnapshotMeta(30, 1, CONFIG), [("kv", [b"thirty"])], {"s": 2})
    storage.compact(30)
    storage.crash()
    restored, reader = storage.load()
    assert restored.snapshot.index == 30 and indexes(restored) == list(range(31, 40))
    assert reader.read_all() == {"kv": b"thirty"} and reader.sessions == {"s": 2}
    storage.corrupt_snapshot()
    storage.crash()
    restored, reader = storage.load()
    assert restored.snapshot.index == 10 and indexes(restored) == list(range(11, 40))
    assert reader.read_all() == {"kv": b"ten"}
    assert storage.skipped_snapshots


def test_install_and_compaction_record_the_floor():
    """After an install, losing the snapshot cannot fall back to an older one silently."""
    storage = started()
    storage.save(Ready(entries=[entry(i) for i in range(1, 10)]))
    storage.save_snapshot(SnapshotMeta(5, 1, CONFIG), [("kv", [b"five"])])
    meta = SnapshotMeta(100, 4, CONFIG)
    storage.save(Ready(hard_state=HardState(4, 0, 100), snapshot=meta,
                       snapshot_data=encode_snapshot_bytes(meta, [("kv", [b"hundred"])])))
    storage.crash()
    restored, reader = storage.load()
    assert restored.snapshot == meta and restored.entries == []
    assert reader.read_all() == {"kv": b"hundred"}
    storage.corrupt_snapshot()
    storage.crash()
    with pytest.raises(SnapshotUnavailable):
        storage.load()


def test_memory_compaction_drops_covered_records():
    """Compaction shrinks the record list but never the last record or a needed entry."""
    storage = started()
    for i in range(1, 50):
        storage.save(Ready(hard_state=HardState(1, 1, i), entries=[entry(i)]))
    storage.save_snapshot(SnapshotMeta(20, 1, CONFIG), [("kv", [b"a"])])
    storage.save_snapshot(SnapshotMeta(40, 1, CONFIG), [("kv", [b"b"])])
    before = storage.record_count
    assert storage.compact(40) > 0
    assert storage.record_count < before
    storage.crash()
    restored, _ = storage.load()
    assert indexes(restored) == list(range(41, 50))
    assert restored.hard_state == HardState(1, 1, 49)


def test_durable_state_shows_only_what_is_synced():
    """durable_state() is what a restart would load: synced records only, replayed."""
    storage = started()
    storage.save(Ready(hard_state=HardState(1, 1, 1), entries=[entry(1), entry(2)]))
    storage.append(Ready(hard_state=HardState(2, 2, 2), truncate_from=2, entries=[entry(2, 2)]))
    assert storage.durable_state() == (HardState(1, 1, 1), [entry(1), entry(2)])
    storage.sync()
    assert storage.durable_state() == (HardState(2, 2, 2), [entry(1), entry(2, 2)])


def test_lose_last_entries_rewrites_the_log_and_load_detects_lost_commits():
    """The newest durable entries vanish from the records; a commit point beyond what is
    left makes load() refuse (R13), one within it loads the shorter log."""
    storage = started()
    storage.save(Ready(hard_state=HardState(1, 1, 2), entries=[entry(1), entry(2)]))
    storage.save(Ready(entries=[entry(3), entry(4)]))
    storage.crash()
    assert storage.lose_last_entries(2) == [3, 4]
    restored, _ = storage.load()
    assert indexes(restored) == [1, 2]
    storage.crash()
    assert storage.lose_last_entries(1) == [2]
    with pytest.raises(CorruptLog, match="acknowledged entries were lost"):
        storage.load()


def test_reset_commit_caps_every_durable_hard_state():
    """reset_commit() keeps term and vote and lowers the commit point a restart sees."""
    storage = started()
    storage.save(Ready(hard_state=HardState(3, 2, 1), entries=[entry(1)]))
    storage.save(Ready(hard_state=HardState(3, 2, 2), entries=[entry(2)]))
    storage.crash()
    storage.reset_commit(0)
    restored, _ = storage.load()
    assert restored.hard_state == HardState(3, 2, 0) and indexes(restored) == [1, 2]


def test_reapply_restores_the_previous_snapshot_like_disk_storage():
    """load(reapply=True) in memory (the simulator's storage) makes the same choice as on
    disk: the previous snapshot, the log after it, the commit hint at the newest one."""
    storage = started()
    for i in range(1, 40):
        storage.save(Ready(hard_state=HardState(1, 0, min(i, 20)), entries=[entry(i)]))
    storage.save_snapshot(SnapshotMeta(10, 1, CONFIG), [("kv", [b"ten"])], {"s": 1})
    storage.save_snapshot(SnapshotMeta(30, 1, CONFIG), [("kv", [b"thirty"])], {"s": 2})
    storage.compact(30)
    storage.crash()
    restored, reader = storage.load(reapply=True)
    assert restored.snapshot.index == 10 and indexes(restored) == list(range(11, 40))
    assert restored.hard_state.commit == 30 and storage.snapshot_meta.index == 30
    assert reader.read_all() == {"kv": b"ten"} and reader.sessions == {"s": 1}
    storage.crash()
    restored, _ = storage.load()
    assert restored.snapshot.index == 30 and restored.hard_state.commit == 20
