"""Smoke runs of tools/chaos.py against real clusters, both protocols.

Every nemesis kind runs once per protocol: the kinds are split into three groups (process
faults on 3 nodes, whole-cluster kills and clean partitions on 3 nodes, partial partitions
and flaky links on 5 nodes), each group one run of 18 s of traffic.  The tool is run as an
operator runs it (a separate process); the test reads its exit code and verdict.json.
A pass needs a valid run (faults injected, >= 100 acknowledged ops/s before the first) in
which every check passed (the stream observers' too: tails and watches that followed the
run exactly) and every kind of the group was injected.  The membership change
must really have happened: a spare node joined and became a voter, a voter was removed and
exited on its own, and the cluster ended with as many voters as it started with.
Every run happens twice: on plain TCP (peer frames MAC'd; the proxy re-MACs them) and with
TLS (HTTPS API, mutual TLS between peers; the proxy terminates TLS with the nodes'
certificates, see paxoslog/chaos/proxy.py).
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CHAOS = os.path.join(ROOT, "tools", "chaos.py")

GROUPS = {
    "process": (3, ["kill-leader", "kill-random", "pause-leader", "lose-unsynced"]),
    "whole-cluster": (3, ["kill-all", "kill-all-reverse", "partition-leader", "partition-half",
                          "member-change"]),
    "partial-network": (5, ["partition-oneway", "partition-ring", "partition-bridge",
                            "flaky-link"]),
}
TRAFFIC_S = 18
RUN_TIMEOUT_S = 180


@pytest.mark.slow
@pytest.mark.parametrize("transport", ["tcp", "tls"])
@pytest.mark.parametrize("mode", ["multipaxos", "raft"])
@pytest.mark.parametrize("group", sorted(GROUPS))
def test_chaos_smoke(tmp_path, mode, group, transport):
    """One short chaos run passes every check with each kind of the group injected once."""
    nodes, kinds = GROUPS[group]
    seed = (1000 + sorted(GROUPS).index(group) + (0 if mode == "multipaxos" else 100)
            + (0 if transport == "tcp" else 10))
    _smoke(tmp_path, mode, nodes, kinds, seed,
           extra=["--tls"] if transport == "tls" else [])


@pytest.mark.slow
def test_chaos_smoke_with_tokens_required_over_tls(tmp_path):
    """A membership change (a spare joins with --join over HTTPS and an admin token, a
    voter is removed), a leader kill and a leader partition with client tokens required
    and TLS on: the harness's admin token (status, state hashes, membership), the
    workload's write token bound to its client ids; every check passes."""
    folder = _smoke(tmp_path, "raft", 3, ["member-change", "kill-leader", "partition-leader"],
                    seed=1301, extra=["--auth", "--tls"])
    with open(os.path.join(folder, "conf.toml")) as f:
        conf = f.read()
    assert "[auth]" in conf and "required = true" in conf and "[tls]" in conf
    assert os.path.exists(os.path.join(folder, "tokens.json"))


def _port_taken_at_start(folder: str) -> bool:
    """A void run because a node could not bind a port the harness had picked free: some
    other process bound it in between (paxoslog/chaos/cluster.py, ``allocate_ports``).
    The run never started, so nothing was checked."""
    path = os.path.join(folder, "verdict.json")
    if not os.path.exists(path):
        return False
    with open(path) as f:
        verdict = json.load(f)
    if verdict.get("valid", True):
        return False
    for gone in verdict.get("unexpected_exits", []):
        try:
            with open(gone["log"]) as f:
                if "Address already in use" in f.read():
                    return True
        except (OSError, KeyError):
            continue
    return False


def _smoke(tmp_path, mode: str, nodes: int, kinds: list[str], seed: int,
           extra: list[str] = ()) -> str:
    """Run tools/chaos.py; assert a valid, passing run with every kind injected; its
    report folder.  A run made void by a port taken between the harness's pick and a
    node's bind is run once more, on new ports (any other void run fails the test)."""
    for attempt in ("first", "again"):
        reports = os.path.join(str(tmp_path), attempt)
        cmd = [sys.executable, CHAOS, "--duration", str(TRAFFIC_S), "--mode", mode,
               "--nodes", str(nodes), "--nemesis", ",".join(kinds), "--seed", str(seed),
               "--reports", reports, "--checker-timeout", "60", "--quiet",
               "--complete", *extra]
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                              timeout=RUN_TIMEOUT_S)
        folders = glob.glob(os.path.join(reports, f"chaos-*-{mode}"))
        assert len(folders) == 1, f"no report folder; stderr:\n{done.stderr[-4000:]}"
        folder = folders[0]
        if not _port_taken_at_start(folder):
            break
    summary_path = os.path.join(folder, "summary.txt")
    if os.path.exists(summary_path):
        summary = open(summary_path).read()
    else:       # an aborted run (harness error, no leader...) leaves only verdict.json
        verdict_path = os.path.join(folder, "verdict.json")
        reasons = (json.load(open(verdict_path)).get("void_reasons")
                   if os.path.exists(verdict_path) else None)
        summary = f"no summary.txt; void reasons: {reasons}\n{done.stderr[-4000:]}"
    assert done.returncode == 0, f"exit {done.returncode}:\n{summary}"

    with open(os.path.join(folder, "verdict.json")) as f:
        verdict = json.load(f)
    assert verdict["valid"] and verdict["passed"], summary
    assert verdict["ops"]["ok_rate_before_first_fault"] >= 100, summary
    streams = next(c for c in verdict["checks"] if c["name"] == "streams")
    assert streams["ok"] and streams["data"]["log_entries"] > 0, streams["message"]
    by_kind = {fault["kind"]: fault for fault in verdict["faults"]}
    for kind in kinds:
        assert kind in by_kind, f"{kind} never ran:\n{summary}"
        assert by_kind[kind]["injected"], f"{kind} was not injected:\n{summary}"
    if "member-change" in kinds:
        _assert_membership_changed(verdict, by_kind["member-change"], nodes, summary)
    assert {c["name"] for c in verdict["checks"]} >= {
        "linearizable", "no-lost-writes", "replicas-agree", "state-hashes", "membership",
        "liveness-after-heal", "no-unexpected-exits"}
    for name in ("history.jsonl", "nemesis.jsonl", "status.jsonl", "conf.toml",
                 "summary.txt", f"logs/n{nodes}.log"):
        assert os.path.exists(os.path.join(folder, name)), name
    assert glob.glob(os.path.join(folder, "timeline.*"))
    return folder


def _assert_membership_changed(verdict: dict, fault: dict, nodes: int, summary: str) -> None:
    """One spare joined as a voter, one voter was removed and exited 0, size kept."""
    assert fault["note"] is None, summary
    steps = {step["step"]: step for step in fault["detail"]["steps"]}
    assert set(steps) == {"add", "remove"}, summary
    added, removed = steps["add"]["node"], steps["remove"]["node"]
    assert added > nodes and steps["add"]["voter"] >= steps["add"]["start"], summary
    assert steps["remove"]["done"] >= steps["remove"]["start"], summary
    assert steps["remove"]["exit_code"] == 0, summary
    membership = verdict["membership"]
    assert membership["joined"] == [added] and membership["removed"] == [removed], summary
    assert len(membership["final"]) == nodes and added in membership["final"], summary
    assert removed not in membership["final"], summary
    assert fault["detail"]["voters_after"] == membership["final"], summary


@pytest.mark.slow
def test_a_run_without_faults_is_void(tmp_path):
    """No fault injected (the run is too short for one) and too few ops/s: exit 2."""
    cmd = [sys.executable, CHAOS, "--duration", "6", "--mode", "multipaxos", "--nodes", "3",
           "--nemesis", "kill-leader", "--seed", "77", "--min-ok-rate", "1000000",
           "--reports", str(tmp_path), "--plot", "none", "--quiet"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                          timeout=RUN_TIMEOUT_S)
    folder = glob.glob(os.path.join(str(tmp_path), "chaos-*-multipaxos"))[0]
    with open(os.path.join(folder, "verdict.json")) as f:
        verdict = json.load(f)
    assert done.returncode == 2, done.stderr[-3000:]
    assert not verdict["valid"] and not verdict["passed"]
    reasons = " ".join(verdict["void_reasons"])
    assert "no fault was injected" in reasons and "acknowledged operations/s" in reasons
