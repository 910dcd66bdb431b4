"""A chaos run with the lock workload (tools/chaos.py --lock-workers): lock holders doing
fenced writes while the leader is killed, paused and partitioned away.  The run must pass
every check, the lock-fencing one included (tokens unique and increasing, fenced writes
never accepted out of token order, no hand-over before the previous holder's lease ran
out), with holds actually taken and fenced writes actually done.  Raft got the same run
by hand (see docs/coordination.md); one protocol here keeps the suite's time in bounds."""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CHAOS = os.path.join(ROOT, "tools", "chaos.py")


@pytest.mark.slow
def test_lock_workload_under_kill_pause_and_partition(tmp_path):
    """No two holders at once and fencing tokens in order, under leader faults."""
    cmd = [sys.executable, CHAOS, "--duration", "16", "--mode", "multipaxos", "--nodes", "3",
           "--nemesis", "kill-leader,pause-leader,partition-leader", "--seed", "4242",
           "--reports", str(tmp_path), "--checker-timeout", "60", "--quiet", "--complete",
           "--plot", "none", "--lock-workers", "3"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=240)
    folders = glob.glob(os.path.join(str(tmp_path), "chaos-*-multipaxos"))
    assert len(folders) == 1, done.stderr[-4000:]
    with open(os.path.join(folders[0], "verdict.json")) as f:
        verdict = json.load(f)
    checks = {c["name"]: c for c in verdict["checks"]}
    assert done.returncode == 0 and verdict["passed"], json.dumps(verdict["checks"])[:4000]
    fencing = checks["lock-fencing"]
    assert fencing["ok"] is True
    assert len(fencing["data"]["holds"]) >= 5, fencing["message"]
    assert sum(1 for w in fencing["data"]["writes"] if w["ok"]) >= 10, fencing["message"]
    assert {f["kind"] for f in verdict["faults"] if f["injected"]} == {
        "kill-leader", "pause-leader", "partition-leader"}
    assert "--lock-workers 3" in verdict["replay"]
