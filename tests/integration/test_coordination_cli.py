"""``paxoslog lock NAME -- COMMAND`` and ``paxoslog elect`` as a user runs them: CLI
processes against a real 3-node cluster.  Concurrent lock holders never overlap and get
increasing fencing tokens; a holder killed with -9 loses the lock once its lease runs out;
an election hands over when the leader resigns."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from paxoslog_integration import ROOT, wait_for

TTL_MS = 1000


def _cli(cluster, *args, **popen) -> subprocess.Popen:
    endpoints = ",".join(cluster.url(n) for n in cluster.ids)
    # options before NAME: everything after it may belong to COMMAND
    return subprocess.Popen([sys.executable, "-m", "paxoslog.cli", args[0], "--endpoints",
                             endpoints, *args[1:]], cwd=ROOT, env=cluster.client_env(),
                            text=True, **popen)


def test_lock_cli_serializes_holders_with_increasing_fencing_tokens(make_cluster, tmp_path):
    """Three concurrent `paxoslog lock` runs: disjoint holds, tokens strictly increasing;
    a holder killed -9 frees the lock when its lease expires."""
    cluster = make_cluster("raft")
    journal = tmp_path / "journal"
    body = (f'echo start $PAXOSLOG_LOCK_TOKEN >> {journal}; '
            f'python3 -c "import time; time.sleep(0.2)"; '
            f'echo end $PAXOSLOG_LOCK_TOKEN >> {journal}')
    runs = [_cli(cluster, "lock", "demo", "--ttl-ms", str(TTL_MS), "--", "sh", "-c", body)
            for _ in range(3)]
    assert [p.wait(timeout=60) for p in runs] == [0, 0, 0]
    lines = journal.read_text().split()
    events = list(zip(lines[0::2], map(int, lines[1::2])))
    assert [e for e, _ in events] == ["start", "end"] * 3          # never two holders
    tokens = [t for _, t in events]
    assert tokens[0::2] == tokens[1::2] and tokens[0::2] == sorted(set(tokens[0::2]))

    # A holder that dies: its lease runs out and the next one acquires.
    marker = tmp_path / "held"
    doomed = _cli(cluster, "lock", "demo", "--ttl-ms", str(TTL_MS), "--", "sh", "-c",
                  f"echo $PAXOSLOG_LOCK_TOKEN > {marker}; exec sleep 60",
                  start_new_session=True)
    wait_for(lambda: marker.exists() and marker.read_text().strip(), timeout=30,
             what="the doomed holder to acquire")
    dead_token = int(marker.read_text())
    os.killpg(doomed.pid, signal.SIGKILL)
    doomed.wait(timeout=10)
    after = _cli(cluster, "lock", "demo", "--ttl-ms", str(TTL_MS), "--wait", "20", "--",
                 "sh", "-c", "echo $PAXOSLOG_LOCK_TOKEN", stdout=subprocess.PIPE)
    out, _ = after.communicate(timeout=60)
    assert after.returncode == 0 and int(out) > dead_token


def test_elect_cli_campaign_observe_and_hand_over(make_cluster):
    """The first candidate leads; observe shows it; when it resigns the next one leads."""
    cluster = make_cluster("multipaxos")
    first = _cli(cluster, "elect", "sched", "host-a", "--ttl-ms", str(TTL_MS),
                 stdout=subprocess.PIPE)
    assert first.stdout.readline().startswith("leader sched host-a")
    second = _cli(cluster, "elect", "sched", "host-b", "--ttl-ms", str(TTL_MS),
                  stdout=subprocess.PIPE)

    def observed() -> str:
        done = subprocess.run([sys.executable, "-m", "paxoslog.cli", "elect", "sched",
                               "--observe", "--once", "--endpoints",
                               ",".join(cluster.url(n) for n in cluster.ids)],
                              cwd=ROOT, env=cluster.client_env(), text=True,
                              capture_output=True, timeout=30)
        return done.stdout.strip()
    assert observed() == "host-a"
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=30) == 0
    assert second.stdout.readline().startswith("leader sched host-b")
    assert observed() == "host-b"
    second.send_signal(signal.SIGTERM)
    assert second.wait(timeout=30) == 0
