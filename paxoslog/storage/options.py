"""Storage settings (the ``[storage]`` table of the conf maps onto these fields)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["StorageOptions"]


@dataclass(frozen=True)
class StorageOptions:
    """Bounds and knobs of one data directory.  Names carry the unit last."""

    # A WAL segment is sealed and a new one started beyond this size.  Compaction deletes
    # whole sealed segments only, so this bounds the log kept beyond the compaction point
    # (replayed at every restart).  8 MiB: measured (2 cores, 150-byte entries) a restart
    # replays ~25 ms per MB of WAL; with 64 MiB segments the WAL grew to 62 MB (1.5 s to
    # load) because no segment ever filled, with 8 MiB it stayed under 2 snapshot
    # intervals + 8 MiB (0.2 s); throughput was the same within noise from 1 to 64 MiB
    # (~60-70k entries/s at 256 per fsync: a rotation costs three fsyncs).
    segment_bytes: int = 8 << 20
    # A record longer than this is treated as damage (a garbage length at a torn tail).
    record_bytes_max: int = 64 << 20
    # One Ready's entries are split into ENTRIES records of about this size.
    entries_record_bytes: int = 4 << 20
    # Snapshots kept on disk (the newest plus fallbacks in case it turns out corrupt).
    snapshot_keep: int = 2
    # zstd level and worker threads (0: compress in the calling thread).  Level 1 compresses
    # a half-random kv state ~3x faster than level 3 here for a ratio within 1% of it.
    snapshot_level: int = 1
    snapshot_threads: int = 0
    # SnapshotPolicy thresholds: entries or payload bytes applied since the last snapshot.
    snapshot_entries: int = 10_000
    snapshot_bytes: int = 64 << 20
    # Compaction keeps the log back to the previous snapshot, so a corrupt newest snapshot
    # falls back to the previous one plus the log without fetching from a peer.
    keep_log_for_fallback: bool = True

    def __post_init__(self) -> None:
        assert self.segment_bytes >= 4096
        assert self.record_bytes_max >= self.entries_record_bytes >= 1024
        assert self.snapshot_keep >= 1
        assert -7 <= self.snapshot_level <= 22
        assert self.snapshot_threads >= 0
        assert self.snapshot_entries >= 1 and self.snapshot_bytes >= 1
