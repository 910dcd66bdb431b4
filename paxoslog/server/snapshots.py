"""Snapshot transfer between peers, over the peer connection (storage/transfer.py does the
chunking, checksums and resumption; this module moves the pieces).

Leader side: when the core sends ``InstallSnapshot`` with empty ``data`` to a follower that
is behind the leader's log, ``SnapshotShipper.offer`` finds the local snapshot file at the
message's (index, term) (the snapshot the core compacted to: usually the one before the
newest, see ``DiskStorage.compaction_point``), announces it (``SNAP_OFFER``, carrying the
core message) and then answers each ``SNAP_WANT`` with the chunk at that offset
(stop-and-wait: one chunk in flight per follower).  The sender keeps the file open, so a
prune during the transfer does not cut it short; a file pruned before the offer is logged
and skipped, and the core sends ``InstallSnapshot`` again later (by then it has compacted
to a snapshot that is still kept).

Follower side: an offer larger than ``[snapshot] receive_bytes_max`` is refused (answered
``SNAP_DONE`` not ok, logged once per offered snapshot): a leader cannot fill a follower's
disk.  Otherwise ``SnapshotFetcher`` assembles the file with a ``SnapshotReceiver`` (it
resumes a partial file after a reconnect or a restart), checks it whole (its size and
checksum, then its contents read back: zstd checksum, CBOR items, and a header naming the
offered index and term), then hands it to the node, which steps the core with the same
``InstallSnapshot`` whose ``data`` is now the file's path.  The core's next Ready carries
the snapshot: the node persists it through ``storage.save(ready, snapshot_file=path)``
(verify, rename into snap/, WAL marker) and restores its state machines from it before
applying anything after it.  A file that arrived intact but does not read back (damaged on
the leader's disk after it was written: the leader's checksum covers the damage) is deleted
and refused (``SNAP_DONE`` not ok, logged on both sides): the node keeps running, and the
leader offers again later.

Restoring the state machines from the installed file happens in local_snapshots.py.
"""

from __future__ import annotations

from twisted.logger import Logger

from paxoslog.core.log import SnapshotMeta
from paxoslog.core.messages import InstallSnapshot, from_wire, to_wire
from paxoslog.storage import (BadChunk, CorruptSnapshot, SnapshotChunk, SnapshotOffer,
                              SnapshotReader, SnapshotReceiver, SnapshotSender, TransferFailed,
                              verify_snapshot)
from paxoslog.storage.snapshot import snapshot_name

from . import frames as F

__all__ = ["SnapshotShipper", "SnapshotFetcher"]

log = Logger(namespace="paxoslog.snapshots")

STALL_S = 10.0   # an outgoing transfer without progress this long may be restarted


class _Outgoing:
    __slots__ = ("message", "path", "sender", "last_progress")

    def __init__(self, message: InstallSnapshot, path: str, now: float) -> None:
        self.message = message
        self.path = path
        self.sender: SnapshotSender | None = None
        self.last_progress = now


class SnapshotShipper:
    """Leader side: one outgoing transfer per follower.  ``storage`` finds the local
    snapshot files, ``writer`` opens them on its snapshot thread, ``transport`` sends."""

    def __init__(self, storage, writer, transport, reactor, chunk_bytes: int) -> None:
        self.storage = storage
        self.writer = writer
        self.transport = transport
        self.reactor = reactor
        self.chunk_bytes = chunk_bytes
        self._outgoing: dict[int, _Outgoing] = {}
        self.sent_chunks = 0

    def offer(self, msg: InstallSnapshot) -> None:
        peer = msg.to
        now = self.reactor.seconds()
        current = self._outgoing.get(peer)
        if (current is not None and current.message.index == msg.index
                and now - current.last_progress < STALL_S):
            return                                  # already under way
        found = self.storage.find_snapshot(msg.index, msg.snap_term)
        if found is None:
            # Pruned meanwhile (a newer snapshot was just taken and the core has not been
            # compacted past this one yet): the core sends InstallSnapshot again later.
            latest = self.storage.latest_snapshot()
            log.warn("cannot send snapshot {index} (term {term}) to node {peer}: no such "
                     "local snapshot file (newest is {latest}); the core will retry",
                     index=msg.index, term=msg.snap_term, peer=peer,
                     latest=None if latest is None else latest.index)
            return
        self._drop(peer)
        outgoing = self._outgoing[peer] = _Outgoing(msg, found.path, now)
        log.info("sending snapshot at index {index} to node {peer}", index=msg.index, peer=peer)
        meta = SnapshotMeta(msg.index, msg.snap_term, msg.config)
        d = self.writer.in_snapshot_thread(SnapshotSender, found.path, meta,
                                           self.chunk_bytes)

        def ready(sender: SnapshotSender) -> None:
            if self._outgoing.get(peer) is not outgoing:
                sender.close()
                return
            outgoing.sender = sender
            if not self.transport.send_frame(peer, [F.SNAP_OFFER, to_wire(msg),
                                                    sender.offer.to_wire()]):
                self._drop(peer)

        def failed(failure) -> None:
            if failure.check(FileNotFoundError):
                log.warn("snapshot {path} was pruned before it could be sent to node {peer}; "
                         "the core will retry", path=found.path, peer=peer)
            else:
                log.failure("cannot read snapshot {path}", failure, path=found.path)
            if self._outgoing.get(peer) is outgoing:
                del self._outgoing[peer]
        d.addCallbacks(ready, failed)

    def _drop(self, peer: int) -> _Outgoing | None:
        """Forget the transfer to ``peer`` and close its file."""
        outgoing = self._outgoing.pop(peer, None)
        if outgoing is not None and outgoing.sender is not None:
            outgoing.sender.close()
        return outgoing

    def on_want(self, peer: int, payload: list) -> None:
        _, transfer_id, offset = payload
        outgoing = self._outgoing.get(peer)
        if outgoing is None or outgoing.sender is None:
            return
        sender = outgoing.sender
        if transfer_id != sender.offer.transfer_id or type(offset) is not int:
            return
        outgoing.last_progress = self.reactor.seconds()
        if offset >= sender.offer.total_bytes:
            return
        try:
            chunk = sender.chunk(offset)
        except (ValueError, OSError) as exc:
            log.warn("snapshot transfer to node {peer} stopped: {error}", peer=peer, error=exc)
            self._drop(peer)
            return
        self.sent_chunks += 1
        self.transport.send_frame(peer, [F.SNAP_CHUNK, chunk.to_wire()])

    def on_done(self, peer: int, payload: list) -> None:
        _, transfer_id, ok, reason = payload
        outgoing = self._outgoing.get(peer)
        if outgoing is None or outgoing.sender is None \
                or transfer_id != outgoing.sender.offer.transfer_id:
            return                          # about an older transfer: this one goes on
        self._drop(peer)
        if ok:
            log.info("node {peer} received snapshot {index}", peer=peer,
                     index=outgoing.message.index)
        else:
            log.warn("node {peer} refused snapshot {index}: {reason}", peer=peer,
                     index=outgoing.message.index, reason=reason)

    def peer_down(self, peer: int) -> None:
        self._drop(peer)

    @property
    def active(self) -> int:
        return len(self._outgoing)


class SnapshotFetcher:
    """Follower side: one incoming transfer at a time.  Files are assembled under
    ``transfer_dir``; ``deliver(message, path)`` hands a complete one to the node."""

    def __init__(self, node_id: int, transfer_dir: str, writer, transport, deliver,
                 receive_bytes_max: int = 4 << 30) -> None:
        """``receive_bytes_max``: offers of larger snapshots are refused (the conf's
        ``[snapshot] receive_bytes_max``)."""
        self.node_id = node_id
        self.receive_bytes_max = receive_bytes_max
        self.transfer_dir = transfer_dir
        self.writer = writer
        self.transport = transport
        self.deliver = deliver
        self._peer: int | None = None
        self._message: InstallSnapshot | None = None
        self._receiver: SnapshotReceiver | None = None
        self._finishing = False
        self.received = 0
        self.refused = 0
        self._refused_logged: tuple | None = None

    def on_offer(self, peer: int, payload: list) -> None:
        _, msg_wire, offer_wire = payload
        msg = from_wire(msg_wire)
        if type(msg) is not InstallSnapshot or msg.frm != peer or msg.to != self.node_id:
            raise ValueError("the offer does not carry an InstallSnapshot for this node")
        offer = SnapshotOffer.from_wire(offer_wire)
        cap = self.receive_bytes_max
        if offer.total_bytes > cap:
            self.refused += 1
            reason = (f"snapshot of {offer.total_bytes} bytes exceeds this node's "
                      f"snapshot.receive_bytes_max ({cap})")
            if self._refused_logged != (peer, offer.index):
                self._refused_logged = (peer, offer.index)
                log.warn("refused snapshot {index} from node {peer}: {reason}; raise the "
                         "limit if the state really is that large", index=offer.index,
                         peer=peer, reason=reason)
            self.transport.send_frame(peer, [F.SNAP_DONE, offer.transfer_id, False, reason])
            return
        if self._finishing:
            return
        receiver = self._receiver
        if receiver is None or receiver.offer != offer:
            receiver = SnapshotReceiver(self.transfer_dir, offer)
            log.info("receiving snapshot at index {index} ({size} bytes) from node {peer}",
                     index=offer.index, size=offer.total_bytes, peer=peer)
        self._peer, self._message, self._receiver = peer, msg, receiver
        if receiver.complete:
            self._finish()
        else:
            self._want(receiver.next_offset)

    def on_chunk(self, peer: int, payload: list) -> None:
        chunk = SnapshotChunk.from_wire(payload[1])
        receiver = self._receiver
        if receiver is None or peer != self._peer or self._finishing:
            return
        try:
            receiver.accept(chunk)
        except BadChunk as exc:
            log.warn("bad snapshot chunk from node {peer}: {error}", peer=peer, error=exc)
            self._want(receiver.next_offset)
            return
        except OSError as exc:
            # A failed write (ENOSPC, EIO): the transfer's file is not to be trusted (see
            # _finished_file); it goes, and the next offer starts from byte 0.
            log.error("cannot write the snapshot from node {peer}: {error}; starting it "
                      "again from the next offer", peer=peer, error=exc)
            _abandon(receiver)
            self._receiver = None
            self.transport.send_frame(peer, [F.SNAP_DONE, receiver.offer.transfer_id,
                                             False, f"write failed: {exc}"[:200]])
            return
        if receiver.complete:
            self._finish()
        else:
            self._want(receiver.next_offset)

    def _want(self, offset: int) -> None:
        self.transport.send_frame(self._peer, [F.SNAP_WANT,
                                                    self._receiver.offer.transfer_id, offset])

    def _finish(self) -> None:
        self._finishing = True
        receiver, peer, msg = self._receiver, self._peer, self._message
        d = self.writer.in_snapshot_thread(_finished_file, receiver, msg)

        def done(path: str) -> None:
            self._finishing = False
            self._receiver = None
            self.received += 1
            self.transport.send_frame(peer, [F.SNAP_DONE, receiver.offer.transfer_id,
                                                  True, ""])
            self.deliver(msg, path)

        def failed(failure) -> None:
            self._finishing = False
            if failure.check(TransferFailed):
                log.warn("snapshot from node {peer} failed its checksum; restarting",
                         peer=peer)
                self._want(0)
                return
            self._receiver = None
            if failure.check(CorruptSnapshot):
                self.refused += 1
                log.warn("refused snapshot {index} from node {peer}: {reason}",
                         index=msg.index, peer=peer, reason=failure.value)
            else:
                log.failure("cannot finish the snapshot from node {peer}", failure, peer=peer)
            self.transport.send_frame(peer, [F.SNAP_DONE, receiver.offer.transfer_id,
                                             False, str(failure.value)[:200]])
        d.addCallbacks(done, failed)


def _finished_file(receiver: SnapshotReceiver, msg: InstallSnapshot) -> str:
    """The received file's path, once it is whole and reads back as the snapshot ``msg``
    installs (its index and term); ``CorruptSnapshot`` otherwise, with the transfer's files
    deleted, so that the next offer (or a restart) fetches it afresh.  On the snapshot
    thread: this reads the whole file.  A failed write or fsync also deletes them: after a
    failed fsync the kernel may have dropped the dirty pages and marked them clean, so a
    resumed transfer's second fsync "succeeded" on a file whose lost pages were never
    written, and it was installed and the log below it compacted (found by a review)."""
    try:
        path = receiver.finish()
    except OSError:
        _abandon(receiver)
        raise
    try:
        meta = verify_snapshot(path).meta
        if (meta.index, meta.term) != (msg.index, msg.snap_term):
            raise CorruptSnapshot(path, f"it covers index {meta.index} (term {meta.term}), "
                                        f"the offer index {msg.index} (term {msg.snap_term})")
    except CorruptSnapshot:
        receiver.abort()
        raise
    return path


def _abandon(receiver: SnapshotReceiver) -> None:
    """Delete a transfer's files after a failed write or fsync; a failure to delete them is
    logged (a restart's receiver resumes only an offer it finds whole)."""
    try:
        receiver.abort()
    except OSError as exc:
        log.error("cannot delete the files of snapshot transfer {id}: {error}",
                  id=receiver.offer.transfer_id, error=exc)
