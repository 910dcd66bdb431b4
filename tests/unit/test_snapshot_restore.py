"""Restoring a received snapshot off the event loop, on a real data directory with the
network and the core faked: the state machines and the session table are rebuilt on
another thread while the Ready loop waits (persist -> send -> restore -> apply -> advance),
then swapped in; a snapshot that cannot be restored stops the node.

The reactor's thread hand-off is replaced by ``ThreadWriter``: jobs run on a real thread;
the test delivers each result on the test's thread, as ``callFromThread`` would, at a
point of its choosing, so it can look at the node while the restore is still running.
"""

from __future__ import annotations

import threading
import types
from collections import deque

import pytest
from twisted.internet import defer, task

from paxoslog.config import LimitsConf
from paxoslog.core.log import ENTRY_NORMAL, Entry, HardState, SnapshotMeta
from paxoslog.core.messages import InstallSnapshotReply
from paxoslog.core.quorum import Config
from paxoslog.core.ready import Ready
from paxoslog.node.commands import encode_command
from paxoslog.server.node import NodeService
from paxoslog.node.sessions import SessionTable
from paxoslog.storage import (DiskStorage, SnapshotPolicy, StorageOptions,
                              encode_snapshot_bytes)
from statemachines.counter import CounterStateMachine
from statemachines.kv import KVStateMachine

CONFIG = Config(frozenset({1, 2, 3}))


class ThreadWriter:
    """``in_snapshot_thread`` on a real thread; ``deliver()`` fires the Deferred here."""

    def __init__(self) -> None:
        self.jobs: list[dict] = []

    def in_snapshot_thread(self, fn, *args) -> defer.Deferred:
        job = {"d": defer.Deferred(), "thread": None, "result": None, "error": None}

        def run() -> None:
            job["thread"] = threading.current_thread()
            try:
                job["result"] = fn(*args)
            except BaseException as exc:  # handed to the Deferred
                job["error"] = exc
        job["runner"] = threading.Thread(target=run, name="fake-snapshot-thread")
        job["runner"].start()
        self.jobs.append(job)
        return job["d"]

    def deliver(self) -> dict:
        job = self.jobs.pop(0)
        job["runner"].join(30)
        assert not job["runner"].is_alive()
        if job["error"] is not None:
            job["d"].errback(job["error"])
        else:
            job["d"].callback(job["result"])
        return job


class FakeTransport:
    def __init__(self, events: list) -> None:
        self.events = events
        self.frames: list[tuple[int, list]] = []

    def send(self, msg) -> None:
        self.events.append(("send", type(msg).__name__))

    def flush(self) -> None:
        pass

    def send_frame(self, peer: int, frame: list) -> bool:
        self.frames.append((peer, frame))
        return True


class FakeReplica:
    """Hands out queued Readies and records advance() in the shared event list."""

    def __init__(self, events: list) -> None:
        self.events = events
        self.queue: list[Ready] = []
        self.ready_calls = 0
        self.leader_id = 1

    def ready(self):
        self.ready_calls += 1
        return self.queue.pop(0) if self.queue else None

    def advance(self, ready) -> None:
        self.events.append(("advance", ready, self.applied()))

    def applied(self):
        return None


def storage_with(tmp_path, *metas_and_states) -> DiskStorage:
    storage = DiskStorage(str(tmp_path / "data"), "test", 2, "raft",
                          StorageOptions(snapshot_keep=2))
    storage.load()
    for meta, states, sessions in metas_and_states:
        storage.save_snapshot(meta, states, sessions)
    return storage


# ====================================================================== restore off the loop

def restore_node(storage, events) -> NodeService:
    """Just enough of a NodeService for _persisted/_complete/_restore_installed."""
    node = NodeService.__new__(NodeService)
    node.protocol = "raft"
    node.config = types.SimpleNamespace(limits=LimitsConf(), state_machines=("kv", "counter"))
    node.storage = storage
    node.writer = ThreadWriter()
    node.transport = FakeTransport(events)
    node.shipper = types.SimpleNamespace(offer=lambda msg: events.append(("offer", msg)))
    node.replica = FakeReplica(events)
    node.replica.applied = lambda: node.applied_index
    node.reactor = task.Clock()
    kv = KVStateMachine()
    kv.apply(3, {"op": "put", "key": "before", "value": "old"})
    node.sms = {"kv": kv, "counter": CounterStateMachine()}
    node.kv = kv
    node.sessions = SessionTable(sessions_max=77)
    node.applied_index, node.applied_term, node.applied_config = 5, 1, CONFIG
    node.policy = SnapshotPolicy(10_000, 1 << 30, last_index=0)
    node.recent = deque(maxlen=100)
    node._recent_bytes = 0
    node.stats = dict.fromkeys(("fsyncs", "commits", "commands_applied", "duplicates",
                                "snapshots_installed", "snapshots_taken", "readies"), 0)
    from paxoslog.server.metrics import Histogram
    node.fsync = Histogram()
    node._busy = True                    # as _drain leaves it while a Ready is persisted
    node._idle_waiters = []
    node._stopping = False
    node.fatal = None
    node.on_fatal = None
    node._pump_call = None
    node._read_batch = []
    node._read_batches = {}
    node._served_batches = {}
    node._waiting_reads = []
    node._waiters = {}
    return node


def installed_snapshot(tmp_path):
    meta = SnapshotMeta(10, 2, CONFIG)
    kv = KVStateMachine()
    kv.apply(9, {"op": "put", "key": "from-snapshot", "value": 42})
    sessions = SessionTable()
    sessions.record("client-a", 1, 9, 2, {"op": "put"})
    storage = storage_with(tmp_path)
    path = str(tmp_path / "received.snap.zst")
    with open(path, "wb") as f:
        f.write(encode_snapshot_bytes(meta, [("kv", [kv.snapshot()]), ("ledger", [b"x"])],
                                      sessions.snapshot()))
    storage.install_snapshot(meta, path)
    return storage, meta


def test_received_snapshot_is_restored_on_another_thread_before_anything_is_applied(tmp_path):
    """While the snapshot thread restores, the reply is already sent but nothing after the
    snapshot is applied, the core is not advanced, the old state still serves, and the
    Ready loop does not ask the core for more; after the swap the entry after the
    snapshot is applied on the new state, then the core is advanced once."""
    events: list = []
    storage, meta = installed_snapshot(tmp_path)
    node = restore_node(storage, events)
    old_kv = node.kv
    put = encode_command("kv", {"op": "put", "key": "after", "value": 1}, "client-b", 1)
    ready = Ready(hard_state=HardState(2, 0, 11), snapshot=meta,
                  messages=[InstallSnapshotReply(2, 1, 2, 10)],
                  committed=[Entry(11, 2, ENTRY_NORMAL, (put,))])
    node.replica.queue.append(Ready(committed=[Entry(12, 2, ENTRY_NORMAL, (put,))]))

    node._persisted(0.002, ready)
    assert events == [("send", "InstallSnapshotReply")]          # persist -> send
    assert node._busy and node.applied_index == 5 and node.kv is old_kv
    assert node.kv.get("before")["value"] == "old" and node.kv.get("from-snapshot") is None
    node._drain()
    assert node.replica.ready_calls == 0                          # the loop waits

    job = node.writer.deliver()
    assert job["thread"] is not threading.current_thread()
    assert node.kv is not old_kv and node.sms["kv"] is node.kv
    assert node.kv.get("from-snapshot")["value"] == 42 and node.kv.get("before") is None
    assert node.kv.get("after")["mod_index"] == 11
    assert node.stats["snapshots_installed"] == 1 and node.policy.last_index == 10
    assert node.sessions.lookup("client-a", 1)[0] == 1           # DUPLICATE: restored table
    assert node.sessions.sessions_max == 77                       # with the node's bounds
    # The snapshot's Ready was advanced once, after the entry after it was applied; then
    # the loop went on with the next Ready (entry 12, a retry of the same session write).
    assert events == [("send", "InstallSnapshotReply"), ("advance", ready, 11),
                      ("advance", events[2][1], 12)]
    assert node.stats["duplicates"] == 1 and not node._busy
    storage.close()


def test_a_snapshot_that_cannot_be_restored_stops_the_node(tmp_path):
    """A missing installed snapshot (and none newer) is fatal: the node dies, the Ready is
    neither applied nor advanced, and the loop is released (a stop can finish)."""
    events: list = []
    storage = storage_with(tmp_path)
    node = restore_node(storage, events)
    died = []
    node.on_fatal = died.append
    ready = Ready(snapshot=SnapshotMeta(10, 2, CONFIG), messages=[],
                  committed=[])
    node._persisted(0.001, ready)
    node.writer.deliver()
    assert died and "cannot restore the installed snapshot 10" in str(died[0])
    assert not node._busy
    assert [e for e in events if e[0] == "advance"] == []
    assert node.applied_index == 5 and node.kv.get("before")["value"] == "old"
    storage.close()


@pytest.mark.parametrize("older", [False, True])
def test_restore_falls_back_only_to_a_snapshot_at_least_as_new(tmp_path, older):
    """Without the exact file, a newer local snapshot stands in (applied moves to it); an
    older one cannot (the log below the installed index is gone) and is fatal."""
    from paxoslog.server.snapshots import restore_installed
    storage = storage_with(tmp_path, (SnapshotMeta(8 if older else 12, 2, CONFIG),
                                      [("kv", [KVStateMachine().snapshot()])], None))
    sms = {"kv": KVStateMachine()}
    if older:
        with pytest.raises(FileNotFoundError):
            restore_installed(storage, SnapshotMeta(10, 2, CONFIG), sms, SessionTable())
    else:
        restored, skipped = restore_installed(storage, SnapshotMeta(10, 2, CONFIG), sms,
                                              SessionTable())
        assert restored.index == 12 and skipped == []
    storage.close()
