"""``paxoslog cluster up``: every node of a local conf as a child process.

Children run ``python -m paxoslog.cli serve``; their output is relayed line by line with a
coloured ``nN |`` prefix.  Once a node reports itself leader the endpoints are printed.  On
Ctrl-C/SIGTERM every child gets SIGTERM (a graceful stop: flush, fsync, close), then
SIGKILL after ``KILL_AFTER_S``; the command exits 0 when all children stopped cleanly.
A child that dies before the cluster is up stops the whole cluster (exit 1); one that dies
later is reported and the others keep running (the tour kills the leader on purpose).
"""

from __future__ import annotations

import json
import os
import signal
import sys

from twisted.internet import defer, task
from twisted.internet.protocol import ProcessProtocol

__all__ = ["LocalCluster"]

KILL_AFTER_S = 15.0
POLL_S = 0.2
_COLORS = ("\033[36m", "\033[33m", "\033[35m", "\033[32m", "\033[34m", "\033[31m", "\033[96m")
_RESET = "\033[0m"


class _Child(ProcessProtocol):
    def __init__(self, cluster: "LocalCluster", node_id: int, prefix: str) -> None:
        self.cluster = cluster
        self.node_id = node_id
        self.prefix = prefix
        self.pid: int | None = None
        self.exit_code: int | None = None
        self.ended = False
        self._partial = {1: b"", 2: b""}

    def connectionMade(self) -> None:
        self.pid = self.transport.pid

    def childDataReceived(self, fd: int, data: bytes) -> None:
        buffer = self._partial.get(fd, b"") + data
        *lines, rest = buffer.split(b"\n")
        self._partial[fd] = rest
        for line in lines:
            self.cluster.emit(self.prefix, line.decode(errors="replace"))

    def processEnded(self, reason) -> None:
        for fd, rest in self._partial.items():
            if rest:
                self.cluster.emit(self.prefix, rest.decode(errors="replace"))
        self.ended = True
        value = reason.value
        self.exit_code = value.exitCode if value.exitCode is not None else -(value.signal or 0)
        self.cluster.child_ended(self)


class LocalCluster:
    def __init__(self, config, conf_path: str, reactor, *, color: bool = True,
                 log_level: str = "info", wait_s: float = 30.0, out=None) -> None:
        self.config = config
        self.conf_path = conf_path
        self.reactor = reactor
        self.color = color
        self.log_level = log_level
        self.wait_s = wait_s
        self.out = out or sys.stdout
        self.children: dict[int, _Child] = {}
        self.ready = False
        self.stopping = False
        self.exit_code = 0
        self._poller = None
        self._deadline = None
        self._kill_call = None

    def emit(self, prefix: str, line: str) -> None:
        try:
            self.out.write(f"{prefix} {line}\n")
            self.out.flush()
        except (OSError, ValueError):
            pass

    def say(self, text: str) -> None:
        self.emit("==", text)

    # ------------------------------------------------------------------ start

    def start(self) -> None:
        width = max(len(str(n.id)) for n in self.config.nodes)
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        for position, node in enumerate(self.config.nodes):
            label = f"n{node.id}".ljust(width + 1) + " |"
            if self.color:
                label = f"{_COLORS[position % len(_COLORS)]}{label}{_RESET}"
            child = _Child(self, node.id, label)
            args = [sys.executable, "-m", "paxoslog.cli", "serve", "--config", self.conf_path,
                    "--node", str(node.id), "--log-level", self.log_level]
            self.reactor.spawnProcess(child, sys.executable, args, env=env,
                                      childFDs={0: "w", 1: "r", 2: "r"})
            self.children[node.id] = child
        self.say(f"started {len(self.children)} nodes of cluster {self.config.name} "
                 f"({self.config.protocol}); waiting for a leader")
        self._deadline = self.reactor.seconds() + self.wait_s
        self._poller = task.LoopingCall(self._poll)
        self._poller.clock = self.reactor
        self._poller.start(POLL_S, now=False)

    @defer.inlineCallbacks
    def _poll(self):
        if self.ready or self.stopping:
            return
        import treq
        agent = None
        if self.config.tls_api:             # HTTPS, verified against the cluster CA
            from twisted.web.client import Agent
            from .tls import https_policy
            agent = Agent(self.reactor, contextFactory=https_policy(self.config.tls.ca_file))
        for node in self.config.nodes:
            try:
                response = yield treq.get(f"{node.api_url}/api/v1/cluster/status", timeout=0.5,
                                          reactor=self.reactor, agent=agent)
                body = json.loads((yield treq.content(response)))
            except Exception:
                continue
            if body.get("role") == "leader":
                self._up(body)
                return
        if self.reactor.seconds() > self._deadline:
            self.say(f"no leader after {self.wait_s:.0f}s; the nodes keep trying (Ctrl-C stops)")
            self._deadline = float("inf")

    def _up(self, status: dict) -> None:
        self.ready = True
        if self._poller is not None and self._poller.running:
            self._poller.stop()
        self.say(f"cluster {self.config.name} is up: leader is node {status['node_id']} "
                 f"(term {status['term']}, {self.config.protocol})")
        self.say(f"{'NODE':6}{'PID':8}{'API':24}{'PEER':24}DATA")
        for node in self.config.nodes:
            child = self.children[node.id]
            self.say(f"{node.id:<6}{child.pid or '-':<8}{node.api_url:24}{str(node.peer):24}"
                     f"{node.data_dir}")
        self.say(f"try:  paxoslog put greeting hello --config {self.conf_path}")
        self.say(f"      paxoslog status --config {self.conf_path}")
        self.say("Ctrl-C stops every node")

    # ------------------------------------------------------------------ stop

    def child_ended(self, child: _Child) -> None:
        if not self.stopping:
            self.say(f"node {child.node_id} exited (code {child.exit_code})")
            if not self.ready:
                self.say("a node failed before the cluster came up; stopping the others")
                self.exit_code = 1
                self.shutdown()
                return
            if all(c.ended for c in self.children.values()):
                self.say("every node has exited")
                self.exit_code = 1
                self._finish()
            return
        if child.exit_code not in (0, -signal.SIGTERM, -signal.SIGINT):
            self.exit_code = 1
        if all(c.ended for c in self.children.values()):
            self._finish()

    def shutdown(self) -> None:
        """Stop every child (SIGTERM, then SIGKILL after KILL_AFTER_S), then the reactor."""
        if self.stopping:
            return
        self.stopping = True
        if self._poller is not None and self._poller.running:
            self._poller.stop()
        live = [c for c in self.children.values() if not c.ended]
        if not live:
            self._finish()
            return
        self.say(f"stopping {len(live)} node(s)")
        for child in live:
            try:
                child.transport.signalProcess("TERM")
            except Exception:
                pass
        self._kill_call = self.reactor.callLater(KILL_AFTER_S, self._kill)

    def _kill(self) -> None:
        self._kill_call = None
        for child in self.children.values():
            if not child.ended:
                self.say(f"node {child.node_id} did not stop in {KILL_AFTER_S:.0f}s: SIGKILL")
                self.exit_code = 1
                try:
                    child.transport.signalProcess("KILL")
                except Exception:
                    pass

    def _finish(self) -> None:
        if self._kill_call is not None and self._kill_call.active():
            self._kill_call.cancel()
        self.say("all nodes stopped" if self.exit_code == 0 else "stopped (with errors)")
        if self.reactor.running:
            self.reactor.stop()
