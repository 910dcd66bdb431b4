"""Disaster recovery on real clusters, both protocols: two of three nodes killed for good,
``paxoslog recover --force-new-cluster`` refused while the survivor runs, then turning it
into a one-node cluster that keeps every entry, takes writes, and grows again with
``serve --join`` (a wiped node rejoins; a node with the old cluster's data is refused at the
handshake).  On hand-made data directories: the report of what may have been lost (Raft:
entries above the commit index; Multi-Paxos: accepted slots above the chosen watermark and
the holes among them), and that the recovered node keeps those entries."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from paxoslog.core.ballot import Ballot
from paxoslog.core.log import Entry, HardState, ENTRY_NORMAL
from paxoslog.core.ready import Ready
from paxoslog.node.commands import encode_command
from paxoslog.storage import DiskStorage
from paxoslog_integration import ROOT, ClusterHarness, wait_for


def paxoslog(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "paxoslog.cli", *args], capture_output=True,
                          text=True, cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT),
                          timeout=timeout)


def test_survivor_of_a_lost_majority_becomes_a_cluster_that_grows_again(make_cluster,
                                                                          protocol):
    """Kill two of three; recover is refused next to the live survivor; after it stops,
    the dry run changes nothing, --force-new-cluster makes it a one-node cluster with
    every key; a wiped node rejoins with --join, a new node joins too (three voters
    again); a node that comes back with the old cluster's data is refused."""
    c = make_cluster(protocol)
    for i in range(30):
        c.write(f"k{i}", i)
    leader = c.wait_leader()
    survivor = next(n for n in c.ids if n != leader)
    wait_for(lambda: c.status(survivor)["applied_index"] >= c.status(leader)["applied_index"],
             10, what="the survivor to catch up")
    lost = [n for n in c.ids if n != survivor]
    for node in lost:
        c.kill(node)
    data_dir = str(c.tmp_path / "data" / str(survivor))

    busy = paxoslog("recover", "--config", c.conf_path, "--node", str(survivor),
                    "--force-new-cluster")
    assert busy.returncode == 1, busy
    assert "in use by a running node (pid" in busy.stderr and "nothing was changed" in busy.stderr
    c.kill(survivor)

    meta_before = open(os.path.join(data_dir, "META"), "rb").read()
    dry = paxoslog("recover", "--config", c.conf_path, "--node", str(survivor), "--json")
    assert dry.returncode == 0, dry.stderr
    assert json.loads(dry.stdout)["done"] is False
    assert open(os.path.join(data_dir, "META"), "rb").read() == meta_before
    assert not [p for p in os.listdir(c.tmp_path / "data") if "before-recover" in p]

    done = paxoslog("recover", "--config", c.conf_path, "--node", str(survivor),
                    "--force-new-cluster")
    assert done.returncode == 0, done.stderr
    assert "DONE" in done.stdout and "ONE-node cluster" in done.stderr
    kept = [p for p in os.listdir(c.tmp_path / "data") if p.startswith(f"{survivor}.before-")]
    assert len(kept) == 1

    c.start(survivor)
    assert c.wait_leader(among=[survivor]) == survivor
    status = c.status(survivor)
    assert status["cluster_size"] == 1 and status["config"] == f"voters={survivor}"
    for i in range(30):
        assert c.get(survivor, f"k{i}").body["value"] == i
    c.write("after-recovery", "yes", nodes=[survivor])

    # A wiped node rejoins as a new member; the other keeps its old data and is refused.
    rejoin, stale = lost
    shutil.rmtree(c.tmp_path / "data" / str(rejoin))
    c.start(rejoin, join=survivor)
    wait_for(lambda: (c.status(rejoin) or {}).get("role") == "follower", 30,
             what=f"node {rejoin} to join and be promoted")
    wait_for(lambda: c.get(rejoin, "after-recovery", consistency="stale").status == 200, 15,
             what="the rejoined node to catch up")
    c.start(stale)
    wait_for(lambda: "bootstrap voters or log origin differ" in open(c.log_path(stale)).read(),
             20, what="the old node to be refused at the handshake")
    # A brand-new node (a new id) joins too: three voters again.
    c.new_node(4)
    c.start(4, join=rejoin)
    wait_for(lambda: sorted(c.request(survivor, "GET", "/api/v1/cluster/members")
                            .body["applied_config"]["voters"]) == sorted([survivor, rejoin, 4]),
             30, what="node 4 to become a voter")
    members = c.request(survivor, "GET", "/api/v1/cluster/members").body
    assert members["origin"].startswith("x-")
    c.write("grown", 2, nodes=[survivor, rejoin, 4])
    assert c.get(4, "k29", consistency="linearizable").body["value"] == 29


def _put(index: int, term: int, key: str, value) -> Entry:
    command = encode_command("kv", {"op": "put", "key": key, "value": value}, "crafted",
                             index, 1_700_000_000_000 + index)
    return Entry(index, term, ENTRY_NORMAL, (command,))


@pytest.fixture
def crafted(tmp_path):
    """Factory: a conf and node 1's data directory written by hand (closed afterwards)."""
    made = []

    def make(protocol: str, entries: list[Entry], commit: int, term: int) -> ClusterHarness:
        harness = _crafted(tmp_path, protocol, entries, commit, term)
        made.append(harness)
        return harness
    yield make
    for harness in made:
        harness.close()


def _crafted(tmp_path, protocol: str, entries: list[Entry], commit: int, term: int):
    harness = ClusterHarness(tmp_path, protocol, size=3)
    storage = DiskStorage(str(tmp_path / "data" / "1"), f"it-{protocol}", 1, protocol)
    storage.load()
    storage.save(Ready(hard_state=HardState(term, 0, commit), entries=entries))
    storage.close()
    return harness


def test_raft_report_lists_the_entries_above_the_commit_index_and_keeps_them(crafted):
    """Raft: entries 4-5 are held but not known committed: reported, then kept."""
    entries = [_put(i, 2, f"r{i}", i) for i in range(1, 6)]
    c = crafted("raft", entries, commit=3, term=2)
    dry = paxoslog("recover", "--config", c.conf_path, "--node", "1", "--json")
    assert dry.returncode == 0, dry.stderr
    report = json.loads(dry.stdout)
    assert (report["known_index"], report["last_index"]) == (3, 5)
    assert [e["index"] for e in report["uncertain"]] == [4, 5] and report["holes"] == []
    assert report["uncertain"][0]["commands"][0]["key"] == "r4"
    text = paxoslog("recover", "--config", c.conf_path, "--node", "1")
    assert "MAY HAVE BEEN LOST (entries above the commit index" in text.stdout
    forced = paxoslog("recover", "--config", c.conf_path, "--node", "1",
                      "--force-new-cluster", "--quiet")
    assert forced.returncode == 0, forced.stderr
    c.start(1)
    c.wait_leader(among=[1])
    assert c.get(1, "r5").body["value"] == 5 and c.status(1)["applied_index"] >= 5


def test_multipaxos_report_lists_slots_above_the_watermark_and_the_holes(crafted):
    """Multi-Paxos: slots 5 and 7 accepted above watermark 3, holes 4 and 6: the report
    names them; after recovery slots 5 and 7 are applied, the holes are no-ops."""
    ballot = Ballot(3, 2).pack()
    entries = [_put(i, ballot, f"p{i}", i) for i in (1, 2, 3, 5, 7)]
    c = crafted("multipaxos", entries, commit=3, term=ballot)
    dry = paxoslog("recover", "--config", c.conf_path, "--node", "1", "--json")
    assert dry.returncode == 0, dry.stderr
    report = json.loads(dry.stdout)
    assert (report["known_index"], report["last_index"]) == (3, 7)
    assert [e["index"] for e in report["uncertain"]] == [5, 7]
    assert report["holes"] == [4, 6]
    assert report["uncertain"][0]["term"] == 3                  # the ballot round
    text = paxoslog("recover", "--config", c.conf_path, "--node", "1")
    assert "accepted slots above the chosen watermark" in text.stdout
    assert "HOLES (slots this node never accepted" in text.stdout and "4, 6" in text.stdout
    forced = paxoslog("recover", "--config", c.conf_path, "--node", "1",
                      "--force-new-cluster", "--quiet")
    assert forced.returncode == 0, forced.stderr
    c.start(1)
    c.wait_leader(among=[1])
    assert c.get(1, "p7").body["value"] == 7 and c.get(1, "p4").status == 404


def test_recover_refuses_a_data_dir_of_a_newer_format_and_bad_arguments(crafted, tmp_path):
    """A newer data format, an unknown node, a missing directory: clear errors, no change."""
    from paxoslog.storage.meta import FORMAT_VERSION, Meta, read_meta, write_meta
    c = crafted("raft", [_put(1, 1, "a", 1)], commit=1, term=1)
    meta_path = str(tmp_path / "data" / "1" / "META")
    write_meta(meta_path, Meta("it-raft", 1, "raft", FORMAT_VERSION + 1))
    out = paxoslog("recover", "--config", c.conf_path, "--node", "1", "--force-new-cluster")
    assert out.returncode == 1 and "written by a newer release of paxoslog" in out.stderr
    assert read_meta(meta_path).format_version == FORMAT_VERSION + 1
    unknown = paxoslog("recover", "--config", c.conf_path, "--node", "7")
    assert unknown.returncode == 2 and "no node with id 7" in unknown.stderr
    missing = paxoslog("recover", "--config", c.conf_path, "--node", "2")
    assert missing.returncode == 2 and "no such data directory" in missing.stderr


KILLED_AFTER_THE_SWAP = r"""
import os, signal, sys
from paxoslog.cli import main
from paxoslog.operate import newdir
real = newdir.exchange_paths

def exchange(a, b):
    done = real(a, b)
    if done:                         # the rebuilt data is in place, the old data at a
        os.kill(os.getpid(), signal.SIGKILL)
    return done
newdir.exchange_paths = exchange
sys.exit(main(sys.argv[1:]))
"""


def test_recover_killed_right_after_its_swap_loses_nothing_and_a_rerun_finishes_it(crafted,
                                                                                   tmp_path):
    """A real ``recover --force-new-cluster`` SIGKILLed right after its atomic exchange:
    the old data sits at the ``.building-`` name the command printed.  The next run used
    to delete every ``.building-*`` directory as a crashed run's half-built one: the
    original data was gone (found by a review).  Now the dry run says where it is, and
    the next ``--force-new-cluster`` moves it to a ``.before-recover-`` name first; a
    recover right after another one (same second) keeps both old directories; the node
    then leads with every entry."""
    entries = [_put(i, 2, f"r{i}", i) for i in range(1, 6)]
    c = crafted("raft", entries, commit=3, term=2)
    data_root = tmp_path / "data"
    wal_dir = data_root / "1" / "wal"
    original = {name: (wal_dir / name).read_bytes() for name in os.listdir(wal_dir)}
    crashed = subprocess.run([sys.executable, "-c", KILLED_AFTER_THE_SWAP, "recover",
                              "--config", c.conf_path, "--node", "1", "--force-new-cluster",
                              "--quiet"], capture_output=True, text=True, cwd=ROOT,
                             env=dict(os.environ, PYTHONPATH=ROOT), timeout=120)
    assert crashed.returncode == -9, crashed.stderr
    [building] = [p for p in os.listdir(data_root) if p.startswith("1.building-")]
    old_path = str(data_root / building)
    assert f"the old data is at {old_path} until it is renamed to" in crashed.stdout
    assert {n: (data_root / building / "wal" / n).read_bytes()
            for n in os.listdir(data_root / building / "wal")} == original

    dry = paxoslog("recover", "--config", c.conf_path, "--node", "1")
    assert dry.returncode == 0, dry.stderr
    assert f"the data from before that is at {old_path}" in dry.stdout
    assert os.path.isdir(old_path)
    again = paxoslog("recover", "--config", c.conf_path, "--node", "1", "--force-new-cluster",
                     "--quiet")
    assert again.returncode == 0, again.stderr
    assert f"finished the interrupted earlier recover: moved {old_path}" in again.stdout
    third = paxoslog("recover", "--config", c.conf_path, "--node", "1", "--force-new-cluster",
                     "--quiet")
    assert third.returncode == 0, third.stderr
    names = sorted(os.listdir(data_root))
    assert not [n for n in names if ".building-" in n], names
    befores = [n for n in names if n.startswith("1.before-recover-")]
    assert len(befores) == 3, names
    kept = [b for b in befores
            if {n: (data_root / b / "wal" / n).read_bytes()
                for n in os.listdir(data_root / b / "wal")} == original]
    assert len(kept) == 1, befores
    c.start(1)
    c.wait_leader(among=[1])
    assert c.get(1, "r5").body["value"] == 5 and c.status(1)["cluster_size"] == 1
