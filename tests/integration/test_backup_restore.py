"""Backup and restore on real clusters, both protocols: ``paxoslog snapshot save`` from a
running cluster under a concurrent writer, ``paxoslog snapshot restore`` into the data
directories of a new cluster, the new cluster's state hashes equal to the old one's at the
backup's index, exactly-once sessions carried over, and the bad cases: a corrupt or a
truncated backup, a target that holds data, the other protocol, no node to serve it, an
existing output file."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
import time

import cbor2
import pytest

from paxoslog.storage.snapshot import SnapshotReader
from statemachines.kv import KVStateMachine
from paxoslog_integration import ROOT, reserve_ports, wait_for

ENABLE = '\n[state_machines]\nenabled = ["kv", "counter"]\n'


def paxoslog(*args: str, timeout: float = 120, env: dict | None = None):
    """The CLI; ``env``: a harness's ``client_env()`` when it talks to its API (the CA)."""
    return subprocess.run([sys.executable, "-m", "paxoslog.cli", *args], capture_output=True,
                          text=True, cwd=ROOT, env=env or dict(os.environ, PYTHONPATH=ROOT),
                          timeout=timeout)


def _counter_add(c, node, name, delta, client_id, sequence):
    return c.request(node, "POST", "/api/v1/sm/counter",
                     {"op": "add", "name": name, "delta": delta, "client_id": client_id,
                      "sequence": sequence}, timeout=10)


def _hashes_at_one_index(c, nodes):
    def same():
        views = [c.request(n, "GET", "/api/v1/cluster/status?hashes=1").body for n in nodes]
        return views if len({v["applied_index"] for v in views}) == 1 else None
    return wait_for(same, 20, what="the replicas to agree on one applied index")


def _file_hashes(path: str) -> tuple[int, dict]:
    """(index, {state machine: blake2b of its bytes, "~sessions": ...}) of a backup, as
    GET /api/v1/cluster/status?hashes=1 digests them."""
    with SnapshotReader(path) as reader:
        index = reader.meta.index
        sessions = reader.sessions
        states = reader.read_all()
    out = {name: hashlib.blake2b(data, digest_size=16).hexdigest()
           for name, data in states.items()}
    out["~sessions"] = hashlib.blake2b(cbor2.dumps(sessions), digest_size=16).hexdigest()
    return index, out


def test_backup_of_a_live_cluster_restores_into_a_new_cluster_with_equal_state(
        make_cluster, protocol, tmp_path):
    """A backup taken while a writer runs holds every write acknowledged before ``save``
    started; a backup of the quiet cluster has its exact digests, and the cluster restored
    from it starts at that index with the same kv and counter digests, answers old
    retries from the carried-over session table, and takes new writes."""
    old = make_cluster(protocol, extra=ENABLE)
    for i in range(40):
        old.write(f"k{i:03}", {"n": i, "tag": "before"})
    firsts = {}
    for seq in range(1, 6):
        firsts[seq] = _counter_add(old, old.ids[0], "hits", seq, "client-A", seq).body
    acked: list[tuple[str, float]] = []
    stop = threading.Event()

    def writer():
        i = 0
        while not stop.is_set():
            key = f"live{i:04}"
            try:
                old.write(key, i, timeout=5, nodes=[old.ids[-1]])
            except AssertionError:
                continue
            acked.append((key, time.monotonic()))
            i += 1
    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    wait_for(lambda: len(acked) >= 5, 20, what="the writer to get going")
    leader = old.wait_leader()
    follower = next(n for n in old.ids if n != leader)
    live = tmp_path / "live.snap.zst"
    save_started = time.monotonic()
    saved = paxoslog("snapshot", "save", "--endpoints", old.url(follower), str(live),
                     "--json", env=old.client_env())
    more = len(acked)
    wait_for(lambda: len(acked) > more + 3, 20, what="writes after the backup")
    stop.set()
    thread.join(30)
    assert saved.returncode == 0, saved.stderr
    summary = json.loads(saved.stdout)
    assert summary["node"] == follower and summary["protocol"] == protocol
    assert summary["read_index"] <= summary["index"]
    kv = KVStateMachine()
    with SnapshotReader(str(live)) as reader:
        kv.restore(reader.read_all()["kv"])
    before = [key for key, at in acked if at < save_started]
    assert before and all(kv.get(key) is not None for key in before)

    # The quiet cluster: the backup's digests are the cluster's at that index.
    backup = tmp_path / "quiet.snap.zst"
    saved = paxoslog("snapshot", "save", "--endpoints", old.url(leader), str(backup),
                     "--json", env=old.client_env())
    assert saved.returncode == 0, saved.stderr
    index = json.loads(saved.stdout)["index"]
    inspect = paxoslog("snapshot", "inspect", str(backup), "--json")
    assert inspect.returncode == 0 and json.loads(inspect.stdout)["backup"]["node"] == leader
    file_index, file_hashes = _file_hashes(str(backup))
    views = _hashes_at_one_index(old, old.ids)
    assert file_index == index == views[0]["applied_index"]
    assert views[0]["state_hashes"] == file_hashes

    new = make_cluster(protocol, start=False, extra=ENABLE)
    restored = paxoslog("snapshot", "restore", str(backup), "--config", new.conf_path,
                        "--json")
    assert restored.returncode == 0, restored.stderr
    result = json.loads(restored.stdout)
    assert result["index"] == index and sorted(result["data_dirs"]) == ["1", "2", "3"]
    new.start_all()
    new_leader = new.wait_leader()
    assert new.status(new_leader)["applied_index"] >= index
    views = _hashes_at_one_index(new, new.ids)
    for name in ("kv", "counter"):
        assert {v["state_hashes"][name] for v in views} == {file_hashes[name]}, name
    assert new.get(new_leader, "k039").body["value"] == {"n": 39, "tag": "before"}
    # Exactly-once survives the restore: an old retry gets its first answer.
    again = _counter_add(new, new.ids[1], "hits", 3, "client-A", 3)
    assert again.status == 200 and again.body["index"] == firsts[3]["index"]
    # The new cluster takes writes after the backup's index, and is a cluster of its own.
    _, body = new.write("after-restore", 1)
    assert body["index"] > index
    members = new.request(new_leader, "GET", "/api/v1/cluster/members").body
    assert members["origin"].startswith("r-") and members["bootstrap_voters"] == [1, 2, 3]


def test_restore_refuses_damaged_backups_and_busy_targets_writing_nothing(
        make_cluster, tmp_path):
    """A corrupt or truncated file, a target holding data, or the other protocol: a clear
    error, and no data directory (nor a temporary one) is left behind."""
    old = make_cluster("raft", extra=ENABLE)
    for i in range(20):
        old.write(f"k{i}", "x" * 200)
    backup = tmp_path / "good.snap.zst"
    saved = paxoslog("snapshot", "save", "--endpoints", old.url(old.ids[0]), str(backup),
                     env=old.client_env())
    assert saved.returncode == 0, saved.stderr
    assert "sha256 " in saved.stdout
    data = backup.read_bytes()

    new = make_cluster("raft", start=False, extra=ENABLE)
    data_root = new.tmp_path / "data"

    def nothing_written():
        return not data_root.exists() or not any(data_root.iterdir())

    corrupt = tmp_path / "corrupt.snap.zst"
    corrupt.write_bytes(data[:len(data) // 2] + bytes([data[len(data) // 2] ^ 0x40])
                        + data[len(data) // 2 + 1:])
    out = paxoslog("snapshot", "restore", str(corrupt), "--config", new.conf_path)
    assert out.returncode == 1 and "refusing to restore" in out.stderr, out.stderr
    assert "corrupt snapshot" in out.stderr and "nothing was written" in out.stderr
    assert nothing_written()

    truncated = tmp_path / "truncated.snap.zst"
    truncated.write_bytes(data[:-100])
    out = paxoslog("snapshot", "restore", str(truncated), "--config", new.conf_path)
    assert out.returncode == 1 and "truncated" in out.stderr, out.stderr
    assert nothing_written()

    missing = paxoslog("snapshot", "restore", str(tmp_path / "nope"), "--config",
                       new.conf_path)
    assert missing.returncode == 2 and "no such file" in missing.stderr

    # A target that holds data: refused before anything is written anywhere.
    busy = data_root / "2"
    busy.mkdir(parents=True)
    (busy / "precious").write_text("keep me")
    out = paxoslog("snapshot", "restore", str(backup), "--config", new.conf_path)
    assert out.returncode == 1 and f"node 2: {busy}" in out.stderr, out.stderr
    assert sorted(p.name for p in data_root.iterdir()) == ["2"]
    assert (busy / "precious").read_text() == "keep me"

    # Restoring only the other nodes works (each host restores its own).
    out = paxoslog("snapshot", "restore", str(backup), "--config", new.conf_path,
                   "--node", "1", "--node", "3")
    assert out.returncode == 0, out.stderr
    assert sorted(p.name for p in data_root.iterdir()) == ["1", "2", "3"]

    # The other protocol: refused, naming both.
    paxos = make_cluster("multipaxos", start=False)
    out = paxoslog("snapshot", "restore", str(backup), "--config", paxos.conf_path)
    assert out.returncode == 2 and "backup of a raft cluster" in out.stderr
    assert not (paxos.tmp_path / "data").exists()


def test_save_refuses_existing_files_and_says_when_nobody_serves(running_raft, tmp_path):
    """An existing FILE is kept (exit 2) unless --force; HEAD is refused; no reachable node:
    exit 4, and no partial file is left."""
    target = tmp_path / "exists.snap.zst"
    target.write_text("old")
    out = paxoslog("snapshot", "save", "--endpoints", running_raft.url(1), str(target),
                   env=running_raft.client_env())
    assert out.returncode == 2 and "exists" in out.stderr and target.read_text() == "old"
    forced = paxoslog("snapshot", "save", "--endpoints", running_raft.url(1), str(target),
                      "--force", "--json", env=running_raft.client_env())
    assert forced.returncode == 0, forced.stderr
    assert json.loads(forced.stdout)["file"] == str(target)
    head = running_raft.request(1, "HEAD", "/api/v1/snapshot")
    assert head.status == 405                       # a HEAD never takes a whole backup
    [port] = reserve_ports(1)
    down = paxoslog("snapshot", "save", "--endpoints", f"http://127.0.0.1:{port}",
                    str(tmp_path / "none.snap.zst"), "--timeout", "2")
    assert down.returncode == 4 and "no node served a backup" in down.stderr
    assert not (tmp_path / "none.snap.zst").exists()
    assert not [p for p in os.listdir(tmp_path) if ".part-" in p]


@pytest.fixture
def running_raft(make_cluster):
    c = make_cluster("raft")
    c.write("a", 1)
    return c


def _crafted_backup(path, index: int, hits: int) -> None:
    """A backup file of a raft cluster at ``index`` whose kv holds ``hits``."""
    from paxoslog.core.log import SnapshotMeta
    from paxoslog.core.quorum import Config
    from paxoslog.storage.snapshot import encode_snapshot_bytes
    kv = KVStateMachine()
    kv.apply(index, {"op": "put", "key": "hits", "value": hits})
    meta = SnapshotMeta(index, 1, Config(frozenset({1, 2, 3})))
    with open(path, "wb") as f:
        f.write(encode_snapshot_bytes(meta, [("kv", [kv.snapshot()])]))


def test_restore_reads_one_backup_even_when_another_is_renamed_over_it(
        make_cluster, tmp_path, monkeypatch):
    """Restore read the backup's path again for each node: a file renamed over it meanwhile
    (a nightly ``snapshot save --force``) gave the nodes different states under one index,
    and the replicas disagreed without an error (found by a review).  It reads one open
    file now, and refuses a backup whose state machine the conf does not enable."""
    from paxoslog.config import load_config
    from paxoslog.operate import restore
    latest, newer = tmp_path / "latest.snap.zst", tmp_path / "newer.snap.zst"
    _crafted_backup(latest, 21, 1)
    _crafted_backup(newer, 22, 41)
    new = make_cluster("raft", start=False)
    config = load_config(new.conf_path)
    build = restore._build

    def build_then_swap(directory, backup, *args):
        build(directory, backup, *args)
        if newer.exists():
            os.replace(newer, latest)          # after the first node was built
    monkeypatch.setattr(restore, "_build", build_then_swap)
    result = restore.restore_cluster(str(latest), config, quiet=True, out=lambda line: None)
    assert not newer.exists() and len(result.data_dirs) == 3
    seen = set()
    for directory in result.data_dirs.values():
        snaps = sorted(os.path.join(directory, "snap", name)
                       for name in os.listdir(os.path.join(directory, "snap")))
        with SnapshotReader(snaps[-1]) as reader:
            kv = KVStateMachine()
            kv.restore(reader.read_all()["kv"])
            seen.add((reader.meta.index, kv.get("hits")["value"]))
    assert seen == {(21, 1)}

    counter = tmp_path / "counter.snap.zst"
    from paxoslog.core.log import SnapshotMeta
    from paxoslog.core.quorum import Config
    from paxoslog.storage.snapshot import encode_snapshot_bytes
    with open(counter, "wb") as f:
        f.write(encode_snapshot_bytes(SnapshotMeta(5, 1, Config(frozenset({1, 2, 3}))),
                                      [("kv", [KVStateMachine().snapshot()]),
                                       ("counter", [b"\xa0"])]))
    other = make_cluster("raft", start=False)
    out = paxoslog("snapshot", "restore", str(counter), "--config", other.conf_path)
    assert out.returncode == 2, out.stderr
    assert "counter" in out.stderr and "does not enable" in out.stderr, out.stderr
    assert not (other.tmp_path / "data").exists()
