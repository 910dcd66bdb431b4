"""A node's data directory is owner-only: directories 0700, files 0600 (WAL segments, META,
LOCK, hard state, snapshots, transfer files, members.json and every temp file), whatever the
umask; and a data directory that others can enter gets one warning at start, and is left
as it is.

Real files throughout.  The umask is set to 0022 (the usual default, which would leave
0755/0644) around the calls, so only explicit modes in the code can pass these tests."""

from __future__ import annotations

import os
import stat

import pytest
from twisted.logger import LogLevel, formatEvent, globalLogPublisher

from paxoslog.config import parse_address
from paxoslog.core.log import ENTRY_NORMAL, Entry, HardState, SnapshotMeta
from paxoslog.core.quorum import Config
from paxoslog.core.ready import Ready
from paxoslog.server.members_file import MEMBERS_FILE, MembersFile, NodeAddresses
from paxoslog.storage import (DiskStorage, SnapshotOffer, SnapshotReceiver, SnapshotSender,
                              StorageOptions, encode_snapshot_bytes, ensure_meta, failpoints)
from paxoslog.storage.hardstate import HARDSTATE_FILE

CONFIG = Config(frozenset({1, 2, 3}))
SMALL = StorageOptions(segment_bytes=4096)


@pytest.fixture(autouse=True)
def loose_umask():
    """The common default umask: without explicit modes, 0755 directories, 0644 files."""
    failpoints.clear()
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)
        failpoints.clear()


@pytest.fixture
def warnings():
    """Text of every warning (or worse) logged through Twisted's logger meanwhile."""
    seen: list[str] = []

    def observe(event):
        if event.get("log_level") is not None and event["log_level"] >= LogLevel.warn:
            seen.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    try:
        yield seen
    finally:
        globalLogPublisher.removeObserver(observe)


@pytest.fixture
def renamed_in(monkeypatch):
    """(temp file, its mode) for every temp file renamed into place (hard state, META,
    members.json, snapshots, transfers): they live too briefly to be walked."""
    seen: list[tuple[str, int]] = []
    real_replace = os.replace

    def replace(src, dst, *args, **kwargs):
        seen.append((os.fspath(src), stat.S_IMODE(os.stat(src).st_mode)))
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)
    return seen


def entry(index: int, term: int = 1) -> Entry:
    return Entry(index, term, ENTRY_NORMAL, (b"v%d" % index + b"." * 60,))


def kv_state(tag: bytes):
    return [("kv", [tag * 500 for _ in range(3)]), ("counter", [tag])]


def modes(top: str) -> dict[str, int]:
    """Permission bits of ``top`` and of everything under it."""
    found = {top: stat.S_IMODE(os.lstat(top).st_mode)}
    for root, dirs, files in os.walk(top):
        for name in dirs + files:
            path = os.path.join(root, name)
            found[path] = stat.S_IMODE(os.lstat(path).st_mode)
    return found


def assert_owner_only(top: str) -> dict[str, int]:
    found = modes(top)
    wrong = {os.path.relpath(path, top): f"{mode:04o}" for path, mode in found.items()
             if mode != (0o700 if os.path.isdir(path) else 0o600)}
    assert not wrong, f"not owner-only (directories 0700, files 0600): {wrong}"
    return found


def members(data_dir: str) -> None:
    book = {n: NodeAddresses(parse_address(f"127.0.0.1:{7000 + n}"),
                             parse_address(f"127.0.0.1:{8100 + n}")) for n in (1, 2, 3)}
    MembersFile(data_dir).write("test", frozenset({1, 2, 3}), book)


def test_everything_a_node_writes_in_a_fresh_data_dir_is_owner_only(tmp_path, renamed_in,
                                                                   monkeypatch):
    data = str(tmp_path / "data" / "node-1")          # neither exists yet
    chmodded: list[str] = []                          # files must be born 0600, not fixed up
    real_chmod = os.chmod
    monkeypatch.setattr(os, "chmod", lambda path, *a, **kw: (chmodded.append(os.fspath(path)),
                                                              real_chmod(path, *a, **kw))[1])
    storage = DiskStorage(data, "test", 1, "raft", SMALL)
    storage.load()
    # Readies over several WAL segments, two local snapshots, compaction (which checkpoints
    # the hard state when it deletes segments).
    for i in range(1, 300):
        storage.save(Ready(hard_state=HardState(1, 1, i), entries=[entry(i)]))
    storage.save_snapshot(SnapshotMeta(100, 1, CONFIG), kv_state(b"a"))
    storage.save_snapshot(SnapshotMeta(250, 1, CONFIG), kv_state(b"b"))
    assert storage.compact(250) > 0
    assert os.path.exists(os.path.join(data, HARDSTATE_FILE))

    # A snapshot streamed from the leader: snap/incoming/, its .offer and .part files.
    leader_file = tmp_path / "leader.snap.zst"
    meta = SnapshotMeta(1000, 2, CONFIG)
    leader_file.write_bytes(encode_snapshot_bytes(meta, kv_state(b"L"), sessions={"c": 1}))
    sender = SnapshotSender(str(leader_file), meta, chunk_bytes=4096)
    receiver = SnapshotReceiver(storage.transfer_dir, sender.offer)
    receiver.accept(next(sender.chunks(0)))
    mid_transfer = assert_owner_only(data)
    assert {os.path.basename(p) for p in mid_transfer} >= {
        os.path.basename(receiver.part_path), os.path.basename(receiver.offer_path)}
    for chunk in sender.chunks(receiver.next_offset):
        receiver.accept(chunk)
    storage.install_snapshot(meta, receiver.finish())
    sender.close()

    # A Ready carrying a snapshot's bytes (staged as snap/*.recv.tmp, then installed).
    later = SnapshotMeta(2000, 3, CONFIG)
    storage.save(Ready(hard_state=HardState(3, 0, 2000), snapshot=later,
                       snapshot_data=encode_snapshot_bytes(later, kv_state(b"s"))))
    members(data)

    found = assert_owner_only(data)
    names = {os.path.relpath(p, data) for p in found}
    assert {"META", "LOCK", HARDSTATE_FILE, MEMBERS_FILE, "wal", "snap",
            os.path.join("snap", "incoming")} <= names
    assert any(n.startswith("wal" + os.sep) and n.endswith(".wal") for n in names)
    assert any(n.startswith("snap" + os.sep) and n.endswith(".snap.zst") for n in names)
    # Every temp file was owner-only too, before its rename (hard state, META,
    # members.json, the local snapshots, the received and the staged one).
    temps = {os.path.basename(src): mode for src, mode in renamed_in}
    assert {"META.tmp", HARDSTATE_FILE + ".tmp", MEMBERS_FILE + ".tmp"} <= set(temps)
    assert any(name.endswith(".part") for name in temps)
    assert any(name.endswith(".recv.tmp") for name in temps)
    assert sum(name.endswith(".snap.zst.tmp") for name in temps) >= 2
    wrong = {name: f"{mode:04o}" for name, mode in temps.items() if mode != 0o600}
    assert not wrong, f"temp files renamed in with loose modes: {wrong}"
    assert chmodded == []
    storage.close()

    # Reopening (a restart) keeps it that way: new segment, new snapshot.
    storage = DiskStorage(data, "test", 1, "raft", SMALL)
    storage.load()
    storage.save(Ready(entries=[entry(i, 3) for i in range(2001, 2200)]))
    storage.save_snapshot(SnapshotMeta(2100, 3, CONFIG), kv_state(b"c"))
    storage.close()
    assert_owner_only(data)


def test_members_file_written_first_creates_an_owner_only_data_dir(tmp_path):
    """A node writes members.json before it opens its storage (``serve --join``, the
    address book): that may be what creates the data directory."""
    data = str(tmp_path / "node-4")
    members(data)
    assert modes(data) == {data: 0o700, os.path.join(data, MEMBERS_FILE): 0o600}
    storage = DiskStorage(data, "test", 4, "raft", SMALL)
    storage.load()
    storage.save(Ready(hard_state=HardState(1, 0, 0)))
    storage.close()
    assert_owner_only(data)


def test_the_storage_pieces_used_on_their_own_create_owner_only_dirs(tmp_path):
    """``ensure_meta`` (tools that make a data directory) and a ``SnapshotReceiver`` given
    a folder that does not exist yet create it 0700 themselves."""
    data = str(tmp_path / "made-by-meta")
    ensure_meta(data, "test", 1, "raft")
    assert_owner_only(data)
    incoming = str(tmp_path / "made-by-receiver")
    SnapshotReceiver(incoming, SnapshotOffer(1000, 2, CONFIG, 8192, 123, 4096))
    assert_owner_only(incoming)


def test_a_received_snapshot_readable_by_others_is_made_owner_only_when_installed(tmp_path):
    """A transfer file staged by an older release (0644) is renamed into snap/ as 0600."""
    storage = DiskStorage(str(tmp_path / "data"), "test", 1, "raft", SMALL)
    storage.load()
    meta = SnapshotMeta(50, 1, CONFIG)
    received = os.path.join(storage.transfer_dir, "old.snap.zst")
    with open(received, "wb") as f:                  # 0644 under the umask
        f.write(encode_snapshot_bytes(meta, kv_state(b"o")))
    assert stat.S_IMODE(os.stat(received).st_mode) == 0o644
    installed = storage.install_snapshot(meta, received)
    storage.close()
    assert stat.S_IMODE(os.stat(installed.path).st_mode) == 0o600


def test_an_existing_data_dir_open_to_others_gets_one_warning_and_keeps_its_mode(
        tmp_path, warnings):
    # None for a fresh data directory, an owner-only one, or a read-only (inspecting) open.
    private = str(tmp_path / "private")
    os.mkdir(private)
    os.chmod(private, 0o700)
    DiskStorage(private, "test", 1, "raft", SMALL).close()
    fresh = str(tmp_path / "fresh")
    DiskStorage(fresh, "test", 1, "raft", SMALL).close()
    os.chmod(fresh, 0o755)
    DiskStorage(fresh, None, None, None, SMALL, read_only=True).close()
    assert warnings == []

    data = str(tmp_path / "node-1")
    os.mkdir(data)
    os.chmod(data, 0o755)                           # made by an older release, or by hand
    storage = DiskStorage(data, "test", 1, "raft", SMALL)
    storage.load()
    storage.save(Ready(hard_state=HardState(1, 0, 0), entries=[entry(1)]))   # still serves
    storage.close()
    assert len(warnings) == 1, warnings
    assert data in warnings[0] and "0755" in warnings[0]
    assert f"chmod 700 {data}" in warnings[0]
    assert stat.S_IMODE(os.stat(data).st_mode) == 0o755   # not changed behind the operator
    # What paxoslog created inside it is owner-only all the same.
    inside = {p: m for p, m in modes(data).items() if p != data}
    assert inside and all(m == (0o700 if os.path.isdir(p) else 0o600) for p, m in inside.items())


@pytest.mark.parametrize("mode", [0o750, 0o705, 0o770], ids=lambda m: f"{m:04o}")
def test_group_or_world_access_alone_is_enough_to_warn(tmp_path, warnings, mode):
    data = str(tmp_path / "node-1")
    os.mkdir(data)
    os.chmod(data, mode)
    DiskStorage(data, "test", 1, "raft", SMALL).close()
    assert len(warnings) == 1 and data in warnings[0] and f"{mode:04o}" in warnings[0], warnings
