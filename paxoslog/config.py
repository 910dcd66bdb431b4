"""Cluster conf files: TOML (read with ``tomllib``) validated into frozen dataclasses.

One file describes a whole cluster; every node reads the same file and picks its own entry
with ``--node ID``.  Shape (every table but ``[[nodes]]`` is optional)::

    cluster = "local-3"             # cluster name: also the data directories' cluster id
    protocol = "multipaxos"         # multipaxos | raft
    data_dir = "./data/{node}"      # {node} is replaced by the node id; relative to the cwd
    secret = "..."                  # shared peer secret (HMAC challenge); or secret_file = "path"

    [timing]       tick_ms, heartbeat_ticks, election_ticks, lease_ticks, request_timeout_ms
    [snapshot]     entries, bytes, keep, level, chunk_bytes, receive_bytes_max
    [storage]      segment_bytes
    [batching]     batch_commands_max, batch_bytes_max, pipeline_window,
                   entries_per_message_max, message_bytes_max, frame_bytes_max,
                   proposal_queue_max, pending_reads_max, peer_queue_messages_max
    [limits]       request_bytes_max, header_bytes_max, key_bytes_max, connections_max,
                   pipelined_requests_max, log_entries_max, recent_entries_kept,
                   recent_bytes_max, sessions_max, session_results_max,
                   session_results_total_max, session_idle_ms, json_depth_max,
                   header_timeout_ms, body_timeout_ms, idle_timeout_ms,
                   connections_per_address_max, query_result_bytes_max,
                   peer_handshake_timeout_ms,
                   peer_handshakes_max, txn_ops_max, txn_bytes_max, leases_max,
                   lease_ttl_ms_min, lease_ttl_ms_max, batch_ops_max
    [websocket]    connections_max, message_bytes_max, inflight_requests_max,
                   subscriptions_max, handshake_timeout_ms, idle_timeout_ms, ping_interval_ms,
                   progress_interval_ms, stream_message_bytes, slow_consumer_ms,
                   watch_history_events, watch_history_bytes, wal_read_entries_max
    [tls]          ca_file, cert_file, key_file ({node}: the node id), api, peers
    [auth]         tokens_file, required, allowed_origins, allowed_hosts  (docs/security.md)
    [state_machines]  enabled = ["kv", "counter", ...]   (built-ins + installed plug-ins)
    [log]          level = "info"   (debug|info|warn|error; SIGHUP re-reads it)

    [[nodes]]
    id = 1
    peer = "127.0.0.1:7101"         # peer transport address (what the other nodes dial)
    api = "127.0.0.1:8101"          # HTTP API address
    # optional: data_dir = "...", peer_bind = "0.0.0.0:7101", api_bind = "0.0.0.0:8101",
    #           tls_cert_file = "...", tls_key_file = "..."  (override [tls] per node)

Every mistake raises ``ConfigError`` naming the file, the key and what is wrong; unknown
keys are mistakes too (a typo must not silently fall back to a default).  The secret never
appears in a repr, a log line or an error message.

A conf is *local* when every address in it (peer, api and their binds) is a loopback
address: a playground on one machine.  Any other conf is *multi-host* and must carry a
secret of at least 32 bytes (``SECRET_BYTES_MIN_MULTI_HOST``); see docs/security.md.  The
TLS files are only named here: ``paxoslog.server.tls`` reads and checks them (a node needs
its own certificate and key, a client only the CA), with errors that name the key too.

Size: one small reader per conf table, declarative (each key with its default and
range); splitting would scatter the single place that names every key.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from dataclasses import dataclass, field
from typing import Any

from paxoslog.core.limits import DEFAULT_LIMITS, Limits
from paxoslog.core.replica import PROTOCOLS, ReplicaOptions
from paxoslog.storage.options import StorageOptions

__all__ = ["ConfigError", "Address", "NodeConf", "TimingConf", "SnapshotConf", "StorageConf",
           "BatchingConf", "LimitsConf", "LogConf", "LOG_LEVELS", "TlsConf", "WebSocketConf",
           "AuthConf", "ClusterConfig", "load_config", "parse_config", "parse_address",
           "is_loopback_host", "KNOWN_STATE_MACHINES", "SECRET_BYTES_MIN",
           "SECRET_BYTES_MIN_MULTI_HOST", "NODE_ID_MAX"]

# The built-ins; plug-ins come from the entry-point group paxoslog.state_machines.
KNOWN_STATE_MACHINES = ("kv", "counter", "membership")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")

# The largest node id: the conf, the membership API (server/admin.py) and the membership
# table (statemachines/membership.py, which keeps its own copy) all stop here, so an id the
# conf accepts can always be added, removed and recorded.
NODE_ID_MAX = (1 << 31) - 1

# A secret shorter than this is refused everywhere; a multi-host conf needs the longer one
# (one recorded handshake must not let anyone guess the secret offline).
SECRET_BYTES_MIN = 8
SECRET_BYTES_MIN_MULTI_HOST = 32


class ConfigError(Exception):
    """A conf file is unusable: ``path``, ``key`` (dotted, e.g. ``nodes[2].api``) and why."""

    def __init__(self, path: str, key: str | None, message: str) -> None:
        self.path = path
        self.key = key
        self.message = message
        where = f"{path}: {key}" if key else path
        super().__init__(f"{where}: {message}")


@dataclass(frozen=True)
class Address:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_address(text: str) -> Address:
    """``host:port`` (``[v6]:port`` for IPv6) -> Address; ValueError with a reason."""
    if not isinstance(text, str) or not text:
        raise ValueError(f'expected "host:port", got {text!r}')
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
    else:
        host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f'expected "host:port", got {text!r}')
    number = int(port)
    if not 0 <= number <= 65535:
        raise ValueError(f"port {number} out of range 0-65535")
    return Address(host, number)


def is_loopback_host(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class NodeConf:
    id: int
    peer: Address
    api: Address
    data_dir: str
    peer_bind: Address
    api_bind: Address
    api_scheme: str = "http"             # "https" when [tls] api is on
    tls_cert_file: str | None = None     # this node's certificate and key (absolute paths)
    tls_key_file: str | None = None

    @property
    def api_url(self) -> str:
        return f"{self.api_scheme}://{self.api}"

    @property
    def local(self) -> bool:
        """Every address of this node is a loopback address."""
        return all(is_loopback_host(a.host)
                   for a in (self.peer, self.api, self.peer_bind, self.api_bind))


@dataclass(frozen=True)
class TimingConf:
    tick_ms: int = 50
    heartbeat_ticks: int = 2
    election_ticks: int = 20
    lease_ticks: int = 0
    request_timeout_ms: int = 5000
    # Lease reads assume the clocks of any two nodes run at rates that differ by less than
    # this many ticks over one election timeout: lease_ticks <= election_ticks - margin.
    # Default (0 in the file or absent): a tenth of election_ticks, at least 1.
    clock_drift_margin_ticks: int = 0


@dataclass(frozen=True)
class SnapshotConf:
    entries: int = 10_000
    bytes: int = 64 << 20
    keep: int = 2
    level: int = 1
    chunk_bytes: int = 1 << 20
    # A follower refuses a snapshot offer larger than this (a leader cannot fill its disk).
    receive_bytes_max: int = 4 << 30


@dataclass(frozen=True)
class StorageConf:
    # A WAL segment is sealed beyond this size; compaction deletes whole sealed segments,
    # so this bounds how much log outlives a snapshot (and is replayed at restart).
    segment_bytes: int = StorageOptions.segment_bytes


@dataclass(frozen=True)
class BatchingConf:
    """The core's bounds (defaults from core/limits.py) plus the peer send queue."""

    batch_commands_max: int = DEFAULT_LIMITS.batch_commands_max
    batch_bytes_max: int = DEFAULT_LIMITS.batch_bytes_max
    pipeline_window: int = DEFAULT_LIMITS.pipeline_window
    entries_per_message_max: int = DEFAULT_LIMITS.entries_per_message_max
    message_bytes_max: int = DEFAULT_LIMITS.message_bytes_max
    frame_bytes_max: int = DEFAULT_LIMITS.frame_bytes_max
    proposal_queue_max: int = DEFAULT_LIMITS.proposal_queue_max
    pending_reads_max: int = DEFAULT_LIMITS.pending_reads_max
    peer_queue_messages_max: int = 4096


@dataclass(frozen=True)
class LimitsConf:
    request_bytes_max: int = 1 << 20
    header_bytes_max: int = 64 << 10
    key_bytes_max: int = 4096
    connections_max: int = 4096
    pipelined_requests_max: int = 64
    log_entries_max: int = 1000
    recent_entries_kept: int = 10_000
    recent_bytes_max: int = 32 << 20
    sessions_max: int = 10_000
    session_results_max: int = 256
    session_results_total_max: int = 500_000
    session_idle_ms: int = 600_000       # a session idle this long (log time) is dropped
    json_depth_max: int = 32             # nesting of a request body (objects and arrays)
    batch_ops_max: int = 10_000          # operations in one batch (HTTP or WebSocket)
    # HTTP read deadlines: request line + headers within header_timeout_ms of the request's
    # first byte (or of the connection's opening), the body within body_timeout_ms of the
    # headers; a connection with nothing to do (or that does not read its answers) for
    # idle_timeout_ms is closed.
    header_timeout_ms: int = 10_000
    body_timeout_ms: int = 30_000
    idle_timeout_ms: int = 120_000
    connections_per_address_max: int = 256
    query_result_bytes_max: int = 4 << 20   # a prefix read stops (more: true) beyond this
    # Peer port: a connection must finish the handshake within peer_handshake_timeout_ms;
    # at most peer_handshakes_max connections may be in the handshake at once.
    peer_handshake_timeout_ms: int = 5_000
    peer_handshakes_max: int = 64
    # Coordination (docs/coordination.md): compares and ops per transaction branch, a
    # transaction's encoded size, live leases (checked on admission) and the TTL range.
    txn_ops_max: int = 128
    txn_bytes_max: int = 256 << 10
    leases_max: int = 100_000
    lease_ttl_ms_min: int = 100
    lease_ttl_ms_max: int = 86_400_000


@dataclass(frozen=True)
class WebSocketConf:
    """The WebSocket endpoint (docs/websocket.md): per-connection and per-node bounds."""

    connections_max: int = 1024          # WebSocket connections per node
    message_bytes_max: int = 1 << 20     # largest message (and frame) a client may send
    inflight_requests_max: int = 1024    # requests awaiting their answer, per connection
    subscriptions_max: int = 64          # tails and watches, per connection
    handshake_timeout_ms: int = 5000     # opening (and closing) handshake
    idle_timeout_ms: int = 120_000       # nothing received, no subscription, no request
    ping_interval_ms: int = 20_000       # server pings; no pong within it: connection dropped
    progress_interval_ms: int = 1000     # progress of an idle tail or watch (0: never)
    stream_message_bytes: int = 256 << 10  # a stream message is cut beyond this (not a limit
                                           # on one revision, which is never split)
    slow_consumer_ms: int = 30_000       # a client not reading this long: its streams end
                                         # with slow_consumer and the connection is closed
    watch_history_events: int = 100_000  # kv events kept in memory for watches from the past
    watch_history_bytes: int = 32 << 20  # ... and at most this many bytes of them
    wal_read_entries_max: int = 20_000   # entries one read of the node's WAL may return


@dataclass(frozen=True)
class TlsConf:
    """``[tls]``: file names resolved against the conf file's directory.  ``cert_file`` and
    ``key_file`` are templates (``{node}``), also settable per node (``tls_cert_file``)."""

    ca_file: str
    cert_file: str | None = None
    key_file: str | None = None
    api: bool = True          # HTTPS on the client API
    peers: bool = True        # mutual TLS between peers


LOG_LEVELS = ("debug", "info", "warn", "error")


@dataclass(frozen=True)
class LogConf:
    """``[log]``: what a running node may change on SIGHUP (server/reload.py).  ``level``
    None: not set in the file (the ``--log-level`` of the command line, default info)."""

    level: str | None = None


@dataclass(frozen=True)
class AuthConf:
    """``[auth]``: client authentication (docs/security.md).  ``tokens_file``: absolute
    path (relative ones are resolved against the conf file's folder), None without auth.
    ``required``: anonymous requests get only /health and the API document (default: true
    when a tokens file is named).  ``allowed_origins``: browser origins whose requests are
    served (any other ``Origin`` is refused 403).  ``allowed_hosts``: extra ``Host`` header
    values accepted while anonymous requests are served (the node's own API addresses
    always are)."""

    tokens_file: str | None = None
    required: bool = False
    allowed_origins: tuple[str, ...] = ()
    allowed_hosts: tuple[str, ...] = ()


@dataclass(frozen=True)
class ClusterConfig:
    path: str
    name: str
    protocol: str
    nodes: tuple[NodeConf, ...]
    timing: TimingConf = field(default_factory=TimingConf)
    snapshot: SnapshotConf = field(default_factory=SnapshotConf)
    storage: StorageConf = field(default_factory=StorageConf)
    batching: BatchingConf = field(default_factory=BatchingConf)
    limits: LimitsConf = field(default_factory=LimitsConf)
    websocket: WebSocketConf = field(default_factory=WebSocketConf)
    state_machines: tuple[str, ...] = ("kv",)
    secret: bytes | None = field(default=None, repr=False, compare=False)
    log: LogConf = field(default_factory=LogConf)
    auth: AuthConf = field(default_factory=AuthConf)
    tls: TlsConf | None = None

    @property
    def local(self) -> bool:
        """Every node of the conf listens and is reached on loopback addresses only."""
        return all(n.local for n in self.nodes)

    @property
    def tls_api(self) -> bool:
        return self.tls is not None and self.tls.api

    @property
    def tls_peers(self) -> bool:
        return self.tls is not None and self.tls.peers

    def node(self, node_id: int) -> NodeConf:
        for node in self.nodes:
            if node.id == node_id:
                return node
        known = ", ".join(str(n.id) for n in self.nodes)
        raise ConfigError(self.path, "nodes", f"no node with id {node_id} (known: {known})")

    @property
    def node_ids(self) -> tuple[int, ...]:
        return tuple(n.id for n in self.nodes)

    def core_limits(self) -> Limits:
        b = self.batching
        return Limits(batch_commands_max=b.batch_commands_max, batch_bytes_max=b.batch_bytes_max,
                      pipeline_window=b.pipeline_window,
                      entries_per_message_max=b.entries_per_message_max,
                      message_bytes_max=b.message_bytes_max, frame_bytes_max=b.frame_bytes_max,
                      proposal_queue_max=b.proposal_queue_max,
                      pending_reads_max=b.pending_reads_max)

    def replica_options(self) -> ReplicaOptions:
        t = self.timing
        return ReplicaOptions(heartbeat_ticks=t.heartbeat_ticks, election_ticks=t.election_ticks,
                              lease_ticks=t.lease_ticks, limits=self.core_limits())

    def storage_options(self) -> StorageOptions:
        s = self.snapshot
        return StorageOptions(segment_bytes=self.storage.segment_bytes,
                              snapshot_keep=s.keep, snapshot_level=s.level,
                              snapshot_entries=s.entries, snapshot_bytes=s.bytes,
                              record_bytes_max=max(64 << 20, self.batching.frame_bytes_max))


# ---------------------------------------------------------------------- parsing

class _Reader:
    """Typed access to one TOML table, with the file and dotted key in every error."""

    def __init__(self, path: str, table: dict, prefix: str = "") -> None:
        self.path = path
        self.table = table
        self.prefix = prefix
        self.used: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.prefix}{name}"

    def fail(self, name: str | None, message: str) -> ConfigError:
        return ConfigError(self.path, self.key(name) if name else (self.prefix.rstrip(".") or None),
                           message)

    def get(self, name: str, default: Any = None) -> Any:
        self.used.add(name)
        return self.table.get(name, default)

    def int(self, name: str, default: int, lo: int, hi: int) -> int:
        value = self.get(name, default)
        if type(value) is not int:
            raise self.fail(name, f"expected an integer, got {_describe(value)}")
        if not lo <= value <= hi:
            raise self.fail(name, f"{value} is out of range {lo}..{hi}")
        return value

    def bool(self, name: str, default: bool) -> bool:
        value = self.get(name, default)
        if type(value) is not bool:
            raise self.fail(name, f"expected true or false, got {_describe(value)}")
        return value

    def str(self, name: str, default: str | None = None, *, required: bool = False) -> str | None:
        if required and name not in self.table:
            raise self.fail(name, "missing (required)")
        value = self.get(name, default)
        if value is not None and not isinstance(value, str):
            raise self.fail(name, f"expected a string, got {_describe(value)}")
        return value

    def address(self, name: str, *, required: bool = False, default: Address | None = None,
                allow_zero_port: bool = False) -> Address | None:
        text = self.str(name, required=required)
        if text is None:
            return default
        try:
            address = parse_address(text)
        except ValueError as exc:
            raise self.fail(name, str(exc)) from None
        if address.port == 0 and not allow_zero_port:
            raise self.fail(name, "port 0 is not allowed here (the other nodes must know it)")
        return address

    def table_of(self, name: str) -> "_Reader":
        value = self.get(name, {})
        if not isinstance(value, dict):
            raise self.fail(name, f"expected a table, got {_describe(value)}")
        return _Reader(self.path, value, f"{self.prefix}{name}.")

    def check_unknown(self) -> None:
        unknown = sorted(set(self.table) - self.used)
        if unknown:
            raise self.fail(unknown[0], "unknown key" + (
                f" (also unknown: {', '.join(unknown[1:])})" if unknown[1:] else ""))


def _describe(value: Any) -> str:
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, (dict, list)):
        return f"a {'table' if isinstance(value, dict) else 'list'}"
    return f"{type(value).__name__} {value!r:.40}"


_INT_MAX = 1 << 40


def _timing(r: _Reader) -> TimingConf:
    t = TimingConf(
        tick_ms=r.int("tick_ms", TimingConf.tick_ms, 1, 60_000),
        heartbeat_ticks=r.int("heartbeat_ticks", TimingConf.heartbeat_ticks, 1, 10_000),
        election_ticks=r.int("election_ticks", TimingConf.election_ticks, 2, 100_000),
        lease_ticks=r.int("lease_ticks", TimingConf.lease_ticks, 0, 100_000),
        request_timeout_ms=r.int("request_timeout_ms", TimingConf.request_timeout_ms, 10,
                                 3_600_000),
        clock_drift_margin_ticks=r.int("clock_drift_margin_ticks", 0, 0, 100_000),
    )
    if t.heartbeat_ticks >= t.election_ticks:
        raise r.fail("heartbeat_ticks", f"must be less than election_ticks ({t.election_ticks})")
    if t.lease_ticks >= t.election_ticks:
        raise r.fail("lease_ticks", f"must be less than election_ticks ({t.election_ticks})")
    margin = t.clock_drift_margin_ticks or max(1, t.election_ticks // 10)
    if margin >= t.election_ticks:
        raise r.fail("clock_drift_margin_ticks",
                     f"must be less than election_ticks ({t.election_ticks})")
    if t.lease_ticks > t.election_ticks - margin - 1:
        # One tick more than the drift: a follower's first tick may fall right after the
        # heartbeat that extended the lease (found by the simulator's lease profile).
        raise r.fail("lease_ticks", f"must be at most election_ticks - clock_drift_margin_ticks "
                                    f"- 1 ({t.election_ticks} - {margin} - 1): a lease must "
                                    f"run out, even on a fast clock, before any follower's "
                                    f"slowest clock lets it vote for a new leader")
    t = TimingConf(t.tick_ms, t.heartbeat_ticks, t.election_ticks, t.lease_ticks,
                   t.request_timeout_ms, margin)
    r.check_unknown()
    return t


def _snapshot(r: _Reader) -> SnapshotConf:
    s = SnapshotConf(
        entries=r.int("entries", SnapshotConf.entries, 1, _INT_MAX),
        bytes=r.int("bytes", SnapshotConf.bytes, 1, _INT_MAX),
        keep=r.int("keep", SnapshotConf.keep, 1, 100),
        level=r.int("level", SnapshotConf.level, -7, 22),
        chunk_bytes=r.int("chunk_bytes", SnapshotConf.chunk_bytes, 1024, 64 << 20),
        receive_bytes_max=r.int("receive_bytes_max", SnapshotConf.receive_bytes_max, 1024,
                                1 << 50),
    )
    r.check_unknown()
    return s


SEGMENT_BYTES_MIN = 64 << 10
SEGMENT_BYTES_MAX = 1 << 30


def _storage(r: _Reader) -> StorageConf:
    st = StorageConf(segment_bytes=r.int("segment_bytes", StorageConf.segment_bytes,
                                         SEGMENT_BYTES_MIN, SEGMENT_BYTES_MAX))
    r.check_unknown()
    return st


def _batching(r: _Reader) -> BatchingConf:
    d = BatchingConf
    b = BatchingConf(
        batch_commands_max=r.int("batch_commands_max", d.batch_commands_max, 1, 1 << 20),
        batch_bytes_max=r.int("batch_bytes_max", d.batch_bytes_max, 1, 1 << 30),
        pipeline_window=r.int("pipeline_window", d.pipeline_window, 1, 1 << 20),
        entries_per_message_max=r.int("entries_per_message_max", d.entries_per_message_max, 1,
                                      1 << 20),
        message_bytes_max=r.int("message_bytes_max", d.message_bytes_max, 1024, 1 << 30),
        frame_bytes_max=r.int("frame_bytes_max", d.frame_bytes_max, 4096, 1 << 30),
        proposal_queue_max=r.int("proposal_queue_max", d.proposal_queue_max, 1, 1 << 30),
        pending_reads_max=r.int("pending_reads_max", d.pending_reads_max, 1, 1 << 30),
        peer_queue_messages_max=r.int("peer_queue_messages_max", d.peer_queue_messages_max, 16,
                                      1 << 24),
    )
    if b.frame_bytes_max < b.message_bytes_max:
        raise r.fail("frame_bytes_max",
                     f"must be at least message_bytes_max ({b.message_bytes_max})")
    r.check_unknown()
    return b


def _limits(r: _Reader) -> LimitsConf:
    d = LimitsConf
    lim = LimitsConf(
        request_bytes_max=r.int("request_bytes_max", d.request_bytes_max, 64, 1 << 30),
        header_bytes_max=r.int("header_bytes_max", d.header_bytes_max, 1024, 1 << 24),
        key_bytes_max=r.int("key_bytes_max", d.key_bytes_max, 1, 1 << 20),
        connections_max=r.int("connections_max", d.connections_max, 1, 1 << 20),
        pipelined_requests_max=r.int("pipelined_requests_max", d.pipelined_requests_max, 1,
                                     1 << 16),
        log_entries_max=r.int("log_entries_max", d.log_entries_max, 1, 1 << 20),
        recent_entries_kept=r.int("recent_entries_kept", d.recent_entries_kept, 0, 1 << 24),
        recent_bytes_max=r.int("recent_bytes_max", d.recent_bytes_max, 0, 1 << 34),
        sessions_max=r.int("sessions_max", d.sessions_max, 1, 1 << 24),
        session_results_max=r.int("session_results_max", d.session_results_max, 1, 1 << 20),
        session_results_total_max=r.int("session_results_total_max",
                                        d.session_results_total_max, 1, 1 << 30),
        session_idle_ms=r.int("session_idle_ms", d.session_idle_ms, 0, 1 << 40),
        # Bounded well below the CBOR decoder's depth limit (400), which every replica
        # applies when it reads a command or a snapshot back.
        json_depth_max=r.int("json_depth_max", d.json_depth_max, 2, 128),
        batch_ops_max=r.int("batch_ops_max", d.batch_ops_max, 1, 1 << 20),
        header_timeout_ms=r.int("header_timeout_ms", d.header_timeout_ms, 10, 3_600_000),
        body_timeout_ms=r.int("body_timeout_ms", d.body_timeout_ms, 10, 3_600_000),
        idle_timeout_ms=r.int("idle_timeout_ms", d.idle_timeout_ms, 10, 86_400_000),
        connections_per_address_max=r.int("connections_per_address_max",
                                          d.connections_per_address_max, 1, 1 << 20),
        query_result_bytes_max=r.int("query_result_bytes_max", d.query_result_bytes_max,
                                     1024, 1 << 30),
        peer_handshake_timeout_ms=r.int("peer_handshake_timeout_ms",
                                        d.peer_handshake_timeout_ms, 10, 600_000),
        peer_handshakes_max=r.int("peer_handshakes_max", d.peer_handshakes_max, 1, 1 << 16),
        txn_ops_max=r.int("txn_ops_max", d.txn_ops_max, 1, 1 << 16),
        txn_bytes_max=r.int("txn_bytes_max", d.txn_bytes_max, 256, 1 << 30),
        leases_max=r.int("leases_max", d.leases_max, 1, 1 << 24),
        lease_ttl_ms_min=r.int("lease_ttl_ms_min", d.lease_ttl_ms_min, 1, 1 << 40),
        lease_ttl_ms_max=r.int("lease_ttl_ms_max", d.lease_ttl_ms_max, 1, 1 << 40),
    )
    if lim.session_results_total_max < lim.session_results_max:
        raise r.fail("session_results_total_max",
                     f"must be at least session_results_max ({lim.session_results_max})")
    if lim.lease_ttl_ms_max < lim.lease_ttl_ms_min:
        raise r.fail("lease_ttl_ms_max", f"must be at least lease_ttl_ms_min "
                                         f"({lim.lease_ttl_ms_min})")
    r.check_unknown()
    return lim


def _websocket(r: _Reader) -> WebSocketConf:
    d = WebSocketConf
    w = WebSocketConf(
        connections_max=r.int("connections_max", d.connections_max, 1, 1 << 20),
        message_bytes_max=r.int("message_bytes_max", d.message_bytes_max, 1024, 1 << 30),
        inflight_requests_max=r.int("inflight_requests_max", d.inflight_requests_max, 1,
                                    1 << 20),
        subscriptions_max=r.int("subscriptions_max", d.subscriptions_max, 0, 1 << 16),
        handshake_timeout_ms=r.int("handshake_timeout_ms", d.handshake_timeout_ms, 100,
                                   600_000),
        idle_timeout_ms=r.int("idle_timeout_ms", d.idle_timeout_ms, 100, 1 << 31),
        ping_interval_ms=r.int("ping_interval_ms", d.ping_interval_ms, 0, 1 << 31),
        progress_interval_ms=r.int("progress_interval_ms", d.progress_interval_ms, 0, 1 << 31),
        stream_message_bytes=r.int("stream_message_bytes", d.stream_message_bytes, 1024,
                                   1 << 30),
        slow_consumer_ms=r.int("slow_consumer_ms", d.slow_consumer_ms, 100, 1 << 31),
        watch_history_events=r.int("watch_history_events", d.watch_history_events, 0, 1 << 30),
        watch_history_bytes=r.int("watch_history_bytes", d.watch_history_bytes, 0, 1 << 40),
        wal_read_entries_max=r.int("wal_read_entries_max", d.wal_read_entries_max, 0, 1 << 24),
    )
    if 0 < w.progress_interval_ms < 10:
        raise r.fail("progress_interval_ms", "must be 0 (off) or at least 10")
    r.check_unknown()
    return w


_ORIGIN_RE = re.compile(r"^https?://[^/\s?#]+$")


def _string_list(r: _Reader, name: str) -> tuple[str, ...]:
    value = r.get(name, [])
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise r.fail(name, "expected a list of non-empty strings")
    return tuple(value)


def _auth(r: _Reader) -> AuthConf:
    tokens_file = r.str("tokens_file")
    if tokens_file is not None and not tokens_file:
        raise r.fail("tokens_file", "expected a file name")
    required = r.get("required", tokens_file is not None)
    if type(required) is not bool:
        raise r.fail("required", f"expected true or false, got {_describe(required)}")
    if required and tokens_file is None:
        raise r.fail("required", "true needs tokens_file (create one with `paxoslog auth "
                                 "add-token --config CONF --role admin`)")
    origins = _string_list(r, "allowed_origins")
    for origin in origins:
        if origin != origin.rstrip("/") or not _ORIGIN_RE.match(origin):
            raise r.fail("allowed_origins", f"{origin!r:.80} is not an origin "
                                            "(scheme://host[:port], no path)")
    hosts = _string_list(r, "allowed_hosts")
    for host in hosts:
        if any(c in host for c in "/ \t@"):
            raise r.fail("allowed_hosts", f"{host!r:.80} is not a host[:port]")
    if tokens_file is not None:
        tokens_file = _relative_to_conf(r.path, tokens_file)
    r.check_unknown()
    return AuthConf(tokens_file, required, origins, tuple(h.lower() for h in hosts))


def _relative_to_conf(path: str, name: str) -> str:
    """``name`` as an absolute path; a relative one is relative to the conf file's folder."""
    return name if os.path.isabs(name) else os.path.join(
        os.path.dirname(os.path.abspath(path)), name)


def _state_machines(r: _Reader) -> tuple[str, ...]:
    enabled = r.get("enabled", ["kv"])
    if not isinstance(enabled, list) or not all(isinstance(n, str) for n in enabled):
        raise r.fail("enabled", "expected a list of state machine names")
    from statemachines import available
    known = available()      # built-ins + the entry-point group paxoslog.state_machines
    for name in enabled:
        if name not in known:
            raise r.fail("enabled", f"unknown state machine {name!r} (known: "
                                    f"{', '.join(known)}; plug-ins register in the entry-point "
                                    f"group paxoslog.state_machines)")
    if len(set(enabled)) != len(enabled):
        raise r.fail("enabled", "a state machine is listed twice")
    if "kv" not in enabled:
        raise r.fail("enabled", '"kv" must be enabled (the HTTP propose/query API uses it)')
    r.check_unknown()
    return tuple(enabled)


def _tls(r: _Reader) -> TlsConf | None:
    if not r.table:
        r.check_unknown()
        return None
    ca = r.str("ca_file")
    if not ca:
        raise r.fail("ca_file", "missing: [tls] needs the cluster CA's certificate "
                                "(paxoslog certs init creates one)")
    files = {}
    for name in ("cert_file", "key_file"):
        value = r.str(name)
        if value is not None and not value:
            raise r.fail(name, "expected a file name")
        files[name] = value
    tls = TlsConf(ca_file=_relative_to_conf(r.path, ca),
                  cert_file=files["cert_file"], key_file=files["key_file"],
                  api=r.bool("api", TlsConf.api), peers=r.bool("peers", TlsConf.peers))
    r.check_unknown()
    return tls


def _nodes(r: _Reader, data_dir_template: str | None,
           tls: TlsConf | None = None) -> tuple[NodeConf, ...]:
    raw = r.get("nodes")
    if raw is None:
        raise r.fail("nodes", "missing: add one [[nodes]] table per node")
    if not isinstance(raw, list) or not all(isinstance(n, dict) for n in raw):
        raise r.fail("nodes", "expected an array of tables ([[nodes]])")
    if not raw:
        raise r.fail("nodes", "at least one node is needed")
    nodes: list[NodeConf] = []
    for position, table in enumerate(raw):
        n = _Reader(r.path, table, f"nodes[{position}].")
        if "id" not in table:
            raise n.fail("id", "missing (required)")
        node_id = n.int("id", 0, 1, NODE_ID_MAX)
        peer = n.address("peer", required=True)
        api = n.address("api", required=True, allow_zero_port=True)
        template = n.str("data_dir", data_dir_template)
        if template is None:
            raise n.fail("data_dir", "missing: set data_dir at the top level or per node")
        data_dir = template.replace("{node}", str(node_id))
        peer_bind = n.address("peer_bind", default=peer)
        api_bind = n.address("api_bind", default=api, allow_zero_port=True)
        tls_files = []
        for name, default in (("tls_cert_file", tls.cert_file if tls else None),
                              ("tls_key_file", tls.key_file if tls else None)):
            value = n.str(name, default)
            if value is not None and tls is None:
                raise n.fail(name, "set without a [tls] section")
            tls_files.append(None if value is None else _relative_to_conf(
                r.path, value.replace("{node}", str(node_id))))
        n.check_unknown()
        nodes.append(NodeConf(node_id, peer, api, data_dir, peer_bind, api_bind,
                              "https" if tls is not None and tls.api else "http",
                              *tls_files))
    seen: dict[tuple, str] = {}
    for position, node in enumerate(nodes):
        for label, key in (("id", ("id", node.id)),
                           ("peer", ("addr", str(node.peer))),
                           ("api", ("addr", str(node.api)) if node.api.port else None),
                           # the same path on two machines is fine; on one it is not
                           ("data_dir", ("dir", node.peer.host,
                                         os.path.abspath(node.data_dir)))):
            if key is None:
                continue
            if key in seen:
                raise ConfigError(r.path, f"nodes[{position}].{label}",
                                  f"{key[-1]} is also used by {seen[key]}")
            seen[key] = f"nodes[{position}].{label}"
    return tuple(nodes)


def parse_config(data: dict, path: str = "<conf>") -> ClusterConfig:
    """Validate a parsed TOML document (``path`` is only used in error messages)."""
    r = _Reader(path, data)
    name = r.str("cluster", required=True)
    if not _NAME_RE.match(name):
        raise r.fail("cluster", "must be 1-64 characters of letters, digits, '.', '_' or '-'")
    protocol = r.str("protocol", "multipaxos")
    if protocol not in PROTOCOLS:
        raise r.fail("protocol", f"{protocol!r} is not one of {', '.join(PROTOCOLS)}")
    data_dir = r.str("data_dir")
    secret = _secret(r)
    timing = _timing(r.table_of("timing"))
    snapshot = _snapshot(r.table_of("snapshot"))
    storage = _storage(r.table_of("storage"))
    batching = _batching(r.table_of("batching"))
    limits = _limits(r.table_of("limits"))
    websocket = _websocket(r.table_of("websocket"))
    state_machines = _state_machines(r.table_of("state_machines"))
    log = _log(r.table_of("log"))
    auth = _auth(r.table_of("auth"))
    tls = _tls(r.table_of("tls"))
    nodes = _nodes(r, data_dir, tls)
    r.check_unknown()
    _check_frame_room(path, snapshot, batching)
    config = ClusterConfig(path=path, name=name, protocol=protocol, nodes=nodes, timing=timing,
                           snapshot=snapshot, storage=storage, batching=batching,
                           limits=limits, websocket=websocket,
                           state_machines=state_machines, secret=secret, log=log,
                           tls=tls, auth=auth)
    if not config.local:
        # Reachable from other machines: anyone there can dial the peer port.  The secret
        # keys the handshake and (without TLS) every frame; short, it could be guessed.
        key = "secret_file" if "secret_file" in data else "secret"
        if secret is None:
            raise r.fail(key, f"required: the nodes are not all on loopback addresses, so "
                              f"peers must share a secret of at least "
                              f"{SECRET_BYTES_MIN_MULTI_HOST} bytes (e.g. head -c 32 "
                              f"/dev/urandom | base64 > secret; secret_file = \"secret\")")
        if len(secret) < SECRET_BYTES_MIN_MULTI_HOST:
            raise r.fail(key, f"too short for a multi-host conf: use at least "
                              f"{SECRET_BYTES_MIN_MULTI_HOST} bytes (a short secret can be "
                              f"guessed offline from one recorded handshake)")
    return config


FRAME_MARGIN = 4096    # what a peer frame carries beside one chunk or one entry: heads, a MAC


def _check_frame_room(path: str, snapshot: SnapshotConf, batching: BatchingConf) -> None:
    """A snapshot chunk, and an entry holding one command as large as the API accepts, each
    travel in one peer frame, which the receiver refuses beyond ``frame_bytes_max`` by
    closing the link.  Such a conf could never ship a snapshot (or that command): the sender
    would retry forever."""
    room = batching.frame_bytes_max - FRAME_MARGIN
    for key, value in (("snapshot.chunk_bytes", snapshot.chunk_bytes),
                       ("batching.batch_bytes_max", batching.batch_bytes_max)):
        if value > room:
            raise ConfigError(path, key, f"{value} does not fit in one peer frame: it must be "
                                         f"at most batching.frame_bytes_max "
                                         f"({batching.frame_bytes_max}) minus {FRAME_MARGIN}; "
                                         f"raise frame_bytes_max or lower this")


def _log(r: _Reader) -> LogConf:
    level = r.str("level")
    if level is not None and level not in LOG_LEVELS:
        raise r.fail("level", f"{level!r} is not one of {', '.join(LOG_LEVELS)}")
    r.check_unknown()
    return LogConf(level=level)


def _secret(r: _Reader) -> bytes | None:
    inline = r.get("secret")
    file_name = r.get("secret_file")
    if inline is not None and file_name is not None:
        raise r.fail("secret_file", "set either secret or secret_file, not both")
    if inline is not None:
        if not isinstance(inline, str):
            raise r.fail("secret", "expected a string")  # never echo the value
        if len(inline.encode()) < SECRET_BYTES_MIN:
            raise r.fail("secret", f"too short: use at least {SECRET_BYTES_MIN} characters")
        return inline.encode()
    if file_name is not None:
        if not isinstance(file_name, str) or not file_name:
            raise r.fail("secret_file", f"expected a file name, got {_describe(file_name)}")
        full = _relative_to_conf(r.path, file_name)
        try:
            with open(full, "rb") as f:
                value = f.read().strip()
        except OSError as exc:
            raise r.fail("secret_file", f"cannot read {full}: {exc.strerror}") from None
        if len(value) < SECRET_BYTES_MIN:
            raise r.fail("secret_file", f"{full}: secret too short (at least "
                                        f"{SECRET_BYTES_MIN} bytes)")
        return value
    return None


def load_config(path: str) -> ClusterConfig:
    """Read and validate a conf file; ``ConfigError`` on any problem."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(path, None, "no such file") from None
    except OSError as exc:
        raise ConfigError(path, None, f"cannot read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, None, f"not valid TOML: {exc}") from None
    except UnicodeDecodeError as exc:   # tomllib decodes the bytes itself, before parsing
        raise ConfigError(path, None, _not_utf8(exc)) from None
    return parse_config(data, path)


def _not_utf8(exc: UnicodeDecodeError) -> str:
    """The problem of a conf file that is not UTF-8 (TOML requires it), with the offset of
    the first bad byte so that an operator can find it (``cmp``, ``xxd -s``) instead of
    guessing which line an editor saved as Latin-1."""
    bad = exc.object[exc.start:exc.start + 1]
    return f"not UTF-8 (byte 0x{bad.hex()} at offset {exc.start}); save it as UTF-8"
