"""TLS and client tokens on together, on real 3-node clusters (issue 12: "the whole suite
passes with TLS and tokens on").  The two were built on separate branches: the client API
is HTTPS verified against the cluster CA, peers use mutual TLS, and every request but
/health, the API document and the dashboard's files needs a bearer token.  Each test drives
what an operator or a client does with both on: the library clients and the CLI (a CA
file and a token), writes and linearizable reads, admin calls refused for read and write
tokens and served for an admin one, a backup streamed over HTTPS, a reload, the dashboard,
and a node joining over HTTPS with an admin token."""

from __future__ import annotations

import http.client
import json
import os
import ssl
import subprocess
import sys

import pytest

from paxoslog_integration import ROOT, started_cluster, wait_for


def paxoslog(*args: str, env: dict | None = None, timeout: float = 60):
    """The CLI as a separate process, with neither a token nor a CA from our environment."""
    base = {k: v for k, v in os.environ.items()
            if k not in ("PAXOSLOG_TOKEN", "PAXOSLOG_CACERT")}
    return subprocess.run([sys.executable, "-m", "paxoslog.cli", *args], capture_output=True,
                          text=True, cwd=ROOT, env=dict(base, PYTHONPATH=ROOT, **(env or {})),
                          timeout=timeout)


@pytest.fixture(scope="module", params=["multipaxos", "raft"])
def both(request, tmp_path_factory):
    """A 3-node cluster with [tls] (API and peers) and tokens required."""
    with started_cluster(tmp_path_factory, f"tls-auth-{request.param}", request.param,
                         tls=True, auth=True) as harness:
        assert harness.tls and harness.tokens
        yield harness


def _endpoints(c) -> list[str]:
    return [c.url(n) for n in c.ids]


def _voters(c, node: int) -> list[int]:
    return c.request(node, "GET", "/api/v1/cluster/members").body["applied_config"]["voters"]


def test_writes_and_linearizable_reads_over_https_with_a_write_token(both):
    """SyncClient with the CA and a write token writes and reads back linearizably on
    every node's https endpoint; without a token the write is 401, and a plain-HTTP
    request to the API port gets no HTTP answer at all."""
    from paxoslog.client import SyncClient, Unauthorized
    c = both
    assert all(url.startswith("https://") for url in _endpoints(c))
    with SyncClient(_endpoints(c), timeout=15, token=c.tokens["write"],
                    cafile=c.ca_file) as writer:
        assert writer.put("tls-k", {"n": 1})["status"] == "committed"
        for node in c.ids:
            with SyncClient([c.url(node)], timeout=15, token=c.tokens["read"],
                            cafile=c.ca_file) as reader:
                assert reader.get("tls-k", consistency="linearizable")["value"] == {"n": 1}
    with SyncClient(_endpoints(c), timeout=5, cafile=c.ca_file) as anonymous:
        with pytest.raises(Unauthorized):
            anonymous.put("tls-k", 2)
    plain = http.client.HTTPConnection("127.0.0.1", c.api_ports[c.ids[0]], timeout=5)
    try:
        with pytest.raises((OSError, http.client.HTTPException)):
            plain.request("GET", "/health")
            plain.getresponse().read()
    finally:
        plain.close()


def test_admin_operations_are_refused_for_read_and_write_tokens_and_served_for_admin(both):
    """Over HTTPS, transfer-leader, remove-node and the log entries are 403 for a read
    and a write token (the membership stays); the admin token reads the log and moves
    the leadership to the node it names."""
    from paxoslog.client import Forbidden, SyncClient
    c = both
    leader = c.wait_leader()
    target = next(n for n in c.ids if n != leader)
    for role in ("read", "write"):
        with SyncClient(_endpoints(c), timeout=10, token=c.tokens[role],
                        cafile=c.ca_file) as client:
            for call in (lambda: client.transfer_leader(target),
                         lambda: client.remove_node(target), lambda: client.entries()):
                with pytest.raises(Forbidden) as refused:
                    call()
                assert refused.value.status == 403 and "admin role" in str(refused.value)
    assert all(_voters(c, n) == c.ids for n in c.ids)
    with SyncClient(_endpoints(c), timeout=20, token=c.tokens["admin"],
                    cafile=c.ca_file) as admin:
        assert isinstance(admin.entries()["entries"], list)
        admin.transfer_leader(target)
    wait_for(lambda: c.leader() == target, 20, what=f"node {target} to lead")


def test_the_cli_takes_a_ca_file_and_a_token(both, tmp_path):
    """`paxoslog put/get` on https endpoints: with --cacert and --token-file they work;
    without the CA the node's certificate is not trusted (no write); without a token 401;
    $PAXOSLOG_CACERT and $PAXOSLOG_TOKEN work like the flags."""
    c = both
    urls = ",".join(_endpoints(c))
    token_file = tmp_path / "write.token"
    token_file.write_text(c.tokens["write"] + "\n")
    put = paxoslog("put", "cli-k", "1", "--endpoints", urls, "--cacert", c.ca_file,
                   "--token-file", str(token_file))
    assert put.returncode == 0, put
    untrusted = paxoslog("put", "cli-k", "2", "--endpoints", urls, "--token-file",
                         str(token_file), "--timeout", "3")
    assert untrusted.returncode == 4 and "CERTIFICATE_VERIFY_FAILED" in untrusted.stderr, \
        untrusted
    anonymous = paxoslog("put", "cli-k", "3", "--endpoints", urls, "--cacert", c.ca_file)
    assert anonymous.returncode == 1 and "401" in anonymous.stderr, anonymous
    got = paxoslog("get", "cli-k", "--endpoints", urls,
                   env={"PAXOSLOG_CACERT": c.ca_file, "PAXOSLOG_TOKEN": c.tokens["read"]})
    assert got.returncode == 0 and got.stdout.strip() == "1", got
    # With --config the CA comes from the conf's [tls] ca_file.
    status = paxoslog("status", "--config", c.conf_path, env={"PAXOSLOG_TOKEN": c.tokens["read"]})
    assert status.returncode == 0 and "leader" in status.stdout, status


def test_backup_reload_and_dashboard_over_https_with_tokens(both, tmp_path):
    """`snapshot save` streams a verified backup over HTTPS with an admin token (a read
    token is refused and writes nothing); `reload` works with the admin token; the
    dashboard page is served without a token, its data needs one, and the node's own
    https origin passes the Origin check."""
    c = both
    c.write("backup-k", "kept")
    admin = {"PAXOSLOG_TOKEN": c.tokens["admin"]}
    backup = tmp_path / "b.snap.zst"
    saved = paxoslog("snapshot", "save", str(backup), "--config", c.conf_path, "--timeout",
                     "30", "--json", env=admin)
    assert saved.returncode == 0 and backup.exists(), saved
    assert json.loads(saved.stdout)["endpoint"].startswith("https://"), saved.stdout
    inspect = paxoslog("snapshot", "inspect", str(backup), "--json")
    assert inspect.returncode == 0, inspect
    refused = paxoslog("snapshot", "save", str(tmp_path / "r.snap.zst"), "--config",
                       c.conf_path, "--timeout", "5", env={"PAXOSLOG_TOKEN": c.tokens["read"]})
    assert refused.returncode != 0 and "403" in refused.stderr, refused
    assert not (tmp_path / "r.snap.zst").exists()
    reloaded = paxoslog("reload", "--config", c.conf_path, env=admin)
    assert reloaded.returncode == 0 and reloaded.stdout.count("https://") == len(c.ids), reloaded
    node = c.ids[0]
    page = c.request(node, "GET", "/dashboard", token=None)
    assert page.status == 200 and b"<html" in page.body.lower(), page
    assert c.request(node, "GET", "/api/v1/cluster/overview", token=None).status == 401
    own_origin = {"Origin": f"https://127.0.0.1:{c.api_ports[node]}"}
    overview = c.request(node, "GET", "/api/v1/cluster/overview", headers=own_origin,
                         token=c.tokens["read"])
    assert overview.status == 200, overview
    other = c.request(node, "GET", "/api/v1/cluster/overview", token=c.tokens["read"],
                      headers={"Origin": "https://evil.example"})
    assert other.status == 403, other


def test_a_node_joins_over_https_with_an_admin_token(make_cluster):
    """`serve --join https://...` with the admin token in $PAXOSLOG_TOKEN: the new node's
    join request is verified against the conf's CA, it becomes a voter, and it serves a
    linearizable read of a write made before it joined (peer links on mutual TLS)."""
    c = make_cluster("raft", tls=True, auth=True)
    c.write("before-join", 41)
    c.new_node(4)
    c.start(4, join=c.ids[0])
    wait_for(lambda: all(4 in _voters(c, n) for n in c.ids), 40, what="node 4 as a voter")
    from paxoslog.client import SyncClient
    with SyncClient([c.url(4)], timeout=15, token=c.tokens["read"],
                    cafile=c.ca_file) as reader:
        assert reader.get("before-join")["value"] == 41
    context = ssl.create_default_context(cafile=c.ca_file)
    conn = http.client.HTTPSConnection("127.0.0.1", c.api_ports[4], timeout=5,
                                       context=context)
    try:
        conn.request("GET", "/api/v1/cluster/status")
        assert conn.getresponse().status == 401
    finally:
        conn.close()


def test_a_streamed_snapshot_over_https_leaves_the_connection_usable(both):
    """GET /api/v1/snapshot streams a file (a pull producer under TLS); the next request on
    the same keep-alive connection is answered (it once waited forever: the producer was
    never asked for its last chunk)."""
    c = both
    node = c.wait_leader()
    context = ssl.create_default_context(cafile=c.ca_file)
    conn = http.client.HTTPSConnection("127.0.0.1", c.api_ports[node], timeout=10,
                                       context=context)
    auth = {"Authorization": f"Bearer {c.tokens['admin']}"}
    try:
        for _ in range(2):
            conn.request("GET", "/api/v1/snapshot", headers=auth)
            snapshot = conn.getresponse()
            body = snapshot.read()
            assert snapshot.status == 200 and len(body) == int(snapshot.headers["Content-Length"])
            conn.request("GET", "/health")
            health = conn.getresponse()
            assert health.status == 200 and json.loads(health.read())
    finally:
        conn.close()
