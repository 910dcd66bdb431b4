"""Reload against real conf files: every section a running node cannot take over is reported
as needing a restart (not only a hand-picked few), and a conf file that is not UTF-8 is a
refused reload naming the file, never a traceback, a 500 or a unit stuck "reloading"."""

from __future__ import annotations

import os
import socket

import pytest
from twisted.internet import task

from paxoslog.cli.serve import reload_for_systemd
from paxoslog.config import ConfigError, load_config
from paxoslog.server.api import Api
from paxoslog.server.errors import ApiError
from paxoslog.server.reload import ReloadFailed, Reloader
from paxoslog.server.systemd import SystemdNotifier

BASE = """cluster = "c"
protocol = "raft"
data_dir = "/tmp/paxoslog-unit/{node}"

[[nodes]]
id = 1
peer = "127.0.0.1:7001"
api = "127.0.0.1:8001"

[auth]
tokens_file = "tokens.json"
required = false

[tls]
ca_file = "ca.pem"
peers = true

[websocket]
subscriptions_max = 64
"""


def _running(tmp_path) -> tuple[str, Reloader]:
    """The conf a node started with, on disk, and a Reloader that re-reads that file."""
    path = tmp_path / "c.toml"
    path.write_text(BASE)
    return str(path), Reloader(load_config(str(path)))


def _note(section: str, path: str) -> str:
    return f"{section} changed in {path}: takes effect at the next restart"


@pytest.mark.parametrize("before, after, section", [
    ("required = false", "required = true", "auth"),
    ("peers = true", "peers = false", "tls"),
    ("subscriptions_max = 64", "subscriptions_max = 3", "websocket"),
])
def test_a_changed_section_that_is_not_applied_live_needs_a_restart(tmp_path, before, after,
                                                                    section):
    """[auth] required, a [tls] field and a [websocket] field are fixed when the node starts:
    a reload must say so instead of answering "nothing to change"."""
    path, reloader = _running(tmp_path)
    with open(path, "w") as f:
        f.write(BASE.replace(before, after))
    result = reloader.reload()
    assert result == {"applied": [], "needs_restart": [_note(section, path)], "errors": []}


def test_the_log_level_and_an_unchanged_file_need_no_restart(tmp_path):
    """[log] is applied by its hook, not reported; the same file again changes nothing."""
    path, reloader = _running(tmp_path)
    assert reloader.reload() == {"applied": [], "needs_restart": [], "errors": []}
    with open(path, "w") as f:
        f.write(BASE + '\n[log]\nlevel = "debug"\n')
    reloader.register("log level", lambda c: [f"log level -> {c.log.level}"])
    result = reloader.reload()
    assert result == {"applied": ["log level -> debug"], "needs_restart": [], "errors": []}


def _write_latin1(path: str) -> None:
    """The running conf, saved by an editor as Latin-1: an é (0xe9) in a comment."""
    with open(path, "wb") as f:
        f.write(b"# caf\xe9\n" + BASE.encode())


def test_a_conf_that_is_not_utf8_is_a_config_error_naming_the_file_and_offset(tmp_path):
    path = str(tmp_path / "c.toml")
    _write_latin1(path)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.path == path
    assert str(caught.value).startswith(f"{path}: not UTF-8 (byte 0xe9 at offset 5)")


def test_reloading_a_conf_that_is_not_utf8_is_refused_with_a_400(tmp_path):
    """The admin reload answers 400 bad_conf naming the file; the node keeps its conf."""
    path, reloader = _running(tmp_path)
    running = reloader.config
    _write_latin1(path)
    with pytest.raises(ReloadFailed, match="not UTF-8"):
        reloader.reload()
    api = Api(1, running.limits, running.batching.batch_bytes_max)
    api.reloader = reloader
    with pytest.raises(ApiError) as caught:
        api.reload(None)
    assert (caught.value.status, caught.value.code) == (400, "bad_conf")
    assert path in caught.value.message and "not UTF-8" in caught.value.message
    assert reloader.config is running and reloader.reloads == 0


@pytest.fixture
def systemd():
    """A SystemdNotifier talking to a real datagram socket in the abstract namespace."""
    name = f"paxoslog-unit-reload-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(1)
        yield SystemdNotifier(task.Clock(), {"NOTIFY_SOCKET": "@" + name}), sock


def test_sighup_reload_of_a_conf_that_is_not_utf8_ends_with_ready(tmp_path, systemd):
    """RELOADING=1 is always followed by READY=1; the status says why nothing changed."""
    notifier, sock = systemd
    path, reloader = _running(tmp_path)
    _write_latin1(path)
    reload_for_systemd(reloader, notifier)
    assert sock.recv(200).startswith(b"RELOADING=1\n")
    ready = sock.recv(400).decode()
    assert ready.startswith(f"READY=1\nSTATUS=reload refused: {path}: not UTF-8")


def test_sighup_reload_sends_ready_even_when_the_reload_raises(tmp_path, systemd):
    """An unexpected error (a bug) still propagates, but never leaves the unit reloading."""
    notifier, sock = systemd
    path, reloader = _running(tmp_path)

    def buggy_load(path):
        raise RuntimeError("a bug in the loader")
    reloader.load = buggy_load
    with pytest.raises(RuntimeError, match="a bug in the loader"):
        reload_for_systemd(reloader, notifier)
    assert sock.recv(200).startswith(b"RELOADING=1\n")
    assert sock.recv(200) == b"READY=1\nSTATUS=reload failed: see the log"
