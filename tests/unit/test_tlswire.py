"""``server/tlswire``: TLS on the standard library's memory BIOs between the socket and our
protocols.  Two ends are wired through in-memory transports and the bytes moved by hand,
so every case is exact: the handshake with mutual certificates, early writes, records
split or batched, the refusals (wrong name, no client certificate, a CA we do not trust,
not TLS at all) and the close."""

from __future__ import annotations

import pytest
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import StringTransport

from paxoslog.certs import init_certs
from paxoslog.config import load_config
from paxoslog.server.tls import check_peer_identity, load_node_tls, node_identity
from paxoslog.server.tlswire import TLSFactory, client_context, server_context

NODES = "".join(f'\n[[nodes]]\nid = {i}\npeer = "127.0.0.1:{7000 + i}"\n'
                f'api = "127.0.0.1:{8000 + i}"\n' for i in (1, 2))
TLS = ('\n[tls]\nca_file = "certs/ca.pem"\ncert_file = "certs/node-{node}.pem"\n'
       'key_file = "certs/node-{node}.key"\n')


def _cluster(tmp_path, name: str):
    folder = tmp_path / name
    folder.mkdir()
    path = folder / "c.toml"
    path.write_text(f'cluster = "wire"\ndata_dir = "{folder}/d/{{node}}"\n'
                    f'secret = "{"0" * 32}"\n{TLS}{NODES}')
    config = load_config(str(path))
    init_certs(config)
    return {n: load_node_tls(config, n) for n in (1, 2)}


@pytest.fixture(scope="module")
def material(tmp_path_factory):
    return _cluster(tmp_path_factory.mktemp("tlswire"), "cluster")


class Recorder(Protocol):
    def __init__(self):
        self.received = b""
        self.lost = None
        self.made = False

    def connectionMade(self):
        self.made = True

    def dataReceived(self, data):
        self.received += data

    def connectionLost(self, reason):
        self.lost = reason


class Pair:
    """A client and a server TLSConnection joined by two StringTransports."""

    def __init__(self, server_factory: TLSFactory, client_factory: TLSFactory):
        self.server_app, self.client_app = Recorder(), Recorder()
        server_factory.wrappedFactory = Factory.forProtocol(lambda: self.server_app)
        client_factory.wrappedFactory = Factory.forProtocol(lambda: self.client_app)
        self.server = server_factory.buildProtocol(None)
        self.client = client_factory.buildProtocol(None)
        self.server_wire, self.client_wire = StringTransport(), StringTransport()
        self.server.makeConnection(self.server_wire)
        self.client.makeConnection(self.client_wire)

    def pump(self, rounds: int = 20) -> None:
        for _ in range(rounds):
            moved = False
            for wire, to in ((self.client_wire, self.server), (self.server_wire, self.client)):
                data = wire.value()
                if data:
                    wire.clear()
                    to.dataReceived(data)
                    moved = True
            if not moved:
                return

    def finish(self) -> None:
        """Deliver connectionLost to both ends the way the reactor would."""
        for end, wire in ((self.server, self.server_wire), (self.client, self.client_wire)):
            if wire.disconnecting:
                end.connectionLost(None)


def _server(tls, client_certificate: bool = True) -> TLSFactory:
    return TLSFactory(tls.server_context(client_certificate), None, server_side=True)


def _client(tls, expect: int) -> TLSFactory:
    return TLSFactory(tls.peer_client_context(), None, server_side=False,
                      server_hostname=node_identity(tls.cluster, expect))


def test_mutual_handshake_carries_early_writes_both_ways(material):
    pair = Pair(_server(material[1]), _client(material[2], expect=1))
    pair.client.write(b"hello before the handshake")
    assert pair.server_app.made and pair.client_app.made
    pair.pump()
    assert pair.server_app.received == b"hello before the handshake"
    pair.server.write(b"answer")
    pair.pump()
    assert pair.client_app.received == b"answer"
    # Each end sees the other's verified certificate: the acceptor checks the name there.
    assert check_peer_identity(pair.server, "wire", 2) is None
    assert "does not name" in check_peer_identity(pair.server, "wire", 1)
    assert check_peer_identity(pair.client, "wire", 1) is None


def test_big_writes_and_batched_records_arrive_whole(material):
    pair = Pair(_server(material[1]), _client(material[2], expect=1))
    pair.pump()
    big = bytes(range(256)) * 1000                 # 256 KB: many records
    pair.client.write(big)
    for i in range(50):                            # 50 small records in one socket read
        pair.client.write(b"<%d>" % i)
    pair.pump()
    assert pair.server_app.received == big + b"".join(b"<%d>" % i for i in range(50))


def test_a_record_split_across_reads_is_delivered_once_complete(material):
    pair = Pair(_server(material[1]), _client(material[2], expect=1))
    pair.pump()
    pair.client.write(b"split me")
    wire = pair.client_wire.value()
    pair.client_wire.clear()
    for i in range(len(wire)):
        pair.server.dataReceived(wire[i:i + 1])
        if i < len(wire) - 1:
            assert pair.server_app.received == b""
    assert pair.server_app.received == b"split me"


def test_a_server_with_the_wrong_name_is_refused(material):
    pair = Pair(_server(material[1]), _client(material[2], expect=2))   # 1 is not 2
    pair.client.write(b"secret")
    pair.pump()
    pair.finish()
    assert pair.server_app.received == b"" and pair.client_app.received == b""
    assert pair.client_wire.disconnecting
    assert "hostname mismatch" in str(pair.client_app.lost.value).lower()


def test_a_peer_without_a_client_certificate_is_refused(material):
    from paxoslog.server.tlswire import _context
    import ssl
    bare = _context(ssl.PROTOCOL_TLS_CLIENT)
    bare.load_verify_locations(cadata=material[1].ca_pem.decode())
    client = TLSFactory(bare, None, server_side=False,
                        server_hostname=node_identity("wire", 1))
    pair = Pair(_server(material[1]), client)
    pair.client.write(b"let me in")
    pair.pump()
    assert pair.server_app.received == b""
    assert pair.server_wire.disconnecting


def test_a_certificate_from_another_ca_is_refused(material, tmp_path):
    stranger = _cluster(tmp_path, "other")[2]      # same names, different CA
    pair = Pair(_server(material[1]), _client(stranger, expect=1))
    pair.client.write(b"let me in")
    pair.pump()
    assert pair.server_app.received == b"" and pair.client_app.received == b""
    assert pair.server_wire.disconnecting or pair.client_wire.disconnecting


def test_plain_bytes_to_a_tls_port_never_reach_the_protocol(material):
    server = _server(material[1], client_certificate=False)
    app = Recorder()
    server.wrappedFactory = Factory.forProtocol(lambda: app)
    conn = server.buildProtocol(None)
    wire = StringTransport()
    conn.makeConnection(wire)
    conn.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert app.received == b"" and wire.disconnecting
    conn.write(b"nothing after a failure")
    assert b"nothing" not in wire.value()


def test_lose_connection_sends_close_notify_and_the_peer_closes(material):
    pair = Pair(_server(material[1], client_certificate=False),
                TLSFactory(client_context(material[2].cert_file, material[2].key_file,
                                          material[2].ca_pem),
                           None, server_side=False, server_hostname="127.0.0.1"))
    pair.pump()
    pair.server.write(b"last words")
    pair.server.loseConnection()
    pair.server.write(b"too late")
    assert pair.server_wire.disconnecting
    pair.pump()
    assert pair.client_app.received == b"last words"
    assert pair.client_wire.disconnecting           # close_notify ends the client too


def test_lose_connection_before_the_handshake_just_closes(material):
    pair = Pair(_server(material[1]), _client(material[2], expect=1))
    pair.server.loseConnection()
    assert pair.server_wire.disconnecting
    pair.server.write(b"dropped")
    assert b"dropped" not in pair.server_wire.value()


class RefuseAtOnce(Recorder):
    """Writes an answer and closes in connectionMade (the API's 503 when a node has too
    many connections)."""

    def connectionMade(self):
        super().connectionMade()
        self.transport.write(b"HTTP/1.1 503 busy\r\n\r\n")
        self.transport.loseConnection()


def test_an_answer_written_before_the_handshake_goes_out_before_the_close(material):
    server = _server(material[1], client_certificate=False)
    app = RefuseAtOnce()
    server.wrappedFactory = Factory.forProtocol(lambda: app)
    pair = Pair(server, TLSFactory(client_context(material[2].cert_file,
                                                  material[2].key_file, material[2].ca_pem),
                                   None, server_side=False, server_hostname="127.0.0.1"))
    pair.server_app = app
    pair.server = server.buildProtocol(None)
    pair.server_wire = StringTransport()
    pair.server.makeConnection(pair.server_wire)
    assert not pair.server_wire.disconnecting        # waits for the handshake
    pair.pump()
    assert pair.client_app.received == b"HTTP/1.1 503 busy\r\n\r\n"
    assert pair.server_wire.disconnecting


def test_a_second_close_during_a_pending_handshake_aborts(material):
    pair = Pair(_server(material[1]), _client(material[2], expect=1))
    pair.server.write(b"early")
    pair.server.loseConnection()
    assert not pair.server_wire.disconnecting
    pair.server.loseConnection()                     # e.g. the read deadline, again
    assert pair.server_wire.disconnecting


def test_close_waits_for_a_registered_producer(material):
    pair = Pair(_server(material[1]), _client(material[2], expect=1))
    pair.pump()
    producer = object()
    pair.server.registerProducer(producer, False)   # a file being streamed
    pair.server.write(b"part 1;")
    pair.server.loseConnection()
    pair.server.write(b"part 2;")                    # the producer finishes its stream
    assert not pair.server_wire.disconnecting
    pair.server.unregisterProducer()
    assert pair.server_wire.disconnecting
    pair.server.write(b"too late")
    pair.pump()
    assert pair.client_app.received == b"part 1;part 2;"


def test_a_close_notify_is_answered_and_a_cut_stream_is_not_a_clean_close(material):
    pair = Pair(_server(material[1]), _client(material[2], expect=1))
    pair.pump()
    pair.client.loseConnection()                     # sends close_notify
    wire = pair.client_wire.value()
    pair.client_wire.clear()
    pair.server.dataReceived(wire)
    assert pair.server_wire.disconnecting and pair.server_wire.value()   # ours back
    other = Pair(_server(material[1]), _client(material[2], expect=1))
    other.pump()
    other.server.connectionLost(None)                # TCP ended, no close_notify
    assert "without close_notify" in str(other.server_app.lost.value)
