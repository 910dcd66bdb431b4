"""Running as a service, on real ``paxoslog serve`` processes: sd_notify over a fake
``$NOTIFY_SOCKET`` (READY, RELOADING then READY on SIGHUP, WATCHDOG, STOPPING), SIGHUP and
``POST /api/v1/admin/reload`` applying ``[log] level`` and refusing a broken conf without
stopping, journald's format when stderr is the journal, and the data-format version: a
directory of an older supported format opens and is left as it is, a newer one is refused
with a message naming both versions."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

import pytest

from paxoslog.storage.meta import FORMAT_VERSION, FORMAT_VERSION_MIN, Meta, read_meta, write_meta
from paxoslog_integration import ROOT, ClusterHarness, wait_for


def paxoslog(*args: str, timeout: float = 60, env: dict | None = None):
    """The CLI; ``env``: a harness's ``client_env()`` when it talks to its API (the CA)."""
    return subprocess.run([sys.executable, "-m", "paxoslog.cli", *args], capture_output=True,
                          text=True, cwd=ROOT, env=env or dict(os.environ, PYTHONPATH=ROOT),
                          timeout=timeout)


class FakeSystemd:
    """The receiving end of sd_notify: an abstract-namespace datagram socket."""

    def __init__(self) -> None:
        self.name = f"@paxoslog-test-{os.getpid()}-{os.urandom(4).hex()}"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + self.name[1:])
        self.sock.settimeout(0.2)
        self.seen: list[str] = []

    def wait(self, field: str, timeout: float = 20.0) -> str:
        """The first message not seen before that has ``field`` (e.g. "READY=1")."""
        def receive():
            try:
                message = self.sock.recv(4096).decode()
            except socket.timeout:
                return None
            self.seen.append(message)
            return message if field in message.split("\n") else None
        return wait_for(receive, timeout, interval=0, what=f"systemd to receive {field}")

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def systemd():
    fake = FakeSystemd()
    yield fake
    fake.close()


def _log(c, node=1) -> str:
    with open(c.log_path(node)) as f:
        return f.read()


def test_sd_notify_ready_watchdog_reload_and_stop(make_cluster, systemd):
    """Type=notify: READY=1 with a status once serving, WATCHDOG=1 pings, RELOADING=1 then
    READY=1 on SIGHUP, STOPPING=1 on SIGTERM (exit 0)."""
    c = make_cluster("raft", start=False, size=1)
    c.start(1, env={"NOTIFY_SOCKET": systemd.name, "WATCHDOG_USEC": "400000"})
    ready = systemd.wait("READY=1")
    assert "STATUS=node 1 of cluster it-raft (raft): API 127.0.0.1:" in ready
    assert f"MAINPID={c.procs[1].pid}" in ready
    assert c.request(1, "GET", "/health").status == 200      # READY means it serves
    systemd.wait("WATCHDOG=1")
    c.procs[1].send_signal(signal.SIGHUP)
    reloading = systemd.wait("RELOADING=1")
    assert "MONOTONIC_USEC=" in reloading
    assert "STATUS=reloaded" in systemd.wait("READY=1")
    c.procs[1].send_signal(signal.SIGTERM)
    systemd.wait("STOPPING=1")
    assert c.wait_exit(1) == 0


def test_sighup_and_admin_reload_apply_the_log_level_and_survive_a_bad_conf(make_cluster):
    """[log] level changes on SIGHUP (and POST /api/v1/admin/reload); what needs a restart
    is listed; a broken conf is refused and the node keeps serving."""
    c = make_cluster("multipaxos", size=1)
    base = open(c.conf_path).read()

    def backup_logged() -> bool:
        c.request(1, "GET", "/api/v1/snapshot", timeout=10)
        return "backup at index" in _log(c).split("reload:")[-1]

    with open(c.conf_path, "w") as f:
        f.write(base + '\n[log]\nlevel = "warn"\n')
    c.procs[1].send_signal(signal.SIGHUP)
    wait_for(lambda: "reload: log level info -> warn" in _log(c), 10, what="the reload")
    assert not backup_logged()                  # info lines are filtered now
    with open(c.conf_path, "w") as f:
        f.write(base.replace("request_timeout_ms = 3000", "request_timeout_ms = 4000")
                + '\n[log]\nlevel = "info"\n')
    answer = c.request(1, "POST", "/api/v1/admin/reload", {})
    assert answer.status == 200 and answer.body["applied"] == ["log level warn -> info"]
    assert answer.body["needs_restart"] == [
        f"timing changed in {c.conf_path}: takes effect at the next restart"]
    assert backup_logged()

    with open(c.conf_path, "w") as f:
        f.write(base + '\n[log]\nlevel = "loud"\n')
    c.procs[1].send_signal(signal.SIGHUP)
    wait_for(lambda: "reload refused, nothing changed" in _log(c), 10, what="the refusal")
    assert f"{c.conf_path}: log.level: 'loud' is not one of" in _log(c)
    refused = c.request(1, "POST", "/api/v1/admin/reload", {})
    assert refused.status == 400 and refused.body["error"] == "bad_conf"
    cli = paxoslog("reload", "--endpoints", c.url(1), env=c.client_env())
    assert cli.returncode == 1 and "log.level" in cli.stderr
    assert c.put(1, "still", "serving").status == 200
    assert c.procs[1].poll() is None


def test_log_lines_carry_syslog_priorities_when_stderr_is_the_journal(make_cluster):
    """With $JOURNAL_STREAM naming stderr, lines are "<P>[nN] namespace: message": the
    priority journald files them under, no timestamp of our own."""
    c = make_cluster("raft", start=False, secret=None)
    open(c.log_path(1), "ab").close()
    st = os.stat(c.log_path(1))
    c.start(1, env={"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
    wait_for(lambda: "no peer secret" in _log(c), 15, what="the node to log a warning")
    lines = _log(c).splitlines()
    assert any(line.startswith("<6>[n1] paxoslog.node: node 1 of cluster") for line in lines)
    assert any(line.startswith("<4>[n1] paxoslog.peers: no peer secret") for line in lines)
    assert all(line.startswith("<") for line in lines if line.strip())


def test_data_format_versions_older_read_newer_refused(tmp_path):
    """A data directory of an older supported format starts and keeps its META; one of a
    newer format is refused by serve, log verify and log export, naming both versions."""
    c = ClusterHarness(tmp_path, "raft", size=1)
    try:
        c.start(1)
        c.wait_leader()
        c.write("kept", "yes")
        c.stop(1)
        meta_path = str(tmp_path / "data" / "1" / "META")
        assert read_meta(meta_path).format_version == FORMAT_VERSION
        write_meta(meta_path, Meta("it-raft", 1, "raft", FORMAT_VERSION_MIN))
        c.start(1)
        c.wait_leader()
        assert c.get(1, "kept").body["value"] == "yes"
        c.write("more", 1)
        c.stop(1)
        assert read_meta(meta_path).format_version == FORMAT_VERSION_MIN

        newer = FORMAT_VERSION + 1
        write_meta(meta_path, Meta("it-raft", 1, "raft", newer))
        serve = paxoslog("serve", "--config", c.conf_path, "--node", "1")
        message = (f"data format {newer} was written by a newer release of paxoslog; this "
                   f"release reads formats {FORMAT_VERSION_MIN} to {FORMAT_VERSION}: upgrade "
                   "paxoslog")
        assert serve.returncode == 1 and message in serve.stderr, serve.stderr
        verify = paxoslog("log", "verify", "--data-dir", str(tmp_path / "data" / "1"))
        assert verify.returncode == 1 and message in verify.stdout
        export = paxoslog("log", "export", "--sqlite", str(tmp_path / "x.db"), "--data-dir",
                          str(tmp_path / "data" / "1"))
        assert export.returncode == 1 and message in export.stderr
        assert read_meta(meta_path).format_version == newer
    finally:
        c.close()
