"""TLS on our own sockets (the API port, the peer port, dialled peers) with the standard
library's ``ssl`` module: OpenSSL through CPython's ``_ssl``, driven over memory BIOs, the
way asyncio does it.

Why not Twisted's ``listenSSL``/``connectSSL``: under 64 HTTPS clients the node spent
about 40 us per request in that layer (pyOpenSSL's cffi calls and their exceptions, a
write collected until the next reactor turn, then the record handed to the socket one turn
later again), which cost a quarter of the write throughput.  Here a request costs a few
microseconds of TLS: one ``MemoryBIO.write`` and ``SSLObject.read`` per read, one
``SSLObject.write`` and one send per response (through ``sockets.write_now``).  The
cryptography, the certificate checks and the protocol state machine are OpenSSL's; this
module only moves bytes between the socket, OpenSSL and the protocol above.  Clients (the
CLI, ``paxoslog.client``, the chaos tools) keep Twisted's TLS.

``TLSFactory(context, factory, server_side, server_hostname)`` wraps any protocol factory;
listen or dial with plain ``listenTCP``/``connectTCP``.  Contexts come from
``server_context``/``client_context`` (``tls.NodeTls`` builds them).  The protocol above
sees a transport that also has ``getPeerCertificate()`` (a ``cryptography`` certificate,
or None) and, as before, ``pauseProducing``/``registerProducer`` of the TCP connection
(what it writes goes straight to the socket's buffer, so its flow control is the
socket's).  A handshake that fails (no certificate, wrong CA, wrong name, not TLS at all)
aborts the connection; the protocol above sees ``connectionLost``.
"""

from __future__ import annotations

import ssl

from cryptography import x509
from twisted.internet import error
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure

from .sockets import write_now

__all__ = ["TLSFactory", "TLSFailed", "server_context", "client_context"]

log = Logger()

# One TLS record carries at most 16 KiB, and one read returns at most one record's data;
# the buffer is allocated at this size for every read, so no bigger.
_READ_BYTES = 16 * 1024


def _context(purpose: int) -> ssl.SSLContext:
    context = ssl.SSLContext(purpose)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= getattr(ssl, "OP_NO_RENEGOTIATION", 0)
    return context


def server_context(cert_file: str, key_file: str, ca_pem: bytes | None,
                   alpn: tuple[str, ...] = ()) -> ssl.SSLContext:
    """A listening context with our certificate; with ``ca_pem`` a client must present a
    certificate that CA issued (the peer port).  ``alpn``: the protocols to name."""
    context = _context(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    if ca_pem is not None:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(cadata=ca_pem.decode("ascii"))
    if alpn:
        context.set_alpn_protocols(list(alpn))
    return context


def client_context(cert_file: str, key_file: str, ca_pem: bytes) -> ssl.SSLContext:
    """A dialling context: the server's certificate must come from ``ca_pem``'s CA and name
    the ``server_hostname`` given to ``TLSFactory``; we present our own certificate."""
    context = _context(ssl.PROTOCOL_TLS_CLIENT)      # CERT_REQUIRED and check_hostname
    context.hostname_checks_common_name = False      # DNS names only, as service_identity
    context.load_verify_locations(cadata=ca_pem.decode("ascii"))
    context.load_cert_chain(cert_file, key_file)
    return context


class TLSFailed(Exception):
    """Why a connection ended when TLS failed on it (the handshake, or a bad record): the
    reason the protocol above gets in ``connectionLost``, with OpenSSL's reason in words
    (``certificate verify failed: Hostname mismatch, ...``)."""


def _describe(exc: Exception) -> str:
    reason = getattr(exc, "reason", None)
    text = reason.lower().replace("_", " ") if isinstance(reason, str) else str(exc)
    detail = getattr(exc, "verify_message", None)
    return f"{text}: {detail}" if detail else text


class TLSConnection(ProtocolWrapper):
    """One TLS connection: decrypts what the socket brings for the protocol above and
    encrypts what that protocol writes."""

    factory: "TLSFactory"

    def makeConnection(self, transport) -> None:
        factory = self.factory
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._tls = factory.context.wrap_bio(self._incoming, self._outgoing,
                                             server_side=factory.server_side,
                                             server_hostname=factory.server_hostname)
        self._handshaken = False
        self._closed = False           # TLS is over: failed, shut down, or closed early
        self._aborted = False          # nothing more goes to the socket
        self._early: list[bytes] = []  # written by the protocol before the handshake ended
        self._close_after_handshake = False
        self._producer = None
        self._pull = False             # the producer is a pull producer
        self._failure = None
        ProtocolWrapper.makeConnection(self, transport)
        if not self._closed:           # connectionMade above may have closed it
            self._handshake()

    # ------------------------------------------------------------------ reading

    def dataReceived(self, data: bytes) -> None:
        if self._closed:
            return
        self._incoming.write(data)
        if not self._handshaken:
            self._handshake()
            if not self._handshaken:
                return
        tls, incoming = self._tls, self._incoming
        while not self._closed:
            try:
                chunk = tls.read(_READ_BYTES)
            except ssl.SSLWantReadError:
                break
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                self._peer_closed()
                break
            except ssl.SSLError as exc:
                self._fail(exc)
                break
            if not chunk:
                self._peer_closed()
                break
            self.wrappedProtocol.dataReceived(chunk)
            if not incoming.pending and not tls.pending():
                break         # all read: skip the read that would only say "want more"
        if self._outgoing.pending:
            self._flush()

    def _handshake(self) -> None:
        try:
            self._tls.do_handshake()
        except ssl.SSLWantReadError:
            self._flush()
            return
        except (ssl.SSLError, ssl.CertificateError) as exc:
            self._fail(exc)
            return
        self._handshaken = True
        self._flush()
        early, self._early = self._early, []
        for data in early:
            self._send(data)
        if self._close_after_handshake:
            self._close_after_handshake = False
            if self._producer is None:
                self._shutdown()

    # ------------------------------------------------------------------ writing

    def write(self, data: bytes) -> None:
        # As with Twisted's transports, nothing is written after loseConnection unless a
        # producer is still registered (it may finish its stream).
        if self._closed or (self.disconnecting and self._producer is None):
            return
        if not self._handshaken:
            self._early.append(bytes(data))
            return
        self._send(data)

    def writeSequence(self, data) -> None:
        self.write(b"".join(data))

    def _send(self, data: bytes) -> None:
        try:
            done = self._tls.write(data)      # all of it, in records of up to 16 KiB
            if done < len(data):
                view = memoryview(data)[done:]
                while view:
                    view = view[self._tls.write(view):]
        except ssl.SSLError as exc:
            self._fail(exc)
            return
        self._flush()

    def _flush(self) -> None:
        data = self._outgoing.read()
        if data and not self._aborted:
            if not self._pull:
                write_now(self.transport, data)
            else:
                # A pull producer (a file streamed out) is asked for more only when the
                # TCP transport's buffer drains, so its bytes must go through that buffer.
                self.transport.write(data)

    def registerProducer(self, producer, streaming: bool) -> None:
        # Set first: a TCP transport asks a pull producer for its first chunk inside
        # registerProducer, and that chunk must already take the buffered path.
        before = self._producer, self._pull
        self._producer, self._pull = producer, not streaming
        try:
            self.transport.registerProducer(producer, streaming)
        except BaseException:
            self._producer, self._pull = before   # e.g. one is registered already
            raise

    def unregisterProducer(self) -> None:
        self._producer = None
        self._pull = False
        self.transport.unregisterProducer()
        if self.disconnecting and not self._close_after_handshake:
            self._shutdown()          # a loseConnection waited for the producer

    # ------------------------------------------------------------------ closing

    def loseConnection(self) -> None:
        """Send close_notify after what is written (once a registered producer is
        unregistered), then close the TCP connection.  Before the handshake ended: what was
        written goes out once it ends, then the close (a second ``loseConnection``
        meanwhile aborts); with nothing written, just close."""
        if self.disconnecting:
            if self._close_after_handshake:
                self.abortConnection()
            return
        self.disconnecting = True
        if not self._handshaken and not self._closed:
            if self._early:
                self._close_after_handshake = True
                return
            self._closed = True
            self.transport.loseConnection()
            return
        if self._producer is None:
            self._shutdown()

    def _shutdown(self) -> None:
        if not self._closed:
            try:
                self._tls.unwrap()
            except ssl.SSLError:
                pass          # it wants the peer's close_notify: we do not wait for it
            self._flush()
            self._closed = True
        self.transport.loseConnection()

    def abortConnection(self) -> None:
        self._closed = True
        self._aborted = True
        self._close_after_handshake = False
        self.disconnecting = True
        self.transport.abortConnection()

    def _peer_closed(self) -> None:
        """The peer sent close_notify (answered with ours), or the TLS stream ended."""
        try:
            self._tls.unwrap()
        except ssl.SSLError:
            pass
        self._flush()
        self._closed = True
        self.disconnecting = True
        self.transport.loseConnection()

    def _fail(self, exc: Exception) -> None:
        """A TLS error (failed handshake, bad record): send the alert OpenSSL queued and
        drop the connection."""
        self._closed = True
        self._failure = Failure(TLSFailed(_describe(exc)))
        log.debug("TLS connection from {peer} failed: {exc}", peer=self.transport.getPeer(),
                  exc=exc)
        self._flush()
        self._aborted = True
        self.disconnecting = True
        self.transport.abortConnection()

    def connectionLost(self, reason) -> None:
        failure = self._failure
        if failure is None and self._handshaken and not self._closed:
            # The TCP stream ended without a close_notify: the data may be cut short.
            failure = Failure(error.ConnectionLost("the TLS stream ended without close_notify"))
        self._closed = True
        self._aborted = True
        ProtocolWrapper.connectionLost(self, failure or reason)

    # ------------------------------------------------------------------ identity

    def getPeerCertificate(self) -> x509.Certificate | None:
        """The certificate the other side presented (verified against the CA during the
        handshake), or None."""
        if not self._handshaken:
            return None
        der = self._tls.getpeercert(binary_form=True)
        return x509.load_der_x509_certificate(der) if der else None


class TLSFactory(WrappingFactory):
    """Wraps ``factory``'s protocols in TLS with ``context``; a dialling factory names the
    ``server_hostname`` the listener's certificate must carry."""

    protocol = TLSConnection
    noisy = False

    def __init__(self, context: ssl.SSLContext, factory, server_side: bool,
                 server_hostname: str | None = None) -> None:
        super().__init__(factory)
        self.context = context
        self.server_side = server_side
        self.server_hostname = server_hostname
