"""``DiskStorage``: one node's data directory (META, hard state, WAL, snapshots) as one store.

Layout (DESIGN.md section 4)::

    <data_dir>/META                cluster id, node id, protocol, format version
    <data_dir>/LOCK                flock()ed by the one process that writes (not by readers)
    <data_dir>/hardstate           hard-state checkpoint (see hardstate.py)
    <data_dir>/wal/*.wal           the write-ahead log (see wal.py, walscan.py)
    <data_dir>/snap/*.snap.zst     snapshots (see snapshot.py); snap/incoming/ for transfers

What one Ready persists, in this record order inside one fsync: TRUNCATE (Raft: drop every
entry >= truncate_from), ENTRIES (a later record for an index replaces an earlier one), then
HARDSTATE.  Entries go before the hard state so that a torn batch that kept the hard state
also kept the entries its commit point refers to.

Failure policy: any ``OSError`` while writing makes the store unusable; every later call
raises ``StorageIOError`` (never retry an fsync and believe it, ATC'20).  Restart the node.
The one exception is a snapshot that fails *before* its rename: nothing durable changed, so
``save_snapshot`` raises ``StorageIOError`` and the store stays usable.
"""

from __future__ import annotations

import fcntl
import os
from typing import Iterable

from twisted.logger import Logger

from paxoslog.core.log import Entry, HardState, SnapshotMeta, entry_bytes
from paxoslog.core.ready import Ready
from paxoslog.core.replica import Restored

from .durable import DATA_DIR_MODE, DATA_FILE_MODE, TMP_SUFFIX, create_file, make_dirs
from .errors import CorruptSnapshot, DataDirLocked, MetaMismatch, StorageError, StorageIOError
from .failpoints import ACTIVE, hit
from .hardstate import HARDSTATE_FILE, read_hardstate, remove_stale_temp, write_hardstate
from .meta import Meta, check_format, ensure_meta, meta_path, read_meta
from .options import StorageOptions
from .snapshot import (SnapshotFile, SnapshotReader, SnapshotStore, read_snapshot_meta,
                       snapshot_name)
from .wal import Replay, WriteAheadLog
from .walscan import REC_HARDSTATE, REC_SNAPSHOT, REC_TRUNCATE, TornTail

__all__ = ["DiskStorage", "LOCK_FILE", "warn_if_open"]

LOCK_FILE = "LOCK"

log = Logger(namespace="paxoslog.storage")


def warn_if_open(data_dir: str) -> bool:
    """Log one warning when ``data_dir`` is accessible to its group or to other users (made
    by an older release, or by hand): they could read every key, value and client id.  Its
    mode is left alone (the operator may have reasons); returns whether it warned."""
    try:
        mode = os.stat(data_dir).st_mode & 0o7777
    except OSError:
        return False
    if not mode & 0o077:
        return False
    log.warn("SECURITY: data directory {path} has mode {mode}: other local users may read "
             "its keys, values and session table; run `chmod 700 {path}` (paxoslog creates "
             "data directories 0700 and their files 0600)",
             path=os.path.abspath(data_dir), mode=f"{mode:04o}")
    return True


class DiskStorage:
    """Durable storage of one replica.

    ``DiskStorage(data_dir, cluster_id, node_id, protocol, options)`` creates or checks META
    and takes the directory lock; ``load()`` must be called once before writing.  With
    ``read_only=True`` no lock is taken and nothing is modified (a torn tail is reported, not
    cut): inspection of a running node; the identity arguments may then be None.
    """

    def __init__(self, data_dir: str, cluster_id: str | None, node_id: int | None,
                 protocol: str | None, options: StorageOptions | None = None, *,
                 read_only: bool = False) -> None:
        self.data_dir = data_dir
        self.options = options or StorageOptions()
        self.read_only = read_only
        self._lock_fd: int | None = None
        self._failed: BaseException | None = None
        self._loaded = False
        if read_only:
            self.meta = self._check_read_only_meta(cluster_id, node_id, protocol)
        else:
            make_dirs(data_dir, DATA_DIR_MODE)
            self.meta = ensure_meta(data_dir, cluster_id, node_id, protocol)
            self._lock()
            warn_if_open(data_dir)
        self.wal_dir = os.path.join(data_dir, "wal")
        self.snap_dir = os.path.join(data_dir, "snap")
        self.hardstate_path = os.path.join(data_dir, HARDSTATE_FILE)
        self._wal = WriteAheadLog(self.wal_dir, segment_bytes=self.options.segment_bytes,
                                  record_bytes_max=self.options.record_bytes_max,
                                  read_only=read_only)
        self._snaps = SnapshotStore(self.snap_dir, keep=self.options.snapshot_keep,
                                    level=self.options.snapshot_level,
                                    threads=self.options.snapshot_threads, read_only=read_only)
        self.hard_state = HardState()
        self.snapshot_meta: SnapshotMeta | None = None
        self.floor = 0                 # the log may lack entries <= floor
        self.torn: TornTail | None = None
        self.skipped_snapshots: list[tuple[str, str]] = []

    # ------------------------------------------------------------------ opening

    def _check_read_only_meta(self, cluster_id, node_id, protocol) -> Meta:
        path = meta_path(self.data_dir)
        meta = read_meta(path)
        check_format(path, meta)
        for label, field, expected in (("cluster id", "cluster_id", cluster_id),
                                       ("node id", "node_id", node_id),
                                       ("protocol", "protocol", protocol)):
            if expected is not None and getattr(meta, field) != expected:
                raise MetaMismatch(path, label, getattr(meta, field), expected)
        return meta

    def _lock(self) -> None:
        path = os.path.join(self.data_dir, LOCK_FILE)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, DATA_FILE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise DataDirLocked(f"{self.data_dir} is in use by another process (pid {holder}); "
                                "two nodes must not share a data directory") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    def load(self, reapply: bool = False) -> tuple[Restored, SnapshotReader | None]:
        """Replay the data directory: (Restored for the replica, reader of the snapshot the
        state machines must restore from, or None).

        ``reapply`` (a node starting): restore the valid snapshot before the newest when
        the log still reaches back to it (``Replay.reapplies``), with the commit hint
        raised to the newest one's index, so the node applies that snapshot interval
        again and its watch history reaches back that far (docs/websocket.md).
        ``snapshot_meta`` stays the newest snapshot either way.

        Raises ``CorruptLog`` (a damaged record, naming file and offset; the node must not
        vote with this log), ``SnapshotUnavailable`` (no valid snapshot covers the compacted
        or installed part of the log: fetch one from a peer).  The caller closes the reader
        once the state machines are restored, and calls ``close()`` after an error."""
        assert not self._loaded, "load() once"
        self._loaded = True
        if not self.read_only:
            remove_stale_temp(self.hardstate_path)
        checkpoint = read_hardstate(self.hardstate_path)
        try:
            replay: Replay = self._wal.open()
        except OSError as exc:
            self._fail(exc)
        self.torn = replay.torn
        self.floor = replay.floor[0] if replay.floor else 0
        chosen = self._snaps.newest_valid()
        newest = chosen[1].meta if chosen else None
        base, committed = chosen, 0
        if reapply and chosen is not None:
            older = self._snaps.valid_before(chosen[0], lambda f: replay.reapplies(f, newest))
            if older is not None and replay.reapplies(older[1].meta, newest):
                base, committed = older, newest.index
        self.skipped_snapshots = list(self._snaps.skipped)
        skipped = "".join(f"; skipped {path}: {why}" for path, why in self.skipped_snapshots)
        restored = replay.restored(checkpoint, base[1].meta if base else None,
                                   self.data_dir, skipped, committed)
        self.hard_state = restored.hard_state
        self.snapshot_meta = newest
        reader = SnapshotReader(base[0].path) if base else None
        return restored, reader

    # ------------------------------------------------------------------ writing

    @property
    def usable(self) -> bool:
        return self._failed is None and not self.read_only

    def _check_usable(self) -> None:
        if self.read_only:
            raise StorageError(f"{self.data_dir} was opened read-only")
        if self._failed is not None:
            raise StorageIOError(f"{self.data_dir}: storage unusable after an earlier I/O error "
                                 f"({self._failed}); restart the node",
                                 getattr(self._failed, "errno", None))
        assert self._loaded, "load() before writing"

    def _fail(self, exc: BaseException):
        """Make the store unusable and raise ``StorageIOError``."""
        if self._failed is None:
            self._failed = exc
        if isinstance(exc, StorageIOError):
            raise exc
        raise StorageIOError(f"{self.data_dir}: I/O error: {exc}",
                             getattr(exc, "errno", None)) from exc

    def append(self, ready: Ready) -> None:
        """Buffer the durable part of ``ready`` (truncate, entries, hard state); no fsync.
        A Ready carrying a snapshot must go through ``save``."""
        self._check_usable()
        assert ready.snapshot is None, "a Ready with a snapshot goes through save()"
        try:
            if ready.truncate_from is not None:
                self._wal.append(REC_TRUNCATE, ready.truncate_from)
            if ready.entries:
                self._append_entries(ready.entries)
            if ready.hard_state is not None:
                self._wal.append(REC_HARDSTATE, list(ready.hard_state))
        except (StorageIOError, OSError) as exc:
            self._fail(exc)
        if ready.hard_state is not None:
            self.hard_state = ready.hard_state

    def _append_entries(self, entries: list[Entry]) -> None:
        limit = self.options.entries_record_bytes
        batch: list[Entry] = []
        size = 0
        for entry in entries:
            n = entry_bytes(entry)
            if batch and size + n > limit:
                self._wal.append_entries(batch)
                batch, size = [], 0
            batch.append(entry)
            size += n
        self._wal.append_entries(batch)

    def flush(self) -> None:
        """Write what was appended to the files without fsync (see ``WriteAheadLog.flush``)."""
        self._check_usable()
        try:
            self._wal.flush()
        except (StorageIOError, OSError) as exc:
            self._fail(exc)

    def sync(self) -> None:
        """fsync everything appended since the last sync (one fsync: group commit)."""
        self._check_usable()
        try:
            self._wal.sync()
        except (StorageIOError, OSError) as exc:
            self._fail(exc)

    def save(self, ready: Ready, snapshot_file: str | None = None) -> None:
        """Persist ``ready`` durably; when it returns, its messages may be sent.

        A Ready with ``snapshot`` set installs it first: from ``snapshot_file`` (a verified
        file from ``transfer.SnapshotReceiver``) or else from ``ready.snapshot_data``, which
        must then hold a whole snapshot file's bytes."""
        self._check_usable()
        truncate_from = ready.truncate_from
        if ready.snapshot is not None:
            if self.snapshot_meta is None or ready.snapshot.index > self.snapshot_meta.index:
                if snapshot_file is None:
                    if ready.snapshot_data is None:
                        raise ValueError("a Ready with a snapshot needs snapshot_file or "
                                         "snapshot_data")
                    snapshot_file = self._stage_bytes(ready.snapshot, ready.snapshot_data)
                if truncate_from is not None:
                    self._truncate_before_install(truncate_from)
                    truncate_from = None
                self.install_snapshot(ready.snapshot, snapshot_file)
        if not (ready.hard_state is not None or ready.entries or truncate_from is not None):
            return
        self.append(Ready(hard_state=ready.hard_state, truncate_from=truncate_from,
                          entries=ready.entries))
        self.sync()

    def _truncate_before_install(self, truncate_from: int) -> None:
        """A received snapshot that conflicts with the log's suffix (Raft): drop the suffix
        durably before the snapshot is in place.  The other way round, a crash between the
        two left the snapshot's newer term below older entries, and the node refused to
        start again ("not contiguous with non-decreasing terms"; found by a review).  Only
        the truncation goes first: the Ready's hard state may name a commit index that the
        snapshot, not the old log, backs."""
        self.append(Ready(truncate_from=truncate_from))
        self.sync()
        if ACTIVE:
            hit("install.after_truncate")

    def _stage_bytes(self, meta: SnapshotMeta, data: bytes) -> str:
        name = snapshot_name(meta.index, meta.term) + ".recv" + TMP_SUFFIX
        path = os.path.join(self.snap_dir, name)
        try:
            with create_file(path) as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
        except OSError as exc:
            self._fail(exc)
        return path

    def save_snapshot(self, meta: SnapshotMeta, states: Iterable[tuple[str, Iterable[bytes]]],
                      sessions: object = None) -> SnapshotFile:
        """Write a local snapshot of the state machines at ``meta.index`` (streamed; see
        snapshot.py) and keep the newest ``snapshot_keep``.  Call ``compact`` afterwards."""
        self._check_usable()
        try:
            written = self._snaps.save(meta, states, sessions)
        except StorageIOError:
            raise                               # failed before the rename: nothing changed
        except OSError as exc:
            self._fail(exc)
        if self.snapshot_meta is None or meta.index >= self.snapshot_meta.index:
            self.snapshot_meta = meta
        return written

    def install_snapshot(self, meta: SnapshotMeta, file_path: str) -> SnapshotFile:
        """Adopt a snapshot received from a peer: verify it, rename it into ``snap/``, record
        a SNAPSHOT marker in the WAL (the log at or below ``meta.index`` is superseded) and
        delete the WAL segments it covers.  Entries above ``meta.index`` are kept; a Raft
        follower whose log conflicts must also persist ``truncate_from``."""
        self._check_usable()
        try:
            installed = self._snaps.adopt(meta, file_path)
            self._wal.sync()
            self._wal.append(REC_SNAPSHOT, [meta.index, meta.term])
            self._wal.sync()
            if ACTIVE:
                hit("install.after_marker")
        except (StorageIOError, OSError) as exc:
            self._fail(exc)
        self.snapshot_meta = meta
        self.floor = max(self.floor, meta.index)
        self._delete_segments(meta.index)
        return installed

    def compact(self, index: int) -> int:
        """Delete WAL segments whose entries are all <= ``index`` and covered by a snapshot.

        With ``keep_log_for_fallback`` the log is kept back to the previous snapshot (so a
        corrupt newest snapshot can fall back to it plus the log).  Returns the number of
        segments deleted."""
        self._check_usable()
        snaps = self._snaps.list()
        if not snaps:
            return 0
        limit = snaps[-1]
        if self.options.keep_log_for_fallback and self.options.snapshot_keep >= 2:
            if len(snaps) < 2:
                return 0
            limit = snaps[-2]
        effective = min(index, limit.index)
        if effective <= self.floor:
            return self._delete_segments(self.floor)
        term = limit.term if effective == limit.index else 0
        try:
            self._wal.sync()
            self._wal.append(REC_SNAPSHOT, [effective, term])
            self._wal.sync()
        except (StorageIOError, OSError) as exc:
            self._fail(exc)
        self.floor = effective
        return self._delete_segments(effective)

    def _delete_segments(self, index: int) -> int:
        try:
            # The segments about to go may hold the newest hard-state record: checkpoint first.
            segments = self._wal.segments
            if len(segments) > 1 and (segments[0][3] is None or segments[0][3] <= index):
                write_hardstate(self.hardstate_path, self.hard_state)
            return self._wal.compact(index)
        except (StorageIOError, OSError) as exc:
            self._fail(exc)

    # ------------------------------------------------------------------ misc

    def latest_snapshot(self) -> SnapshotFile | None:
        """The newest snapshot file, or None."""
        files = self._snaps.list()
        return files[-1] if files else None

    def find_snapshot(self, index: int, term: int) -> SnapshotFile | None:
        """The kept snapshot file at exactly (index, term) (to send to a lagging follower:
        the core offers the snapshot it compacted to, not necessarily the newest), or None
        when there is none (never taken, or pruned meanwhile)."""
        for file in self._snaps.list():
            if (file.index, file.term) == (index, term):
                return file
        return None

    def compaction_point(self, taken: SnapshotMeta) -> SnapshotMeta | None:
        """How far the log may be compacted once the snapshot ``taken`` is durable.

        With ``snapshot_keep`` >= 2: up to the newest kept snapshot *before* ``taken``, so
        the log (the core's and the WAL) always holds at least one snapshot interval of
        entries, and a follower a little behind the newest snapshot catches up by entries
        instead of a whole snapshot.  None when there is no earlier snapshot (compact
        nothing yet).  With ``snapshot_keep`` = 1: ``taken`` itself.

        Reads the earlier snapshot's header (its configuration) from disk: call it off
        the event loop.  A header that cannot be read means no compaction this time."""
        if self.options.snapshot_keep < 2:
            return taken
        earlier = [f for f in self._snaps.list() if f.index < taken.index]
        if not earlier:
            return None
        chosen = earlier[-1]
        try:
            meta = read_snapshot_meta(chosen.path)
        except (OSError, CorruptSnapshot):
            return None                     # pruned meanwhile or damaged: try next time
        if (meta.index, meta.term) != (chosen.index, chosen.term):
            return None
        return meta

    @property
    def transfer_dir(self) -> str:
        """Where ``transfer.SnapshotReceiver`` should stage incoming snapshot files (same file
        system as ``snap/``, so installing is a rename)."""
        path = os.path.join(self.snap_dir, "incoming")
        if not self.read_only:
            make_dirs(path, DATA_DIR_MODE)
        return path

    @property
    def wal_segments(self) -> list[tuple[int, str, int, int | None]]:
        return self._wal.segments

    def close(self) -> None:
        """Seal the WAL (fsync) and release the lock.  Safe to call twice."""
        self._wal.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> "DiskStorage":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
