"""Real ``paxoslog serve`` processes on 127.0.0.1 for the integration tests.

``ClusterHarness`` writes a conf with ports reserved by binding port 0 (then released; the
nodes bind them at once), data directories under the test's tmp_path, and short timings
(tick 10 ms, election 15 ticks) so elections take well under a second.  It starts, kills
(-9), stops (SIGTERM), pauses (SIGSTOP) and restarts nodes by pid, and talks to them over
HTTP, or HTTPS with ``tls=True``: then the conf gets a ``[tls]`` section (mutual TLS between
peers too) and the certificates come from ``paxoslog certs init`` run on it, as an operator
would; ``PAXOSLOG_TEST_TLS=1`` turns TLS on for every harness that does not choose.
Nothing sleeps for synchronisation: ``wait_for`` polls a condition with a deadline.

``auth=True`` turns client authentication on: a tokens file with an ``admin``, a ``write``
and a ``read`` token (``harness.tokens``), ``[auth] required = true`` (plus ``auth_extra``
lines), and every harness request carries ``harness.token`` (the admin token unless a test
changes it; ``token=None`` on a request sends none).  Nodes started with ``join`` get the
admin token in ``$PAXOSLOG_TOKEN``.  TLS and tokens combine.  On teardown every node still
running is killed; if a test failed, the tail of each node's log is printed.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from urllib.parse import urlencode

import pytest

from paxoslog.chaos.cluster import allocate_ports

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROTOCOLS = ("multipaxos", "raft")
TLS_DEFAULT = os.environ.get("PAXOSLOG_TEST_TLS", "") not in ("", "0")
TLS_SECTION = ('\n[tls]\nca_file = "certs/ca.pem"\ncert_file = "certs/node-{node}.pem"\n'
               'key_file = "certs/node-{node}.key"\n')

# The test modules import the harness as ``paxoslog_integration`` (a plain ``import conftest``
# would pick whichever conftest.py of the tree was imported last).
sys.modules.setdefault("paxoslog_integration", sys.modules[__name__])


# Distinct free ports: bound to 0 together (so the kernel cannot repeat one), then released
# for the nodes to bind.  The chaos harness allocates its ports the same way.
reserve_ports = allocate_ports


def wait_for(condition, timeout: float = 10.0, interval: float = 0.02, what: str = "condition"):
    """Poll ``condition()`` until it returns a truthy value; that value, or AssertionError."""
    deadline = time.monotonic() + timeout
    last_error = None
    while True:
        try:
            value = condition()
            if value:
                return value
        except (OSError, http.client.HTTPException, ValueError, KeyError) as exc:
            last_error = exc
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}"
                                 + (f" (last error: {last_error!r})" if last_error else ""))
        time.sleep(interval)


class Response:
    def __init__(self, status: int, body, headers: dict) -> None:
        self.status = status
        self.body = body
        self.headers = headers

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.body!r:.300}>"


class ClusterHarness:
    def __init__(self, tmp_path, protocol: str = "multipaxos", size: int = 3, *,
                 tick_ms: int = 10, election_ticks: int = 15, heartbeat_ticks: int = 3,
                 request_timeout_ms: int = 3000, extra: str = "",
                 secret: str | None = "integration-secret", auth: bool = False,
                 auth_extra: str = "", tls: bool | None = None) -> None:
        self.tmp_path = tmp_path
        self.protocol = protocol
        self.tls = TLS_DEFAULT if tls is None else tls
        self.scheme = "https" if self.tls else "http"
        ports = reserve_ports(2 * size)
        self.ids = list(range(1, size + 1))
        self.peer_ports = dict(zip(self.ids, ports[:size]))
        self.api_ports = dict(zip(self.ids, ports[size:]))
        self.conf_path = str(tmp_path / "cluster.toml")
        self.election_s = election_ticks * tick_ms / 1000.0
        nodes = "".join(
            f'\n[[nodes]]\nid = {i}\npeer = "127.0.0.1:{self.peer_ports[i]}"\n'
            f'api = "127.0.0.1:{self.api_ports[i]}"\n' for i in self.ids)
        secret_line = f'secret = "{secret}"\n' if secret else ""
        self.tokens: dict[str, str] = {}
        self.tokens_file = str(tmp_path / "tokens.json")
        auth_table = ""
        if auth:
            self.tokens = make_tokens(self.tokens_file)
            auth_table = (f'\n[auth]\ntokens_file = "{self.tokens_file}"\nrequired = true\n'
                          f"{auth_extra}\n")
        elif auth_extra:
            auth_table = f"\n[auth]\n{auth_extra}\n"
        self.token: str | None = self.tokens.get("admin")
        text = (f'cluster = "it-{protocol}"\nprotocol = "{protocol}"\n'
                f'data_dir = "{tmp_path}/data/{{node}}"\n{secret_line}'
                f"\n[timing]\ntick_ms = {tick_ms}\nheartbeat_ticks = {heartbeat_ticks}\n"
                f"election_ticks = {election_ticks}\nrequest_timeout_ms = {request_timeout_ms}\n"
                f"{extra}\n{auth_table}\n{TLS_SECTION if self.tls else ''}{nodes}")
        with open(self.conf_path, "w") as f:
            f.write(text)
        self.conf_text = text
        self.ca_file = str(tmp_path / "certs" / "ca.pem") if self.tls else None
        self._ssl = None
        if self.tls:
            self.certs_init(self.conf_path)
            self._ssl = ssl.create_default_context(cafile=self.ca_file)
        self.confs: dict[int, str] = {}      # node -> its own conf (nodes added later)
        self.procs: dict[int, subprocess.Popen] = {}
        self.paused: set[int] = set()
        # Keep-alive connections per (thread, node): a test's writer thread and its main
        # thread must not share one (http.client is not thread-safe: interleaved requests
        # fail, and the failure closed the other thread's connection too).
        self._conns: dict[tuple[int, int], http.client.HTTPConnection] = {}

    # ------------------------------------------------------------------ processes

    def log_path(self, node_id: int) -> str:
        return str(self.tmp_path / f"n{node_id}.log")

    @staticmethod
    def certs_init(conf_path: str) -> None:
        """``paxoslog certs init`` for a conf (the CA is created once, then reused)."""
        done = subprocess.run([sys.executable, "-m", "paxoslog.cli", "certs", "init",
                               "--config", conf_path], cwd=ROOT, capture_output=True, text=True,
                              env=dict(os.environ, PYTHONPATH=ROOT), timeout=60)
        assert done.returncode == 0, done.stderr

    def url(self, node_id: int) -> str:
        """The API endpoint of a node (http:// or https://)."""
        return f"{self.scheme}://127.0.0.1:{self.api_ports[node_id]}"

    def client_env(self) -> dict:
        """Environment for a ``paxoslog`` client command (the CA file when TLS is on)."""
        env = dict(os.environ, PYTHONPATH=ROOT)
        if self.ca_file:
            env["PAXOSLOG_CACERT"] = self.ca_file
        return env

    def start(self, node_id: int, join: int | None = None, env: dict | None = None,
              args: list[str] | None = None, conf: str | None = None) -> None:
        """Start ``node_id``; ``join``: a member whose API the new node asks to add it;
        ``env``: extra environment variables (NOTIFY_SOCKET, JOURNAL_STREAM, ...);
        ``args``: extra ``serve`` options; ``conf``: another conf file for this node."""
        assert node_id not in self.procs, f"node {node_id} already running"
        log = open(self.log_path(node_id), "ab")
        command = [sys.executable, "-m", "paxoslog.cli", "serve", "--config",
                   conf or self.confs.get(node_id, self.conf_path), "--node", str(node_id),
                   *(args or ())]
        if join is not None:
            command += ["--join", self.url(join)]
        child_env = dict(os.environ, PYTHONPATH=ROOT)
        child_env.pop("PAXOSLOG_TOKEN", None)
        if join is not None and self.tokens:
            child_env["PAXOSLOG_TOKEN"] = self.tokens["admin"]
        child_env.update(env or {})
        self.procs[node_id] = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=child_env)
        log.close()

    def new_node(self, node_id: int) -> str:
        """Ports and a conf of its own for a node that is not in the cluster's conf (it
        joins with ``start(node_id, join=member)``); the members' conf is not touched."""
        assert node_id not in self.ids
        peer, api = reserve_ports(2)
        self.ids.append(node_id)
        self.peer_ports[node_id], self.api_ports[node_id] = peer, api
        path = str(self.tmp_path / f"join-{node_id}.toml")
        with open(path, "w") as f:
            f.write(self.conf_text + f'\n[[nodes]]\nid = {node_id}\npeer = "127.0.0.1:{peer}"\n'
                                     f'api = "127.0.0.1:{api}"\n')
        self.confs[node_id] = path
        if self.tls:
            self.certs_init(path)
        return path

    def wait_exit(self, node_id: int, timeout: float = 15.0) -> int:
        """Wait for a node to exit on its own; its exit code."""
        code = self.procs[node_id].wait(timeout=timeout)
        del self.procs[node_id]
        self._drop_node_conns(node_id)
        return code

    def start_all(self) -> None:
        for node_id in self.ids:
            self.start(node_id)

    def kill(self, node_id: int, sig: int = signal.SIGKILL) -> int:
        proc = self.procs.pop(node_id)
        self.paused.discard(node_id)
        proc.send_signal(sig)
        if sig != signal.SIGKILL:
            proc.send_signal(signal.SIGCONT)
        code = proc.wait(timeout=30)
        self._drop_node_conns(node_id)
        return code

    def stop(self, node_id: int) -> int:
        """Graceful stop (SIGTERM); returns the exit code."""
        return self.kill(node_id, signal.SIGTERM)

    def pause(self, node_id: int) -> None:
        self.procs[node_id].send_signal(signal.SIGSTOP)
        self.paused.add(node_id)

    def resume(self, node_id: int) -> None:
        self.procs[node_id].send_signal(signal.SIGCONT)
        self.paused.discard(node_id)

    def running(self) -> list[int]:
        return [n for n in self.procs if n not in self.paused]

    def close(self, failed: bool = False) -> None:
        for node_id, proc in list(self.procs.items()):
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
        self.procs.clear()
        for conn in list(self._conns.values()):
            conn.close()
        if failed:
            for node_id in self.ids:
                try:
                    with open(self.log_path(node_id)) as f:
                        tail = f.readlines()[-40:]
                except OSError:
                    continue
                sys.stderr.write(f"----- node {node_id} log (tail) -----\n{''.join(tail)}")

    # ------------------------------------------------------------------ HTTP

    def connection(self, node_id: int, timeout: float = 5.0) -> http.client.HTTPConnection:
        """A new HTTP(S) connection to a node's API."""
        if self.tls:
            return http.client.HTTPSConnection("127.0.0.1", self.api_ports[node_id],
                                               timeout=timeout, context=self._ssl)
        return http.client.HTTPConnection("127.0.0.1", self.api_ports[node_id],
                                          timeout=timeout)

    def raw_socket(self, node_id: int, timeout: float = 5.0) -> socket.socket:
        """A connected socket to a node's API port (TLS-wrapped when TLS is on), for tests
        that speak raw HTTP."""
        s = socket.create_connection(("127.0.0.1", self.api_ports[node_id]), timeout=timeout)
        if self.tls:
            s = self._ssl.wrap_socket(s, server_hostname="127.0.0.1")
        return s

    def host_header(self, node_id: int) -> bytes:
        """A ``Host`` value naming the node, for raw requests (while anonymous requests are
        served the node refuses a Host that does not name it: DNS rebinding)."""
        return f"127.0.0.1:{self.api_ports[node_id]}".encode()

    def _drop_conn(self, node_id: int) -> None:
        conn = self._conns.pop((threading.get_ident(), node_id), None)
        if conn is not None:
            conn.close()

    def _drop_node_conns(self, node_id: int) -> None:
        """Every thread's connection to a node that is gone."""
        for key in [key for key in list(self._conns) if key[1] == node_id]:
            conn = self._conns.pop(key, None)
            if conn is not None:
                conn.close()

    def request(self, node_id: int, method: str, path: str, body=None, *,
                raw: bytes | None = None, headers: dict | None = None,
                timeout: float = 5.0, token=...) -> Response:
        """One request on the node's keep-alive connection; ``token``: the bearer token
        (default ``self.token``; None: no Authorization header)."""
        if method in ("GET", "HEAD") and (threading.get_ident(), node_id) in self._conns:
            # A kept-alive connection may have been closed by the node meanwhile (its idle
            # timeout): a read is safe to send again on a fresh one.
            try:
                return self._request(node_id, method, path, body, raw, headers, timeout,
                                     token)
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                pass
        return self._request(node_id, method, path, body, raw, headers, timeout, token)

    def _request(self, node_id: int, method: str, path: str, body, raw, headers,
                 timeout: float, token) -> Response:
        key = (threading.get_ident(), node_id)
        conn = self._conns.get(key)
        if conn is None:
            conn = self.connection(node_id, timeout)
            self._conns[key] = conn
        conn.timeout = timeout
        if conn.sock is not None:
            conn.sock.settimeout(timeout)
        payload = raw if raw is not None else (json.dumps(body).encode()
                                               if body is not None else None)
        headers = dict(headers or {})
        token = self.token if token is ... else token
        if token is not None:
            headers.setdefault("Authorization", f"Bearer {token}")
        try:
            conn.request(method, path, body=payload, headers=headers)
            response = conn.getresponse()
            data = response.read()
        except BaseException:
            self._drop_conn(node_id)
            raise
        if response.getheader("Connection", "").lower() == "close":
            self._drop_conn(node_id)
        ctype = response.getheader("Content-Type", "")
        parsed = json.loads(data) if data and ctype.startswith("application/json") else data
        return Response(response.status, parsed, dict(response.getheaders()))

    def status(self, node_id: int, timeout: float = 1.0) -> dict | None:
        try:
            response = self.request(node_id, "GET", "/api/v1/cluster/status", timeout=timeout)
        except (OSError, http.client.HTTPException):
            return None
        return response.body if response.status == 200 else None

    def put(self, node_id: int, key: str, value, timeout: float = 5.0, **extra) -> Response:
        return self.request(node_id, "POST", "/api/v1/consensus/propose",
                            {"key": key, "value": value, **extra}, timeout=timeout)

    def get(self, node_id: int, key: str, consistency: str | None = None,
            timeout: float = 5.0) -> Response:
        params = {"key": key}
        if consistency:
            params["consistency"] = consistency
        return self.request(node_id, "GET", "/api/v1/consensus/query?" + urlencode(params),
                            timeout=timeout)

    # ------------------------------------------------------------------ waiting

    def leader(self, among=None) -> int | None:
        """The node that says it leads, when every node considered (default: all running
        ones) answers and follows it in the same term."""
        nodes = among if among is not None else self.running()
        views = {n: self.status(n) for n in nodes}
        if any(v is None for v in views.values()):
            return None
        leaders = [n for n, v in views.items() if v["role"] == "leader"]
        if len(leaders) != 1:
            return None
        leader = leaders[0]
        term = views[leader]["term"]
        for n, v in views.items():
            if n != leader and (v["leader"] != leader or v["term"] != term):
                return None
        return leader

    def wait_leader(self, timeout: float = 15.0, among=None) -> int:
        return wait_for(lambda: self.leader(among), timeout, what="a leader")

    def wait_applied(self, node_id: int, index: int, timeout: float = 15.0) -> dict:
        return wait_for(lambda: (lambda s: s if s and s["applied_index"] >= index else None)(
            self.status(node_id)), timeout, what=f"node {node_id} to apply {index}")

    def committed_commands(self, node_id: int, after: int) -> list[dict]:
        """What node_id's log holds past index ``after``: each client or internal command
        map (batches flattened into their operations) and each configuration entry's
        members map; no-ops left out."""
        body = self.request(node_id, "GET", f"/api/v1/log/entries?start_index={after + 1}").body
        assert body.get("truncated") is not True, "more entries than one page"
        out = []
        for entry in body["entries"]:
            if entry.get("kind") == "config":
                out.append(entry["command"])
            elif entry.get("kind") == "normal":
                for command in entry["command"]:
                    out.extend(command["batch"] if "batch" in command else [command])
        return out

    def unexpected_commands(self, node_id: int, after: int, keys) -> list[dict]:
        """committed_commands past ``after`` other than kv commands on ``keys`` and the
        membership rows a new leader writes on its own for the members (once, on a tick
        after it is elected, so they may land after any first write)."""
        return [command for command in self.committed_commands(node_id, after)
                if not (command.get("sm") == "kv" and command.get("key") in keys)
                and not (command.get("sm") == "membership" and command.get("op") == "add"
                         and command.get("node_id") in self.ids)]

    def write(self, key: str, value, timeout: float = 15.0, nodes=None, **extra) -> tuple:
        """Write through any running node until one acknowledges: (node, body)."""
        deadline = time.monotonic() + timeout
        candidates = list(nodes) if nodes is not None else self.running()
        attempt = 0
        while True:
            node = candidates[attempt % len(candidates)]
            attempt += 1
            try:
                response = self.put(node, key, value, timeout=2.0, **extra)
                if response.status == 200:
                    return node, response.body
                assert response.status in (503, 504), response
            except (OSError, http.client.HTTPException):
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"no node acknowledged the write of {key!r} in {timeout}s")
            time.sleep(0.02)


def make_tokens(path: str) -> dict[str, str]:
    """A tokens file at ``path`` with one unbound token per role: role -> token."""
    from paxoslog.tokens import Role, TokensFile, new_token, write_tokens
    tokens, records = {}, TokensFile()
    for role in (Role.ADMIN, Role.WRITE, Role.READ):
        token, record = new_token(records, role, f"it-{role.label}")
        tokens[role.label] = token
        records = TokensFile(records.tokens + (record,))
    write_tokens(path, records)
    return tokens


@pytest.fixture(params=PROTOCOLS)
def protocol(request) -> str:
    return request.param


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


@contextmanager
def started_cluster(tmp_path_factory, name: str, protocol: str, **options):
    """A 3-node cluster with a leader, closed on exit (for module-scoped fixtures)."""
    harness = ClusterHarness(tmp_path_factory.mktemp(name), protocol, **options)
    harness.start_all()
    try:
        harness.wait_leader()
        yield harness
    finally:
        harness.close()


@pytest.fixture
def make_cluster(tmp_path, request):
    """Factory: ``make_cluster(protocol, **options)`` -> a started 3-node harness."""
    made: list[ClusterHarness] = []

    def make(protocol: str = "multipaxos", start: bool = True, **options) -> ClusterHarness:
        path = tmp_path / f"cluster{len(made)}"
        path.mkdir()
        harness = ClusterHarness(path, protocol, **options)
        made.append(harness)
        if start:
            harness.start_all()
            harness.wait_leader()
        return harness

    yield make
    failed = getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed
    for harness in made:
        harness.close(failed=failed)


@pytest.fixture
def cluster(make_cluster, protocol) -> ClusterHarness:
    """A running 3-node cluster in the parametrized protocol mode."""
    return make_cluster(protocol)
