"""TLS material: ``certs init`` makes a CA and node certificates that ``load_node_tls``
accepts; every unusable file is a ConfigError naming the conf key and the problem; the
start-up warnings for plain transports and weak secrets."""

from __future__ import annotations

import datetime
import os
import shutil
import stat

import pytest
from cryptography import x509

from paxoslog.certs import init_certs
from paxoslog.config import ConfigError, load_config
from paxoslog.server.tls import load_node_tls, node_identity, transport_warnings

NODES = "".join(f'\n[[nodes]]\nid = {i}\npeer = "127.0.0.1:{7000 + i}"\n'
                f'api = "127.0.0.1:{8000 + i}"\n' for i in (1, 2, 3))
TLS = ('\n[tls]\nca_file = "certs/ca.pem"\ncert_file = "certs/node-{node}.pem"\n'
       'key_file = "certs/node-{node}.key"\n')


def conf(tmp_path, extra: str = TLS, nodes: str = NODES, secret: str = "0" * 32) -> str:
    path = tmp_path / "c.toml"
    path.write_text(f'cluster = "tls-test"\ndata_dir = "{tmp_path}/d/{{node}}"\n'
                    f'secret = "{secret}"\n{extra}{nodes}')
    return str(path)


def test_certs_init_makes_files_the_node_accepts(tmp_path):
    """CA + one certificate per node, keys 0600, SANs name the identity and the address;
    load_node_tls accepts each node's files; a second run keeps everything."""
    config = load_config(conf(tmp_path))
    files, done = init_certs(config)
    assert [action for _, action in done] == ["created"] * 4
    for node in (1, 2, 3):
        cert_path, key_path = files.nodes[node]
        assert stat.S_IMODE(os.stat(key_path).st_mode) == 0o600
        cert = x509.load_pem_x509_certificate(open(cert_path, "rb").read())
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert node_identity("tls-test", node) in names.get_values_for_type(x509.DNSName)
        assert "127.0.0.1" in [str(ip) for ip in names.get_values_for_type(x509.IPAddress)]
        material = load_node_tls(config, node)
        assert material.node_id == node and not material.warnings
    assert stat.S_IMODE(os.stat(files.ca_key).st_mode) == 0o600
    _, again = init_certs(config)
    assert [action for _, action in again] == ["kept"] * 4


def test_certs_init_adds_a_node_with_the_same_ca(tmp_path):
    """After a node is added to the conf, a second run issues only its certificate."""
    init_certs(load_config(conf(tmp_path)))
    bigger = load_config(conf(tmp_path, nodes=NODES + '\n[[nodes]]\nid = 4\n'
                                                      'peer = "127.0.0.1:7004"\n'
                                                      'api = "127.0.0.1:8004"\n'))
    _, done = init_certs(bigger)
    assert [action for _, action in done] == ["kept"] * 4 + ["created"]
    assert load_node_tls(bigger, 4).node_id == 4


def _expect(config, node: int, key: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_node_tls(config, node)
    assert info.value.key == key, info.value
    assert words in str(info.value), info.value
    assert str(info.value).startswith(f"{config.path}: {key}: ")


def test_unusable_files_name_the_key_and_the_problem(tmp_path):
    """Missing files, a key of another node, a certificate of another CA or of another
    node, and an expired certificate are refused before the node starts."""
    config = load_config(conf(tmp_path))
    files, _ = init_certs(config)
    certs = tmp_path / "certs"
    os.rename(certs / "node-1.key", certs / "saved.key")
    _expect(config, 1, "tls.key_file", "cannot read")
    shutil.copy(certs / "node-2.key", certs / "node-1.key")
    _expect(config, 1, "tls.key_file", "does not belong to the certificate")
    os.rename(certs / "saved.key", certs / "node-1.key")
    shutil.copy(certs / "node-2.pem", certs / "node-1.pem")
    shutil.copy(certs / "node-2.key", certs / "node-1.key")
    _expect(config, 1, "tls.cert_file", "does not name node-1.tls-test.paxoslog")
    other = tmp_path / "other"
    init_certs(config, str(other))
    shutil.copy(other / "node-1.pem", certs / "node-1.pem")
    shutil.copy(other / "node-1.key", certs / "node-1.key")
    _expect(config, 1, "tls.cert_file", "was not issued by the CA")
    (certs / "node-1.pem").write_text("not a certificate")
    _expect(config, 1, "tls.cert_file", "is not a PEM certificate")
    shutil.copy(certs / "node-1.pem", certs / "ca.pem")
    _expect(config, 2, "tls.ca_file", "is not a PEM certificate")


def test_an_expired_certificate_is_refused(tmp_path):
    """A certificate issued three years ago (valid 825 days) is out of date now."""
    config = load_config(conf(tmp_path))
    init_certs(config, now=datetime.datetime.now(datetime.timezone.utc)
               - datetime.timedelta(days=1100))
    _expect(config, 2, "tls.cert_file", "not now")


def test_per_node_files_and_their_errors(tmp_path):
    """tls_cert_file/tls_key_file in [[nodes]] override the [tls] templates; without a
    template the missing file names the node's own key."""
    nodes = NODES.replace('api = "127.0.0.1:8001"\n', 'api = "127.0.0.1:8001"\n'
                          'tls_cert_file = "certs/node-1.pem"\n'
                          'tls_key_file = "certs/node-1.key"\n')
    config = load_config(conf(tmp_path, extra='\n[tls]\nca_file = "certs/ca.pem"\n',
                              nodes=nodes))
    assert config.node(1).tls_cert_file == str(tmp_path / "certs" / "node-1.pem")
    assert config.node(1).api_url == "https://127.0.0.1:8001"
    init_certs(config, str(tmp_path / "certs"))
    assert load_node_tls(config, 1).node_id == 1
    _expect(config, 2, "nodes[1].tls_cert_file", "missing")


def test_warnings_for_plain_transports_and_short_secrets(tmp_path):
    """A multi-host conf without TLS warns about peers and the API; a loopback conf with a
    short or no secret warns about that; a TLS multi-host conf warns about nothing."""
    hosts = "".join(f'\n[[nodes]]\nid = {i}\npeer = "10.0.0.{i}:7000"\napi = "10.0.0.{i}:8000"\n'
                    for i in (1, 2, 3))
    warnings = transport_warnings(load_config(conf(tmp_path, extra="", nodes=hosts)))
    assert len(warnings) == 2 and all(w.startswith("SECURITY:") for w in warnings)
    assert transport_warnings(load_config(conf(tmp_path, nodes=hosts))) == []
    short = transport_warnings(load_config(conf(tmp_path, extra="", secret="shortish")))
    assert len(short) == 1 and "shorter than 32" in short[0]


def test_certs_init_command_prints_the_tls_table_and_refuses_shared_paths(tmp_path, capsys):
    """paxoslog certs init: files listed, the [tls] table to paste printed (exit 0); a conf
    naming one path for every host needs --out (exit 2, saying so)."""
    from paxoslog.cli import main
    path = conf(tmp_path, extra="")
    assert main(["certs", "init", "--config", path]) == 0
    out = capsys.readouterr().out
    assert "created" in out and 'ca_file = "certs/ca.pem"' in out
    assert 'cert_file = "certs/node-{node}.pem"' in out
    hosts = "".join(f'\n[[nodes]]\nid = {i}\npeer = "10.0.0.{i}:7000"\n'
                    f'api = "10.0.0.{i}:8000"\n' for i in (1, 2, 3))
    shared = conf(tmp_path, extra='\n[tls]\nca_file = "/etc/p/ca.pem"\n'
                                  'cert_file = "/etc/p/node.pem"\nkey_file = "/etc/p/node.key"\n',
                  nodes=hosts)
    assert main(["certs", "init", "--config", shared]) == 2
    assert "pass --out" in capsys.readouterr().err
    assert main(["certs", "init", "--config", shared, "--out", str(tmp_path / "o")]) == 0
    config = load_config(shared)
    cert = x509.load_pem_x509_certificate((tmp_path / "o" / "node-2.pem").read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["10.0.0.2"]
    assert config.node(2).api_url == "https://10.0.0.2:8000"
