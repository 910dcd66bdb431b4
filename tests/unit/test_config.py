"""Conf files: the shipped examples load, every mistake names the file, the key and the
problem, and the secret never shows in a repr or an error."""

from __future__ import annotations

import os
import tomllib

import pytest

from paxoslog.config import ConfigError, load_config, parse_address, parse_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

NODES = """
[[nodes]]
id = 1
peer = "127.0.0.1:7001"
api = "127.0.0.1:8001"

[[nodes]]
id = 2
peer = "127.0.0.1:7002"
api = "127.0.0.1:8002"

[[nodes]]
id = 3
peer = "127.0.0.1:7003"
api = "127.0.0.1:8003"
"""

BASE = 'cluster = "t"\nprotocol = "raft"\ndata_dir = "/tmp/x/{node}"\n'

# Three machines: a multi-host conf (needs a secret of 32+ bytes).
HOSTS = "".join(f'\n[[nodes]]\nid = {i}\npeer = "10.0.0.{i}:7000"\napi = "10.0.0.{i}:8000"\n'
                for i in (1, 2, 3))


def write(tmp_path, text: str) -> str:
    path = tmp_path / "c.toml"
    path.write_text(text)
    return str(path)


def test_shipped_local_confs_load():
    """conf/local-3.toml and conf/local-5.toml are valid, on 127.0.0.1, data under ./data."""
    for name, size in (("local-3.toml", 3), ("local-5.toml", 5)):
        config = load_config(os.path.join(ROOT, "conf", name))
        assert len(config.nodes) == size
        assert all(n.peer.host == "127.0.0.1" and n.api.host == "127.0.0.1" for n in config.nodes)
        assert all(n.data_dir.startswith("./data/") for n in config.nodes)
        ports = [n.peer.port for n in config.nodes] + [n.api.port for n in config.nodes]
        assert len(set(ports)) == 2 * size
        assert config.secret


def test_three_hosts_example_loads_with_its_secret_file(tmp_path):
    """conf/three-hosts.toml is valid once its secret file exists; binds differ from adverts."""
    with open(os.path.join(ROOT, "conf", "three-hosts.toml"), "rb") as f:
        data = tomllib.load(f)
    secret = tmp_path / "secret"
    secret.write_text("0123456789abcdef0123456789abcdef\n")
    data["secret_file"] = str(secret)
    config = parse_config(data, "three-hosts.toml")
    assert config.secret == b"0123456789abcdef0123456789abcdef"
    assert {n.peer.host for n in config.nodes} == {"10.0.1.11", "10.0.1.12", "10.0.1.13"}
    assert all(n.peer_bind.host == "0.0.0.0" for n in config.nodes)


def test_defaults_substitution_and_derived_options(tmp_path):
    """Omitted tables take defaults; {node} is substituted; core/storage options follow."""
    config = load_config(write(tmp_path, BASE + "[timing]\ntick_ms = 10\nelection_ticks = 15\n"
                               "[batching]\npipeline_window = 8\n[snapshot]\nentries = 77\n" + NODES))
    assert config.protocol == "raft" and config.node(2).data_dir == "/tmp/x/2"
    assert config.node(2).peer_bind == config.node(2).peer
    options = config.replica_options()
    assert options.election_ticks == 15 and options.limits.pipeline_window == 8
    assert config.storage_options().snapshot_entries == 77
    assert config.state_machines == ("kv",) and config.secret is None


def test_storage_segment_bytes_reaches_the_storage_options(tmp_path):
    """[storage] segment_bytes sets the WAL segment size; absent, the storage default."""
    from paxoslog.storage import StorageOptions
    config = load_config(write(tmp_path, BASE + "[storage]\nsegment_bytes = 1048576\n" + NODES))
    assert config.storage.segment_bytes == 1 << 20
    assert config.storage_options().segment_bytes == 1 << 20
    config = load_config(write(tmp_path, BASE + NODES))
    assert config.storage_options().segment_bytes == StorageOptions().segment_bytes


@pytest.mark.parametrize("text, key, words", [
    (NODES, "cluster", "missing"),
    ('cluster = "bad name!"\ndata_dir = "d"\n' + NODES, "cluster", "letters"),
    ('cluster = "t"\nprotocol = "zab"\ndata_dir = "d"\n' + NODES, "protocol", "zab"),
    ('cluster = "t"\n' + NODES, "nodes[0].data_dir", "missing"),
    (BASE, "nodes", "missing"),
    (BASE + "nodes = []\n", "nodes", "at least one"),
    (BASE + "[timing]\ntick_ms = 0\n" + NODES, "timing.tick_ms", "out of range"),
    (BASE + '[timing]\ntick_ms = "10"\n' + NODES, "timing.tick_ms", "expected an integer"),
    (BASE + "[timing]\ntick_ms = true\n" + NODES, "timing.tick_ms", "boolean"),
    (BASE + "[timing]\nheartbeat_ticks = 20\nelection_ticks = 10\n" + NODES,
     "timing.heartbeat_ticks", "less than election_ticks"),
    (BASE + "[timing]\nlease_ticks = 30\nelection_ticks = 10\n" + NODES, "timing.lease_ticks",
     "less than"),
    # margin 3 (a tenth of 30) plus one tick: 26 is the most
    (BASE + "[timing]\nlease_ticks = 27\nelection_ticks = 30\n" + NODES, "timing.lease_ticks",
     "30 - 3 - 1"),
    (BASE + "[timing]\ntick = 10\n" + NODES, "timing.tick", "unknown key"),
    (BASE + "colour = 1\n" + NODES, "colour", "unknown key"),
    (BASE + "timing = 5\n" + NODES, "timing", "expected a table"),
    (BASE + "[batching]\nframe_bytes_max = 8192\nmessage_bytes_max = 65536\n" + NODES,
     "batching.frame_bytes_max", "at least message_bytes_max"),
    # one chunk or one command per frame: a snapshot or that command could never be sent
    (BASE + "[snapshot]\nchunk_bytes = 16777216\n" + NODES, "snapshot.chunk_bytes",
     "does not fit in one peer frame"),
    (BASE + "[batching]\nbatch_bytes_max = 16777216\n" + NODES, "batching.batch_bytes_max",
     "frame_bytes_max (16777216) minus 4096"),
    (BASE + "[snapshot]\nchunk_bytes = 65536\n[batching]\nframe_bytes_max = 1048576\n"
     "message_bytes_max = 65536\n" + NODES, "batching.batch_bytes_max", "does not fit"),
    (BASE + '[state_machines]\nenabled = ["kv", "dns"]\n' + NODES, "state_machines.enabled",
     "unknown state machine"),
    (BASE + '[state_machines]\nenabled = ["kv", "kv"]\n' + NODES, "state_machines.enabled",
     "twice"),
    (BASE + '[[nodes]]\npeer = "h:1"\napi = "h:2"\n', "nodes[0].id", "missing"),
    (BASE + '[[nodes]]\nid = 0\npeer = "h:1"\napi = "h:2"\n', "nodes[0].id", "out of range"),
    (BASE + '[[nodes]]\nid = 1\npeer = "nohost"\napi = "h:2"\n', "nodes[0].peer", "host:port"),
    (BASE + '[[nodes]]\nid = 1\npeer = "h:99999"\napi = "h:2"\n', "nodes[0].peer",
     "out of range"),
    (BASE + '[[nodes]]\nid = 1\npeer = "h:0"\napi = "h:2"\n', "nodes[0].peer", "port 0"),
    (BASE + '[[nodes]]\nid = 1\napi = "h:2"\n', "nodes[0].peer", "missing"),
    (BASE + '[[nodes]]\nid = 1\npeer = "h:1"\napi = "h:2"\nweight = 3\n', "nodes[0].weight",
     "unknown key"),
    (BASE + '[[nodes]]\nid = 1\npeer = "h:1"\napi = "h:2"\n[[nodes]]\nid = 1\npeer = "h:3"\n'
     'api = "h:4"\n', "nodes[1].id", "also used by nodes[0].id"),
    (BASE + '[[nodes]]\nid = 1\npeer = "h:1"\napi = "h:2"\n[[nodes]]\nid = 2\npeer = "h:2"\n'
     'api = "h:4"\n', "nodes[1].peer", "h:2 is also used"),
    (BASE.replace("/tmp/x/{node}", "/tmp/same") + NODES, "nodes[1].data_dir", "also used"),
    (BASE + "[storage]\nsegment_bytes = 4096\n" + NODES, "storage.segment_bytes",
     "out of range 65536..1073741824"),
    (BASE + '[storage]\nsegment_bytes = "8MiB"\n' + NODES, "storage.segment_bytes",
     "expected an integer"),
    (BASE + "[storage]\nsegment_size = 1048576\n" + NODES, "storage.segment_size",
     "unknown key"),
    (BASE + 'secret = "short"\n' + NODES, "secret", "too short"),
    (BASE + 'secret = "longenough"\nsecret_file = "f"\n' + NODES, "secret_file", "not both"),
    (BASE + 'secret_file = "missing-secret"\n' + NODES, "secret_file", "cannot read"),
    (BASE + "[auth]\nrequired = true\n" + NODES, "auth.required", "needs tokens_file"),
    (BASE + '[auth]\ntokens_file = "t"\nrequired = "yes"\n' + NODES, "auth.required",
     "true or false"),
    (BASE + '[auth]\ntokens_file = ""\n' + NODES, "auth.tokens_file", "file name"),
    (BASE + '[auth]\nallowed_origins = ["https://ui.example/app"]\n' + NODES,
     "auth.allowed_origins", "not an origin"),
    (BASE + '[auth]\nallowed_origins = "https://ui.example"\n' + NODES,
     "auth.allowed_origins", "list of non-empty strings"),
    (BASE + '[auth]\nallowed_hosts = ["a/b"]\n' + NODES, "auth.allowed_hosts",
     "host[:port]"),
    (BASE + '[auth]\ntoken_file = "t"\n' + NODES, "auth.token_file", "unknown key"),
    (BASE + HOSTS, "secret", "required: the nodes are not all on loopback"),
    (BASE + 'secret = "0123456789abcdef"\n' + HOSTS, "secret", "too short for a multi-host"),
    (BASE + 'secret = "0123456789abcdef"\n' + NODES.replace('api = "127.0.0.1:8003"',
                                                            'api = "127.0.0.1:8003"\n'
                                                            'api_bind = "0.0.0.0:8003"'),
     "secret", "too short for a multi-host"),
    (BASE + "[tls]\ncert_file = 'c.pem'\n" + NODES, "tls.ca_file", "missing"),
    (BASE + "[tls]\nca_file = 'ca.pem'\napi = 'yes'\n" + NODES, "tls.api",
     "expected true or false"),
    (BASE + "[tls]\nca_file = 'ca.pem'\nciphers = 'x'\n" + NODES, "tls.ciphers", "unknown key"),
    (BASE + NODES.replace('api = "127.0.0.1:8001"', 'api = "127.0.0.1:8001"\n'
                          'tls_cert_file = "n1.pem"'), "nodes[0].tls_cert_file",
     "without a [tls] section"),
    (BASE + "[limits]\npeer_handshakes_max = 0\n" + NODES, "limits.peer_handshakes_max",
     "out of range"),
    (BASE + "[snapshot]\nreceive_bytes_max = -1\n" + NODES, "snapshot.receive_bytes_max",
     "out of range"),
    (BASE + "[limits]\nheader_timeout_ms = 0\n" + NODES, "limits.header_timeout_ms",
     "out of range"),
    (BASE + "[limits]\nquery_result_bytes_max = 10\n" + NODES,
     "limits.query_result_bytes_max", "out of range"),
])
def test_mistakes_name_the_file_the_key_and_the_problem(tmp_path, text, key, words):
    """Each bad conf raises ConfigError("<file>: <key>: <what is wrong>")."""
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}: {key}: "), message
    assert words in message, message
    assert info.value.key == key and info.value.path == path


def test_multi_host_confs_need_a_long_secret_and_local_ones_may_keep_a_short_one(tmp_path):
    """A 32-byte secret suits a multi-host conf; a loopback conf accepts 8 bytes (warned
    about at start, see test_tls.py) and no secret at all."""
    config = load_config(write(tmp_path, BASE + f'secret = "{"x" * 32}"\n' + HOSTS))
    assert not config.local and len(config.secret) == 32
    config = load_config(write(tmp_path, BASE + 'secret = "8 chars!"\n' + NODES))
    assert config.local and config.secret == b"8 chars!"
    assert load_config(write(tmp_path, BASE + NODES)).secret is None


def test_unreadable_and_invalid_toml_files(tmp_path):
    """A missing file and a TOML syntax error name the file."""
    with pytest.raises(ConfigError, match="no such file"):
        load_config(str(tmp_path / "absent.toml"))
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "cluster = \n"))


def test_secret_never_appears_in_repr_or_errors(tmp_path):
    """The peer secret is kept out of the dataclass repr and out of error messages."""
    secret = "hunter2-is-my-password"
    config = load_config(write(tmp_path, BASE + f'secret = "{secret}"\n' + NODES))
    assert config.secret == secret.encode()
    assert secret not in repr(config) and secret not in str(config)
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, BASE + 'secret = 12345678\n' + NODES))
    assert "12345678" not in str(info.value)


def test_parse_address_forms():
    """host:port and [v6]:port; garbage is refused with a reason."""
    assert parse_address("10.0.0.1:80").port == 80
    assert parse_address("[::1]:7000").host == "::1"
    assert str(parse_address("[::1]:7000")) == "[::1]:7000"
    for bad in ("", "host", ":80", "host:", "host:http", "host:-1", "host:70000"):
        with pytest.raises(ValueError):
            parse_address(bad)


def test_websocket_limits_have_defaults_and_errors_name_the_key(tmp_path):
    """[websocket] and limits.batch_ops_max: defaults when absent, values when given, and
    unknown keys or out-of-range values name websocket.<key>."""
    config = load_config(write(tmp_path, BASE + NODES))
    assert config.websocket.inflight_requests_max == 1024 and config.limits.batch_ops_max == 10_000
    config = load_config(write(tmp_path, BASE + "[websocket]\nsubscriptions_max = 3\n"
                               "slow_consumer_ms = 500\n[limits]\nbatch_ops_max = 7\n" + NODES))
    assert config.websocket.subscriptions_max == 3 and config.websocket.slow_consumer_ms == 500
    assert config.limits.batch_ops_max == 7
    for text, key in (("[websocket]\nmessage_bytes_max = 10\n", "websocket.message_bytes_max"),
                      ("[websocket]\nnope = 1\n", "websocket.nope"),
                      ("[websocket]\nprogress_interval_ms = 5\n",
                       "websocket.progress_interval_ms")):
        with pytest.raises(ConfigError) as error:
            load_config(write(tmp_path, BASE + text + NODES))
        assert error.value.key == key


def test_auth_defaults_and_tokens_file_relative_to_the_conf(tmp_path):
    """No [auth]: no tokens, not required; a tokens_file makes tokens required by default
    and is resolved against the conf's folder; required = false keeps them optional."""
    plain = load_config(write(tmp_path, BASE + NODES))
    assert plain.auth.tokens_file is None and plain.auth.required is False
    conf = load_config(write(tmp_path, BASE + '[auth]\ntokens_file = "tok.json"\n'
                             'allowed_origins = ["https://ui.example:8443"]\n' + NODES))
    assert conf.auth.tokens_file == str(tmp_path / "tok.json") and conf.auth.required
    assert conf.auth.allowed_origins == ("https://ui.example:8443",)
    optional = load_config(write(tmp_path, BASE + '[auth]\ntokens_file = "/t.json"\n'
                                 'required = false\n' + NODES))
    assert optional.auth.tokens_file == "/t.json" and not optional.auth.required
