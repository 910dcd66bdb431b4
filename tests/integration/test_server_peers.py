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
from tests.integration.peer_client import PeerClient, closed_by_peer, frame, hello_info
from tests.integration.test_server_membership import _wait_voter

SECRET = "integration-secret"

_frame = frame
_closed_by_peer = closed_by_peer


def _connect(c, node: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", c.peer_ports[node]), timeout=5)


def _peer(c, target: int, claimed: int, secret: str = SECRET, cluster: str | None = None,
          bootstrap: list[int] | None = None):
    """A hand-made dialer of ``target`` claiming to be node ``claimed`` (not yet talking)."""
    return PeerClient(_connect(c, target), cluster or f"it-{c.protocol}", claimed, target,
                      bootstrap or sorted(c.ids), secret.encode())


def _frames_until(peer, kind: int) -> dict | None:
    """Handshake, then read frames until one of ``kind``: every frame read by kind (None
    when it did not come among the first ten; a PING may come first)."""
    peer.hello()
    peer.authenticate()
    frames = {}
    for _ in range(10):
        payload = peer.read()
        frames[payload[0]] = payload
        if payload[0] == kind:
            return frames
    return None


def _metric(c, node: int, name: str) -> float:
    text = c.request(node, "GET", "/metrics").body.decode()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise KeyError(name)


@pytest.fixture
def mp_cluster(make_cluster):
    return make_cluster("multipaxos", tls=False)


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
        s.sendall(_frame([F.HELLO, F.WIRE_VERSION, "someone-else", 1, target,
                          os.urandom(F.NONCE_BYTES), sorted(c.ids), hello_info()]))
        assert _closed_by_peer(s)
    with _connect(c, target) as s:
        s.sendall(_frame([F.HELLO, F.WIRE_VERSION, f"it-{c.protocol}", 99, target,
                          os.urandom(F.NONCE_BYTES), sorted(c.ids), hello_info()]))
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
    peer = _peer(c, target, c.ids[0], "not-the-secret")
    with peer.sock as s:
        assert peer.hello()[0] == F.CHALLENGE
        s.sendall(_frame([F.AUTH, F.handshake_proof(b"not-the-secret", "dialer", b"x")]))
        assert _closed_by_peer(s)
    wait_for(lambda: _metric(c, target, "paxoslog_peer_handshake_failures_total") >= 1,
             what="the failed handshake to be counted")
    c.write("after-bad-secret", 1)
    for node in c.ids:
        assert SECRET not in open(c.log_path(node)).read()


def test_malformed_frames_are_dropped_and_oversized_frames_close_the_connection(make_cluster):
    """After a correct handshake: undecodable frames and messages are dropped (counted,
    the connection stays); a frame over frame_bytes_max closes it with a logged reason."""
    c = make_cluster("multipaxos", start=False, tls=False)
    c.start(1)
    c.start(2)                      # node 3 stays down: the test speaks as node 3
    leader = c.wait_leader(among=[1, 2])
    target = next(n for n in (1, 2) if n != leader)
    impostor = 3
    before = _metric(c, target, "paxoslog_peer_malformed_frames_total")
    peer = _peer(c, target, impostor)
    peer.hello()
    peer.authenticate()
    with peer.sock as s:
        s.sendall(peer.sealer.seal(b"\xff\xfe not cbor"))
        peer.send({"not": "an array"})
        peer.send([F.MESSAGES, [[999, 1, 2], "junk", [8, leader, target]]])
        peer.send([F.MESSAGES, [[8, leader, target, [1, 1], 0, [], 0]]])  # not node 3
        peer.send([F.FORWARD, "id", "propose", b""])
        peer.send([F.MESSAGES, [[31, impostor, target, 1, 500, 1, [[1, 2, 3], [], []],
                                 b"/etc/passwd"]]])   # only transfers install
        wait_for(lambda: _metric(c, target, "paxoslog_peer_malformed_frames_total")
                 >= before + 8, what="malformed input to be counted")
        s.settimeout(0.3)
        try:
            assert s.recv(1) != b"", "closed on a malformed frame"
        except socket.timeout:
            pass                                           # still open: good
        s.sendall(struct.pack(">I", (16 << 20) + F.TAG_BYTES + 1))   # over frame_bytes_max
        assert _closed_by_peer(s)
    assert "rejected frame" in open(c.log_path(target)).read()
    c.wait_leader(among=[1, 2])
    c.write("after-malformed", 1, nodes=[1, 2])


def test_a_removed_node_that_dials_a_member_is_told_and_hung_up_on(make_cluster):
    """Node 3 is removed while it is down.  When it comes back after the members stopped
    dialing it, it dials them itself (peers.py, ``_dial_down``: the lower ids no longer
    dial it): a member accepts its handshake, tells it it was removed, with the voters of
    the configuration the member applied, and hangs up."""
    c = make_cluster("raft", start=False, tls=False)
    c.start(1)
    c.start(2)                      # node 3 stays down: the test dials as node 3
    leader = c.wait_leader(among=[1, 2])
    response = c.request(leader, "POST", "/api/v1/cluster/remove-node", {"node_id": 3},
                         timeout=30)
    assert response.status == 200, response.body
    for member in (1, 2):
        def told() -> list | None:
            peer = _peer(c, member, 3)
            with peer.sock:
                frames = _frames_until(peer, F.REMOVED)
                if frames is None:
                    return None
                assert closed_by_peer(peer.sock)
                return frames[F.REMOVED]
        removed = wait_for(told, what=f"node {member} to tell node 3 it was removed")
        assert removed[1] == f"it-{c.protocol}"
        assert removed[3] == [1, 2]
    c.write("after-removal", 1, nodes=[1, 2])


@pytest.mark.parametrize("tls", [False, True], ids=["tcp", "mutual-tls"])
def test_a_node_down_while_voters_were_added_learns_of_its_removal_from_them(make_cluster,
                                                                             tls):
    """Node 3 is down while nodes 4 and 5 join, then 3 and 1 are removed: the voters are
    2, 4 and 5, and node 3 knows only 1, 2 and 3.  Node 2 tells a node that dials as 3
    where 4 and 5 listen (a VOTER_ADDRESSES frame after REMOVED).  The real node 3 then
    comes back and exits once a majority of 2, 4 and 5 told it.  Before, it counted only
    the voters of its own configuration (2), and refused the handshakes of 4 and 5 (not
    members in its view), so it waited, answering 410, until an operator stopped it.
    Under mutual TLS node 3 dials 4 and 5 by the names in their certificates (the
    hand-made peer, which speaks plain TCP, is left out there)."""
    c = make_cluster("multipaxos", tls=tls)
    assert c.stop(3) == 0
    for new in (4, 5):
        c.new_node(new)
        c.start(new, join=1)
        _wait_voter(c, new, [1, 2, new])
    for gone, via in ((3, 1), (1, 2)):
        response = c.request(via, "POST", "/api/v1/cluster/remove-node",
                             {"node_id": gone}, timeout=30)
        assert response.status == 200, response.body
    assert c.wait_exit(1, timeout=30) == 0
    c.write("after-removals", 1, nodes=[2, 4, 5])

    def told() -> list | None:
        peer = _peer(c, 2, 3, bootstrap=[1, 2, 3])
        with peer.sock:
            frames = _frames_until(peer, F.VOTER_ADDRESSES)
        return frames and [frames.get(F.REMOVED), frames[F.VOTER_ADDRESSES]]
    if not tls:
        removed, where = wait_for(told, what="node 2 to tell node 3 where the voters are")
        assert removed[2:] and removed[3] == [2, 4, 5]
        assert where[2] == [[n, f"127.0.0.1:{c.peer_ports[n]}"] for n in (2, 4, 5)]
    c.start(3)
    assert c.wait_exit(3, timeout=60) == 0
    log = open(c.log_path(3)).read()
    assert "was removed from the cluster" in log
    assert "named voters this node did not know: [4, 5]" in log
