"""TLS material for the client API and between peers: certificates read and checked with
``cryptography``, names matched by ``service_identity``; the node's own TLS connections
run on the standard library's ``ssl`` (``tlswire``), clients and the chaos proxy use
Twisted's (pyOpenSSL) options made here too.

Trust model (docs/security.md): one CA per cluster (``paxoslog certs init`` makes one for
local use and tests).  Every node has a certificate from it that names the node's identity,
``node-<id>.<cluster>.paxoslog`` (a DNS SAN), plus the hosts clients and peers reach it by.

* Client API (``[tls] api``): HTTPS with the node's certificate; clients verify it against
  the CA file (``--cacert``, ``$PAXOSLOG_CACERT`` or the conf's ``ca_file``) and the host
  they dialled.  Client certificates are not asked for here.
* Peers (``[tls] peers``): mutual TLS.  The acceptor requires a certificate issued by the
  CA (a peer without one fails the TLS handshake), and once the peer's HELLO says which
  node it is, that its certificate names that node (``check_peer_identity``).  The dialer
  verifies that the acceptor's certificate names the node it meant to dial (the
  ``tlswire`` context from ``NodeTls.peer_client_context`` with that node's identity as
  the server name).  Frames inside TLS need no MAC of their own.

``load_node_tls`` and ``load_ca`` raise ``ConfigError`` naming the conf file, the key
(``tls.cert_file``, ``nodes[1].tls_key_file``, ...) and what is wrong with the file.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

from paxoslog.config import SECRET_BYTES_MIN_MULTI_HOST, ConfigError

__all__ = ["IDENTITY_SUFFIX", "NodeTls", "node_identity", "load_node_tls", "load_ca",
           "check_peer_identity", "https_policy", "transport_warnings"]

IDENTITY_SUFFIX = "paxoslog"


def node_identity(cluster: str, node_id: int) -> str:
    """The DNS name a node's certificate must carry: ``node-<id>.<cluster>.paxoslog``."""
    return f"node-{node_id}.{cluster}.{IDENTITY_SUFFIX}".lower()


@dataclass(frozen=True)
class NodeTls:
    """A node's TLS material: the cluster CA and its own certificate and key (Twisted
    objects), ready to make context factories."""

    cluster: str
    node_id: int
    ca_pem: bytes = field(repr=False)
    cert_pem: bytes = field(repr=False)
    key_pem: bytes = field(repr=False)
    warnings: tuple[str, ...] = ()
    cert_file: str | None = None        # the same certificate and key as files (the
    key_file: str | None = None         # standard library's ssl loads them only so)

    def _twisted(self):
        from twisted.internet import ssl
        ca = ssl.Certificate.loadPEM(self.ca_pem)
        own = ssl.PrivateCertificate.loadPEM(self.cert_pem + b"\n" + self.key_pem)
        return ssl, ca, own

    def server_options(self, require_client_certificate: bool):
        """Context factory for a listening port.  With ``require_client_certificate`` (the
        peer port) a client must present a certificate the cluster CA issued."""
        ssl, ca, own = self._twisted()
        if require_client_certificate:
            return ssl.CertificateOptions(
                privateKey=own.privateKey.original, certificate=own.original, verify=True,
                caCerts=[ca.original], requireCertificate=True,
                raiseMinimumTo=ssl.TLSVersion.TLSv1_2)
        # ALPN: name the one protocol the API speaks.  Twisted installs an ALPN callback on
        # every server context, and without a protocol list it answers any client that
        # offers ALPN (curl, requests, browsers) with an empty choice, which pyOpenSSL turns
        # into a failed handshake (internal_error alert).
        return ssl.CertificateOptions(privateKey=own.privateKey.original,
                                      certificate=own.original,
                                      raiseMinimumTo=ssl.TLSVersion.TLSv1_2,
                                      acceptableProtocols=[b"http/1.1"])

    def server_context(self, require_client_certificate: bool):
        """An ``ssl.SSLContext`` for our listening ports (``tlswire``): with
        ``require_client_certificate`` (the peer port) a client must present a certificate
        the cluster CA issued; the API port names ALPN ``http/1.1``."""
        from .tlswire import server_context
        if require_client_certificate:
            return server_context(self.cert_file, self.key_file, self.ca_pem)
        return server_context(self.cert_file, self.key_file, None, alpn=("http/1.1",))

    def peer_client_context(self):
        """An ``ssl.SSLContext`` to dial peers: trusts only the cluster CA, presents our
        certificate.  The peer's name to check is ``node_identity(cluster, peer_id)``."""
        from .tlswire import client_context
        return client_context(self.cert_file, self.key_file, self.ca_pem)

    def peer_client_options(self, peer_id: int):
        """Context factory to dial ``peer_id``: it must prove to be that node (its
        certificate names ``node_identity(cluster, peer_id)``); we present ours."""
        ssl, ca, own = self._twisted()
        return ssl.optionsForClientTLS(
            node_identity(self.cluster, peer_id), trustRoot=ca, clientCertificate=own,
            extraCertificateOptions={"raiseMinimumTo": ssl.TLSVersion.TLSv1_2})


def _read(path: str, config, key: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise ConfigError(config.path, key, f"cannot read {path}: {exc.strerror}") from None


def _certificate(data: bytes, path: str, config, key: str) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError:
        raise ConfigError(config.path, key, f"{path} is not a PEM certificate") from None


def load_ca(config, path: str | None = None, key: str = "tls.ca_file") -> bytes:
    """The CA certificate (PEM) named by ``path`` (default: the conf's ``tls.ca_file``),
    checked to be a CA certificate; ``ConfigError`` otherwise."""
    if path is None:
        if config.tls is None:
            raise ConfigError(config.path, "tls", "no [tls] section: nothing to verify with")
        path = config.tls.ca_file
    data = _read(path, config, key)
    ca = _certificate(data, path, config, key)
    try:
        constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        constraints = None
    if constraints is None or not constraints.ca:
        raise ConfigError(config.path, key, f"{path} is not a CA certificate (basic "
                                            "constraints: CA false or absent)")
    return data


def _node_key(config, node_id: int, suffix: str) -> str:
    """The conf key naming this node's file: per node if set there, else [tls]."""
    tls = config.tls
    template = tls.cert_file if suffix == "cert" else tls.key_file
    if template is not None:
        return f"tls.{suffix}_file"
    position = [n.id for n in config.nodes].index(node_id)
    return f"nodes[{position}].tls_{suffix}_file"


def load_node_tls(config, node_id: int, now: datetime.datetime | None = None) -> NodeTls:
    """Read and check this node's TLS files: the CA, its certificate (issued by the CA,
    in date, naming ``node_identity``) and the matching private key."""
    node = config.node(node_id)
    cert_key = _node_key(config, node_id, "cert")
    key_key = _node_key(config, node_id, "key")
    if node.tls_cert_file is None:
        raise ConfigError(config.path, cert_key, f"missing: node {node_id} needs a "
                                                 "certificate (cert_file in [tls], {node} "
                                                 "for the node id, or tls_cert_file)")
    if node.tls_key_file is None:
        raise ConfigError(config.path, key_key, f"missing: node {node_id} needs its private "
                                                "key (key_file in [tls] or tls_key_file)")
    ca_pem = load_ca(config)
    ca = x509.load_pem_x509_certificate(ca_pem)
    cert_path, key_path = node.tls_cert_file, node.tls_key_file
    cert_pem = _read(cert_path, config, cert_key)
    cert = _certificate(cert_pem, cert_path, config, cert_key)
    key_pem = _read(key_path, config, key_key)
    try:
        private = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(config.path, key_key, f"{key_path} is not an unencrypted PEM "
                                                f"private key ({exc})") from None
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    if private.public_key().public_bytes(serialization.Encoding.DER, public) != \
            cert.public_key().public_bytes(serialization.Encoding.DER, public):
        raise ConfigError(config.path, key_key, f"{key_path} does not belong to the "
                                                f"certificate {cert_path}")
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise ConfigError(config.path, cert_key, f"{cert_path} was not issued by the CA in "
                                                 f"{config.tls.ca_file} ({exc or 'bad signature'})"
                          ) from None
    now = now or datetime.datetime.now(datetime.timezone.utc)
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise ConfigError(config.path, cert_key, f"{cert_path} is valid from "
                                                 f"{cert.not_valid_before_utc:%Y-%m-%d} to "
                                                 f"{cert.not_valid_after_utc:%Y-%m-%d}, not now")
    identity = node_identity(config.name, node_id)
    from service_identity import VerificationError
    from service_identity.cryptography import verify_certificate_hostname
    try:
        verify_certificate_hostname(cert, identity)
    except VerificationError:
        raise ConfigError(config.path, cert_key, f"{cert_path} does not name {identity} (a "
                                                 "node's certificate must carry its identity "
                                                 "as a DNS name; see paxoslog certs init)"
                          ) from None
    warnings = []
    try:
        if os.stat(key_path).st_mode & 0o077:
            warnings.append(f"{key_path} (the node's private key) can be read by other users; "
                            f"chmod 600 it")
    except OSError:
        pass
    return NodeTls(config.name, node_id, ca_pem, cert_pem, key_pem, tuple(warnings),
                   cert_file=cert_path, key_file=key_path)


def check_peer_identity(transport, cluster: str, node_id: int) -> str | None:
    """None when the TLS peer on ``transport`` (a ``tlswire`` connection) presented a
    certificate naming ``node_id``; else why not.  (The chain was verified against the CA
    during the TLS handshake.)"""
    from service_identity import VerificationError
    from service_identity.cryptography import verify_certificate_hostname
    try:
        peer = transport.getPeerCertificate()
    except Exception:  # not a TLS transport, or the handshake is not done
        peer = None
    if peer is None:
        return "the peer presented no TLS certificate"
    identity = node_identity(cluster, node_id)
    try:
        verify_certificate_hostname(peer, identity)
    except VerificationError:
        return f"its TLS certificate does not name {identity}"
    return None


def https_policy(cafile: str):
    """A Twisted ``IPolicyForHTTPS`` (for ``Agent``) that trusts only ``cafile``."""
    from twisted.internet import ssl
    from twisted.web.client import BrowserLikePolicyForHTTPS
    with open(cafile, "rb") as f:
        return BrowserLikePolicyForHTTPS(trustRoot=ssl.Certificate.loadPEM(f.read()))


def transport_warnings(config) -> list[str]:
    """What a node should warn about at start: plain TCP beyond loopback, weak secrets."""
    out = []
    if not config.local:
        if not config.tls_peers:
            out.append("SECURITY: this conf reaches nodes on non-loopback addresses but peer "
                       "traffic is plain TCP (no [tls] peers): anyone on the network can "
                       "read the replicated data; only the HMAC handshake and frame MACs "
                       "protect it.  Set up [tls] (paxoslog certs init, docs/security.md)")
        if not config.tls_api:
            out.append("SECURITY: the client API is plain HTTP on non-loopback addresses (no "
                       "[tls] api): requests and answers cross the network in clear text")
    elif len(config.nodes) > 1:
        if config.secret is None:
            out.append("no peer secret in the conf: peers are not authenticated (acceptable "
                       "on loopback only; a multi-host conf requires one)")
        elif len(config.secret) < SECRET_BYTES_MIN_MULTI_HOST:
            out.append(f"the peer secret is shorter than {SECRET_BYTES_MIN_MULTI_HOST} bytes: "
                       f"acceptable on loopback only; a multi-host conf refuses it")
    return out
