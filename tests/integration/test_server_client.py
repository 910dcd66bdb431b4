"""The client library against a real cluster: the treq ``Client`` (in a child process with
its own reactor) and the blocking ``SyncClient``: leader discovery, dead endpoints skipped,
retries keeping (client_id, sequence), and the documented exceptions.  Both over HTTP and
over HTTPS (the cluster CA as ``cafile``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from paxoslog.client import NotFound, RequestFailed, SyncClient, Unavailable
from paxoslog_integration import ROOT, reserve_ports, started_cluster

ASYNC_SCRIPT = r'''
import json, sys
from twisted.internet import defer, task
from paxoslog.client import Client, NotFound, Unavailable

@defer.inlineCallbacks
def main(reactor, endpoints, dead, cafile):
    out = {}
    cafile = cafile or None
    client = Client([dead] + endpoints, reactor=reactor, timeout=10, attempt_timeout=2,
                    cafile=cafile)
    status = yield client.discover_leader()
    out["leader"] = status["leader"]
    out["leader_endpoint"] = client.leader_endpoint
    put = yield client.put("async-key", {"v": 1})
    out["put"] = put["status"]
    got = yield client.get("async-key")
    out["got"] = got["value"]
    cas = yield client.cas("async-key", {"v": 2}, expected={"v": 1})
    out["cas"] = cas["result"]["succeeded"]
    yield client.delete("async-key")
    try:
        yield client.get("async-key")
    except NotFound as exc:
        out["missing"] = exc.status
    lonely = Client([dead], reactor=reactor, timeout=1, attempt_timeout=0.3, cafile=cafile)
    try:
        yield lonely.get("x")
    except Unavailable:
        out["unavailable"] = True
    yield client.close()
    print(json.dumps(out))

task.react(main, [json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]])
'''


@pytest.fixture(scope="module", params=[False, True], ids=["http", "https"])
def running(tmp_path_factory, request):
    with started_cluster(tmp_path_factory, "client", "raft", tls=request.param) as harness:
        yield harness


def _endpoints(c) -> list[str]:
    return [c.url(n) for n in c.ids]


def test_async_client_discovers_the_leader_and_skips_dead_endpoints(running):
    """The treq client: leader discovery, put/get/cas/delete, NotFound, Unavailable."""
    [port] = reserve_ports(1)
    proc = subprocess.run([sys.executable, "-c", ASYNC_SCRIPT, json.dumps(_endpoints(running)),
                           f"{running.scheme}://127.0.0.1:{port}", running.ca_file or ""],
                          capture_output=True, text=True, cwd=ROOT,
                          env=dict(os.environ, PYTHONPATH=ROOT), timeout=60)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    leader = running.wait_leader()
    assert out["leader"] == leader
    assert out["leader_endpoint"] == running.url(leader)
    assert out["put"] == "committed" and out["got"] == {"v": 1} and out["cas"] is True
    assert out["missing"] == 404 and out["unavailable"] is True


def test_sync_client_retries_across_a_killed_leader_with_the_same_session(running):
    """SyncClient: the leader dies between two writes; the second still commits once, and a
    replay of the same (client_id, sequence) returns the original result."""
    c = running
    with SyncClient(_endpoints(c), timeout=15, attempt_timeout=1, cafile=c.ca_file) as client:
        client.discover_leader()
        first = client.put("sync-a", 1)
        assert first["status"] == "committed"
        leader = c.wait_leader()
        c.kill(leader)
        second = client.put("sync-b", 2)
        assert second["index"] > first["index"]
        replay = client.propose({"key": "sync-b", "value": 2, "client_id": client.client_id,
                                 "sequence": 2})
        assert replay["index"] == second["index"] and replay["result"] == second["result"]
        assert client.get("sync-b")["version"] == 1
        with pytest.raises(NotFound):
            client.get("sync-never")
        with pytest.raises(RequestFailed) as info:
            client.propose({"key": 5, "value": 1})
        assert info.value.status == 400 and info.value.code == "bad_request"
        c.start(leader)
        c.wait_leader()
    [port] = reserve_ports(1)
    with SyncClient([f"{c.scheme}://127.0.0.1:{port}"], timeout=0.5, attempt_timeout=0.2,
                    cafile=c.ca_file) as lonely:
        with pytest.raises(Unavailable):
            lonely.put("x", 1)


def test_https_clients_that_offer_alpn_are_served(running):
    """A TLS client that offers ALPN (curl, requests/urllib3 and browsers all do) completes
    the handshake, gets http/1.1 chosen, and is served (Twisted's default ALPN callback
    failed every such handshake with an internal_error alert); a client offering only h2,
    which the node does not speak, gets no protocol and its HTTP/2 preface a 400."""
    import socket
    import ssl
    if not running.tls:
        pytest.skip("plain HTTP: no TLS handshake")

    def connect(offered: list[str]) -> ssl.SSLSocket:
        context = ssl.create_default_context(cafile=running.ca_file)
        context.set_alpn_protocols(offered)
        raw = socket.create_connection(("127.0.0.1", running.api_ports[1]), timeout=5)
        return context.wrap_socket(raw, server_hostname="127.0.0.1")

    for offered in (["h2", "http/1.1"], ["http/1.1"]):
        with connect(offered) as sock:
            assert sock.selected_alpn_protocol() == "http/1.1", offered
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 200 "), (offered, answer[:200])
    # h2 only: no protocol is chosen (the node's TLS, the standard library's, cannot send
    # RFC 7301's no_application_protocol alert), and the HTTP/2 preface is refused with a
    # 400 and a close, not left waiting.
    with connect(["h2"]) as sock:
        assert sock.selected_alpn_protocol() is None
        sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 400 ") and b"Connection: close" in answer, answer
    import requests
    response = requests.get(f"{running.url(1)}/health", verify=running.ca_file, timeout=5)
    assert response.status_code == 200 and response.json()["status"] == "ok", response.text
