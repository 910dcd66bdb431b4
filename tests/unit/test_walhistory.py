"""Reading committed entries back from a node's own WAL (paxoslog/server/walhistory.py) on
real files: the last record of an index wins, nothing at or below the last SNAPSHOT marker
is served, compacted segments are skipped or re-listed, and results are contiguous."""

from __future__ import annotations

from paxoslog.core.log import ENTRY_NORMAL, Entry, HardState, SnapshotMeta
from paxoslog.core.quorum import Config
from paxoslog.core.ready import Ready
from paxoslog.server.walhistory import read_committed
from paxoslog.storage import DiskStorage, StorageOptions

CONFIG = Config(frozenset({1, 2, 3}))


def open_disk(path, **options) -> DiskStorage:
    storage = DiskStorage(str(path), "test", 1, "raft", StorageOptions(**options))
    storage.load()
    return storage


def write(storage, first: int, last: int, term: int = 1, tag: bytes = b"v") -> None:
    for start in range(first, last + 1, 16):
        stop = min(start + 15, last)
        storage.save(Ready(hard_state=HardState(term, 1, stop),
                           entries=[Entry(i, term, ENTRY_NORMAL, (tag + str(i).encode() * 20,))
                                    for i in range(start, stop + 1)]))


def read(path, start, end, count=1000, bytes_max=1 << 30, ranges=None):
    return read_committed(str(path / "wal"), start, end, count, bytes_max,
                          {} if ranges is None else ranges)


def test_entries_come_back_contiguous_and_bounded(tmp_path):
    """start..end, at most count entries or about bytes_max payload bytes."""
    storage = open_disk(tmp_path)
    write(storage, 1, 100)
    entries, first = read(tmp_path, 10, 60, count=20)
    assert [e.index for e in entries] == list(range(10, 30)) and first == 1
    entries, _ = read(tmp_path, 10, 60, bytes_max=200)
    assert 1 <= len(entries) < 5
    assert read(tmp_path, 95, 200)[0][-1].index == 100
    storage.close()


def test_a_rewritten_index_reads_as_its_last_record(tmp_path):
    """A truncated and rewritten tail (a new leader's entries): the later records win."""
    storage = open_disk(tmp_path)
    write(storage, 1, 50, term=1, tag=b"old")
    storage.save(Ready(hard_state=HardState(2, 1, 40), truncate_from=41,
                       entries=[Entry(i, 2, ENTRY_NORMAL, (b"new",)) for i in range(41, 56)]))
    entries, _ = read(tmp_path, 38, 55)
    assert [(e.index, e.term) for e in entries][3:] == [(i, 2) for i in range(41, 56)]
    assert all(e.payload == (b"new",) for e in entries if e.index > 40)
    storage.close()


def test_nothing_at_or_below_the_last_snapshot_marker_is_served(tmp_path):
    """After compaction to 120 (segments of the old log deleted or not), the first index
    served is 121; a read from below gets nothing and names it."""
    storage = open_disk(tmp_path, segment_bytes=64 << 10)
    write(storage, 1, 300)
    storage.save_snapshot(SnapshotMeta(120, 1, CONFIG), [("kv", [b"a"])])
    storage.save_snapshot(SnapshotMeta(250, 1, CONFIG), [("kv", [b"b"])])
    storage.compact(250)
    entries, first = read(tmp_path, 5, 300)
    assert entries == [] and first == 121
    entries, first = read(tmp_path, 121, 125)
    assert [e.index for e in entries] == [121, 122, 123, 124, 125]
    storage.close()


def test_sealed_segments_below_the_start_are_skipped_once_known(tmp_path):
    """The second read with the same cache decodes only the segments that can hold the
    range, and answers the same."""
    storage = open_disk(tmp_path, segment_bytes=8 << 10)
    write(storage, 1, 600)
    ranges: dict = {}
    first_read = read(tmp_path, 550, 560, ranges=ranges)
    assert len(ranges) >= 2 and all(top is not None for top, _, _ in ranges.values())
    assert read(tmp_path, 550, 560, ranges=ranges) == first_read
    assert [e.index for e in first_read[0]] == list(range(550, 561)) and first_read[1] == 1
    storage.close()
