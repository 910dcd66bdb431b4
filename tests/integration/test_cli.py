"""The ``paxoslog`` command as scripts use it: output, ``--json`` and exit codes (0 ok,
1 error, 2 usage/conf, 3 not found, 4 unavailable, 5 cas failed), the inspection commands
on a live data directory, bad conf files, and ``cluster up`` starting and stopping a whole
local cluster."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time

import pytest

from paxoslog_integration import (PROTOCOLS, ROOT, ClusterHarness, reserve_ports,
                                  started_cluster, wait_for)


def paxoslog(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "paxoslog.cli", *args], capture_output=True,
                          text=True, cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT),
                          timeout=timeout)


@pytest.fixture(scope="module")
def running(tmp_path_factory):
    with started_cluster(tmp_path_factory, "cli", "multipaxos") as harness:
        yield harness


def test_put_get_delete_cas_with_exit_codes(running):
    """Client commands print results and exit 0/3/5 as documented."""
    conf = ["--config", running.conf_path]
    put = paxoslog("put", "cli-key", "hello", *conf)
    assert put.returncode == 0 and put.stdout.startswith("OK index="), put
    got = paxoslog("get", "cli-key", *conf)
    assert got.returncode == 0 and got.stdout.strip() == "hello"
    assert paxoslog("get", "cli-missing", *conf).returncode == 3
    as_json = paxoslog("put", "cli-json", '{"n": [1, 2]}', "-j", "--json", *conf)
    assert as_json.returncode == 0 and json.loads(as_json.stdout)["status"] == "committed"
    got = json.loads(paxoslog("get", "cli-json", "--json", "--consistency", "stale",
                              *conf).stdout)
    assert got["value"] == {"n": [1, 2]} or got["stale"] is True
    assert paxoslog("cas", "cli-key", "x", "--expected", "nope", *conf).returncode == 5
    assert paxoslog("cas", "cli-key", "bye", "--expected", "hello", *conf).returncode == 0
    assert paxoslog("cas", "cli-key", "x", "--absent", *conf).returncode == 5
    assert paxoslog("cas", "cli-new", "x", "--expected-version", "0", *conf).returncode == 0
    assert paxoslog("delete", "cli-key", *conf).returncode == 0
    assert paxoslog("delete", "cli-key", *conf).returncode == 3
    first = paxoslog("put", "cli-once", "1", "--client-id", "script-1", "--sequence", "1",
                     "--json", *conf)
    again = paxoslog("put", "cli-once", "1", "--client-id", "script-1", "--sequence", "1",
                     "--json", *conf)
    assert json.loads(first.stdout)["index"] == json.loads(again.stdout)["index"]


def test_status_and_log_entries(running):
    """``status`` prints one row per node (leader marked), ``log entries`` the commands."""
    conf = ["--config", running.conf_path]
    paxoslog("put", "cli-status", "v", *conf)
    status = paxoslog("status", *conf)
    assert status.returncode == 0, status
    lines = status.stdout.splitlines()
    assert lines[0].split()[:6] == ["NODE", "ROLE", "TERM", "COMMIT", "APPLIED", "LAG"]
    roles = [line.split()[1] for line in lines[1:4]]
    assert sorted(roles) == ["follower", "follower", "leader"]
    data = json.loads(paxoslog("status", "--json", *conf).stdout)
    assert data["leader"] in running.ids and len(data["nodes"]) == 3
    entries = paxoslog("log", "entries", "--from", "1", "--to", "1000", *conf)
    assert entries.returncode == 0 and "cli-status" in entries.stdout
    raw = json.loads(paxoslog("log", "entries", "--json", *conf).stdout)
    assert raw["entries"] and all("index" in e for e in raw["entries"])


def test_usage_unavailable_and_bad_conf_exit_codes(running, tmp_path):
    """2 for usage and conf errors (naming file and key), 4 when nothing answers."""
    assert paxoslog("put").returncode == 2
    assert paxoslog("put", "k", "v", "--client-id", "x", "--config",
                    running.conf_path).returncode == 2
    [port] = reserve_ports(1)
    down = paxoslog("get", "k", "--endpoints", f"http://127.0.0.1:{port}", "--timeout", "1")
    assert down.returncode == 4 and "unavailable" in down.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text('cluster = "x"\nprotocol = "zab"\n[[nodes]]\nid = 1\npeer = "h:1"\n'
                   'api = "h:2"\ndata_dir = "d"\n')
    result = paxoslog("get", "k", "--config", str(bad))
    assert result.returncode == 2 and f"{bad}: protocol:" in result.stderr
    serve = paxoslog("serve", "--config", str(bad), "--node", "1")
    assert serve.returncode == 2 and "zab" in serve.stderr
    unknown = paxoslog("serve", "--config", running.conf_path, "--node", "9")
    assert unknown.returncode == 2 and "no node with id 9" in unknown.stderr
    broken = tmp_path / "broken.toml"
    broken.write_text("cluster = \n")
    result = paxoslog("status", "--config", str(broken))
    assert result.returncode == 2 and "not valid TOML" in result.stderr


def test_inspection_commands_on_a_live_node(running):
    """``log verify`` and ``log dump`` read a running node's data directory."""
    paxoslog("put", "cli-inspect", "v", "--config", running.conf_path)
    data_dir = str(running.tmp_path / "data" / "1")
    verify = paxoslog("log", "verify", "--data-dir", data_dir, "--json")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    dump = paxoslog("log", "dump", "--data-dir", data_dir, "--json")
    assert dump.returncode == 0 and dump.stdout.strip()
    assert paxoslog("log", "verify", "--data-dir", data_dir + "-nope").returncode == 2


@pytest.mark.parametrize("protocol,stop", [(p, "sigterm") for p in PROTOCOLS]
                         + [("raft", "ctrl-c")])
def test_cluster_up_starts_and_stops_cleanly(tmp_path, protocol, stop):
    """``cluster up`` starts every node, reports the leader and endpoints, serves writes,
    and on SIGTERM, or on Ctrl-C (SIGINT to the whole process group, as a terminal sends
    it: the nodes get it too, then the supervisor's SIGTERM), stops every node and exits
    0 (the nodes once took that SIGTERM for a second Ctrl-C and quit with an error)."""
    harness = ClusterHarness(tmp_path, protocol)      # only for its conf file and ports
    proc = subprocess.Popen([sys.executable, "-m", "paxoslog.cli", "cluster", "up",
                             harness.conf_path, "--no-color"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, cwd=ROOT,
                            env=dict(os.environ, PYTHONPATH=ROOT), start_new_session=True)
    lines: queue.Queue = queue.Queue()
    seen: list[str] = []
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout] + [lines.put(None)],
                     daemon=True).start()

    def read_until(marker: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                break
            if line is None:
                break
            seen.append(line)
            if marker in line:
                return
        raise AssertionError(f"no {marker!r} in the output:\n{''.join(seen)}")

    try:
        read_until("is up: leader is node")
        read_until("Ctrl-C stops every node")
        pids = [int(line.split()[2]) for line in seen
                if line.startswith("== ") and line.split()[1].isdigit()]
        assert len(pids) == 3, seen
        put = paxoslog("put", "up-key", "up-value", "--config", harness.conf_path)
        assert put.returncode == 0, put
        if not any(line.startswith("n1 |") for line in seen):
            read_until("n1 |")      # relayed child output may trail the "is up" banner
        if stop == "ctrl-c":
            os.killpg(proc.pid, signal.SIGINT)
        else:
            proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=40) == 0, "".join(seen)
        read_until("all nodes stopped", timeout=5)
        for pid in pids:
            wait_for(lambda: not _alive(pid), 10, what=f"child {pid} to exit")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        # Never leave the nodes behind when the test failed half way.
        for line in seen:
            words = line.split()
            if line.startswith("== ") and len(words) > 2 and words[1].isdigit() \
                    and words[2].isdigit() and _alive(int(words[2])):
                os.kill(int(words[2]), signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:                                   # a zombie of an exited child counts as gone
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except OSError:
        return False


def test_serve_exits_when_its_api_port_is_taken(tmp_path):
    """A node that cannot bind its API port says so and exits non-zero (it used to hang:
    the WAL writer's threads kept the process alive)."""
    import socket
    c = ClusterHarness(tmp_path, "raft", size=1)
    blocker = socket.socket()
    blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    blocker.bind(("127.0.0.1", c.api_ports[1]))
    blocker.listen()
    try:
        out = subprocess.run([sys.executable, "-m", "paxoslog.cli", "serve", "--config",
                              c.conf_path, "--node", "1"], capture_output=True, text=True,
                             cwd=ROOT, timeout=60)
    finally:
        blocker.close()
    assert out.returncode == 1, out
    assert "cannot start node 1" in out.stderr
