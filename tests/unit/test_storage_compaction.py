"""Compaction keeps a log tail: ``DiskStorage.compaction_point`` names the snapshot *before*
the newest (snapshot.keep >= 2) so the log always holds one snapshot interval of entries;
``find_snapshot`` finds any kept file by (index, term); WAL segments rotate at
``segment_bytes`` and compaction deletes the sealed ones below the compaction point; a
restart still loads the newest snapshot plus the entries after it."""

from __future__ import annotations

import os

import pytest

from paxoslog.core.log import ENTRY_NORMAL, Entry, HardState, SnapshotMeta
from paxoslog.core.quorum import Config
from paxoslog.core.ready import Ready
from paxoslog.storage import CorruptSnapshot, DiskStorage, StorageOptions, failpoints
from paxoslog.storage.snapshot import read_snapshot_meta
from paxoslog.storage.walscan import SEGMENT_BYTES_DEFAULT, list_segments

CONFIG = Config(frozenset({1, 2, 3}))
WIDER = Config(frozenset({1, 2, 3, 4}))
PAYLOAD = b"p" * 200


def open_disk(path, **options) -> DiskStorage:
    storage = DiskStorage(str(path), "test", 1, "raft", StorageOptions(**options))
    storage.load()
    return storage


def write(storage: DiskStorage, first: int, last: int, batch: int = 16) -> None:
    """Entries first..last, ``batch`` per fsynced Ready, commit point trailing."""
    for start in range(first, last + 1, batch):
        stop = min(start + batch - 1, last)
        storage.save(Ready(hard_state=HardState(1, 1, stop),
                           entries=[Entry(i, 1, ENTRY_NORMAL, (PAYLOAD,))
                                    for i in range(start, stop + 1)]))


def state(tag: bytes):
    return [("kv", [tag * 100])]


@pytest.fixture(autouse=True)
def no_failpoints():
    failpoints.clear()
    yield
    failpoints.clear()


def test_compaction_point_is_the_snapshot_before_the_one_taken(tmp_path):
    """keep = 2: the first snapshot compacts nothing; each later one compacts up to the one
    before it, whose configuration comes from that file's header."""
    storage = open_disk(tmp_path, segment_bytes=64 << 10)
    write(storage, 1, 300)
    first = SnapshotMeta(100, 1, WIDER)
    storage.save_snapshot(first, state(b"a"))
    assert storage.compaction_point(first) is None
    second = SnapshotMeta(200, 1, CONFIG)
    storage.save_snapshot(second, state(b"b"))
    assert storage.compaction_point(second) == first        # WIDER read back from disk
    third = SnapshotMeta(300, 1, CONFIG)
    storage.save_snapshot(third, state(b"c"))
    assert storage.compaction_point(third) == second
    storage.close()


def test_compaction_point_with_keep_1_is_the_snapshot_itself(tmp_path):
    """keep = 1 falls back to compacting right at the snapshot just taken."""
    storage = open_disk(tmp_path, snapshot_keep=1)
    write(storage, 1, 50)
    taken = SnapshotMeta(50, 1, CONFIG)
    storage.save_snapshot(taken, state(b"a"))
    assert storage.compaction_point(taken) == taken
    storage.close()


def test_compaction_point_skips_an_unreadable_previous_snapshot(tmp_path):
    """A previous snapshot whose header cannot be read means no compaction this time."""
    storage = open_disk(tmp_path)
    write(storage, 1, 200)
    older = storage.save_snapshot(SnapshotMeta(100, 1, CONFIG), state(b"a"))
    taken = SnapshotMeta(200, 1, CONFIG)
    storage.save_snapshot(taken, state(b"b"))
    with open(older.path, "r+b") as f:
        f.write(b"\0" * 16)
    with pytest.raises(CorruptSnapshot):
        read_snapshot_meta(older.path)
    assert storage.compaction_point(taken) is None
    storage.close()


def test_find_snapshot_matches_any_kept_file(tmp_path):
    """Both kept snapshots are found by (index, term); a wrong term or a pruned one is None."""
    storage = open_disk(tmp_path)
    write(storage, 1, 300)
    storage.save_snapshot(SnapshotMeta(100, 1, CONFIG), state(b"a"))
    storage.save_snapshot(SnapshotMeta(200, 1, CONFIG), state(b"b"))
    assert storage.find_snapshot(100, 1).path.endswith(
        "00000000000000000100-00000000000000000001.snap.zst")
    assert storage.find_snapshot(200, 1) is not None
    assert storage.find_snapshot(200, 2) is None
    storage.save_snapshot(SnapshotMeta(300, 1, CONFIG), state(b"c"))   # prunes 100
    assert storage.find_snapshot(100, 1) is None
    assert [storage.find_snapshot(i, 1).index for i in (200, 300)] == [200, 300]
    storage.close()


def test_segments_rotate_and_compaction_deletes_the_ones_below_the_tail(tmp_path):
    """64 KiB segments: the WAL rotates as it grows; after each snapshot compaction to the
    previous snapshot deletes the sealed segments below it (from disk, not only from the
    list), keeps every entry after the previous snapshot, and a restart loads the newest
    snapshot plus the entries after it."""
    storage = open_disk(tmp_path, segment_bytes=64 << 10)
    wal_dir = os.path.join(str(tmp_path), "wal")
    write(storage, 1, 1000)
    rotated = len(list_segments(wal_dir))
    assert rotated >= 3, rotated                     # ~230 KB of entries in 64 KiB segments
    deleted_total = 0
    previous = None
    for index in (1000, 2000, 3000):
        if index > 1000:
            write(storage, index - 999, index)
        taken = SnapshotMeta(index, 1, CONFIG)
        storage.save_snapshot(taken, state(b"%d" % index))
        point = storage.compaction_point(taken)
        assert point == previous
        if point is not None:
            deleted = storage.compact(point.index)
            assert deleted >= 2
            deleted_total += deleted
            segments = storage.wal_segments
            # Whole segments go: the first one left still reaches past the compaction point.
            assert segments[0][3] > point.index
            assert [s[1] for s in segments] == [p for _, p in list_segments(wal_dir)]
            assert len(segments) <= 1 + (index - point.index) * 250 // (64 << 10) + 2
        previous = taken
    assert deleted_total >= 4
    storage.close()

    storage = DiskStorage(str(tmp_path), "test", 1, "raft", StorageOptions(segment_bytes=64 << 10))
    restored, reader = storage.load()
    assert restored.snapshot.index == 3000
    assert restored.entries == []                    # nothing written after the snapshot
    with reader:
        assert reader.read_all()["kv"] == b"3000" * 100
    assert storage.floor == 2000
    write(storage, 3001, 3100)                       # and the node writes on
    storage.close()
    storage = DiskStorage(str(tmp_path), "test", 1, "raft", StorageOptions(segment_bytes=64 << 10))
    restored, reader = storage.load()
    reader.close()
    assert [e.index for e in restored.entries] == list(range(3001, 3101))
    storage.close()


def test_default_segment_size_rotates_under_normal_load():
    """The default segment is small enough to rotate between snapshots of the default
    policy's size (so compaction frees space), and the WAL and the options agree on it."""
    options = StorageOptions()
    assert SEGMENT_BYTES_DEFAULT == options.segment_bytes == 8 << 20
    # 10,000 entries of ~300 bytes (the default snapshot interval) already fill a third
    # of a segment: a segment is sealed every few snapshots, not never.
    assert options.segment_bytes < 4 * options.snapshot_entries * 300
