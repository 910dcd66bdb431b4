"""The peer port under hostile or broken input: garbage, wrong cluster, wrong secret,
malformed frames after a correct handshake, and a frame over the configured maximum.  The
node closes or drops as documented, says why in its log (never the secret), and the
cluster keeps serving."""

from __future__ import annotations

import os
import socket
import struct

import cbor2
import pytest

from paxoslog.server import frames as F
from paxoslog_integration import wait_for

SECRET = "integration-secret"


def _frame(payload) -> bytes:
    data = cbor2.dumps(payload)
    return struct.pack(">I", len(data)) + data


def _read_frame(s: socket.socket) -> list:
    head = _recv_exact(s, 4)
    (length,) = struct.unpack(">I", head)
    return cbor2.loads(_recv_exact(s, length))


def _recv_exact(s: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = s.recv(n - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data


def _closed_by_peer(s: socket.socket, timeout: float = 5.0) -> bool:
    s.settimeout(timeout)
    try:
        while True:
            if not s.recv(65536):
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except socket.timeout:
        return False


def _connect(c, node: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", c.peer_ports[node]), timeout=5)


def _handshake(c, target: int, claimed: int, secret: str, cluster: str | None = None):
    """Dial ``target`` claiming to be node ``claimed``; returns (socket, challenge frame)."""
    s = _connect(c, target)
    cluster = cluster or f"it-{c.protocol}"
    nonce_d = os.urandom(16)
    s.sendall(_frame([F.HELLO, F.WIRE_VERSION, cluster, claimed, target, nonce_d,
                      sorted(c.ids)]))
    challenge = _read_frame(s)
    _, _, _, frm, to, nonce_a, _mac, _bootstrap = challenge
    proof = F.handshake_mac(secret.encode(), "dialer", cluster, frm, claimed, nonce_d, nonce_a)
    s.sendall(_frame([F.AUTH, proof]))
    return s, challenge


def _metric(c, node: int, name: str) -> float:
    text = c.request(node, "GET", "/metrics").body.decode()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise KeyError(name)


@pytest.fixture
def mp_cluster(make_cluster):
    return make_cluster("multipaxos")


def test_garbage_and_wrong_cluster_are_refused_and_the_cluster_keeps_working(mp_cluster):
    """Random bytes, a bad frame size before authentication and a foreign cluster name:
    the connection is closed; writes keep working."""
    c = mp_cluster
    target = c.ids[2]
    with _connect(c, target) as s:
        s.sendall(os.urandom(64))
        assert _closed_by_peer(s)
    with _connect(c, target) as s:
        s.sendall(struct.pack(">I", 1 << 30))              # over the pre-auth limit
        assert _closed_by_peer(s)
    with _connect(c, target) as s:
        s.sendall(_frame([F.HELLO, F.WIRE_VERSION, "someone-else", 1, target, os.urandom(16),
                          sorted(c.ids)]))
        assert _closed_by_peer(s)
    with _connect(c, target) as s:
        s.sendall(_frame([F.HELLO, F.WIRE_VERSION, f"it-{c.protocol}", 99, target,
                          os.urandom(16), sorted(c.ids)]))
        assert _closed_by_peer(s)
    assert _metric(c, target, "paxoslog_peer_handshake_failures_total") >= 2
    c.write("still-works", 1)
    log = open(c.log_path(target)).read()
    assert "belongs to cluster 'someone-else'" in log
    assert "rejected frame" in log or "handshake" in log


def test_wrong_secret_fails_authentication_without_logging_the_secret(mp_cluster):
    """A dialer that does not know the secret is refused; the secret appears in no log."""
    c = mp_cluster
    target = c.ids[1]
    s, challenge = _handshake(c, target, c.ids[0], "not-the-secret")
    with s:
        assert challenge[0] == F.CHALLENGE
        assert _closed_by_peer(s)
    wait_for(lambda: _metric(c, target, "paxoslog_peer_handshake_failures_total") >= 1,
             what="the failed handshake to be counted")
    c.write("after-bad-secret", 1)
    for node in c.ids:
        assert SECRET not in open(c.log_path(node)).read()


def test_malformed_frames_are_dropped_and_oversized_frames_close_the_connection(make_cluster):
    """After a correct handshake: undecodable frames and messages are dropped (counted,
    the connection stays); a frame over frame_bytes_max closes it with a logged reason."""
    c = make_cluster("multipaxos", start=False)
    c.start(1)
    c.start(2)                      # node 3 stays down: the test speaks as node 3
    leader = c.wait_leader(among=[1, 2])
    target = next(n for n in (1, 2) if n != leader)
    impostor = 3
    before = _metric(c, target, "paxoslog_peer_malformed_frames_total")
    s, _ = _handshake(c, target, impostor, SECRET)
    with s:
        bad = b"\xff\xfe not cbor"
        s.sendall(struct.pack(">I", len(bad)) + bad)
        s.sendall(_frame({"not": "an array"}))
        s.sendall(_frame([F.MESSAGES, [[999, 1, 2], "junk", [8, leader, target]]]))
        s.sendall(_frame([F.MESSAGES, [[8, leader, target, [1, 1], 0, [], 0]]]))  # not node 3
        s.sendall(_frame([F.FORWARD, "id", "propose", b""]))
        s.sendall(_frame([F.MESSAGES, [[31, impostor, target, 1, 500, 1, [[1, 2, 3], [], []],
                                        b"/etc/passwd"]]]))   # only transfers install
        wait_for(lambda: _metric(c, target, "paxoslog_peer_malformed_frames_total")
                 >= before + 8, what="malformed input to be counted")
        s.settimeout(0.3)
        try:
            assert s.recv(1) != b"", "closed on a malformed frame"
        except socket.timeout:
            pass                                           # still open: good
        s.sendall(struct.pack(">I", (16 << 20) + 1))       # over frame_bytes_max
        assert _closed_by_peer(s)
    assert "rejected frame" in open(c.log_path(target)).read()
    c.wait_leader(among=[1, 2])
    c.write("after-malformed", 1, nodes=[1, 2])
