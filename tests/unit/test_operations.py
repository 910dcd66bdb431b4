"""The small pieces behind running and operating a node, on real files, sockets and a
task.Clock: sd_notify datagrams, log formats and live level changes, the reload hooks,
the event timeline, the overview's bounded wait, building a data directory beside its
target and swapping it in, throttled progress, and the systemd unit example."""

from __future__ import annotations

import io
import os
import shutil
import socket
import subprocess
from dataclasses import replace

import pytest
from twisted.internet import defer, task
from twisted.logger import LogLevel

from paxoslog.config import ConfigError, LogConf, TimingConf, parse_config
from paxoslog.core.quorum import Config
from paxoslog.node.instructions import ConfigApplied, RoleChange
from paxoslog.operate.newdir import NewDataDir
from paxoslog.operate.progress import Progress
from paxoslog.server.events import ClusterEvents
from paxoslog.server.logs import LogControl, format_line, writes_to_journal
from paxoslog.server.overview import ClusterOverview, first_answer
from paxoslog.server.reload import ReloadFailed, Reloader
from paxoslog.server.systemd import SystemdNotifier, notify

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _conf(**changes):
    config = parse_config({"cluster": "c", "data_dir": "d", "nodes": [
        {"id": 1, "peer": "127.0.0.1:1", "api": "127.0.0.1:2"}]}, "/etc/c.toml")
    return replace(config, **changes)


# ---------------------------------------------------------------------- systemd

def test_notify_sends_one_datagram_to_an_abstract_socket():
    """NOTIFY_SOCKET "@name" is the abstract namespace; the fields arrive newline-joined."""
    name = f"paxoslog-unit-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        assert notify("READY=1\nSTATUS=up", {"NOTIFY_SOCKET": "@" + name})
        assert sock.recv(100) == b"READY=1\nSTATUS=up"
    assert notify("READY=1", {}) is False                   # not under systemd
    assert notify("READY=1", {"NOTIFY_SOCKET": "vsock:2:9"}) is False


def test_notifier_pings_the_watchdog_at_half_the_period_and_survives_a_gone_socket():
    """WATCHDOG_USEC=1s: a ping every 0.5s on the reactor; a socket that vanished is
    reported once, never raised."""
    name = f"paxoslog-unit-wd-{os.getpid()}"
    clock = task.Clock()
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(1)
        notifier = SystemdNotifier(clock, {"NOTIFY_SOCKET": "@" + name,
                                           "WATCHDOG_USEC": "1000000"})
        notifier.ready("serving")
        assert sock.recv(200).startswith(b"READY=1\nSTATUS=serving")
        assert sock.recv(100) == b"WATCHDOG=1"
        clock.advance(0.5)
        assert sock.recv(100) == b"WATCHDOG=1"
        notifier.stopping()
        assert sock.recv(100).startswith(b"STOPPING=1")
    gone = SystemdNotifier(clock, {"NOTIFY_SOCKET": "@" + name + "-gone"})
    gone.status("x")
    gone.status("y")                                         # logged once, no exception
    assert gone._failed


# ---------------------------------------------------------------------- logs

def _event(level, text="hello {who}", **extra):
    return {"log_level": level, "log_namespace": "paxoslog.node", "log_format": text,
            "who": "world", "log_time": 0.0, **extra}


def test_journal_lines_carry_the_syslog_priority_and_no_timestamp():
    """<6> info, <4> warn, <3> error; every line of a multi-line event keeps it."""
    assert format_line(_event(LogLevel.info), "n1", True) == \
        "<6>[n1] paxoslog.node: hello world\n"
    assert format_line(_event(LogLevel.warn), "n1", True).startswith("<4>[n1]")
    multi = format_line(_event(LogLevel.error, "a\nb"), "n2", True)
    assert multi == "<3>[n2] paxoslog.node: a\n<3>    b\n"
    text = format_line(_event(LogLevel.info), "n1", False)
    assert text.endswith("INFO  [n1] paxoslog.node: hello world\n") and "T" in text[:11]


def test_journal_stream_is_recognised_only_for_the_very_stream(tmp_path):
    """$JOURNAL_STREAM must name the stream's own device and inode."""
    path = tmp_path / "log"
    with open(path, "w") as stream:
        st = os.fstat(stream.fileno())
        os.environ["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
        try:
            assert writes_to_journal(stream)
            assert not writes_to_journal(io.StringIO())
            os.environ["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino + 1}"
            assert not writes_to_journal(stream)
        finally:
            del os.environ["JOURNAL_STREAM"]


def test_log_control_changes_the_level_of_the_running_filter():
    """set_level moves the filter's default level; the same level is no change."""
    from twisted.logger import LogLevelFilterPredicate, PredicateResult
    predicate = LogLevelFilterPredicate(LogLevel.info)
    control = LogControl(predicate, "info", False)
    assert predicate(_event(LogLevel.debug)) == PredicateResult.no
    assert control.set_level("debug") and not control.set_level("debug")
    assert predicate(_event(LogLevel.debug)) == PredicateResult.maybe
    with pytest.raises(ValueError, match="unknown log level 'loud'"):
        control.set_level("loud")


# ---------------------------------------------------------------------- reload

def test_reload_runs_the_hooks_and_lists_what_needs_a_restart():
    """Hooks get the new conf; changed restart-only tables are listed; a failing hook is
    reported while the others run."""
    running = _conf()
    new = _conf(log=LogConf("debug"), timing=TimingConf(tick_ms=20), secret=b"12345678")
    reloader = Reloader(running, load=lambda path: new)
    seen = []
    reloader.register("level", lambda c: seen.append(c.log.level) or ["log level -> debug"])
    reloader.register("tokens", lambda c: 1 / 0)
    reloader.register("after", lambda c: seen.append("after") or [])
    result = reloader.reload()
    assert seen == ["debug", "after"] and result["applied"] == ["log level -> debug"]
    assert result["needs_restart"] == [
        "timing changed in /etc/c.toml: takes effect at the next restart",
        "the peer secret changed in /etc/c.toml: takes effect at the next restart"]
    assert result["errors"] == ["tokens: division by zero"]


def test_reload_of_a_broken_conf_applies_nothing():
    """A conf that no longer validates raises ReloadFailed; no hook runs."""
    def broken(path):
        raise ConfigError(path, "log.level", "'loud' is not one of debug, info, warn, error")
    reloader = Reloader(_conf(), load=broken)
    reloader.register("level", lambda c: pytest.fail("a hook ran"))
    with pytest.raises(ReloadFailed, match="/etc/c.toml: log.level: 'loud'"):
        reloader.reload()


# ---------------------------------------------------------------------- events, overview

def test_events_record_leader_changes_and_committed_configurations():
    """Only a change of leader is a leader event; a configuration says who came and went."""
    events = ClusterEvents(3, clock=lambda: 100.0)
    events.role_changed(RoleChange("follower", 4, 2, "follower", None))
    events.role_changed(RoleChange("candidate", 4, 2, "follower", 2))     # same leader
    old, new = Config(frozenset({1, 2, 3})), Config(frozenset({1, 2}), learners=frozenset({4}))
    events.config_applied(ConfigApplied(old, new, 17))
    got = events.since(0)
    assert [e["kind"] for e in got] == ["leader", "membership"]
    assert got[0] == {"kind": "leader", "leader": 2, "previous": None, "term": 4, "seq": 1,
                      "time": 100.0, "seen_by": 3}
    assert got[1]["added"] == [4] and got[1]["removed"] == [3] and got[1]["index"] == 17
    assert events.since(1) == [got[1]]


def test_first_answer_times_out_without_cancelling_the_original():
    """The overview waits at most timeout_s; a late answer to the original is harmless."""
    clock = task.Clock()
    original = defer.Deferred()
    bounded = first_answer(original, 1.0, clock)
    clock.advance(1.01)
    failures = []
    bounded.addErrback(failures.append)
    assert failures and failures[0].check(defer.TimeoutError)
    original.callback((200, {}))                     # the peer answers after all: no error


def test_overview_lists_unconnected_and_silent_members_as_unreachable():
    """Connected members are asked over the peer link; the others are listed with why."""
    clock = task.Clock()
    asked = {}

    def forward(peer, op, payload):
        assert op == "status"
        asked[peer] = defer.Deferred()
        return asked[peer]
    own = {"node_id": 1, "nodes": [{"id": 1}, {"id": 2}, {"id": 3}, {"id": 4}]}
    overview = ClusterOverview(1, lambda: own, forward, lambda peer: peer != 4, clock,
                               timeout_s=1.0)
    d = overview.collect()
    asked[2].callback((200, {"node_id": 2}))
    clock.advance(1.5)                               # node 3 never answers
    result = []
    d.addCallback(result.append)
    nodes = {n["id"]: n for n in result[0]["nodes"]}
    assert nodes[1]["status"] is own and nodes[2]["status"] == {"node_id": 2}
    assert not nodes[3]["reachable"] and "no answer within 1s" in nodes[3]["error"]
    assert nodes[4]["error"] == "no peer connection"


# ---------------------------------------------------------------------- newdir, progress

def test_new_data_dir_moves_into_an_absent_target_and_cleans_up_on_failure(tmp_path):
    """A new directory appears whole at the target; an exception leaves no trace."""
    target = tmp_path / "data" / "1"
    (tmp_path / "data").mkdir()
    with pytest.raises(RuntimeError):
        with NewDataDir(str(target)) as new:
            (tmp_path / "data" / os.path.basename(new.path) / "META").write_text("x")
            raise RuntimeError("half way")
    assert os.listdir(tmp_path / "data") == []
    with NewDataDir(str(target)) as new:
        open(os.path.join(new.path, "META"), "w").write("new")
        assert new.commit() is None
    assert (target / "META").read_text() == "new" and os.listdir(tmp_path / "data") == ["1"]


def test_new_data_dir_swaps_with_existing_data_and_keeps_it_aside(tmp_path):
    """An existing target is exchanged atomically; the old data is kept, renamed."""
    target = tmp_path / "1"
    target.mkdir()
    (target / "META").write_text("old")
    with NewDataDir(str(target)) as new:
        open(os.path.join(new.path, "META"), "w").write("new")
        kept = new.commit("recover")
    assert (target / "META").read_text() == "new"
    assert os.path.basename(kept).startswith("1.before-recover-")
    assert open(os.path.join(kept, "META")).read() == "old"
    assert sorted(os.listdir(tmp_path)) == sorted(["1", os.path.basename(kept)])


def test_progress_prints_at_most_once_per_interval_and_a_last_line():
    """Updates within the interval are silent; the end says how long it took."""
    now = [0.0]
    out = io.StringIO()
    progress = Progress("downloading", 4 << 20, stream=out, clock=lambda: now[0])
    progress.update(1 << 20)
    now[0] = 1.2
    progress.update(2 << 20)
    progress.update(3 << 20)
    now[0] = 2.5
    progress.update(4 << 20)
    assert progress.finish() == 2.5
    assert out.getvalue().splitlines() == [
        "downloading: 2.0 MiB of 4.0 MiB (50%), 1s",
        "downloading: 4.0 MiB of 4.0 MiB (100%), 2s",
        "downloading: 4.0 MiB in 2.5s"]


# ---------------------------------------------------------------------- the unit example

def test_systemd_unit_example_is_a_notify_service_that_systemd_accepts(tmp_path):
    """conf/paxoslog@.service: Type=notify, SIGHUP reload, the serve command; and
    systemd-analyze verify finds nothing wrong with it (when systemd is installed)."""
    text = open(os.path.join(ROOT, "conf", "paxoslog@.service")).read()
    for line in ("Type=notify", "ExecReload=/bin/kill -HUP $MAINPID", "WatchdogSec=30",
                 "RestartPreventExitStatus=2"):
        assert f"\n{line}\n" in text, line
    assert "paxoslog serve --config /etc/paxoslog/cluster.toml --node %i" in text
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        return
    unit = tmp_path / "paxoslog@.service"
    fake = tmp_path / "paxoslog"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    unit.write_text(text.replace("/opt/paxoslog/.venv/bin/paxoslog", str(fake)))
    done = subprocess.run([analyze, "verify", "--man=no", str(tmp_path / "paxoslog@1.service")],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    problems = [line for line in (done.stdout + done.stderr).splitlines()
                if "paxoslog@" in line]
    assert not problems, problems


# ---------------------------------------------------------------------- server sessions

def test_server_generated_sessions_never_use_sequence_zero():
    """Writes without a client session get sequences 1..128 per generated client id: a 0
    is at the session table's initial floor and was refused as stale when a later write
    of the same session applied first (found by tools/bench_ops.py under pipelining)."""
    from paxoslog.node.sessions import NEW, STALE, SessionTable
    from paxoslog.server.router import RequestRouter
    router = RequestRouter(None, None, None, node_id=1, command_bytes_max=1 << 20)
    pairs = [router.server_sessions.next() for _ in range(300)]
    assert [s for _, s in pairs[:128]] == list(range(1, 129))
    assert len({c for c, _ in pairs[:128]}) == 1 and pairs[128][1] == 1
    assert pairs[128][0] != pairs[127][0] and min(s for _, s in pairs) == 1
    table = SessionTable()
    table.record(pairs[129][0], pairs[129][1], 10, 0, {})    # the second write applied first
    assert table.lookup(*pairs[128])[0] == NEW
    assert table.lookup(pairs[128][0], 0)[0] == STALE        # what a 0 would have met
