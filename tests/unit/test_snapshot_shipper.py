"""The leader's snapshot shipper and the follower's fetcher on real data directories with the
network faked.  The shipper sends whichever kept snapshot the core's InstallSnapshot names
(the one the log was compacted to, not only the newest), keeps sending a file pruned during
the transfer, and skips, without raising, a file pruned before the offer (the core asks
again later).  The fetcher hands the node only a file that reads back as the snapshot
offered, and refuses (without stopping) one damaged on the leader's disk."""

from __future__ import annotations

import os
import types

from twisted.internet import defer, task

from paxoslog.config import SnapshotConf
from paxoslog.core.log import SnapshotMeta
from paxoslog.core.messages import InstallSnapshot
from paxoslog.core.quorum import Config
from paxoslog.server import frames as F
from paxoslog.server.snapshots import SnapshotFetcher, SnapshotShipper
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


# ====================================================================== shipper to fetcher

def ship(shipper, leader_transport, fetcher, follower_transport, peer: int = 3) -> None:
    """Carry frames both ways between a leader's shipper and a follower's fetcher until
    neither has anything more to say."""
    handlers = {F.SNAP_OFFER: fetcher.on_offer, F.SNAP_CHUNK: fetcher.on_chunk}
    replies = {F.SNAP_WANT: shipper.on_want, F.SNAP_DONE: shipper.on_done}
    while leader_transport.frames or follower_transport.frames:
        while leader_transport.frames:
            _, frame = leader_transport.frames.pop(0)
            handlers[frame[0]](1, frame)
        while follower_transport.frames:
            to, frame = follower_transport.frames.pop(0)
            assert to == 1
            replies[frame[0]](peer, frame)


def make_fetcher(tmp_path, transport, delivered: list) -> SnapshotFetcher:
    incoming = tmp_path / "follower-incoming"
    incoming.mkdir(exist_ok=True)
    return SnapshotFetcher(3, str(incoming), types.SimpleNamespace(
        in_snapshot_thread=lambda fn, *a: defer.maybeDeferred(fn, *a)), transport,
        lambda msg, path: delivered.append((msg.index, path)))


def flip_a_byte(path: str) -> None:
    """Bit rot after the file was written: the leader's checksum for the transfer is then
    computed over the damaged bytes."""
    with open(path, "r+b") as f:
        f.seek(os.path.getsize(path) // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))


def test_fetcher_delivers_a_snapshot_that_reads_back(tmp_path):
    storage = storage_with(tmp_path, (SnapshotMeta(100, 1, CONFIG), big_state(b"a"), None))
    node = shipper_node(storage)
    shipper, delivered, follower = make_shipper(node), [], FakeTransport()
    fetcher = make_fetcher(tmp_path, follower, delivered)
    shipper.offer(InstallSnapshot(1, 3, 5, 100, 1, CONFIG, b""))
    ship(shipper, node.transport, fetcher, follower)
    (index, path), = delivered
    assert index == 100 and verify_snapshot(path).meta.index == 100
    assert (fetcher.received, fetcher.refused, shipper.active) == (1, 0, 0)
    storage.close()


def test_fetcher_refuses_a_snapshot_damaged_on_the_leaders_disk(tmp_path):
    """The transfer's checksums all pass (they cover the damage), but the file does not
    read back: the follower deletes it and answers "refused" instead of handing the node
    a file whose install would stop it; a restarted follower fetches afresh rather than
    reusing the finished file."""
    storage = storage_with(tmp_path, (SnapshotMeta(100, 1, CONFIG), big_state(b"a"), None))
    flip_a_byte(storage.find_snapshot(100, 1).path)
    node = shipper_node(storage)
    shipper, delivered, follower = make_shipper(node), [], FakeTransport()
    fetcher = make_fetcher(tmp_path, follower, delivered)
    shipper.offer(InstallSnapshot(1, 3, 5, 100, 1, CONFIG, b""))
    offer_frame = list(node.transport.frames[0][1])
    sent = []
    original_send = follower.send_frame
    follower.send_frame = lambda peer, frame: sent.append(frame) or original_send(peer, frame)
    ship(shipper, node.transport, fetcher, follower)
    assert delivered == [] and (fetcher.received, fetcher.refused) == (0, 1)
    done = sent[-1]
    assert done[0] == F.SNAP_DONE and done[2] is False and "corrupt snapshot" in done[3]
    assert shipper.active == 0
    assert os.listdir(tmp_path / "follower-incoming") == []

    restarted, again = FakeTransport(), []
    make_fetcher(tmp_path, restarted, again).on_offer(1, offer_frame)
    (_, want), = restarted.frames
    assert want[0] == F.SNAP_WANT and want[2] == 0 and again == []
    storage.close()


def test_fetcher_refuses_a_file_whose_header_names_another_snapshot(tmp_path):
    """A whole, readable file that is not the snapshot the InstallSnapshot names (here the
    leader's file for index 100 kept under index 200's name) is refused, not installed."""
    storage = storage_with(tmp_path, (SnapshotMeta(100, 1, CONFIG), big_state(b"a"), None))
    kept = storage.find_snapshot(100, 1)
    storage.find_snapshot = lambda index, term: SnapshotFile(index, term, kept.path)
    node = shipper_node(storage)
    shipper, delivered, follower = make_shipper(node), [], FakeTransport()
    fetcher = make_fetcher(tmp_path, follower, delivered)
    shipper.offer(InstallSnapshot(1, 3, 5, 200, 1, CONFIG, b""))
    ship(shipper, node.transport, fetcher, follower)
    assert delivered == [] and fetcher.refused == 1 and shipper.active == 0
    assert os.listdir(tmp_path / "follower-incoming") == []
    storage.close()


def test_shipper_ignores_the_answer_to_an_older_transfer(tmp_path):
    """A late SNAP_DONE for a transfer the shipper has since replaced does not cancel the
    current one."""
    storage = storage_with(tmp_path, (SnapshotMeta(100, 1, CONFIG), big_state(b"a"), None))
    node = shipper_node(storage)
    shipper = make_shipper(node)
    shipper.offer(InstallSnapshot(1, 3, 5, 100, 1, CONFIG, b""))
    current = SnapshotOffer.from_wire(node.transport.frames[-1][1][2]).transfer_id
    shipper.on_done(3, [F.SNAP_DONE, "older-" + current, False, "an older transfer"])
    assert shipper.active == 1
    shipper.on_done(3, [F.SNAP_DONE, current, True, ""])
    assert shipper.active == 0
    storage.close()


def test_a_failed_fsync_of_a_received_snapshot_starts_the_transfer_again_from_byte_0(
        tmp_path, monkeypatch):
    """fsync of the assembled file fails with EIO: the kernel may have dropped its dirty
    pages and marked them clean, so the next offer's resumed transfer fsynced again "with
    success" and installed a file whose lost pages never reached the disk (found by a
    review).  The transfer's files go, and the next offer fetches from byte 0."""
    from paxoslog.storage import transfer
    storage = storage_with(tmp_path, (SnapshotMeta(100, 1, CONFIG), big_state(b"a"), None))
    node = shipper_node(storage)
    shipper, delivered, follower = make_shipper(node), [], FakeTransport()
    fetcher = make_fetcher(tmp_path, follower, delivered)
    real_fsync, failures = os.fsync, []

    def fsync_failing_once(fd):
        if not failures and os.readlink(f"/proc/self/fd/{fd}").endswith(".part"):
            failures.append(fd)
            raise OSError(5, "Input/output error")
        return real_fsync(fd)
    monkeypatch.setattr(transfer.os, "fsync", fsync_failing_once)
    message = InstallSnapshot(1, 3, 5, 100, 1, CONFIG, b"")
    shipper.offer(message)
    offer_frame = list(node.transport.frames[0][1])
    ship(shipper, node.transport, fetcher, follower)
    assert failures and delivered == []
    assert os.listdir(tmp_path / "follower-incoming") == []
    fetcher.on_offer(1, offer_frame)                      # the leader offers it again
    (_, want), = follower.frames
    assert want[0] == F.SNAP_WANT and want[2] == 0
    storage.close()
