"""``NodeViews``: what a node shows about itself: status, health, log entries, metrics.

Read-only: it looks at the driver (replica, applied state, counters), the runner (fsync
times, fatal error), the peer transport, the address book, the storage and the HTTP
server, and renders JSON bodies or the Prometheus text.  Expensive views (state hashes)
are computed only on request, and off the event loop (``status_with_hashes``).
"""

from __future__ import annotations

import hashlib
import os
import platform
import time

import cbor2
from twisted.internet import defer
from twisted.internet.threads import deferToThreadPool

from paxoslog.core.ready import Role
from statemachines.base import state_hash, state_hash_producer

from paxoslog import __version__

from .metrics import escape_label, render_metric
from .process_metrics import process_samples

__all__ = ["NodeViews"]


class NodeViews:
    def __init__(self, *, config, node_id: int, driver, runner, transport, book, storage,
                 logview, http_stats, events=None, streams=None, reactor=None, watch=None, snapshots=None,
                 http_requests=None) -> None:
        """``reactor``: where ``status_with_hashes`` finds its thread pool; ``watch``: the
        Watch (quorum); ``snapshots``: LocalSnapshots (durations); ``http_requests``: the
        HttpStats (request latency)."""
        self.watch = watch
        self.snapshots = snapshots
        self.http_requests = http_requests
        self.reactor = reactor
        self._hashing = defer.DeferredLock()     # one state-hash computation at a time
        self.config = config
        self.node_id = node_id
        self.driver = driver
        self.runner = runner
        self.transport = transport
        self.book = book
        self.storage = storage
        self.logview = logview
        self.http_stats = http_stats          # callable -> the HTTP factory (statuses...)
        self.events = events                  # ClusterEvents (leader/membership timeline)
        self.streams = streams                # callable -> (hub, WebSocket factory) or None
        self.started_at = time.time()
        self.stopping = False

    # ------------------------------------------------------------------ status

    def status(self, hashes: bool = False) -> dict:
        """This node's view of the cluster (GET /api/v1/cluster/status).  ``hashes``: add
        ``state_hashes`` {state machine: hex digest of its snapshot} (costs one snapshot
        encoding per state machine), to compare replicas at the same ``applied_index``."""
        driver = self.driver
        replica = driver.replica
        core = replica.status()
        config = replica.config
        tick_ms = self.config.timing.tick_ms
        leader = replica.leader_id
        progress = core.progress
        book = self.book
        nodes = []
        for nid in sorted(set(book.book) - book.removed_ids | config.members):
            node = book.book.get(nid)
            entry = {"id": nid, "api": str(node.api) if node and node.api else None,
                     "peer": str(node.peer) if node else None}
            if nid == self.node_id:
                entry.update(role=replica.role, last_heartbeat=0,
                             match_index=core.last_index, reachable=True,
                             applied_index=driver.applied_index)
                if replica.role != Role.LEADER:
                    entry["last_heartbeat"] = core.ticks_since_leader * tick_ms
            else:
                role = ("leader" if nid == leader else "learner" if nid in config.learners
                        else "follower" if nid in config.all_voters else "none")
                entry.update(role=role, reachable=self.transport.connected(nid),
                             last_heartbeat=None, match_index=None)
                if nid in progress:
                    entry["match_index"] = progress[nid].match
                    entry["last_heartbeat"] = progress[nid].last_heard_ticks * tick_ms
            nodes.append(entry)
        snapshot = self.storage.snapshot_meta
        out = {
            "node_id": self.node_id, "pid": os.getpid(), "cluster": self.config.name,
            "leader": leader, "term": replica.term, "role": replica.role,
            "cluster_size": len(config.voters), "protocol": self.config.protocol,
            "commit_index": replica.commit_index, "applied_index": driver.applied_index,
            "last_index": core.last_index, "first_index": core.first_index,
            "config": config.describe(), "snapshot_index": snapshot.index if snapshot else 0,
            "holes": list(core.holes), "tick_ms": tick_ms,
            "uptime_s": round(time.time() - self.started_at, 3), "nodes": nodes,
            "state_machines": driver.machines.names(), "removed": book.removed,
        }
        if hashes:
            machines = driver.machines
            out["state_hashes"] = {name: state_hash(machines.get(name))
                                   for name in machines.names()}
            # The session table is replicated state too ("~" cannot start an SM name).
            out["state_hashes"]["~sessions"] = hashlib.blake2b(
                cbor2.dumps(machines.sessions.snapshot()), digest_size=16).hexdigest()
        return out

    def detailed_status(self) -> dict:
        """The status plus request counters and latency histograms and the recent leader
        and membership events (the dashboard, through GET /api/v1/cluster/overview)."""
        out = self.status()
        stats = self.driver.stats
        runner = self.runner
        out["metrics"] = {
            "time": round(time.time(), 3),
            "commands_applied": stats["commands_applied"], "commits": stats["commits"],
            "proposals": stats["proposals"], "reads": stats["reads"],
            "writes_answered": runner.write_latency.count,
            "reads_answered": runner.read_latency.count,
            "write_latency": runner.write_latency.to_json(),
            "read_latency": runner.read_latency.to_json(),
            "fsync": runner.fsync.to_json(),
        }
        out["events"] = self.events.since(0) if self.events is not None else []
        return out

    def status_with_hashes(self) -> defer.Deferred:
        """``status(hashes=True)`` without blocking the event loop: the status and copies
        of every state (cheap: ``snapshot_copy``) are taken here, at one applied index; the
        encoding and hashing run on the reactor's thread pool, one request at a time.
        (Over 200k keys they took 605 ms on the event loop, longer than an election
        timeout.)  Fires with the status body including ``state_hashes``."""
        return self._hashing.run(self._status_with_hashes)

    def _status_with_hashes(self) -> defer.Deferred:
        body = self.status()
        machines = self.driver.machines
        digests = [(name, state_hash_producer(machines.get(name))) for name in machines.names()]
        sessions = machines.sessions.snapshot_producer()

        def compute() -> dict:
            out = {name: digest() for name, digest in digests}
            # The session table is replicated state too ("~" cannot start an SM name).
            out["~sessions"] = hashlib.blake2b(cbor2.dumps(sessions()),
                                               digest_size=16).hexdigest()
            return out
        d = deferToThreadPool(self.reactor, self.reactor.getThreadPool(), compute)
        d.addCallback(lambda hashes: {**body, "state_hashes": hashes})
        return d

    def health(self) -> dict:
        replica = self.driver.replica
        fatal = self.runner.fatal
        return {"status": "ok" if fatal is None else "failed", "version": __version__,
                "ready": (replica.leader_id is not None and fatal is None and not self.stopping
                          and not self.book.removed),
                "node_id": self.node_id, "pid": os.getpid(), "role": replica.role,
                "leader": replica.leader_id, "term": replica.term,
                "commit_index": replica.commit_index,
                "applied_index": self.driver.applied_index}

    def last_index(self) -> int:
        return max(self.driver.replica.status().last_index, self.driver.applied_index)

    def entries(self, start: int, end: int) -> dict:
        driver = self.driver
        core = driver.replica.status()
        return self.logview.entries(start, end, driver.applied_index,
                                    driver.replica.commit_index, core.last_index, core.holes)

    # ------------------------------------------------------------------ metrics

    def metrics(self) -> str:
        driver = self.driver
        replica = driver.replica
        stats = driver.stats
        peers = self.transport.stats
        http = self.http_stats()
        lines: list[str] = []
        add = lines.extend
        add(render_metric("paxoslog_term", "gauge", "Current term (Raft) or ballot round "
                          "(Multi-Paxos).", [(None, replica.term)]))
        add(render_metric("paxoslog_role", "gauge", "1 for the role this node is in.",
                          [({"role": role}, int(replica.role == role))
                           for role in ("leader", "follower", "pre-candidate", "candidate",
                                        "learner")]))
        add(render_metric("paxoslog_is_leader", "gauge", "1 when this node leads.",
                          [(None, int(replica.role == "leader"))]))
        add(render_metric("paxoslog_commit_index", "gauge", "Highest committed/chosen index "
                          "(watermark).", [(None, replica.commit_index)]))
        add(render_metric("paxoslog_applied_index", "gauge", "Highest applied index.",
                          [(None, driver.applied_index)]))
        snapshot = self.storage.snapshot_meta
        add(render_metric("paxoslog_snapshot_index", "gauge", "Index of the newest local "
                          "snapshot.", [(None, snapshot.index if snapshot else 0)]))
        for name, key, text in _COUNTERS:
            add(render_metric(f"paxoslog_{name}_total", "counter", text, [(None, stats[key])]))
        add(render_metric("paxoslog_early_campaigns_total", "counter", "Campaigns started "
                          "before the election timeout because the leader's connection "
                          "was reset (fast failover).",
                          [(None, replica.status().early_campaigns)]))
        runner = self.runner
        add(render_metric("paxoslog_server_has_leader", "gauge",
                          "1 when this node knows a leader (itself included).",
                          [(None, int(replica.leader_id is not None))]))
        if self.watch is not None:
            add(render_metric("paxoslog_server_quorum_reachable", "gauge",
                              "1 when a quorum of voters (this node included) was heard "
                              "from within the last election timeout or so.",
                              [(None, int(self.watch.quorum_reachable()))]))
        add(render_metric("paxoslog_server_leader_changes_seen_total", "counter",
                          "Leader changes this node has seen.",
                          [(None, runner.leader_changes)]))
        add(render_metric("paxoslog_server_proposals_pending", "gauge",
                          "Client writes waiting on this node for their commit.",
                          [(None, driver.pending_writes())]))
        add(render_metric("paxoslog_server_proposals_failed_total", "counter",
                          "Client writes submitted on this node that failed (unavailable, "
                          "timed out, refused).", [(None, runner.writes_failed)]))
        table = driver.machines.sessions
        add(render_metric("paxoslog_sessions", "gauge",
                          "Client sessions in the replicated session table (released "
                          "ones included, until evicted).", [(None, len(table))]))
        add(render_metric("paxoslog_session_results", "gauge",
                          "Results the session table remembers for retries.",
                          [(None, table.results_total)]))
        histograms = [
            ("paxoslog_commit_duration_seconds", "Client writes submitted on this node, "
             "from submission to their committed answer.", runner.commit_latency),
            ("paxoslog_read_duration_seconds", "Client reads on this node, from submission "
             "to the answer.", runner.read_latency),
            ("paxoslog_wal_fsync_duration_seconds", "Time to append and fsync one Ready "
             "to the WAL.", runner.fsync),
            ("paxoslog_apply_duration_seconds", "Event-loop steps that applied committed "
             "entries to the state machines.", runner.apply_seconds)]
        if self.snapshots is not None:
            histograms += [
                ("paxoslog_snapshot_save_duration_seconds", "Time to take a local "
                 "snapshot (encode, write, fsync, verify).", self.snapshots.save_seconds),
                ("paxoslog_snapshot_restore_duration_seconds", "Time to restore a "
                 "received snapshot.", self.snapshots.restore_seconds)]
        for name, text, histogram in histograms:
            add([f"# HELP {name} {text}", f"# TYPE {name} histogram"])
            add(histogram.lines(name))
        if self.http_requests is not None:
            name = "paxoslog_http_request_duration_seconds"
            add([f"# HELP {name} HTTP requests by method and route, from the request's "
                 "last byte to its answer.", f"# TYPE {name} histogram"])
            for (method, route), histogram in sorted(self.http_requests.latency.items()):
                add(histogram.lines(name, f'method="{escape_label(method)}",'
                                          f'route="{escape_label(route)}"'))
        # Every member, connected or not: a peer that goes away shows 0, it does not vanish.
        members = sorted(set(self.book.peer_addresses()) | set(self.transport.links))
        members = [n for n in members if n != self.node_id and n not in self.book.removed_ids]
        add(render_metric("paxoslog_peer_connected", "gauge",
                          "1 when the peer connection is established.",
                          [({"peer": n}, int(self.transport.connected(n))) for n in members]))
        links = {n: self.transport.link(n) for n in members}
        add(render_metric("paxoslog_peer_sent_bytes_total", "counter",
                          "Bytes written to the peer (all connections).",
                          [({"peer": n}, link.bytes_sent) for n, link in links.items()]))
        add(render_metric("paxoslog_peer_received_bytes_total", "counter",
                          "Bytes received from the peer (all connections).",
                          [({"peer": n}, link.bytes_received) for n, link in links.items()]))
        name = "paxoslog_peer_round_trip_time_seconds"
        add([f"# HELP {name} PING/PONG round trips to the peer.", f"# TYPE {name} histogram"])
        for n, link in links.items():
            add(link.rtt.lines(name, f'peer="{n}"'))
        wal_bytes, snap_bytes = _dir_bytes(self.storage.wal_dir), _dir_bytes(
            self.storage.snap_dir)
        add(render_metric("paxoslog_wal_size_bytes", "gauge", "Bytes of WAL segments on disk.",
                          [(None, wal_bytes)]))
        add(render_metric("paxoslog_snapshot_files_size_bytes", "gauge",
                          "Bytes of snapshot files on disk.", [(None, snap_bytes)]))
        add(render_metric("paxoslog_data_dir_size_bytes", "gauge",
                          "Bytes of the data directory (WAL, snapshots, state files).",
                          [(None, _dir_bytes(self.storage.data_dir))]))
        for name, text in _PEER_COUNTERS:
            add(render_metric(f"paxoslog_peer_{name}_total", "counter", text,
                              [(None, peers[name])]))
        add(render_metric("paxoslog_http_requests_total", "counter", "HTTP responses by status.",
                          [({"code": code}, count)
                           for code, count in sorted(http.statuses.items())]))
        add(render_metric("paxoslog_http_connections", "gauge", "Open HTTP connections.",
                          [(None, len(http.connections))]))
        add(render_metric("paxoslog_http_connections_paused", "gauge",
                          "HTTP connections not read for now: answers outstanding up to "
                          "pipelined_requests_max, or a client not reading its answers.",
                          [(None, http.paused_connections)]))
        add(render_metric("paxoslog_http_connections_refused_total", "counter",
                          "HTTP connections refused over connections_max or "
                          "connections_per_address_max.", [(None, http.refused)]))
        add(render_metric("paxoslog_http_timeouts_total", "counter",
                          "HTTP connections cut by a read deadline (408) or for not reading "
                          "their answers.", [(None, http.timeouts)]))
        if self.streams is not None:
            hub, factory = self.streams()
            stats = hub.stats
            add(render_metric("paxoslog_ws_connections", "gauge", "Open WebSocket connections.",
                              [(None, len(factory.conns))]))
            add(render_metric("paxoslog_ws_subscriptions", "gauge",
                              "Tails and watches being served.", [(None, len(hub.subs))]))
            for name, key, text in _STREAM_COUNTERS:
                add(render_metric(f"paxoslog_ws_{name}_total", "counter", text,
                                  [(None, stats.get(key, 0))]))
            add(render_metric("paxoslog_ws_streams_ended_total", "counter",
                              "Streams the server ended, by reason.",
                              [({"reason": key[len("ended_"):]}, value)
                               for key, value in sorted(stats.items())
                               if key.startswith("ended_")]))
            add(render_metric("paxoslog_ws_watch_history_first_revision", "gauge",
                              "Oldest revision a watch can start from here.",
                              [(None, hub.events.first)]))
        add(render_metric("paxoslog_info", "gauge", "Static node information.",
                          [({"node": self.node_id, "cluster": self.config.name,
                             "protocol": self.config.protocol}, 1)]))
        add(render_metric("paxoslog_build_info", "gauge", "The paxoslog build: version, "
                          "Python version, and the state machines with their versions.",
                          [({"version": __version__, "python": platform.python_version(),
                             "state_machines": ",".join(
                                 f"{n}:{v}" for n, v in driver.machines.describe())}, 1)]))
        for name, kind, text, value in process_samples():
            add(render_metric(name, kind, text, [(None, value)]))
        return "\n".join(lines) + "\n"


_STREAM_COUNTERS = (
    ("subscriptions", "subscriptions", "Tails and watches started."),
    ("stream_messages", "messages", "Stream messages sent (entries and events)."),
    ("entries_sent", "entries", "Log entries sent to tails."),
    ("events_sent", "events", "kv events sent to watches."),
    ("progress_sent", "progress", "Progress messages sent."),
    ("wal_reads", "wal_reads", "Reads of this node's WAL for tails behind the log view."),
)

_COUNTERS = (
    ("proposals", "proposals", "Commands proposed by this node as leader."),
    ("proposals_forwarded", "proposals_forwarded",
     "Commands other nodes forwarded to this node."),
    ("proposals_dropped", "proposals_dropped",
     "Commands dropped by the core after losing leadership (never applied)."),
    ("commits", "commits", "Log entries applied."),
    ("commands_applied", "commands_applied", "Commands applied."),
    ("duplicate_commands", "duplicates", "Retried commands answered from the session table."),
    ("reads", "reads", "Queries served or attempted."),
    ("stale_reads", "stale_reads", "Reads served from local state (stale)."),
    ("lease_reads", "lease_reads", "Lease reads asked of this node as leader."),
    ("lease_reads_served", "lease_reads_served",
     "Lease reads answered from the leader lease (no quorum round)."),
    ("write_timeouts", "write_timeouts", "Writes answered 503/504 on timeout."),
    ("role_changes", "role_changes", "Role or leader changes seen."),
    ("snapshots_taken", "snapshots_taken", "Local snapshots written."),
    ("snapshots_installed", "snapshots_installed",
     "Snapshots received from a leader and installed."),
    ("readies", "readies", "Ready batches processed."),
    ("fsyncs", "fsyncs", "WAL fsyncs (one per persisted Ready)."),
    ("entries_applied_while_persisting", "applied_while_persisting",
     "Committed entries applied while a later Ready was being persisted."),
    ("leader_connection_lost", "leader_connection_lost",
     "Connections to this node's leader lost (reset: the leader process may be gone)."),
)

_PEER_COUNTERS = (
    ("messages_sent", "Consensus messages sent to peers."),
    ("messages_received", "Consensus messages received from peers."),
    ("messages_dropped", "Messages dropped: no connection or a full send queue."),
    ("frames_sent", "Peer frames written."),
    ("bytes_sent", "Peer bytes written."),
    ("malformed_frames", "Malformed peer frames or messages dropped."),
    ("frames_rejected", "Oversized peer frames (connection closed)."),
    ("frames_forged", "Peer frames that failed their MAC (connection closed)."),
    ("handshake_failures", "Peer handshakes refused."),
    ("handshakes_refused", "Peer connections closed at once: too many in their handshake."),
    ("tls_failures", "Peer TLS handshakes that failed."),
)


def _dir_bytes(path: str) -> int:
    """Bytes of the regular files under ``path`` (0 when it is gone)."""
    total = 0
    try:
        entries = list(os.scandir(path))
    except OSError:
        return 0
    for entry in entries:
        try:
            if entry.is_dir(follow_symlinks=False):
                total += _dir_bytes(entry.path)
            elif entry.is_file(follow_symlinks=False):
                total += entry.stat(follow_symlinks=False).st_size
        except OSError:
            continue
    return total
