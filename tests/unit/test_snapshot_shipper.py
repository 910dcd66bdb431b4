"""The leader's snapshot shipper on real data directories with the network faked: it sends
whichever kept snapshot the core's InstallSnapshot names (the one the log was compacted to,
not only the newest), keeps sending a file pruned during the transfer, and skips, without
raising, a file pruned before the offer (the core asks again later)."""

from __future__ import annotations

import types

from twisted.internet import defer, task

from paxoslog.config import SnapshotConf
from paxoslog.core.log import SnapshotMeta
from paxoslog.core.messages import InstallSnapshot
from paxoslog.core.quorum import Config
from paxoslog.server import frames as F
from paxoslog.server.snapshots import SnapshotShipper
from paxoslog.storage import (DiskStorage, SnapshotChunk, SnapshotFile, SnapshotOffer,
                              SnapshotReceiver, StorageOptions, verify_snapshot)

CONFIG = Config(frozenset({1, 2, 3}))


class FakeTransport:
    def __init__(self) -> None:
        self.frames: list[tuple[int, list]] = []

    def send_frame(self, peer: int, frame: list) -> bool:
        self.frames.append((peer, frame))
        return True


def storage_with(tmp_path, *metas_and_states) -> DiskStorage:
    storage = DiskStorage(str(tmp_path / "data"), "test", 1, "raft",
                          StorageOptions(snapshot_keep=2))
    storage.load()
    for meta, states, sessions in metas_and_states:
        storage.save_snapshot(meta, states, sessions)
    return storage


class QueuedWriter:
    """The snapshot thread, run by hand: jobs wait until ``run()`` (the shipper only needs
    their results to come later than the offer)."""

    def __init__(self) -> None:
        self.pending: list = []

    def in_snapshot_thread(self, fn, *args) -> defer.Deferred:
        d = defer.Deferred()
        self.pending.append((fn, args, d))
        return d

    def run(self) -> None:
        while self.pending:
            fn, args, d = self.pending.pop(0)
            defer.maybeDeferred(fn, *args).chainDeferred(d)


# ====================================================================== the shipper

def shipper_node(storage):
    node = types.SimpleNamespace(
        storage=storage, writer=types.SimpleNamespace(
            in_snapshot_thread=lambda fn, *a: defer.maybeDeferred(fn, *a)),
        transport=FakeTransport(), reactor=task.Clock(),
        config=types.SimpleNamespace(snapshot=SnapshotConf(chunk_bytes=1024)))
    return node


def make_shipper(node) -> SnapshotShipper:
    return SnapshotShipper(node.storage, node.writer, node.transport, node.reactor,
                           node.config.snapshot.chunk_bytes)


def big_state(tag: bytes):
    return [("kv", [bytes((i * 7 + tag[0]) % 251 for i in range(20_000))])]


def test_shipper_sends_the_kept_snapshot_the_core_names_even_when_pruned_mid_transfer(tmp_path):
    """The core compacted to the older of two kept snapshots and names it: that file is
    offered; a newer snapshot prunes it during the transfer, and the transfer still ends
    with a whole, verified copy of it."""
    older, newer = SnapshotMeta(100, 1, CONFIG), SnapshotMeta(200, 1, CONFIG)
    storage = storage_with(tmp_path, (older, big_state(b"a"), None),
                           (newer, big_state(b"b"), None))
    original = open(storage.find_snapshot(100, 1).path, "rb").read()
    node = shipper_node(storage)
    shipper = make_shipper(node)
    shipper.offer(InstallSnapshot(1, 3, 5, 100, 1, CONFIG, b""))
    (peer, frame), = node.transport.frames
    assert peer == 3 and frame[0] == F.SNAP_OFFER
    offer = SnapshotOffer.from_wire(frame[2])
    assert (offer.index, offer.term, offer.total_bytes) == (100, 1, len(original))

    storage.save_snapshot(SnapshotMeta(300, 1, CONFIG), big_state(b"c"), None)
    assert storage.find_snapshot(100, 1) is None          # pruned: keep = 2
    receiver = SnapshotReceiver(str(tmp_path / "incoming"), offer)
    while not receiver.complete:
        shipper.on_want(3, [F.SNAP_WANT, offer.transfer_id, receiver.next_offset])
        receiver.accept(SnapshotChunk.from_wire(node.transport.frames[-1][1][1]))
    path = receiver.finish()
    assert open(path, "rb").read() == original
    assert verify_snapshot(path).meta.index == 100
    shipper.on_done(3, [F.SNAP_DONE, offer.transfer_id, True, ""])
    assert shipper.active == 0
    storage.close()


def test_shipper_skips_a_pruned_snapshot_without_crashing(tmp_path):
    """An InstallSnapshot naming a snapshot no longer kept sends nothing and leaves no
    transfer behind (the core sends it again later); a kept one still works after."""
    storage = storage_with(tmp_path, (SnapshotMeta(100, 1, CONFIG), big_state(b"a"), None),
                           (SnapshotMeta(200, 1, CONFIG), big_state(b"b"), None),
                           (SnapshotMeta(300, 1, CONFIG), big_state(b"c"), None))
    node = shipper_node(storage)
    shipper = make_shipper(node)
    shipper.offer(InstallSnapshot(1, 3, 5, 100, 1, CONFIG, b""))     # pruned
    shipper.offer(InstallSnapshot(1, 3, 5, 200, 2, CONFIG, b""))     # wrong term
    assert node.transport.frames == [] and shipper.active == 0
    shipper.offer(InstallSnapshot(1, 3, 5, 200, 1, CONFIG, b""))
    assert [f[0] for _, f in node.transport.frames] == [F.SNAP_OFFER] and shipper.active == 1
    shipper.peer_down(3)
    assert shipper.active == 0
    storage.close()


def test_shipper_survives_the_file_vanishing_before_it_is_opened(tmp_path):
    """The file is found, then pruned before the snapshot thread opens it: a warning, no
    transfer left behind, no exception into the Ready loop; the core's next try works."""
    storage = storage_with(tmp_path, (SnapshotMeta(100, 1, CONFIG), big_state(b"a"), None))
    node = shipper_node(storage)
    node.writer = writer = QueuedWriter()
    shipper = make_shipper(node)
    kept = storage.find_snapshot(100, 1)
    gone = SnapshotFile(100, 1, kept.path + ".pruned")          # what a prune leaves behind
    storage.find_snapshot = lambda index, term: gone
    shipper.offer(InstallSnapshot(1, 3, 5, 100, 1, CONFIG, b""))
    assert shipper.active == 1                                   # opening on the thread
    writer.run()
    assert shipper.active == 0 and node.transport.frames == []
    storage.find_snapshot = lambda index, term: kept
    shipper.offer(InstallSnapshot(1, 3, 5, 100, 1, CONFIG, b""))
    writer.run()
    assert [f[0] for _, f in node.transport.frames] == [F.SNAP_OFFER]
    shipper.peer_down(3)
    storage.close()
