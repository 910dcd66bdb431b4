"""``paxoslog recover --config F --node N --force-new-cluster``: disaster recovery after a
majority of the cluster was lost for good.

A cluster that lost a majority cannot choose anything again: no quorum will ever answer.
This command turns one surviving node's data into a ONE-node cluster that keeps every entry
that node had, from which the others are re-added with ``paxoslog serve --join``.

What it does, in order (without ``--force-new-cluster`` it stops after step 3 and changes
nothing):

1. takes the data directory's ``LOCK`` (a running node holds it: recover refuses to run
   next to a live node, naming its pid);
2. reads the directory (datadir.py) and rebuilds the state machines and the session table
   from the newest snapshot plus *every* entry after it, up to the last one the node holds,
   through the production apply path; Multi-Paxos holes (slots it never accepted) apply as
   no-ops;
3. reports what may have been lost: the entries it holds but does not know to be chosen /
   committed (Multi-Paxos: every accepted slot above the chosen watermark, and the holes
   among them; Raft: every entry above the commit index).  They are KEPT (they become
   chosen/committed now), but the old cluster may have chosen a different value in such a
   slot (Multi-Paxos), or committed entries this node never received (both): those are
   lost, and acknowledged writes among them with them;
4. builds the new data directory beside the old one (newdir.py): the rebuilt state as a
   snapshot at the last index, under the configuration "this node alone votes", with the
   membership table emptied (the node writes its own row when it leads); the hard state
   at that index; ``members.json`` with this node as the only bootstrap voter and a new
   random *log origin* (peers compare it at the handshake: a node of the old cluster that
   comes back is refused and must be wiped and re-added with ``--join``);
5. swaps it with the old directory in one atomic exchange and keeps the old data as
   ``<data_dir>.before-recover-<time>-<pid>-<ns>`` (delete it once the new cluster is
   healthy).  Crash-safe at every step (newdir.py: a marker file says which directories a
   run built): interrupted before the exchange, the data directory is untouched and the
   next run deletes the half-built one; interrupted after it, the data directory holds
   the rebuilt data and the old data is at the ``.building-`` name printed, never deleted:
   the next ``--force-new-cluster`` moves it to its ``.before-recover-`` name first (and a
   dry run says where it is).

A data directory that is itself a mount point (a Kubernetes volume) cannot be swapped:
``--force-new-cluster`` refuses before anything is changed and says what to do.  The dry
run creates nothing (it opens ``LOCK`` read-only; an absent one means no node runs).

The exactly-once session table is kept: clients that retry a write the old cluster applied
get its first result.
"""

from __future__ import annotations

import fcntl
import os
import time
from dataclasses import dataclass, field

from paxoslog.core.log import ENTRY_CONFIG, ENTRY_NOOP, HardState, SnapshotMeta
from paxoslog.core.ballot import Ballot
from paxoslog.core.quorum import Config
from paxoslog.core.ready import Ready
from paxoslog.node.commands import decode_command
from paxoslog.node.sessions import SessionTable
from paxoslog.server.members_file import MembersFile, NodeAddresses
from paxoslog.storage import DiskStorage
from paxoslog.storage.disk import LOCK_FILE
from paxoslog.storage.errors import StorageError

from .datadir import OperateError, make_machines, read_data_dir, replay, retrying
from .newdir import NewDataDir, interrupted_swap, refuse_mount_point
from .progress import Progress

__all__ = ["recover_node", "RecoveryReport", "analyse", "DataDirBusy"]


class DataDirBusy(OperateError):
    """A live node holds the data directory's lock."""


@dataclass
class RecoveryReport:
    data_dir: str
    node_id: int
    protocol: str
    snapshot_index: int
    known_index: int                       # chosen watermark / commit index known here
    last_index: int                        # the last entry this node holds
    uncertain: list[dict] = field(default_factory=list)   # held, not known chosen
    holes: list[int] = field(default_factory=list)        # Multi-Paxos: never accepted
    term: int = 0                          # as users see it (Raft term / ballot round)
    origin: str | None = None
    kept_as: str | None = None
    done: bool = False
    seconds: float = 0.0

    def to_json(self) -> dict:
        return dict(self.__dict__)


def _lock(data_dir: str, create: bool = True) -> int | None:
    """The data directory's LOCK, flock()ed (``DataDirBusy`` when a live node holds it).
    ``create=False`` (a dry run, which must create nothing): opened read-only, and None when
    there is no LOCK file (then no node runs there)."""
    path = os.path.join(data_dir, LOCK_FILE)
    try:
        if create:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        else:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        if create:
            raise OperateError(f"cannot open {path}: no such file or directory (nothing was "
                               "changed)") from None
        return None
    except OSError as exc:
        raise OperateError(f"cannot open {path}: {exc.strerror or exc}"
                           + (" (recover --force-new-cluster writes beside the data "
                              "directory and needs it writable)" if create else "")
                           + " (nothing was changed)") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise DataDirBusy(f"{data_dir} is in use by a running node (pid {holder}): recover "
                          "never runs next to a live node; stop it first (nothing was "
                          "changed)") from None
    return fd


def _ranges(numbers: list[int]) -> str:
    spans: list[list[int]] = []
    for n in numbers:
        if spans and spans[-1][1] == n - 1:
            spans[-1][1] = n
        else:
            spans.append([n, n])
    return ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in spans)


def _describe_entry(entry, protocol: str) -> dict:
    term = Ballot.unpack(entry.term).round if protocol == "multipaxos" else entry.term
    item = {"index": entry.index, "term": term}
    if entry.kind == ENTRY_NOOP:
        item["kind"] = "noop"
    elif entry.kind == ENTRY_CONFIG:
        item["kind"] = "config"
    else:
        commands = []
        for data in entry.payload:
            command = decode_command(data)
            if command is None:
                commands.append({"undecodable": data[:32].hex()})
            else:
                commands.append({k: v for k, v in command.items()
                                 if k not in ("ts", "ts_start")})
        item["kind"] = "commands"
        item["commands"] = commands
    return item


def analyse(view) -> RecoveryReport:
    """What the node holds beyond what it knows to be chosen/committed."""
    known = max(view.hard_state.commit, view.snap_index)
    last = view.last_index
    report = RecoveryReport(view.data_dir, view.meta.node_id, view.protocol, view.snap_index,
                            known, last)
    for index in range(known + 1, last + 1):
        entry = view.entries.get(index)
        if entry is None:
            report.holes.append(index)
        else:
            report.uncertain.append(_describe_entry(entry, view.protocol))
    term = view.hard_state.term
    report.term = Ballot.unpack(term).round if view.protocol == "multipaxos" else term
    return report


def print_report(report: RecoveryReport, out) -> None:
    what = ("accepted slots above the chosen watermark" if report.protocol == "multipaxos"
            else "entries above the commit index")
    out(f"node {report.node_id} ({report.protocol}), {report.data_dir}:")
    out(f"  snapshot at index {report.snapshot_index}; known "
        f"{'chosen' if report.protocol == 'multipaxos' else 'committed'} up to index "
        f"{report.known_index}; last entry held: index {report.last_index}")
    if not report.uncertain and not report.holes:
        out(f"  nothing held beyond index {report.known_index}: no entry here is in doubt")
    else:
        out(f"  MAY HAVE BEEN LOST ({what}, kept and made chosen/committed by the recovery; "
            "the old cluster may have decided otherwise):")
        for item in report.uncertain[:50]:
            text = item["kind"]
            if item["kind"] == "commands":
                text = "; ".join(
                    " ".join(f"{k}={v!r:.40}" for k, v in c.items() if k != "sequence")
                    for c in item["commands"][:3])
                if len(item["commands"]) > 3:
                    text += f"; ... ({len(item['commands'])} commands)"
            out(f"    index {item['index']:>8} term {item['term']:>4}  {text}")
        if len(report.uncertain) > 50:
            out(f"    ... and {len(report.uncertain) - 50} more (--json lists them all)")
        if report.holes:
            out(f"  HOLES (slots this node never accepted; filled with no-ops: a value the "
                f"old cluster chose there is lost): {_ranges(report.holes)}")
    out(f"  anything the old cluster chose/committed beyond index {report.last_index} never "
        "reached this node and is lost")


def recover_node(config, node_id: int, *, force: bool, out=print,
                 quiet: bool = False) -> RecoveryReport:
    """See the module docstring."""
    started = time.monotonic()
    try:
        node = config.node(node_id)
    except Exception as exc:
        raise OperateError(str(exc), 2) from None
    data_dir = node.data_dir
    if not os.path.isdir(data_dir):
        raise OperateError(f"{data_dir}: no such data directory (node {node_id})", 2)
    if force:
        refuse_mount_point(data_dir, "recover --force-new-cluster")
    fd = _lock(data_dir, create=force)
    try:
        view = retrying(lambda: read_data_dir(data_dir))
        meta = view.meta
        for label, have, want in (("cluster", meta.cluster_id, config.name),
                                  ("node id", meta.node_id, node_id),
                                  ("protocol", meta.protocol, config.protocol)):
            if have != want:
                raise OperateError(f"{data_dir}/META: {label} is {have!r} but {config.path} "
                                   f"says {want!r} (nothing was changed)", 2)
        report = analyse(view)
        print_report(report, out)
        swapped = interrupted_swap(data_dir)
        if swapped is not None:
            out(f"note: an earlier recover was interrupted after its swap: {data_dir} holds "
                f"the data it rebuilt, and the data from before that is at {swapped[0]} "
                f"(it belongs at {swapped[1]}; --force-new-cluster moves it there first)")
        if not force:
            out("dry run: nothing was changed.  Re-run with --force-new-cluster to make "
                f"node {node_id} a one-node cluster keeping all of the above.")
            return report
        if report.last_index == 0:
            raise OperateError(f"node {node_id} holds no entry and no snapshot in {data_dir}: "
                               "there is nothing to recover from (nothing was changed)")
        out(f"RECOVERING: node {node_id} becomes a ONE-node cluster (cluster "
            f"{config.name!r}) from its data up to index {report.last_index}; the old "
            "members can never rejoin with their old data")
        limits = config.limits
        sessions = SessionTable(limits.sessions_max, limits.session_results_max,
                                limits.session_results_total_max, limits.session_idle_ms)
        names = set(config.state_machines) | set(
            view.snapshot_info.names if view.snapshot_info else ())
        machines, unknown = make_machines(names, config.protocol,
                                          key_bytes_max=limits.key_bytes_max,
                                          sessions=sessions)
        if unknown:
            raise OperateError(f"state machine(s) {', '.join(unknown)} are in the data but "
                               "not installed here: install the plug-ins first (nothing "
                               "was changed)")
        progress = Progress("replaying the log", report.last_index - view.snap_index,
                            unit="entries", quiet=quiet)
        replayed = replay(view, machines, report.last_index, progress=progress)
        progress.finish()
        origin = "x-" + os.urandom(8).hex()
        snap = SnapshotMeta(report.last_index, replayed.applied_term,
                            Config(frozenset({node_id})))
        term = max(view.hard_state.term, replayed.applied_term)
        new = NewDataDir(data_dir, "recover")
        try:
            with new:
                if new.finished is not None:
                    out(f"  finished the interrupted earlier recover: moved {new.finished[0]} "
                        f"to {new.finished[1]}")
                for leftover in new.leftovers:
                    out(f"  note: {leftover} was left by an interrupted earlier run and may "
                        "hold data (old data after a swap): it was not touched; look at it "
                        "and delete it yourself")
                storage = DiskStorage(new.path, config.name, node_id, config.protocol,
                                      config.storage_options())
                try:
                    storage.load()
                    states = [(name, [machines.get(name).snapshot()])
                              for name in machines.names() if name != "membership"]
                    states.append(("membership", []))
                    storage.save_snapshot(snap, states, machines.sessions.snapshot())
                    storage.append(Ready(hard_state=HardState(term, 0, snap.index)))
                    storage.sync()
                finally:
                    storage.close()
                book = {node_id: NodeAddresses(node.peer, node.api)}
                MembersFile(new.path).write(config.name, frozenset({node_id}), book,
                                            origin=origin)
                out(f"  new data directory built at {new.path}; swapping it in (if this is "
                    f"interrupted: before the swap {data_dir} still holds the old data; after "
                    f"it the old data is at {new.path} until it is renamed to {new.aside}, "
                    "which the next `recover --force-new-cluster` does)")
                kept = new.commit()
        except OSError as exc:
            raise OperateError(f"cannot recover into {data_dir}: {exc}; "
                               f"{new.where_the_old_data_is()}") from None
        report.origin, report.kept_as, report.done = origin, kept, True
        report.seconds = time.monotonic() - started
        out(f"DONE: {data_dir} now holds a one-node cluster at index {snap.index} (log "
            f"origin {origin}); the old data is kept in {kept}")
        out(f"next: start it (`paxoslog serve --config {config.path} --node {node_id}`), "
            "then re-add the other nodes one by one: wipe (or move) each one's data "
            f"directory and start it with `paxoslog serve --config {config.path} --node M "
            f"--join {node.api_url}`")
        return report
    except StorageError as exc:
        raise OperateError(f"{data_dir}: {exc} (nothing was changed)") from None
    finally:
        if fd is not None:
            os.close(fd)
