"""The plug-in path end to end: pip-install the separate package tests/plugin_example (its
own pyproject registers ``ledger`` in the entry-point group paxoslog.state_machines), enable
it in a generated conf, and drive it over HTTP against a real 3-node cluster."""

from __future__ import annotations

import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from paxoslog_integration import wait_for

PLUGIN = Path(__file__).resolve().parent.parent / "plugin_example"


def _pip_available() -> bool:
    try:
        return subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True,
                              timeout=60).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


@pytest.fixture(scope="module")
def ledger_installed(tmp_path_factory):
    if not _pip_available():
        pytest.skip(f"pip is not available for {sys.executable}: cannot install the plug-in")
    source = tmp_path_factory.mktemp("plugin") / "plugin_example"
    shutil.copytree(PLUGIN, source)          # build in a copy: the tree stays clean
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                           "--disable-pip-version-check", str(source)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"pip install failed:\n{done.stdout}\n{done.stderr}"
    names = {ep.name for ep in metadata.entry_points(group="paxoslog.state_machines")}
    assert "ledger" in names, names
    return "ledger"


@pytest.mark.parametrize("protocol", ["multipaxos", "raft"])
def test_plugin_state_machine_end_to_end(ledger_installed, make_cluster, protocol):
    c = make_cluster(protocol, extra='\n[state_machines]\nenabled = ["kv", "ledger"]\n')
    leader = c.wait_leader()
    follower = next(n for n in c.ids if n != leader)

    def ledger(node, body):
        return c.request(node, "POST", "/api/v1/sm/ledger", body)

    r = ledger(follower, {"op": "deposit", "account": "alice", "amount": 10})
    assert r.status == 200 and r.body["result"] == {"account": "alice", "balance": 10}, r
    r = ledger(leader, {"op": "withdraw", "account": "alice", "amount": 3})
    assert r.body["result"]["balance"] == 7
    # apply raises (InsufficientFunds): an error result, the same on every node; the log
    # and the state machine go on
    r = ledger(follower, {"op": "withdraw", "account": "alice", "amount": 100})
    assert r.status == 400 and r.body["error"] == "apply_failed", r
    assert "InsufficientFunds" in r.body["message"] and "alice has 7" in r.body["message"]
    failed_index = r.body["index"]
    # bad fields: refused in apply with BadCommand -> bad_request; unknown op before the log
    r = ledger(leader, {"op": "deposit", "account": "alice", "amount": -1})
    assert r.status == 400 and r.body["error"] == "bad_request"
    assert '"amount" must be a positive integer' in r.body["message"]
    r = ledger(leader, {"op": "steal", "account": "alice"})
    assert r.status == 400 and "unknown op 'steal'" in r.body["message"]
    assert "index" not in r.body                      # never reached the log
    r = ledger(leader, {"account": "alice", "amount": 1})
    assert r.status == 400 and 'missing field "op"' in r.body["message"]
    r = ledger(follower, {"op": "deposit", "account": "bob", "amount": 5})
    assert r.status == 200 and r.body["index"] > failed_index
    for node in c.ids:
        got = c.request(node, "GET", "/api/v1/sm/ledger?account=alice")
        assert got.status == 200 and got.body["result"] == {"account": "alice", "balance": 7}
        bad = c.request(node, "POST", "/api/v1/sm/ledger", {"query": {}})
        assert bad.status == 400 and "ledger read" in bad.body["message"]
    # kv still works next to it, and the plug-in survives a restart (WAL replay)
    c.write("k", "v")
    c.kill(follower)
    c.start(follower)
    wait_for(lambda: (c.request(follower, "POST", "/api/v1/sm/ledger",
                                {"query": {"account": "bob"}, "consistency": "stale"})
                      .body.get("result", {}).get("balance") == 5),
             timeout=20, what="the restarted node to replay the ledger")
