"""``paxoslog log dump``, ``log verify`` and ``snapshot inspect`` on real data directories:
healthy, with Multi-Paxos holes, with a torn tail, corrupted, and next to a running node."""

from __future__ import annotations

import argparse
import json
import os

import pytest

from paxoslog.core.ballot import Ballot
from paxoslog.core.log import ENTRY_NORMAL, Entry, HardState, SnapshotMeta, config_entry
from paxoslog.core.quorum import Config
from paxoslog.core.ready import Ready
from paxoslog.storage import DiskStorage, StorageOptions
from paxoslog.storage.inspect import add_arguments
from paxoslog.storage.walscan import list_segments
from walfiles import unpreallocated, written_end

CONFIG = Config(frozenset({1, 2, 3}))
OPTIONS = StorageOptions(segment_bytes=4096)


def entry(index: int, term: int = 1) -> Entry:
    return Entry(index, term, ENTRY_NORMAL, (b"command-%d" % index,))


# Ballot 5.1 (round 5, node 1) as storage keeps it: users see term 5, never 21474836481.
BALLOT = Ballot(5, 1).pack()


def run(argv: list[str], capsys) -> tuple[int, str]:
    parser = argparse.ArgumentParser(prog="paxoslog")
    add_arguments(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    status = args.func(args)
    return status, capsys.readouterr().out


@pytest.fixture
def paxos_dir(tmp_path):
    """A closed Multi-Paxos data dir: slots 1-30 and 36-40 (holes 31-35), two snapshots."""
    data_dir = str(tmp_path / "n1")
    storage = DiskStorage(data_dir, "test", 1, "multipaxos", OPTIONS)
    storage.load()
    storage.save(Ready(entries=[config_entry(1, BALLOT, CONFIG)]))
    for i in range(2, 31):
        storage.save(Ready(hard_state=HardState(BALLOT, 0, i - 1), entries=[entry(i, BALLOT)]))
    storage.save(Ready(entries=[entry(i, BALLOT) for i in range(36, 41)]))
    storage.save_snapshot(SnapshotMeta(10, BALLOT, CONFIG), [("kv", [b"ten"])], {"sessions": 1})
    storage.save_snapshot(SnapshotMeta(20, BALLOT, CONFIG), [("kv", [b"twenty" * 100])], None)
    storage.compact(20)
    storage.close()
    return data_dir


def test_verify_reports_a_healthy_multipaxos_dir_with_its_holes(paxos_dir, capsys):
    """Holes are listed with their slots; a healthy directory exits 0."""
    status, out = run(["log", "verify", "--data-dir", paxos_dir, "--json"], capsys)
    report = json.loads(out)
    assert status == 0 and report["ok"]
    assert report["holes"] == [[31, 35]]
    assert report["meta"]["protocol"] == "multipaxos"
    assert report["last_index"] == 40
    assert [s["ok"] for s in report["snapshots"]] == [True, True]
    status, out = run(["log", "verify", "--data-dir", paxos_dir], capsys)
    assert status == 0 and out.rstrip().endswith("OK") and "31-35" in out


def test_dump_lists_entries_in_a_range_as_text_and_json(paxos_dir, capsys):
    """--from/--to select entries; --json prints one object per line."""
    status, out = run(["log", "dump", "--data-dir", paxos_dir, "--from", "25", "--to", "37"], capsys)
    assert status == 0
    indexes = [int(line.split("index=")[1].split()[0]) for line in out.splitlines() if "entry " in line]
    assert indexes == [25, 26, 27, 28, 29, 30, 36, 37]
    assert "command-25" in out
    assert "term=5 ballot=5.1" in out and str(BALLOT) not in out
    status, out = run(["log", "dump", "--data-dir", paxos_dir, "--json"], capsys)
    rows = [json.loads(line) for line in out.splitlines()]
    assert status == 0
    entries = [r for r in rows if r["type"] == "entry"]
    assert entries[0]["kind"] == "config"
    assert {"type": "snapshot", "index": 10, "term": 5, "ballot": "5.1"}.items() \
        <= rows[-1].items()
    assert all(r["term"] == 5 for r in rows if "term" in r)
    assert any(r["type"] == "hardstate" and r["commit"] == 29 for r in rows)


def test_verify_and_dump_fail_on_a_corrupted_dir(paxos_dir, capsys):
    """A flipped bit in a fsynced record: both commands exit 1 and name file and offset."""
    seq, path = list_segments(os.path.join(paxos_dir, "wal"))[-1]
    with open(path, "r+b") as f:
        f.seek(200)
        byte = f.read(1)[0]
        f.seek(200)
        f.write(bytes((byte ^ 0x01,)))
    status, out = run(["log", "verify", "--data-dir", paxos_dir], capsys)
    assert status == 1
    assert "CORRUPT" in out and path in out and "FAILED" in out
    status, out = run(["log", "dump", "--data-dir", paxos_dir], capsys)
    assert status == 1 and "# CORRUPT" in out


def test_verify_reports_a_torn_tail_as_a_warning(tmp_path, capsys):
    """A crash mid-append is not corruption: reported, exit 0."""
    data_dir = str(tmp_path / "n1")
    storage = DiskStorage(data_dir, "test", 1, "raft", OPTIONS)
    storage.load()
    for i in range(1, 6):
        storage.save(Ready(entries=[entry(i)]))
    (_, path), = list_segments(os.path.join(data_dir, "wal"))
    storage.close()
    os.truncate(unpreallocated(path), written_end(path) - 20)  # the seal and the last entry
    status, out = run(["log", "verify", "--data-dir", data_dir], capsys)
    assert status == 0 and "torn tail" in out


def test_verify_finds_a_gap_in_a_raft_log(tmp_path, capsys):
    """Raft logs must be contiguous: a missing index is an error, unlike a Paxos hole."""
    data_dir = str(tmp_path / "n1")
    storage = DiskStorage(data_dir, "test", 1, "raft", OPTIONS)
    storage.load()
    storage.save(Ready(entries=[entry(1), entry(2), entry(4)]))
    storage.close()
    status, out = run(["log", "verify", "--data-dir", data_dir], capsys)
    assert status == 1 and "not contiguous" in out and "missing 3" in out


def test_verify_flags_a_corrupt_snapshot_as_a_warning(paxos_dir, capsys):
    """A damaged newest snapshot is a warning when an older one and the log can replace it."""
    snap_dir = os.path.join(paxos_dir, "snap")
    newest = sorted(os.listdir(snap_dir))[-1]
    os.truncate(os.path.join(snap_dir, newest), 30)
    status, out = run(["log", "verify", "--data-dir", paxos_dir], capsys)
    assert status == 0 and "falls back" in out and "CORRUPT (" in out


def test_verify_flags_a_missing_middle_segment(tmp_path, capsys):
    """A deleted middle segment is an error naming the missing range."""
    data_dir = str(tmp_path / "n1")
    storage = DiskStorage(data_dir, "test", 1, "raft", OPTIONS)
    storage.load()
    for i in range(1, 200):
        storage.save(Ready(entries=[Entry(i, 1, ENTRY_NORMAL, (b"p" * 100,))]))
    storage.close()
    segments = list_segments(os.path.join(data_dir, "wal"))
    assert len(segments) >= 3
    os.unlink(segments[1][1])
    status, out = run(["log", "verify", "--data-dir", data_dir], capsys)
    assert status == 1 and "segments 2..2 are missing" in out


def test_inspection_of_a_running_node_takes_no_lock_and_writes_nothing(tmp_path, capsys):
    """verify and dump run next to a live writer and leave every file untouched."""
    data_dir = str(tmp_path / "n1")
    storage = DiskStorage(data_dir, "test", 1, "raft", OPTIONS)
    storage.load()
    for i in range(1, 50):
        storage.save(Ready(hard_state=HardState(1, 1, i), entries=[entry(i)]))
    snapshot = {}
    for root, _, names in os.walk(data_dir):
        for name in names:
            path = os.path.join(root, name)
            snapshot[path] = (os.path.getsize(path), os.stat(path).st_mtime_ns)
    assert run(["log", "verify", "--data-dir", data_dir], capsys)[0] == 0
    assert run(["log", "dump", "--data-dir", data_dir, "--json"], capsys)[0] == 0
    after = {}
    for root, _, names in os.walk(data_dir):
        for name in names:
            path = os.path.join(root, name)
            after[path] = (os.path.getsize(path), os.stat(path).st_mtime_ns)
    assert after == snapshot
    storage.save(Ready(entries=[entry(50)]))       # the writer was never blocked
    storage.close()


def test_snapshot_inspect_reports_metadata_sizes_ratio_and_checksum(paxos_dir, capsys):
    """Healthy snapshot: metadata, per-state-machine sizes, ratio, checksum; damaged: exit 1."""
    snap_dir = os.path.join(paxos_dir, "snap")
    path = os.path.join(snap_dir, sorted(os.listdir(snap_dir))[-1])
    status, out = run(["snapshot", "inspect", path, "--json"], capsys)
    report = json.loads(out)
    assert status == 0 and report["index"] == 20 and report["term"] == 5
    assert report["ballot"] == "5.1"
    assert report["state_machines"] == {"kv": 600}
    assert report["compression_ratio"] > 1 and len(report["zstd_content_checksum"]) == 8
    assert report["config"] == "voters=1,2,3"
    status, out = run(["snapshot", "inspect", path], capsys)
    assert status == 0 and "kv: 600 bytes" in out and "verified" in out
    covers = next(line for line in out.splitlines() if line.startswith("covers"))
    assert covers.split()[1:] == ["index", "20", "term", "5", "(ballot", "5.1)"]
    with open(path, "r+b") as f:
        f.seek(-6, os.SEEK_END)
        f.write(b"\x00")
    status, out = run(["snapshot", "inspect", path], capsys)
    assert status == 1 and "CORRUPT" in out


def test_missing_inputs_exit_2(tmp_path, capsys):
    """A wrong path is a usage error (2), distinct from corruption (1)."""
    assert run(["log", "verify", "--data-dir", str(tmp_path / "nope")], capsys)[0] == 2
    assert run(["log", "dump", "--data-dir", str(tmp_path / "nope")], capsys)[0] == 2
    assert run(["snapshot", "inspect", str(tmp_path / "x.snap.zst")], capsys)[0] == 2
