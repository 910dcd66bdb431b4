"""``paxoslog log export --sqlite``: the design's five tables exactly (column names, types,
constraints), from a live node's data directory in both modes (snapshots and compaction
included), the example queries of docs/operating.md, Multi-Paxos holes and no-op fills and
ballot rounds on a hand-made log, a torn WAL tail (left out and reported), and the bad
cases: corruption, an existing output file, a missing directory, a newer data format."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys

import pytest

from paxoslog.core.ballot import Ballot
from paxoslog.core.log import ENTRY_NOOP, ENTRY_NORMAL, Entry, HardState
from paxoslog.core.ready import Ready
from paxoslog.node.commands import encode_command
from paxoslog.storage import DiskStorage
from paxoslog.storage.meta import FORMAT_VERSION, Meta, write_meta
from paxoslog_integration import ROOT, wait_for

SCHEMA = {
    "raft_state": [("node_id", "TEXT", 0, 1), ("current_term", "INTEGER", 1, 0),
                   ("voted_for", "TEXT", 0, 0), ("last_updated", "TIMESTAMP", 0, 0)],
    "log_entries": [("log_index", "INTEGER", 0, 1), ("term", "INTEGER", 1, 0),
                    ("command_type", "TEXT", 0, 0), ("command_data", "BLOB", 0, 0),
                    ("timestamp", "TIMESTAMP", 0, 0)],
    "snapshots": [("id", "INTEGER", 0, 1), ("last_included_index", "INTEGER", 1, 0),
                  ("last_included_term", "INTEGER", 1, 0), ("snapshot_data", "BLOB", 0, 0),
                  ("created_at", "TIMESTAMP", 0, 0)],
    "cluster_members": [("node_id", "TEXT", 0, 1), ("address", "TEXT", 1, 0),
                        ("status", "TEXT", 0, 0), ("added_at_index", "INTEGER", 0, 0),
                        ("removed_at_index", "INTEGER", 0, 0)],
    "kv_store": [("key_name", "TEXT", 0, 1), ("value_data", "BLOB", 0, 0),
                 ("last_modified_index", "INTEGER", 0, 0),
                 ("last_modified_term", "INTEGER", 0, 0), ("created_at", "TIMESTAMP", 0, 0),
                 ("updated_at", "TIMESTAMP", 0, 0)],
}


def paxoslog(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "paxoslog.cli", *args], capture_output=True,
                          text=True, cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT),
                          timeout=timeout)


def export(data_dir, out, *extra) -> subprocess.CompletedProcess:
    return paxoslog("log", "export", "--sqlite", str(out), "--data-dir", str(data_dir), *extra)


def commit_on_disk(data_dir) -> int:
    """The commit point in a node's WAL as ``log verify`` reads it (read-only)."""
    verify = paxoslog("log", "verify", "--data-dir", str(data_dir), "--json",
                      "--skip-snapshots")
    return json.loads(verify.stdout)["hard_state"]["commit"]


def _info(db) -> dict:
    return dict(db.execute("SELECT name, value FROM export_info"))


def test_live_node_export_has_the_design_schema_and_the_state(make_cluster, protocol,
                                                              tmp_path):
    """A running node's directory (snapshots taken, log compacted) exports the five tables
    with the designed columns; kv_store matches the cluster; the documented queries run."""
    c = make_cluster(protocol, extra="[snapshot]\nentries = 40\nkeep = 2\n")
    for i in range(150):
        c.write(f"key{i:03}", {"n": i} if i % 2 else f"v{i}")
    c.write("key000", "rewritten")
    _, deleted = c.write("key001", None, op="delete")
    assert deleted["result"]["deleted"] is True
    follower = next(n for n in c.ids if n != c.wait_leader())
    leader_index = c.status(c.wait_leader())["commit_index"]
    data_dir = c.tmp_path / "data" / str(follower)
    wait_for(lambda: commit_on_disk(data_dir) >= leader_index, 15,
             what="the follower's commit point to reach its WAL")
    out = tmp_path / "node.db"
    done = export(data_dir, out, "--json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["protocol"] == protocol and summary["node_id"] == follower
    db = sqlite3.connect(out)
    for table, columns in SCHEMA.items():
        got = [(r[1], r[2], r[3], r[5]) for r in db.execute(f"PRAGMA table_info({table})")]
        assert got == columns, table
    assert "CHECK (status IN ('active','leaving','removed'))" in db.execute(
        "SELECT sql FROM sqlite_master WHERE name = 'cluster_members'").fetchone()[0]
    assert db.execute("SELECT name FROM sqlite_master WHERE type = 'index' "
                      "AND tbl_name = 'log_entries'").fetchone() == ("log_entries_term",)

    node_id, term, voted, updated = db.execute("SELECT * FROM raft_state").fetchone()
    assert node_id == str(follower) and term == c.status(follower)["term"] and updated
    keys = dict(db.execute("SELECT key_name, value_data FROM kv_store"))
    assert len(keys) == 149 and "key001" not in keys
    assert json.loads(keys["key000"]) == "rewritten" and json.loads(keys["key003"]) == {"n": 3}
    exported = int(_info(db)["exported_index"])
    snaps = db.execute("SELECT last_included_index, snapshot_data FROM snapshots").fetchall()
    assert snaps and all(json.loads(data)["verified"] for _, data in snaps)
    assert json.loads(snaps[-1][1])["bytes"] > 0
    assert int(_info(db)["snapshot_index"]) == max(i for i, _ in snaps) > 0
    members = db.execute("SELECT node_id, status FROM cluster_members ORDER BY node_id")
    assert members.fetchall() == [("1", "active"), ("2", "active"), ("3", "active")]
    types = dict(db.execute("SELECT command_type, count(*) FROM log_entries "
                            "GROUP BY command_type"))
    assert types.get("kv.put", 0) > 0
    if protocol == "raft" and int(_info(db)["first_log_index"]) == 1:
        assert types.get("noop", 0) >= 1              # the leader's first entry
    # The documented queries (docs/operating.md) run as written.
    latest = db.execute("SELECT key_name, last_modified_index FROM kv_store "
                        "ORDER BY last_modified_index DESC LIMIT 5").fetchall()
    assert latest[0][1] <= exported
    db.execute("SELECT log_index, term, command_type FROM log_entries "
               "WHERE command_type IN ('hole', 'noop-fill', 'noop') ORDER BY log_index")
    row = db.execute("SELECT json_extract(command_data, '$[0].key'), timestamp "
                     "FROM log_entries WHERE command_type LIKE 'kv.put%' "
                     "ORDER BY log_index DESC LIMIT 1").fetchone()
    assert row[0].startswith("key") and row[1].startswith("20")
    assert db.execute("SELECT term, count(*) FROM log_entries GROUP BY term").fetchall()
    db.close()
    assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p]


def _crafted_paxos(tmp_path) -> str:
    """Node 1 of a Multi-Paxos cluster with: puts at 1-3, a no-op fill at 4, a hole at 5,
    a put at 6 accepted at a later ballot; chosen watermark 4."""
    data_dir = str(tmp_path / "crafted")
    b1, b2 = Ballot(1, 2).pack(), Ballot(4, 3).pack()

    def put(index, ballot, key):
        return Entry(index, ballot, ENTRY_NORMAL, (encode_command(
            "kv", {"op": "put", "key": key, "value": index}, "c", index,
            1_700_000_000_000 + index),))
    entries = [put(1, b1, "a"), put(2, b1, "b"), put(3, b1, "c"),
               Entry(4, b2, ENTRY_NOOP, ()), put(6, b2, "f")]
    storage = DiskStorage(data_dir, "crafted", 1, "multipaxos")
    storage.load()
    storage.save(Ready(hard_state=HardState(b2, 0, 4), entries=entries))
    storage.close()
    return data_dir


def test_multipaxos_holes_no_op_fills_and_ballot_rounds(tmp_path):
    """Holes and no-op fills are marked in command_type, terms are ballot rounds, and only
    the chosen prefix is applied to kv_store."""
    data_dir = _crafted_paxos(tmp_path)
    out = tmp_path / "paxos.db"
    done = export(data_dir, out)
    assert done.returncode == 0, done.stderr
    db = sqlite3.connect(out)
    rows = db.execute("SELECT log_index, term, command_type, command_data IS NULL "
                      "FROM log_entries ORDER BY log_index").fetchall()
    assert rows == [(1, 1, "kv.put", 0), (2, 1, "kv.put", 0), (3, 1, "kv.put", 0),
                    (4, 4, "noop-fill", 1), (5, 0, "hole", 1), (6, 4, "kv.put", 0)]
    assert db.execute("SELECT current_term, voted_for FROM raft_state").fetchone() == (4, "3")
    assert sorted(k for (k,) in db.execute("SELECT key_name FROM kv_store")) == ["a", "b", "c"]
    info = _info(db)
    assert info["exported_index"] == "4" and info["holes"] == "1"
    assert "ballot round" in info["term_mapping"]
    assert db.execute("SELECT created_at FROM kv_store WHERE key_name = 'a'").fetchone()[0] \
        .startswith("2023-11-14")
    db.close()


def test_torn_wal_tail_is_left_out_and_reported(make_cluster, tmp_path):
    """A data directory whose last segment ends in half a record exports everything before
    it and says where the torn tail is."""
    c = make_cluster("raft")
    for i in range(20):
        c.write(f"t{i}", i)
    commit = c.status(c.wait_leader())["commit_index"]
    wait_for(lambda: commit_on_disk(c.tmp_path / "data" / "3") >= commit, 15,
             what="node 3 to know every write committed")
    c.stop(3)
    copy = tmp_path / "torn"
    shutil.copytree(c.tmp_path / "data" / "3", copy)
    segment = sorted((copy / "wal").iterdir())[-1]
    clean = export(copy, tmp_path / "clean.db", "--json")
    assert clean.returncode == 0, clean.stderr
    with open(segment, "ab") as f:             # a record header promising more than follows
        f.write(b"\x00\x10\x00\x00" + b"\xaa\xbb\xcc\xdd" + b"\x02" + b"\x81" * 7)
    torn = export(copy, tmp_path / "torn.db", "--json")
    assert torn.returncode == 0, torn.stderr
    assert "torn tail" in torn.stderr or json.loads(torn.stdout)["torn_tail"]
    summary = json.loads(torn.stdout)
    assert str(segment) in summary["torn_tail"]
    assert summary["keys"] == json.loads(clean.stdout)["keys"] == 20, (summary, clean.stdout)
    db = sqlite3.connect(tmp_path / "torn.db")
    assert db.execute("SELECT count(*) FROM kv_store").fetchone() == (20,)
    db.close()


def test_export_refuses_corruption_existing_output_and_newer_formats(tmp_path):
    """Corruption names the file and offset (exit 1, nothing written); an existing OUT.db
    needs --force; no directory: exit 2; a newer data format: refused."""
    data_dir = _crafted_paxos(tmp_path)
    out = tmp_path / "out.db"
    out.write_text("keep")
    exists = export(data_dir, out)
    assert exists.returncode == 2 and "exists" in exists.stderr and out.read_text() == "keep"
    assert export(data_dir, out, "--force").returncode == 0
    assert sqlite3.connect(out).execute("SELECT count(*) FROM log_entries").fetchone() == (6,)

    missing = export(tmp_path / "nope", tmp_path / "x.db")
    assert missing.returncode == 2 and "no such data directory" in missing.stderr

    broken = tmp_path / "broken"
    shutil.copytree(data_dir, broken)
    segment = sorted((broken / "wal").iterdir())[-1]
    data = bytearray(segment.read_bytes())
    data[60] ^= 0xFF                           # inside the entries record: a bad checksum
    segment.write_bytes(bytes(data) + b"")
    # Seal the damage inside a fsynced batch: a later SYNC record proves it was durable.
    from paxoslog.storage.walscan import REC_SYNC, encode_record
    with open(segment, "ab") as f:
        f.write(encode_record(REC_SYNC, len(data)))
    corrupt = export(broken, tmp_path / "corrupt.db")
    assert corrupt.returncode == 1, corrupt.stderr
    assert f"{segment}: corrupt record at offset" in corrupt.stderr
    assert not (tmp_path / "corrupt.db").exists()
    assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p]

    write_meta(os.path.join(data_dir, "META"), Meta("crafted", 1, "multipaxos",
                                                    FORMAT_VERSION + 1))
    newer = export(data_dir, tmp_path / "newer.db")
    assert newer.returncode == 1 and "written by a newer release" in newer.stderr
