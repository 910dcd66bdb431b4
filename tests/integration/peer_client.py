"""A hand-made peer for the integration tests: dials a real node's peer port over a plain
(or TLS) socket, speaks the handshake frame by frame and, once authenticated, sends and reads
frames with or without their MACs, so tests can forge, replay and reorder them.

It uses the protocol's own primitives (frames.py: transcript hash, proofs, frame keys and
MACs) and nothing of the node's connection logic."""

from __future__ import annotations

import os
import socket
import ssl
import struct

import cbor2

from paxoslog.server import frames as F

_HEADER = struct.Struct(">I")


def frame(payload) -> bytes:
    """An unauthenticated frame of ``payload``."""
    data = cbor2.dumps(payload)
    return _HEADER.pack(len(data)) + data


def recv_exact(s: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = s.recv(n - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data


def read_raw(s: socket.socket) -> bytes:
    (length,) = _HEADER.unpack(recv_exact(s, 4))
    return recv_exact(s, length)


def closed_by_peer(s: socket.socket, timeout: float = 5.0) -> bool:
    """True once the node closes the connection (within ``timeout``)."""
    s.settimeout(timeout)
    try:
        while True:
            if not s.recv(65536):
                return True
    except (ConnectionResetError, BrokenPipeError, ssl.SSLError):
        return True
    except socket.timeout:
        return False


def tls_socket(port: int, ca_file: str | None, cert: tuple[str, str] | None,
               server_name: str | None) -> ssl.SSLSocket:
    """A TLS connection to 127.0.0.1:``port`` presenting ``cert`` (cert file, key file).
    ``ca_file`` None: the server's certificate is not checked (an impostor's view)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if ca_file is None:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    else:
        context.load_verify_locations(ca_file)
        context.check_hostname = server_name is not None
    if cert is not None:
        context.load_cert_chain(*cert)
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    return context.wrap_socket(raw, server_hostname=server_name)


def hello_info(enabled=("kv",)) -> dict:
    """The info map of a HELLO from a node with the harness's state machines (the conf's
    default ``kv`` plus the always-on ``membership``)."""
    import statemachines
    names = sorted(set(enabled) | {"membership"})
    return {"version": "test",
            "state_machines": [[n, getattr(statemachines.create(n), "version", 1)]
                               for n in names]}


class PeerClient:
    """One dialer connection claiming to be node ``claimed`` of ``cluster``."""

    def __init__(self, sock: socket.socket, cluster: str, claimed: int, target: int,
                 bootstrap: list[int], secret: bytes | None, macs: bool = True) -> None:
        self.sock = sock
        self.cluster = cluster
        self.claimed = claimed
        self.target = target
        self.bootstrap = bootstrap
        self.secret = secret
        self.macs = macs and bool(secret)
        self.sealer: F.FrameSealer | None = None
        self.opener: F.FrameOpener | None = None
        self._hello = b""

    def hello(self) -> list:
        """Send HELLO; returns the node's answer (the CHALLENGE)."""
        self._hello = cbor2.dumps([F.HELLO, F.WIRE_VERSION, self.cluster, self.claimed,
                                   self.target, os.urandom(F.NONCE_BYTES), self.bootstrap,
                                   hello_info()])
        self.sock.sendall(_HEADER.pack(len(self._hello)) + self._hello)
        self._challenge = read_raw(self.sock)
        return cbor2.loads(self._challenge)

    def authenticate(self, secret: bytes | None = None) -> list:
        """Send AUTH (proved with ``secret``, default ours); returns the ACCEPT and, when it
        checks out, switches to MAC'd frames like the node does."""
        transcript = F.transcript_hash(self._hello, self._challenge)
        proof = F.handshake_proof(secret if secret is not None else self.secret, "dialer",
                                  transcript)
        self.sock.sendall(frame([F.AUTH, proof]))
        accept = cbor2.loads(read_raw(self.sock))
        want = F.handshake_proof(self.secret, "acceptor", transcript)
        assert accept[:2] == [F.ACCEPT, want] and isinstance(accept[2], dict), accept
        if self.macs:
            to_acceptor, to_dialer = F.frame_keys(self.secret, transcript)
            self.sealer = F.FrameSealer(to_acceptor)
            self.opener = F.FrameOpener(to_dialer)
        return accept

    def sealed(self, payload) -> bytes:
        """The frame of ``payload`` as the next in sequence (MAC'd when MACs are on)."""
        data = cbor2.dumps(payload)
        if self.sealer is not None:
            return self.sealer.seal(data)
        return _HEADER.pack(len(data)) + data

    def send(self, payload) -> bytes:
        data = self.sealed(payload)
        self.sock.sendall(data)
        return data

    def read(self) -> list:
        """The next frame's payload (its MAC checked)."""
        data = read_raw(self.sock)
        if self.opener is not None:
            data = self.opener.open(data)
        return cbor2.loads(data)
