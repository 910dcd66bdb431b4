"""Chunked snapshot transfer between real files: checksummed chunks, resumption after a
dropped connection or a receiver restart, whole-file verification, and installing the
result into a DiskStorage."""

from __future__ import annotations

import os

import pytest

from paxoslog.core.log import SnapshotMeta
from paxoslog.core.quorum import Config
from paxoslog.storage import (BadChunk, DiskStorage, SnapshotChunk, SnapshotOffer,
                              SnapshotReceiver, SnapshotSender, StorageOptions, TransferFailed,
                              encode_snapshot_bytes)

META = SnapshotMeta(1000, 4, Config(frozenset({1, 2, 3})))
CHUNK = 4096


@pytest.fixture
def snapshot_file(tmp_path):
    """A ~40 KiB incompressible snapshot file on the 'leader'."""
    path = tmp_path / "leader.snap.zst"
    path.write_bytes(encode_snapshot_bytes(
        META, [("kv", [os.urandom(4000) for _ in range(10)])], sessions={"c": 1}))
    return str(path)


def test_full_transfer_then_install(tmp_path, snapshot_file):
    """All chunks in order, finish, install: the follower restarts from the snapshot."""
    storage = DiskStorage(str(tmp_path / "follower"), "c", 2, "raft", StorageOptions())
    storage.load()
    sender = SnapshotSender(snapshot_file, META, chunk_bytes=CHUNK)
    receiver = SnapshotReceiver(storage.transfer_dir, sender.offer)
    for chunk in sender.chunks(receiver.next_offset):
        receiver.accept(chunk)
    assert receiver.complete
    path = receiver.finish()
    storage.install_snapshot(META, path)
    storage.close()
    storage = DiskStorage(str(tmp_path / "follower"), "c", 2, "raft", StorageOptions())
    restored, reader = storage.load()
    assert restored.snapshot == META
    assert reader.sessions == {"c": 1}
    assert open(snapshot_file, "rb").read() == open(storage.latest_snapshot().path, "rb").read()
    assert os.listdir(storage.transfer_dir) == []


def test_transfer_resumes_after_an_interruption(tmp_path, snapshot_file):
    """A new receiver for the same offer (reconnect or restart) resumes where data stopped."""
    sender = SnapshotSender(snapshot_file, META, chunk_bytes=CHUNK)
    directory = str(tmp_path / "incoming")
    first = SnapshotReceiver(directory, sender.offer)
    for chunk in list(sender.chunks())[:4]:
        first.accept(chunk)
    assert first.next_offset == 4 * CHUNK
    # The connection drops; the follower even restarts.  A new receiver picks up the file.
    second = SnapshotReceiver(directory, SnapshotOffer.from_wire(sender.offer.to_wire()))
    assert second.next_offset == 4 * CHUNK
    sent = 0
    for chunk in sender.chunks(second.next_offset):
        second.accept(chunk)
        sent += 1
    assert sent == len(list(sender.chunks())) - 4
    assert open(second.finish(), "rb").read() == open(snapshot_file, "rb").read()


def test_resume_rounds_a_partly_written_chunk_down(tmp_path, snapshot_file):
    """A crash mid-chunk leaves a partial chunk on disk: resumption restarts that chunk."""
    sender = SnapshotSender(snapshot_file, META, chunk_bytes=CHUNK)
    directory = str(tmp_path / "incoming")
    receiver = SnapshotReceiver(directory, sender.offer)
    for chunk in list(sender.chunks())[:3]:
        receiver.accept(chunk)
    with open(receiver.part_path, "ab") as f:
        f.write(b"half a chunk")
    receiver = SnapshotReceiver(directory, sender.offer)
    assert receiver.next_offset == 3 * CHUNK
    for chunk in sender.chunks(receiver.next_offset):
        receiver.accept(chunk)
    assert open(receiver.finish(), "rb").read() == open(snapshot_file, "rb").read()


def test_bad_duplicate_and_early_chunks(tmp_path, snapshot_file):
    """A damaged chunk is refused; duplicates and gaps just report the offset wanted."""
    sender = SnapshotSender(snapshot_file, META, chunk_bytes=CHUNK)
    receiver = SnapshotReceiver(str(tmp_path / "incoming"), sender.offer)
    chunks = list(sender.chunks())
    assert receiver.accept(chunks[0]) == CHUNK
    assert receiver.accept(chunks[0]) == CHUNK            # duplicate: ignored
    assert receiver.accept(chunks[2]) == CHUNK            # early: resend from CHUNK
    damaged = SnapshotChunk(chunks[1].transfer_id, chunks[1].offset,
                            b"X" + chunks[1].data[1:], chunks[1].crc32)
    with pytest.raises(BadChunk, match="crc32"):
        receiver.accept(damaged)
    with pytest.raises(BadChunk, match="transfer"):
        receiver.accept(SnapshotChunk("other", CHUNK, chunks[1].data, chunks[1].crc32))
    assert receiver.accept(SnapshotChunk.from_wire(chunks[1].to_wire())) == 2 * CHUNK


def test_damage_on_the_receiver_disk_fails_the_whole_file_check(tmp_path, snapshot_file):
    """If the partial file was damaged after the chunk checks, finish restarts from zero."""
    sender = SnapshotSender(snapshot_file, META, chunk_bytes=CHUNK)
    receiver = SnapshotReceiver(str(tmp_path / "incoming"), sender.offer)
    for chunk in sender.chunks():
        receiver.accept(chunk)
    with open(receiver.part_path, "r+b") as f:
        f.seek(100)
        byte = f.read(1)[0]
        f.seek(100)
        f.write(bytes([byte ^ 0xFF]))        # always a change (a fixed byte may be there)
    with pytest.raises(TransferFailed):
        receiver.finish()
    assert receiver.next_offset == 0
    for chunk in sender.chunks(receiver.next_offset):
        receiver.accept(chunk)
    assert open(receiver.finish(), "rb").read() == open(snapshot_file, "rb").read()


def test_a_new_offer_discards_another_transfer(tmp_path, snapshot_file):
    """Only one transfer at a time: leftovers of a different snapshot are removed."""
    sender = SnapshotSender(snapshot_file, META, chunk_bytes=CHUNK)
    old = SnapshotReceiver(str(tmp_path / "incoming"), sender.offer)
    old.accept(next(sender.chunks()))
    other = SnapshotOffer(2000, 5, META.config, 10, 123, CHUNK)
    fresh = SnapshotReceiver(str(tmp_path / "incoming"), other)
    assert fresh.next_offset == 0
    assert not os.path.exists(old.part_path)
    assert os.path.exists(snapshot_file)        # not a transfer file: left alone


def test_malformed_wire_data_is_rejected():
    """Offers and chunks from the network are validated before use."""
    with pytest.raises(ValueError):
        SnapshotOffer.from_wire([1, 2, "x"])
    with pytest.raises(ValueError):
        SnapshotOffer.from_wire([1, 2, [[1], [], []], -5, 0, 1024])
    with pytest.raises(ValueError):
        SnapshotChunk.from_wire(["id", -1, b"", 0])
