"""``paxoslog log export --sqlite OUT.db --data-dir D``: one node's data directory as the
design's relational schema (DESIGN.md section 8), for ad-hoc SQL.

Read-only and lock-free like ``paxoslog log dump``: it runs beside a live node (a torn tail
being appended is left out and reported; a file the node deletes meanwhile makes the read
start over).  The five tables, exactly as designed, plus ``export_info`` (name, value)
saying what was exported from where::

    raft_state      one row: this node.  current_term: the Raft term, or in Multi-Paxos the
                    round of the ballot it promised; voted_for: the Raft vote (NULL: none),
                    or in Multi-Paxos the node id of that ballot; last_updated: when the
                    WAL last changed (UTC).
    log_entries     one row per log index this node holds (the WAL: one snapshot interval
                    before the newest snapshot and everything after it), plus one row per
                    Multi-Paxos hole.  term: as users see it (Raft term; Multi-Paxos: the
                    round of the ballot the slot was accepted at, i.e. packed ballot >> 32;
                    the proposer's node id, the low 32 bits, is not shown).  command_type:
                      <sm>.<op>[,<sm>.<op>...]  the distinct commands of the batch, in order
                      noop            Raft: a new leader's empty entry
                      noop-fill       Multi-Paxos: a slot a new leader filled with a no-op
                                      (a hole at the time of the leader change)
                      hole            Multi-Paxos: no value accepted here (term 0, no data)
                      config          a configuration entry
                      undecodable     bytes that are not a command (skipped everywhere)
                    command_data: JSON text (stored in the BLOB column, so SQLite's json_*
                    functions work on it): the list of commands (client ids, sequences and
                    fields) or the configuration; NULL for no-ops and holes.  timestamp: the
                    encoding node's stamp (``ts``) of the entry's first command (UTC), NULL for
                    no-ops, holes and configuration entries.
    snapshots       one row per snapshot file in snap/: snapshot_data holds the file's
                    METADATA as JSON text (file name, bytes on disk, bytes per state
                    machine, configuration, checksum, whether it verified), not the bytes.
    cluster_members the membership table of the exported state, plus the members of the
                    configuration that have no row yet (address from members.json,
                    added_at_index NULL).
    kv_store        the kv state machine at the exported index: value_data is the value as
                    JSON text; last_modified_index is the key's mod index; the term and the
                    times of a change come from the log entry that made it, NULL when that
                    entry is no longer in the log (compacted into a snapshot); created_at is
                    the time of the put that created the key.

The exported state is the snapshot plus the entries up to the commit index this node knows
(``export_info.exported_index``): entries above it are listed in log_entries but not applied
(``export_info.commit_index``).  Nothing is half-written: the database is built in a
temporary file next to OUT.db (``OUT.db.tmp-<pid>``, created owner-only, 0600: it holds every
key), fsynced and renamed.  The temporary file is removed on any failure and on SIGTERM or
SIGINT (exit 128 + the signal); the ones killed (SIGKILL) runs left are removed by the next
export to the same OUT.db once their pid is gone.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from datetime import datetime, timezone

from paxoslog.core.ballot import Ballot
from paxoslog.core.log import ENTRY_CONFIG, ENTRY_NOOP, Entry, entry_config
from paxoslog.node.commands import decode_command
from paxoslog.node.sessions import SessionTable
from paxoslog.storage.durable import fsync_dir
from paxoslog.storage.snapshot import verify_snapshot
from paxoslog.storage.errors import CorruptSnapshot

from .datadir import (OperateError, create_private, discard_partial, interruptible,
                      make_machines, read_data_dir, remove_stale_temps, replay, retrying)
from .progress import Progress

__all__ = ["export_sqlite", "SCHEMA", "ExportResult"]

SCHEMA = """
CREATE TABLE raft_state (node_id TEXT PRIMARY KEY, current_term INTEGER NOT NULL,
                         voted_for TEXT, last_updated TIMESTAMP);
CREATE TABLE log_entries (log_index INTEGER PRIMARY KEY, term INTEGER NOT NULL,
                          command_type TEXT, command_data BLOB, timestamp TIMESTAMP);
CREATE INDEX log_entries_term ON log_entries (term);
CREATE TABLE snapshots (id INTEGER PRIMARY KEY, last_included_index INTEGER NOT NULL,
                        last_included_term INTEGER NOT NULL, snapshot_data BLOB,
                        created_at TIMESTAMP);
CREATE TABLE cluster_members (node_id TEXT PRIMARY KEY, address TEXT NOT NULL,
                              status TEXT CHECK (status IN ('active','leaving','removed')),
                              added_at_index INTEGER, removed_at_index INTEGER);
CREATE TABLE kv_store (key_name TEXT PRIMARY KEY, value_data BLOB, last_modified_index INTEGER,
                       last_modified_term INTEGER, created_at TIMESTAMP, updated_at TIMESTAMP);
CREATE TABLE export_info (name TEXT PRIMARY KEY, value TEXT);
"""


class ExportResult(dict):
    """Counts and facts of one export (also written to export_info)."""


def _utc(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    return datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def _json(value) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, default=repr)


class _Terms:
    """Terms as users see them (Raft term, Multi-Paxos ballot round)."""

    def __init__(self, protocol: str) -> None:
        self.paxos = protocol == "multipaxos"

    def __call__(self, term: int) -> int:
        return Ballot.unpack(term).round if self.paxos else term


def _entry_row(entry: Entry, terms: _Terms, paxos: bool, kv_times: dict) -> tuple:
    """One log_entries row; notes in ``kv_times`` when each kv key changed ((index, key)
    -> the encoding node's stamp in seconds)."""
    term = terms(entry.term)
    if entry.kind == ENTRY_NOOP:
        return (entry.index, term, "noop-fill" if paxos else "noop", None, None)
    if entry.kind == ENTRY_CONFIG:
        try:
            config = entry_config(entry)
            data = _json({"voters": sorted(config.voters), "outgoing": sorted(config.outgoing),
                          "learners": sorted(config.learners)})
        except Exception:
            data = None
        return (entry.index, term, "config", data, None)
    commands, types, stamp = [], [], None
    for raw in entry.payload:
        command = decode_command(raw)
        if command is None:
            commands.append({"undecodable": raw.hex()})
            kind = "undecodable"
        else:
            ts = command.pop("ts", None)
            start = command.pop("ts_start", None)      # node/stamps.py: a FirstStamp
            if ts is None:
                ts = start
            if type(ts) is int:
                if stamp is None:
                    stamp = ts / 1000.0
                if command.get("sm") == "kv" and isinstance(command.get("key"), str):
                    kv_times[(entry.index, command["key"])] = ts / 1000.0
            commands.append(command)
            kind = f"{command.get('sm')}.{command.get('op', 'put')}"
        if kind not in types:
            types.append(kind)
    return (entry.index, term, ",".join(types) or "empty", _json(commands), _utc(stamp))


def export_sqlite(data_dir: str, out_path: str, *, config=None, force: bool = False,
                  quiet: bool = False) -> ExportResult:
    """See the module docstring.  ``config``: optional conf (its enabled state machines and
    session bounds, for an exact replay of a non-default deployment)."""
    started = time.monotonic()
    if os.path.exists(out_path) and not force:
        raise OperateError(f"{out_path} exists: choose another file, or --force to replace "
                           "it", 2)
    parent = os.path.dirname(os.path.abspath(out_path))
    if not os.path.isdir(parent):
        raise OperateError(f"{parent}: no such directory (for {out_path})", 2)
    remove_stale_temps(parent, f"{os.path.basename(out_path)}.tmp-")

    def read():
        view = read_data_dir(data_dir)
        names = set(view.snapshot_info.names if view.snapshot_info else ())
        limits = config.limits if config is not None else None
        sessions = (SessionTable(limits.sessions_max, limits.session_results_max,
                                 limits.session_results_total_max, limits.session_idle_ms)
                    if limits is not None else None)
        if config is not None:
            names |= set(config.state_machines)
        machines, unknown = make_machines(
            names | {"counter"}, view.protocol,
            key_bytes_max=limits.key_bytes_max if limits else 4096, sessions=sessions)
        upto = max(view.snap_index, min(view.hard_state.commit, view.last_index))
        progress = Progress("replaying the log", upto - view.snap_index, unit="entries",
                            quiet=quiet)
        replayed = replay(view, machines, upto, progress=progress)
        progress.finish()
        return view, machines, replayed, unknown
    view, machines, replayed, unknown = retrying(read)

    tmp = os.path.join(parent, f"{os.path.basename(out_path)}.tmp-{os.getpid()}")
    made = False
    with interruptible():
        try:
            os.close(create_private(tmp))    # sqlite3 opens the empty file as a new database
            made = True
            db = sqlite3.connect(tmp)
            try:
                db.execute("PRAGMA journal_mode = OFF")
                db.execute("PRAGMA synchronous = OFF")
                db.executescript(SCHEMA)
                result = _fill(db, view, machines, replayed, unknown, quiet)
                db.commit()
            finally:
                db.close()
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, out_path)
            made = False
            fsync_dir(parent)
        except BaseException as exc:
            if made:
                discard_partial(tmp, exc, f"{out_path} was not written")
            if isinstance(exc, (OSError, sqlite3.Error)):
                raise OperateError(f"cannot write {out_path}: {exc}") from None
            raise
    result["seconds"] = round(time.monotonic() - started, 3)
    return result


def _fill(db, view, machines, replayed, unknown, quiet: bool) -> ExportResult:
    terms = _Terms(view.protocol)
    paxos = view.protocol == "multipaxos"
    hs = view.hard_state
    if paxos:
        ballot = Ballot.unpack(hs.term)
        voted = str(ballot.node_id) if hs.term else None
        current = ballot.round
    else:
        voted = str(hs.vote) if hs.vote else None
        current = hs.term
    db.execute("INSERT INTO raft_state VALUES (?, ?, ?, ?)",
               (str(view.meta.node_id), current, voted, _utc(view.wal_mtime)))

    # log_entries: every entry the WAL holds (above its floor), holes marked.
    entries = view.entries
    low = min(entries.keys()[0], view.snap_index + 1) if entries else view.snap_index + 1
    high = view.last_index
    progress = Progress("exporting log entries", max(0, high - low + 1), unit="entries",
                        quiet=quiet)
    holes = 0
    kv_times: dict = {}

    def rows():
        nonlocal holes
        for index in range(low, high + 1):
            entry = entries.get(index)
            if entry is None:
                if index <= view.snap_index:
                    continue                      # compacted into the snapshot
                holes += 1
                yield (index, 0, "hole", None, None)
            else:
                yield _entry_row(entry, terms, paxos, kv_times)
            progress.update(index - low + 1)
    db.executemany("INSERT INTO log_entries VALUES (?, ?, ?, ?, ?)", rows())
    progress.finish()

    # snapshots: metadata of every file in snap/.
    for position, snap in enumerate(view.snapshots, start=1):
        try:
            stat = os.stat(snap.path)
        except FileNotFoundError:
            continue                              # pruned by the live node meanwhile
        info = {"file": os.path.basename(snap.path), "bytes": stat.st_size}
        try:
            checked = verify_snapshot(snap.path) if snap != view.snapshot else view.snapshot_info
            info.update(verified=True, state_machines=checked.sizes,
                        sessions_bytes=checked.sessions_bytes,
                        uncompressed_bytes=checked.uncompressed_bytes,
                        config=checked.meta.config.describe(),
                        zstd_content_checksum=checked.checksum)
        except (CorruptSnapshot, FileNotFoundError) as exc:
            info.update(verified=False, error=str(exc))
        db.execute("INSERT INTO snapshots VALUES (?, ?, ?, ?, ?)",
                   (position, snap.index, terms(snap.term), _json(info), _utc(stat.st_mtime)))

    # cluster_members: the membership table, then configuration members without a row.
    rows_seen = set()
    membership = machines.get("membership")
    for row in (membership.query({}).get("members", []) if membership else []):
        rows_seen.add(row["node_id"])
        db.execute("INSERT INTO cluster_members VALUES (?, ?, ?, ?, ?)",
                   (str(row["node_id"]), row["address"], row["status"],
                    row["added_at_index"], row["removed_at_index"]))
    book = (view.members or {}).get("nodes", {})
    for member in sorted(replayed.config.members - rows_seen):
        addresses = book.get(member)
        db.execute("INSERT INTO cluster_members VALUES (?, ?, ?, ?, ?)",
                   (str(member), str(addresses.peer) if addresses else "unknown", "active",
                    None, None))

    # kv_store: terms and times from the entries that made each change, when still logged.
    kv = machines.get("kv")
    keys = 0

    def kv_rows():
        nonlocal keys
        for key, value, create_index, mod_index, _version in (kv.records() if kv else ()):
            modified = entries.get(mod_index)
            keys += 1
            yield (key, _json(value), mod_index,
                   terms(modified.term) if modified is not None else None,
                   _utc(kv_times.get((create_index, key))), _utc(kv_times.get((mod_index, key))))
    db.executemany("INSERT INTO kv_store VALUES (?, ?, ?, ?, ?, ?)", kv_rows())

    result = ExportResult(
        data_dir=os.path.abspath(view.data_dir), node_id=view.meta.node_id,
        cluster=view.meta.cluster_id, protocol=view.protocol,
        format_version=view.meta.format_version, exported_index=replayed.applied_index,
        commit_index=hs.commit, snapshot_index=view.snap_index, first_log_index=low,
        last_log_index=high, log_entries=max(0, high - low + 1), holes=holes, keys=keys,
        torn_tail=(f"{view.torn.path} offset {view.torn.offset} ({view.torn.dropped_bytes} "
                   f"bytes: {view.torn.reason})" if view.torn else None),
        unknown_state_machines=unknown, exported_at=_utc(time.time()),
        term_mapping=("multipaxos: term = ballot round (packed ballot >> 32)" if paxos
                      else "raft: term = Raft term"),
        snapshot_data="JSON metadata of the snapshot file (not its bytes)")
    db.executemany("INSERT INTO export_info VALUES (?, ?)",
                   [(k, _json(v) if not isinstance(v, str) else v) for k, v in result.items()])
    return result
