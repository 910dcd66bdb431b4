"""``paxoslog certs init``: a cluster CA and one certificate per node, for a conf file.

Made with ``cryptography`` (ECDSA P-256, SHA-256).  Meant for local clusters, tests and
getting started; a production cluster may use certificates from any CA as long as each node
certificate names the node's identity (``node-<id>.<cluster>.paxoslog``, see
paxoslog/server/tls.py) and the hosts its clients dial.

Where the files go: with ``--out DIR`` (or when the conf has no ``[tls]`` section, default
``<conf dir>/certs``) as ``ca.pem``, ``ca.key``, ``node-<id>.pem`` and ``node-<id>.key``;
otherwise at the paths the conf's ``[tls]`` names (the CA key next to ``ca_file``, as
``<name>.key``).  Private keys are written mode 0600.  Running it again is safe: an
existing CA is reused (never overwritten), and a node certificate that the CA issued and
that still names the node's identity and addresses is kept; others are (re)issued, so
after adding a node to the conf, run it again.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from paxoslog.storage.durable import atomic_write

__all__ = ["CertFiles", "init_certs", "node_names", "tls_section"]

CA_DAYS = 3650
NODE_DAYS = 825


@dataclass(frozen=True)
class CertFiles:
    """Where the files of one cluster go."""

    ca_cert: str
    ca_key: str
    nodes: dict           # node id -> (cert path, key path)
    out_dir: str | None   # set when the default layout is used


def _identity(cluster: str, node_id: int) -> str:
    # Same rule as paxoslog.server.tls.node_identity (not imported: that module pulls in
    # the whole server).
    return f"node-{node_id}.{cluster}.paxoslog".lower()


def node_names(config, node) -> list[x509.GeneralName]:
    """SubjectAltNames of ``node``'s certificate: its identity, then every host the conf
    says peers and clients reach it by (an IP address or a DNS name), then localhost for a
    node on loopback."""
    names: list[x509.GeneralName] = [x509.DNSName(_identity(config.name, node.id))]
    seen = set()
    hosts = [node.peer.host, node.api.host]
    if node.local:
        hosts += ["127.0.0.1", "::1", "localhost"]
    for host in hosts:
        if host in seen or host in ("0.0.0.0", "::"):
            continue
        seen.add(host)
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host.lower()))
    return names


def layout(config, out_dir: str | None = None) -> CertFiles:
    """The file paths for ``config`` (see the module docstring)."""
    if out_dir is None and config.tls is not None:
        ca = config.tls.ca_file
        base = ca[:-4] if ca.endswith(".pem") else ca
        nodes = {}
        for node in config.nodes:
            if node.tls_cert_file is None or node.tls_key_file is None:
                raise ValueError(f"{config.path}: [tls] names no cert_file/key_file for node "
                                 f"{node.id}; set them, or pass --out")
            nodes[node.id] = (node.tls_cert_file, node.tls_key_file)
        paths = [p for pair in nodes.values() for p in pair]
        if len(set(paths)) != len(paths):
            raise ValueError(f"{config.path}: [tls] names the same files for several nodes "
                             f"(one path per host); pass --out DIR to write them apart")
        return CertFiles(ca, base + ".key", nodes, None)
    if out_dir is None:
        out_dir = os.path.join(os.path.dirname(os.path.abspath(config.path)), "certs")
    out_dir = os.path.abspath(out_dir)
    return CertFiles(os.path.join(out_dir, "ca.pem"), os.path.join(out_dir, "ca.key"),
                     {n.id: (os.path.join(out_dir, f"node-{n.id}.pem"),
                             os.path.join(out_dir, f"node-{n.id}.key")) for n in config.nodes},
                     out_dir)


def _write(path: str, data: bytes, private: bool) -> None:
    """Write ``data`` to ``path`` atomically (a temporary file renamed over it)."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    atomic_write(path, data, mode=0o600 if private else 0o644)


def _key_pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _new_ca(cluster: str, now: datetime.datetime):
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "paxoslog"),
                      x509.NameAttribute(NameOID.COMMON_NAME, f"paxoslog CA {cluster}"[:64])])
    public = key.public_key()
    cert = (x509.CertificateBuilder()
            .subject_name(name).issuer_name(name).public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, key_cert_sign=True, crl_sign=True,
                                         encipher_only=False, decipher_only=False),
                           critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .sign(key, hashes.SHA256()))
    return key, cert


def _new_node(ca_key, ca_cert, names: list, now: datetime.datetime):
    key = ec.generate_private_key(ec.SECP256R1())
    public = key.public_key()
    identity = names[0].value
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "paxoslog"),
                                     x509.NameAttribute(NameOID.COMMON_NAME, identity[:64])]))
            .issuer_name(ca_cert.subject).public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(min(now + datetime.timedelta(days=NODE_DAYS),
                                 ca_cert.not_valid_after_utc))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, key_cert_sign=False,
                                         crl_sign=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            # Every node is a TLS server (API, peer port) and a TLS client (dialling peers).
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                  ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    return key, cert


def _still_good(path: str, key_path: str, ca_cert, names: list,
                now: datetime.datetime) -> bool:
    """An existing node certificate that the CA issued, in date, with exactly these names,
    and whose key file is present."""
    try:
        with open(path, "rb") as f:
            cert = x509.load_pem_x509_certificate(f.read())
        cert.verify_directly_issued_by(ca_cert)
        current = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (OSError, ValueError, TypeError, InvalidSignature, x509.ExtensionNotFound):
        return False
    fresh = now + datetime.timedelta(days=30) < cert.not_valid_after_utc
    return fresh and list(current) == names and os.path.exists(key_path)


def init_certs(config, out_dir: str | None = None,
               now: datetime.datetime | None = None) -> tuple[CertFiles, list[tuple[str, str]]]:
    """Create (or complete) the CA and node certificates for ``config``.  Returns the
    layout and what was done: [(path, "created" | "kept" | "reissued")].  ``ValueError``
    for an unusable existing CA or a conf without file names (see ``layout``)."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    files = layout(config, out_dir)
    done: list[tuple[str, str]] = []
    if os.path.exists(files.ca_cert) or os.path.exists(files.ca_key):
        try:
            with open(files.ca_cert, "rb") as f:
                ca_cert = x509.load_pem_x509_certificate(f.read())
            with open(files.ca_key, "rb") as f:
                ca_key = serialization.load_pem_private_key(f.read(), password=None)
        except (OSError, ValueError, TypeError) as exc:
            raise ValueError(f"the existing CA ({files.ca_cert}, {files.ca_key}) cannot be "
                             f"used: {exc}; remove both to start a new CA") from None
        done.append((files.ca_cert, "kept"))
    else:
        ca_key, ca_cert = _new_ca(config.name, now)
        _write(files.ca_key, _key_pem(ca_key), private=True)
        _write(files.ca_cert, ca_cert.public_bytes(serialization.Encoding.PEM), private=False)
        done.append((files.ca_cert, "created"))
    for node in config.nodes:
        cert_path, key_path = files.nodes[node.id]
        names = node_names(config, node)
        if _still_good(cert_path, key_path, ca_cert, names, now):
            done.append((cert_path, "kept"))
            continue
        existed = os.path.exists(cert_path)
        key, cert = _new_node(ca_key, ca_cert, names, now)
        _write(key_path, _key_pem(key), private=True)
        _write(cert_path, cert.public_bytes(serialization.Encoding.PEM), private=False)
        done.append((cert_path, "reissued" if existed else "created"))
    return files, done


def tls_section(config, files: CertFiles) -> str:
    """The ``[tls]`` table that names ``files`` (paths relative to the conf's folder)."""
    base = os.path.dirname(os.path.abspath(config.path))

    def rel(path: str) -> str:
        relative = os.path.relpath(path, base)
        return path if relative.startswith("..") else relative
    folder = rel(files.out_dir) if files.out_dir else None
    cert = f"{folder}/node-{{node}}.pem" if folder else "..."
    key = f"{folder}/node-{{node}}.key" if folder else "..."
    return (f'[tls]\nca_file = "{rel(files.ca_cert)}"\ncert_file = "{cert}"\n'
            f'key_file = "{key}"\n')
