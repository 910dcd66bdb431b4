"""``paxoslog snapshot restore FILE --config F [--node ID ...]``: the data directories of a
NEW cluster from a backup (``paxoslog snapshot save``) or any snapshot file.

Order of work, so that nothing is half-written:

1. the whole file is verified first (zstd frame layout, content checksum, every state's
   size against the trailer; ``CorruptSnapshot`` names the problem) and hashed (SHA-256);
   in the same pass every state machine and the session table are restored into
   throwaway instances made with the conf's limits, as a node does when it starts (and as
   the node taking a backup checks it, ``verify_states``), and the index and term must be
   integers from 0 to 2^64 - 1: a correctly framed file whose contents a node could not
   load (a garbage kv state, a damaged session table, a negative index) is refused, or the
   new cluster would never start; a file from a cluster of the other protocol is refused
   (terms mean different things);
2. every target data directory (each node of the conf, or the ``--node`` ones) must be
   absent or empty, and not a mount point (a directory is renamed into place: a mount
   point cannot be; use a directory inside the volume); otherwise nothing is written at
   all;
3. each directory is built beside its target (newdir.py) and renamed into place:

   * ``META``: the conf's cluster name, the node id, the protocol, this release's format;
   * ``snap/<index>-<term>.snap.zst``: the backup's state machines and session table at
     the backup's index and term, under a *fresh* configuration (every node of the conf
     votes) and with the ``membership`` table emptied: the new cluster's leader writes
     the rows of its members, as on a first start;
   * the hard state (term of the snapshot, no vote, commit = its index) in the WAL, so
     every node starts at that index with nothing to replay;
   * ``members.json``: the conf's nodes as bootstrap voters and address book, and the
     new cluster's *log origin*: peers compare it at the handshake, so no node of the old
     cluster (same name, same ids) can ever vote in the new one.

The origin is derived from the backup's SHA-256, the cluster name and the voters, so
restoring the same file into the same conf node by node on separate hosts (``--node``)
gives every node the same origin.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from dataclasses import dataclass

from paxoslog.core.log import HardState, SnapshotMeta
from paxoslog.core.quorum import Config
from paxoslog.core.ready import Ready
from paxoslog.node.machines import limited_factories
from paxoslog.server.local_snapshots import SnapshotRefused, verify_states
from paxoslog.server.members_file import MembersFile, NodeAddresses
from paxoslog.storage import DiskStorage
from paxoslog.storage.errors import CorruptSnapshot, StorageError
from paxoslog.storage.snapshot import SnapshotInfo, SnapshotReader, verify_snapshot

from .datadir import OperateError
from .newdir import NewDataDir, is_empty_dir
from .progress import Progress

_NUMBER_LIMIT = 1 << 64          # index and term: what the storage and the protocols use

__all__ = ["verify_backup", "restore_cluster", "RestoreResult", "states_with_fresh_membership"]


@dataclass
class RestoreResult:
    info: SnapshotInfo
    sha256: str
    origin: str
    data_dirs: dict[int, str]
    seconds: float


def node_like_factories(config):
    """(create(name), sessions_like()): empty state machines and session table with the
    conf's limits, as a node of that conf makes them."""
    return limited_factories(config.limits)


def _refuse_bad_numbers(meta: SnapshotMeta, shown: str) -> None:
    for label, value in (("index", meta.index), ("term", meta.term)):
        if not 0 <= value < _NUMBER_LIMIT:
            raise OperateError(f"refusing to restore: {shown}: its {label} is {value}, not "
                               f"an integer from 0 to 2^64 - 1 (a damaged or hand-made "
                               "file); nothing was written")


def _verify_restorable(path: str, shown: str, config) -> SnapshotInfo:
    """One pass over the file: everything ``verify_snapshot`` checks, plus every state
    machine and the session table restored into throwaway instances (``verify_states``,
    as the node taking a backup checks it).  ``CorruptSnapshot`` / ``SnapshotRefused``."""
    create, sessions_like = node_like_factories(config)
    try:
        reader = SnapshotReader(path)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise CorruptSnapshot(path, f"unreadable: {exc}") from None
    with reader:
        backup = reader.header.get("backup")
        _refuse_other_protocol(shown, backup if isinstance(backup, dict) else None, config)
        _refuse_dropped_states(shown, reader.names, config)
        _refuse_bad_numbers(reader.meta, shown)
        states = reader.states()

        def pieces(name: str):
            got, chunks = next(states)
            assert got == name, (got, name)
            yield from chunks
        try:
            checked = verify_states([(name, pieces(name)) for name in reader.names],
                                    reader.sessions, create, sessions_like)
        except ValueError as exc:            # a state machine that is not installed here
            raise SnapshotRefused(f"cannot check its states: {exc}") from None
        for _name, chunks in checked:
            for _ in chunks:
                pass
        for _ in states:                     # the trailer and the frame's checksum
            pass
        return SnapshotInfo(reader.path, reader.meta, reader.names, dict(reader.sizes),
                            dict(reader.chunk_counts), reader.sessions_bytes,
                            reader.uncompressed_bytes, reader.compressed_bytes,
                            reader.checksum, backup if isinstance(backup, dict) else None)


def verify_backup(path: str, quiet: bool = False, shown: str | None = None,
                  config=None) -> tuple[SnapshotInfo, str]:
    """Verify the whole file and hash it: (info, SHA-256 hex).  ``OperateError`` (exit 1)
    on any damage, exit 2 when there is no such file.  ``shown``: the name errors give
    the file (``path`` may be its /proc/self/fd name).  With ``config``: every state and
    the session table must also restore into instances with its limits, and the index
    and term must be in range (see the module docstring)."""
    shown = shown or path
    if not os.path.isfile(path):
        raise OperateError(f"{shown}: no such file", 2)
    digest = hashlib.sha256()
    size = os.path.getsize(path)
    progress = Progress("checking the backup", size, quiet=quiet)
    with open(path, "rb") as f:
        done = 0
        while block := f.read(1 << 20):
            digest.update(block)
            done += len(block)
            progress.update(done)
    progress.finish()
    try:
        if config is not None:
            info = _verify_restorable(path, shown, config)
        else:
            info = verify_snapshot(path)
            _refuse_bad_numbers(info.meta, shown)
    except CorruptSnapshot as exc:
        message = str(exc).replace(path, shown)
        raise OperateError(f"refusing to restore: {message}; nothing was written") from None
    except SnapshotRefused as exc:
        raise OperateError(f"refusing to restore: {shown}: a node could not load it: {exc}; "
                           "nothing was written") from None
    return info, digest.hexdigest()


@contextlib.contextmanager
def _pinned(path: str):
    """The backup as one open file, named through /proc/self/fd: every later read (the
    hash, the verification, each node's copy) reads the same file, even when another one
    is renamed over ``path`` meanwhile (a nightly ``snapshot save --force``).  A review
    restored nodes from two different backups under one index that way, and the replicas
    disagreed without an error."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        raise OperateError(f"{path}: no such file", 2) from None
    except OSError as exc:
        raise OperateError(f"cannot read {path}: {exc}", 2) from None
    try:
        pinned = f"/proc/self/fd/{fd}"
        yield pinned if os.path.exists(pinned) else path
    finally:
        os.close(fd)


def _refuse_other_protocol(path: str, backup: dict | None, config) -> None:
    """A backup of a cluster of the other protocol: terms and ballots differ."""
    source_protocol = (backup or {}).get("protocol")
    if source_protocol is not None and source_protocol != config.protocol:
        raise OperateError(f"{path} is a backup of a {source_protocol} cluster but "
                           f"{config.path} says protocol = {config.protocol!r}: restore it "
                           f"into a {source_protocol} cluster (terms and ballots are not "
                           "interchangeable); nothing was written", 2)


def _refuse_dropped_states(path: str, names: list[str], config) -> None:
    """Every state machine in the backup must be enabled in the conf: a node drops the
    state of one that is not (it logs a warning) and its next snapshot forgets it, so the
    restore would lose it without a word."""
    enabled = set(config.state_machines) | {"membership"}
    dropped = [name for name in names if name not in enabled]
    if dropped:
        raise OperateError(f"{path} holds state machine(s) {', '.join(dropped)}, which "
                           f"{config.path} does not enable ([state_machines] enabled = "
                           f"{list(config.state_machines)!r}): enable them (installing any "
                           "plug-in) or their state would be lost; nothing was written", 2)


def states_with_fresh_membership(reader: SnapshotReader):
    """(name, chunks) of every state in ``reader``, streamed in order, with the
    ``membership`` table replaced by an empty one.  Drain the reader afterwards (its
    trailer and checksum are checked at the end)."""
    states = reader.states()

    def chunks_of(name: str):
        got, chunks = next(states)
        assert got == name, (got, name)
        if name == "membership":
            for _ in chunks:
                pass
            return
        yield from chunks
    return [(name, chunks_of(name)) for name in reader.names], states


def restore_cluster(path: str, config, node_ids: list[int] | None = None, *,
                    out=print, quiet: bool = False) -> RestoreResult:
    """See the module docstring.  ``out``: where the summary lines go."""
    import time
    started = time.monotonic()
    with _pinned(path) as pinned:
        return _restore(pinned, path, config, node_ids, out, quiet, started)


def _restore(pinned: str, path: str, config, node_ids, out, quiet: bool,
             started: float) -> RestoreResult:
    import time
    info, sha = verify_backup(pinned, quiet, shown=path, config=config)
    _refuse_other_protocol(path, info.backup, config)
    _refuse_dropped_states(path, info.names, config)
    wanted = node_ids or list(config.node_ids)
    try:
        targets = {n: config.node(n) for n in wanted}
    except Exception as exc:
        raise OperateError(f"{exc}; nothing was written", 2) from None
    busy = [f"node {n}: {node.data_dir}" for n, node in targets.items()
            if os.path.exists(node.data_dir) and not is_empty_dir(node.data_dir)]
    if busy:
        raise OperateError("refusing to restore over existing data (a restore builds a NEW "
                           "cluster; move these away or pick another data_dir): "
                           + "; ".join(busy) + "; nothing was written", 1)
    mounted = [(n, node.data_dir) for n, node in targets.items()
               if os.path.ismount(node.data_dir)]
    if mounted:
        raise OperateError(
            "refusing to restore into a mount point (each data directory is built beside "
            "its target and renamed into place, which a mount point cannot take part in): "
            + "; ".join(f"node {n}: {d}" for n, d in mounted) + ".  Point data_dir at a "
            f"directory inside the volume (e.g. {os.path.join(mounted[0][1], 'paxoslog')}); "
            "nothing was written", 1)
    voters = frozenset(config.node_ids)
    origin = "r-" + hashlib.blake2b(
        f"{sha}|{config.name}|{config.protocol}|{sorted(voters)}".encode(),
        digest_size=8).hexdigest()
    meta = SnapshotMeta(info.meta.index, info.meta.term, Config(voters))
    book = {n.id: NodeAddresses(n.peer, n.api) for n in config.nodes}
    made = {}
    for node_id, node in targets.items():
        try:
            with NewDataDir(node.data_dir) as new:
                _build(new.path, pinned, meta, config, node_id, voters, book, origin)
                new.commit()
        except OSError as exc:
            raise OperateError(f"cannot write {node.data_dir}: {exc}; it was not created "
                               f"(directories already restored: "
                               f"{', '.join(made.values()) or 'none'})") from None
        except StorageError as exc:
            raise OperateError(f"{node.data_dir}: {exc}; it was not created") from None
        made[node_id] = node.data_dir
        out(f"node {node_id}: {node.data_dir} restored at index {meta.index}")
        for leftover in new.leftovers:
            out(f"note: {leftover} was left by an interrupted earlier run and may hold data: "
                "it was not touched; look at it and delete it yourself")
    return RestoreResult(info, sha, origin, made, time.monotonic() - started)


def _build(directory: str, backup: str, meta: SnapshotMeta, config, node_id: int,
           voters: frozenset[int], book: dict, origin: str) -> None:
    storage = DiskStorage(directory, config.name, node_id, config.protocol,
                          config.storage_options())
    try:
        storage.load()
        with SnapshotReader(backup) as reader:
            if (reader.meta.index, reader.meta.term) != (meta.index, meta.term):
                raise CorruptSnapshot(f"the backup changed while it was restored: it now "
                                      f"covers index {reader.meta.index} term "
                                      f"{reader.meta.term}, not {meta.index} {meta.term}")
            states, rest = states_with_fresh_membership(reader)
            storage.save_snapshot(meta, states, reader.sessions)
            for _ in rest:                       # the trailer and the checksum, again
                pass
        storage.append(Ready(hard_state=HardState(meta.term, 0, meta.index)))
        storage.sync()
    finally:
        storage.close()
    MembersFile(directory).write(config.name, voters, book, origin=origin)
