"""Reading a data directory without its lock, and replaying its log into state machines.

``read_data_dir`` is what ``paxoslog log dump`` does, as one consistent view: META (its
format checked), the hard state (checkpoint, then the WAL's newest record), every entry the
WAL holds (a later record for an index wins, truncations applied), the newest snapshot that
passes full verification, and the torn tail of the last segment if there is one (a record
being appended by a live node, or cut short by a crash: never acknowledged, left out and
reported, never cut: nothing is written).  Corruption (a bad record before the tail)
raises ``OperateError`` naming the file and offset.

A live node may delete a WAL segment (compaction) or a snapshot (pruning) while we read:
``retrying`` runs the whole read again, a few times, when a file vanished under it.

``replay`` restores state machines from the snapshot and applies the entries after it in
index order through the production apply path (``StateMachines.apply_command``: the session
table deduplicates exactly as on the node), reporting Multi-Paxos holes (slots this node
never accepted) to the caller.

Temporary files of the commands that write one file (``snapshot save``, ``log export``):
``create_private`` makes one owner-only (0600: a backup or an export holds every key) and
refuses to reuse an existing name; ``remove_stale_temps`` deletes the ones dead processes
left (the pid is in the name); ``interruptible`` turns SIGTERM and SIGINT into an
``Interrupted`` exception for as long as one exists, so the command removes it and says so
instead of dying with the file left behind.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import threading
from dataclasses import dataclass, field
from typing import Callable, Iterable

from sortedcontainers import SortedDict

from paxoslog.core.log import ENTRY_CONFIG, ENTRY_NORMAL, Entry, HardState, entry_config
from paxoslog.core.quorum import Config
from paxoslog.node.machines import StateMachines
from paxoslog.node.sessions import SessionTable
from paxoslog.server.members_file import MembersFile
from paxoslog.storage.errors import CorruptLog, SnapshotUnavailable, StorageError
from paxoslog.storage.hardstate import HARDSTATE_FILE, read_hardstate
from paxoslog.storage.meta import Meta, check_format, meta_path, read_meta
from paxoslog.storage.snapshot import SnapshotFile, SnapshotInfo, SnapshotReader, SnapshotStore
from paxoslog.storage.wal import WriteAheadLog
from paxoslog.storage.walscan import TornTail
from statemachines import create as create_state_machine

__all__ = ["OperateError", "DataDirView", "read_data_dir", "retrying", "make_machines",
           "replay", "Replayed", "Interrupted", "interruptible", "remove_stale_temps",
           "create_private", "discard_partial", "pid_alive"]


class OperateError(Exception):
    """An operator command cannot go on: the message says why and names the file;
    ``exit_code`` is the command's exit status (1 failure or corruption, 2 bad arguments)."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class Interrupted(KeyboardInterrupt):
    """SIGTERM or SIGINT arrived while ``interruptible`` was in force."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum
        self.name = signal.Signals(signum).name
        self.exit_code = 128 + signum


@contextlib.contextmanager
def interruptible():
    """SIGTERM and SIGINT raise ``Interrupted`` (once) in the main thread while this is in
    force; the previous handlers come back afterwards.  A signal that was ignored stays
    ignored; in another thread nothing changes (Python delivers signals to the main one)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    fired: list[int] = []

    def handler(signum, _frame):
        if fired:
            return                               # the cleanup is running: let it finish
        fired.append(signum)
        raise Interrupted(signum)
    previous = {}
    for signum in (signal.SIGTERM, signal.SIGINT):
        old = signal.getsignal(signum)
        if old is signal.SIG_IGN or old is None:
            continue
        previous[signum] = signal.signal(signum, handler)
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


def discard_partial(tmp: str, exc: BaseException, unwritten: str) -> None:
    """A write of ``tmp`` failed with ``exc``: remove the partial file; an interruption
    (SIGTERM, SIGINT) becomes an ``OperateError`` saying ``unwritten`` and exiting
    128 + N.  Any other exception is the caller's to re-raise."""
    try:
        os.unlink(tmp)
    except OSError:
        pass
    if isinstance(exc, Interrupted):
        raise OperateError(f"interrupted by {exc.name}: {unwritten} (the partial file {tmp} "
                           "was removed)", exc.exit_code) from None


def pid_alive(pid: int) -> bool:
    """True when a process ``pid`` exists (ours counts as dead: a name of ours found before
    we made one is a leftover of an earlier process that had the same pid)."""
    if pid <= 0 or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True                              # someone else's live process
    return True


def remove_stale_temps(directory: str, prefix: str) -> list[str]:
    """Delete the files ``<directory>/<prefix><pid>`` whose process is gone (a command
    killed with SIGKILL, or by a crash, left them); the removed paths."""
    removed = []
    try:
        names = os.listdir(directory)
    except OSError:
        return removed
    pattern = re.compile(re.escape(prefix) + r"(\d+)$")
    for name in names:
        match = pattern.match(name)
        if match is None or pid_alive(int(match.group(1))):
            continue
        path = os.path.join(directory, name)
        try:
            if os.path.isfile(path) and not os.path.islink(path):
                os.unlink(path)
                removed.append(path)
        except OSError:
            pass
    return removed


def create_private(path: str) -> int:
    """A new file, owner-only (0600), opened for writing: an fd.  ``FileExistsError`` when
    the name is taken (never written through somebody else's file or link)."""
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW,
                   0o600)


@dataclass
class DataDirView:
    data_dir: str
    meta: Meta
    hard_state: HardState
    entries: SortedDict                  # index -> Entry: everything the WAL holds
    floor: int                           # the log at or below it may be gone
    torn: TornTail | None
    snapshot: SnapshotFile | None        # the newest valid snapshot
    snapshot_info: SnapshotInfo | None
    snapshots: list[SnapshotFile] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    members: dict | None = None          # members.json, when present
    wal_mtime: float | None = None       # the newest WAL segment's modification time

    @property
    def protocol(self) -> str:
        return self.meta.protocol

    @property
    def snap_index(self) -> int:
        return self.snapshot.index if self.snapshot else 0

    @property
    def last_index(self) -> int:
        """The highest index this node holds an entry (or the snapshot) for."""
        above = list(self.entries.irange(self.snap_index + 1))
        return above[-1] if above else self.snap_index

    @property
    def bootstrap(self) -> Config:
        voters = (self.members or {}).get("bootstrap_voters") or {self.meta.node_id}
        return Config(frozenset(voters))


def read_data_dir(data_dir: str) -> DataDirView:
    """One read-only view of ``data_dir`` (see the module docstring).  ``OperateError`` when
    it is not a usable data directory; ``FileNotFoundError``/``SnapshotUnavailable`` when a
    live node removed a file meanwhile (``retrying`` reads again)."""
    if not os.path.isdir(data_dir):
        raise OperateError(f"{data_dir}: no such data directory", 2)
    path = meta_path(data_dir)
    try:
        meta = read_meta(path)
    except FileNotFoundError:
        raise OperateError(f"{path} is missing: {data_dir} is not a paxoslog data directory",
                           2) from None
    except StorageError as exc:
        raise OperateError(str(exc)) from None
    try:
        check_format(path, meta)
        checkpoint = read_hardstate(os.path.join(data_dir, HARDSTATE_FILE))
        wal = WriteAheadLog(os.path.join(data_dir, "wal"), read_only=True)
        replay_state = wal.open()
        store = SnapshotStore(os.path.join(data_dir, "snap"), read_only=True)
        chosen = store.newest_valid()
        skipped = list(store.skipped)
        note = "".join(f"; skipped {p}: {why}" for p, why in skipped)
        restored = replay_state.restored(checkpoint, chosen[1].meta if chosen else None,
                                         data_dir, note)
    except (SnapshotUnavailable, FileNotFoundError):
        raise
    except CorruptLog as exc:
        raise OperateError(f"{exc} (run `paxoslog log verify --data-dir {data_dir}`)") from None
    except StorageError as exc:
        raise OperateError(str(exc)) from None
    try:
        members = MembersFile(data_dir).read()
    except ValueError as exc:
        raise OperateError(str(exc)) from None
    segments = wal.segments
    mtime = None
    if segments:
        try:
            mtime = os.stat(segments[-1][1]).st_mtime
        except OSError:
            pass
    return DataDirView(data_dir, meta, restored.hard_state, replay_state.entries,
                       replay_state.floor[0] if replay_state.floor else 0, replay_state.torn,
                       chosen[0] if chosen else None, chosen[1] if chosen else None,
                       store.list(), skipped, members, mtime)


def retrying(work: Callable[[], object], attempts: int = 4):
    """``work()``, again when a live node deleted a file it was reading (compaction,
    snapshot pruning): at most ``attempts`` times."""
    for attempt in range(attempts):
        try:
            return work()
        except (FileNotFoundError, SnapshotUnavailable) as exc:
            if attempt == attempts - 1:
                raise OperateError(f"the data directory kept changing under the read "
                                   f"({exc}); try again") from None


def make_machines(names: Iterable[str], protocol: str, *, key_bytes_max: int = 4096,
                  sessions: SessionTable | None = None) -> tuple[StateMachines, list[str]]:
    """State machines of ``names`` (plus ``kv`` and ``membership``) applying like a node of
    ``protocol``, and the names this installation does not know (a plug-in that is not
    installed here)."""
    def create(name: str):
        return create_state_machine(
            name, **({"key_bytes_max": key_bytes_max} if name == "kv" else {}))
    machines, unknown = {}, []
    for name in sorted(set(names) | {"kv", "membership"}):
        try:
            machines[name] = create(name)
        except ValueError:
            unknown.append(name)
    table = sessions if sessions is not None else SessionTable()
    return StateMachines(machines, table, create, record_terms=protocol == "raft"), unknown


@dataclass
class Replayed:
    applied_index: int
    applied_term: int
    config: Config
    holes: list[int]                      # indexes with no entry (Multi-Paxos)
    skipped_names: list[str]              # state machines in the snapshot not known here


def replay(view: DataDirView, machines: StateMachines, upto: int, *,
           on_entry: Callable[[Entry], None] | None = None,
           progress=None) -> Replayed:
    """Restore ``machines`` from the view's snapshot and apply every entry after it up to
    ``upto``, in order.  A missing index is a hole: skipped in Multi-Paxos (reported), an
    ``OperateError`` in Raft (its log is contiguous).  ``machines.record_terms`` must match
    the protocol (``make_machines`` sees to it)."""
    applied, term = view.snap_index, 0
    config = view.bootstrap
    skipped: list[str] = []
    if view.snapshot is not None:
        with SnapshotReader(view.snapshot.path) as reader:
            skipped = machines.restore_from(reader)
            term, config = reader.meta.term, reader.meta.config
    holes = []
    total = max(0, upto - applied)
    for index in range(applied + 1, upto + 1):
        entry = view.entries.get(index)
        if entry is None:
            if view.protocol == "raft":
                raise OperateError(f"{view.data_dir}: the Raft log has no entry {index} "
                                   f"(it holds {applied + 1}..{upto} otherwise): run "
                                   f"`paxoslog log verify --data-dir {view.data_dir}`")
            holes.append(index)
            continue
        if entry.kind == ENTRY_NORMAL:
            for data in entry.payload:
                machines.apply_command(index, entry.term, data)
        elif entry.kind == ENTRY_CONFIG:
            config = entry_config(entry)
        term = entry.term
        if on_entry is not None:
            on_entry(entry)
        if progress is not None:
            progress.update(index - applied)
    if progress is not None and total:
        progress.update(total)
    return Replayed(upto if upto > applied else applied, term, config, holes, skipped)
