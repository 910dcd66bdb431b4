"""``NodeService``: the composition root of one node.  It builds the node's small services
and wires them with narrow interfaces; it owns nothing but their lifecycle.

::

    NodeService (MultiService)                       start: open the data dir, restore,
    |                                                build the driver, start the children
    +- PeerTransport  peers.py     authenticated peer connections, frames
    +- Ticker         ticker.py    tick_ms heartbeat of the driver (injected clock)
    +- LearnerPromotion promotion.py  leader upkeep: promote caught-up learners
    +- HttpService    http.py      the HTTP/1.1 server; Api (api.py) routes requests
    +- Watch          watch.py     operator-actionable conditions, told once per episode
    +- WebSocketService websocket.py  GET /api/v1/ws (autobahn): requests and streams
    |
    `- not services (no lifecycle of their own):
       NodeDriver     node/driver.py   the sans-I/O node: replica, state machines,
                                       sessions, pending requests (the simulator runs it too)
       DriverRunner   runner.py        carries out the driver's instructions
       StorageWriter  writer.py        WAL thread and snapshot thread
       LeanEPollReactor reactor.py     the event loop serve installs (epoll, lean dispatch)
       LocalSnapshots local_snapshots.py  take / restore snapshots off the event loop
       SnapshotShipper/Fetcher snapshots.py  snapshot transfer between peers
       RequestRouter  router.py        client and forwarded requests into the runner
       AddressBook    addressbook.py   where the members are; removal
       MembershipAdmin admin.py        add-node, remove-node, transfer-leader
       NodeViews      views.py         status, health, entries, metrics
       LogView        logview.py       the recently applied log
       ClusterEvents  events.py        leader and membership changes (dashboard timeline)
       ClusterOverview overview.py     every member's status in one answer (dashboard)
       BackupService  backup.py        GET /api/v1/snapshot: a consistent backup, streamed
       Reloader       reload.py        SIGHUP / admin reload of what can change live
       DashboardFiles dashboard.py     the static dashboard at /dashboard
       StreamHub      streams.py       tail and watch subscriptions (+ walhistory.py)

An event flows socket -> protocol (peers.py/http.py) -> router/runner -> driver; the
driver's instructions flow back out: ``Persist`` -> writer thread (fsync) ->
``runner.persisted`` -> driver -> ``Send``/``Reply``/``Applied``... -> transport, the
client's request (its answer), the log view.

A storage I/O error or an unexpected exception in the driver is fatal: the node stops
(crash-only; a restart recovers from the data directory).
"""

from __future__ import annotations

import os
import random
import time

from twisted.application.service import MultiService
from twisted.internet import defer, task
from twisted.logger import Logger

from paxoslog import __version__
from paxoslog.core.errors import Busy, NotLeader
from paxoslog.core.ready import Role
from paxoslog.core.replica import create_replica
from paxoslog.node.driver import DriverOptions, NodeDriver
from paxoslog.node.machines import StateMachines, limited_factories
from paxoslog.node.stamps import node_command_clock
from paxoslog.config import ConfigError
from paxoslog.storage import DiskStorage
from paxoslog.terms import describe_hard_state
from paxoslog.tokens import TokensFileError, check_token

from . import frames as F
from .access import AccessControl, TokenStore, is_loopback
from .addressbook import AddressBook
from .admin import MembershipAdmin
from .api import Api
from .backup import BackupService
from .dashboard import DashboardFiles
from .events import ClusterEvents
from .httpservice import HttpService
from .httpstats import HttpStats
from .local_snapshots import LocalSnapshots, verify_states
from .logview import LogView
from .overview import ClusterOverview
from .peers import PeerTransport
from .promotion import LearnerPromotion
from .reload import Reloader
from .router import RequestRouter
from .runner import DriverRunner, FatalNodeError
from .snapshots import SnapshotFetcher, SnapshotShipper
from .streams import StreamHub
from .ticker import Ticker
from .tls import load_node_tls
from .views import NodeViews
from .watch import NodeLook, Watch, WatchLimits
from .walhistory import WalHistory
from .websocket import WebSocketService, streams_factory
from .writer import StorageWriter

_HANDOVER_POLL_S = 0.05   # how often a removed leader checks whether it handed over

__all__ = ["NodeService", "FatalNodeError", "ConsensusPort"]

log = Logger(namespace="paxoslog.node")


def _monotonic_ms() -> float:
    return time.monotonic() * 1000.0


class ConsensusPort:
    """What the membership services may see and do: roles, configurations, progress,
    configuration changes, transfers, internal rows, and the peer links."""

    def __init__(self, node_id: int, driver, runner, router, transport, stopping) -> None:
        self.node_id = node_id
        self._driver = driver
        self._runner = runner
        self._router = router
        self._transport = transport
        self._stopping = stopping

    def role(self) -> str:
        return self._driver.replica.role

    def leader_id(self) -> int | None:
        return self._driver.replica.leader_id

    def term(self) -> int:
        return self._driver.replica.term

    def config(self):
        return self._driver.replica.config

    def applied_config(self):
        return self._driver.applied_config

    def applied_index(self) -> int:
        return self._driver.applied_index

    def commit_index(self) -> int:
        return self._driver.replica.commit_index

    def progress(self):
        return self._driver.replica.status().progress

    def election_ticks(self) -> int:
        """The election timeout in ticks: a peer not heard from for that long is not live."""
        return self._driver.options.election_ticks

    def change_config(self, voters, learners) -> None:
        self._runner.change_config(voters, learners)

    def transfer_leadership(self, target: int) -> None:
        self._runner.transfer_leadership(target)

    def write_row(self, command: dict) -> defer.Deferred:
        return self._router.write("membership", command, internal=True).deferred

    def connected(self, peer: int) -> bool:
        return self._transport.connected(peer)

    def forward(self, peer: int, op: str, payload) -> defer.Deferred:
        return self._transport.forward(peer, op, payload)

    def stopping(self) -> bool:
        return self._stopping()


class _PeerEvents:
    """The transport's handler: frames to the service that owns them."""

    def __init__(self, node: "NodeService") -> None:
        self.node = node

    def peer_messages(self, peer: int, messages: list) -> None:
        if not self.node.stopping:
            self.node.runner.receive(peer, messages)

    def peer_frame(self, peer: int, kind: int, payload: list) -> None:
        node = self.node
        if kind == F.FORWARD:
            node.router.forwarded(peer, payload)
        elif kind == F.SNAP_OFFER:
            node.fetcher.on_offer(peer, payload)
        elif kind == F.SNAP_WANT:
            node.shipper.on_want(peer, payload)
        elif kind == F.SNAP_CHUNK:
            node.fetcher.on_chunk(peer, payload)
        elif kind == F.SNAP_DONE:
            node.shipper.on_done(peer, payload)
        elif kind == F.REMOVED:
            node.book.removed_frame(peer, payload)
        elif kind == F.VOTER_ADDRESSES:
            node.book.voter_addresses_frame(peer, payload)

    def after_input(self) -> None:
        """The runner pumps after peer messages already."""

    def peer_up(self, peer: int) -> None:
        self.node.runner.peer_up(peer)
        self.node.book.peer_up(peer)

    def peer_down(self, peer: int) -> None:
        self.node.runner.peer_down(peer)
        self.node.shipper.peer_down(peer)


class NodeService(MultiService):
    """One paxoslog node.  ``reactor`` is injected (cli.py passes the global one);
    ``clock_ms`` is the monotonic clock of the ticker (tests pass a fake one)."""

    def __init__(self, config, node_id: int, reactor, *, seed: int | None = None,
                 clock_ms=_monotonic_ms) -> None:
        super().__init__()
        self.config = config
        # Empty state machines and session tables with the conf's limits.
        self._create_machine, self._new_sessions = limited_factories(config.limits)
        self.node_id = node_id
        self.reactor = reactor
        self.clock_ms = clock_ms
        self.me = config.node(node_id)
        self.rng = random.Random(seed if seed is not None else int.from_bytes(os.urandom(8), "big"))
        self.stopping = False
        self.on_fatal = None                 # callable(exc): set by the CLI to stop the process
        self.on_removed = None               # callable(index): set by the CLI (exit)
        self._handover_noted = False
        self.storage: DiskStorage | None = None
        self.writer: StorageWriter | None = None
        self.driver: NodeDriver | None = None
        # The node's certificate and key ([tls]); ConfigError when they are unusable.
        self.tls = load_node_tls(config, node_id) if config.tls is not None else None
        self.transport = PeerTransport(config, node_id, _PeerEvents(self), reactor,
                                       tls=self.tls if config.tls_peers else None)
        self.api = Api(node_id, config.limits, config.batching.batch_bytes_max)
        self.http = HttpService(self.api, self.me.api_bind, config.limits, reactor,
                                tls=self.tls if config.tls_api else None)
        # Request latency per route, and the access log (the CLI sets .access).
        self.http_requests = HttpStats(self.api.route_of)
        self.http.factory.on_response = self.http_requests.responded
        self.reloader = Reloader(config)       # the CLI registers the log level hook
        self.dashboard = DashboardFiles()
        self.access = self._access_control()

    def _access_control(self) -> AccessControl:
        """The API's gate; raises ``ConfigError`` when the tokens file is unusable."""
        auth, reactor = self.config.auth, self.reactor
        store = None
        if auth.tokens_file is not None:
            store = TokenStore(auth.tokens_file)
            try:
                store.load()
            except TokensFileError as exc:
                raise ConfigError(self.config.path, "auth.tokens_file", str(exc)) from None

        def verify(record, token):
            from twisted.internet import threads
            return threads.deferToThreadPool(reactor, reactor.getThreadPool(), check_token,
                                             record, token)
        return AccessControl(auth, (self.me.api, self.me.api_bind), lambda: self.http.port,
                             store=store, verify=verify, now=reactor.seconds,
                             https=self.config.tls_api)

    # ================================================================== wiring

    def _machines(self) -> StateMachines:
        config = self.config
        # The membership table is the address book of nodes added later: always on.
        names = config.state_machines + (
            ("membership",) if "membership" not in config.state_machines else ())
        sessions = self._new_sessions()

        def failed(name: str, index: int, exc: BaseException) -> None:
            # No traceback: a client can make a plug-in's apply raise at will (a domain
            # error such as insufficient funds), one log line per request is enough.
            where = f"on entry {index}" if index >= 0 else "answering a query"
            log.error("state machine {sm} failed {where}: {error!r}", sm=name, where=where,
                      error=exc)
        return StateMachines({name: self._create_machine(name) for name in names}, sessions,
                             self._create_machine, record_terms=config.protocol == "raft",
                             on_failure=failed)

    def _wire(self, restored, reader) -> None:
        """Build the driver and the services around it (after the data dir is open)."""
        config, timing, reactor = self.config, self.config.timing, self.reactor
        machines = self._machines()
        if reader is not None:
            with reader:
                for name in machines.restore_from(reader):
                    log.warn("snapshot holds state machine {name}, not enabled here", name=name)
        book = self.book
        replica = create_replica(config.protocol, self.node_id, book.bootstrap_config(),
                                 config.replica_options(), self.rng, restored)
        tick_ms = timing.tick_ms
        self.driver = driver = NodeDriver(
            DriverOptions(self.node_id, config.protocol, tick_ms,
                          request_timeout_ticks=max(1, -(-timing.request_timeout_ms // tick_ms)),
                          snapshot_entries=config.snapshot.entries,
                          snapshot_bytes=config.snapshot.bytes,
                          election_ticks=timing.election_ticks),
            replica, machines, restored.snapshot, book.bootstrap_config(),
            newest_snapshot=self.storage.snapshot_meta)
        driver.restored_hard_state(restored.hard_state)
        self.writer = StorageWriter(self.storage, reactor)
        self.events = ClusterEvents(self.node_id)
        transport = self.transport
        transport.local_info = {"version": __version__,
                                "state_machines": machines.describe()}
        election_s = timing.election_ticks * tick_ms / 1000.0
        transport.ping_interval_s = min(1.0, max(0.02, election_s / 2))
        self.watch = Watch(
            NodeLook(node_id=self.node_id, role=lambda: driver.replica.role,
                     leader_id=lambda: driver.replica.leader_id,
                     term=lambda: driver.replica.term,
                     config=lambda: driver.replica.config,
                     peers=lambda: self.book.peer_addresses().keys(),
                     last_heard_s=transport.last_heard_s,
                     removed=lambda: self.book.removed),
            WatchLimits.for_timing(election_s, transport.ping_interval_s), reactor,
            period_s=max(0.02, min(1.0, election_s / 3)))
        self.shipper = SnapshotShipper(self.storage, self.writer, self.transport, reactor,
                                       config.snapshot.chunk_bytes)
        self.logview = LogView(config.limits.recent_entries_kept, config.limits.recent_bytes_max,
                               config.protocol == "multipaxos", driver.api_term,
                               config.limits.log_entries_max)
        self.local_snapshots = LocalSnapshots(self.writer, self.storage, self._create_machine,
                                              lambda: self.driver.machines.sessions.like())
        self.hub = hub = StreamHub(
            reactor, logview=self.logview,
            wal=WalHistory(self.me.data_dir, reactor, config.websocket.wal_read_entries_max),
            applied_index=lambda: self.driver.applied_index, options=config.websocket)
        self.runner = runner = DriverRunner(
            driver, reactor, writer=self.writer, transport=self.transport,
            shipper=self.shipper, snapshots=self.local_snapshots, health=self.watch,
            on_applied=self._applied, on_role=self.events.role_changed,
            on_config=self._config_applied, on_row=book.row_applied,
            on_installed=self._installed, on_fatal=self._fatal)
        self.fetcher = SnapshotFetcher(self.node_id, self.storage.transfer_dir, self.writer,
                                       self.transport, runner.install_snapshot,
                                       config.snapshot.receive_bytes_max)
        self.ticker = Ticker(reactor, tick_ms, timing.election_ticks, self.clock_ms,
                             runner.tick)
        self.router = router = RequestRouter(
            runner, lambda: self.driver.machines, self.ticker.catch_up, node_id=self.node_id,
            command_bytes_max=config.batching.batch_bytes_max,
            stamp_ms=node_command_clock(driver, lambda: int(time.time() * 1000),
                                        lambda: int(time.monotonic() * 1000)))
        port = ConsensusPort(self.node_id, driver, runner, router, self.transport,
                             lambda: self.stopping or runner.fatal is not None)
        self.admin = MembershipAdmin(port, book, reactor, cluster=config.name,
                                     protocol=config.protocol, tick_s=tick_ms / 1000.0,
                                     request_timeout_s=timing.request_timeout_ms / 1000.0)
        router.member_requests = self.admin.request
        self.promotion = LearnerPromotion(
            port, book, self.admin, reactor,
            period_s=max(0.02, timing.heartbeat_ticks * tick_ms / 1000.0),
            election_ticks=timing.election_ticks)
        self.views = NodeViews(config=config, node_id=self.node_id, driver=driver,
                               runner=runner, transport=self.transport, book=book,
                               storage=self.storage, logview=self.logview,
                               http_stats=lambda: self.http.factory, events=self.events,
                               streams=lambda: (self.hub, self.websocket.factory),
                               reactor=reactor, watch=self.watch,
                               snapshots=self.local_snapshots,
                               http_requests=self.http_requests)
        router.status_view = self.views.detailed_status
        self.overview = ClusterOverview(self.node_id, self.views.detailed_status,
                                        self.transport.forward, self.transport.connected,
                                        reactor)
        self.backups = BackupService(
            barrier=lambda: router.read({"barrier": True}, "linearizable").deferred,
            applied_index=lambda: self.driver.applied_index, capture=driver.capture,
            writer=self.writer, directory=os.path.join(self.storage.snap_dir, "outgoing"),
            verify=lambda states, table: verify_states(
                states, table, self._create_machine,
                lambda: self.driver.machines.sessions.like()),
            provenance=self._provenance, reactor=reactor,
            timeout_s=2 * timing.request_timeout_ms / 1000.0, level=config.snapshot.level)
        self.api.bind(router=router, views=self.views, admin=self.admin, book=book,
                      access=self.access, backups=self.backups, overview=self.overview,
                      reloader=self.reloader, dashboard=self.dashboard)
        self.websocket = WebSocketService(
            streams_factory(api=self.api, hub=hub, options=config.websocket,
                            limits=config.limits, reactor=reactor), reactor)
        self.api.bind_websocket(self.websocket.factory)

    # ================================================================== lifecycle

    def _exit_once_handed_over(self, index: int) -> None:
        """This node was removed: it exits, but a removed leader first hands over (its core
        keeps leading, refusing proposals, until a voter of the new configuration holds
        every chosen slot and takes over; exiting earlier can leave voters that do not yet
        know they are voters, and no leader)."""
        if self.driver is not None and self.driver.replica.role == Role.LEADER:
            if not self._handover_noted:
                self._handover_noted = True
                log.info("removed at index {index}: handing leadership over before exiting",
                         index=index)
            self.reactor.callLater(_HANDOVER_POLL_S, self._exit_once_handed_over, index)
            return
        if self.on_removed is not None:
            self.on_removed(index)


    def startService(self) -> None:
        """Open the data directory, restore state, start the core, peers, API and ticks.
        Raises on a storage problem (the caller reports it and exits)."""
        config = self.config
        self.book = AddressBook(config, self.node_id, self.transport, self.reactor,
                                rows=self._rows)
        self.book.on_removed = self._exit_once_handed_over
        self.book.load()        # raises when this node was removed, or the file is bad
        self.storage = DiskStorage(self.me.data_dir, config.name, self.node_id, config.protocol,
                                   config.storage_options())
        try:
            restored, reader = self.storage.load(reapply=True)
            self._wire(restored, reader)
        except BaseException:
            self.storage.close()
            raise
        self.writer.start()
        self.backups.start()
        newest = self.storage.snapshot_meta
        log.info("node {node} of cluster {cluster} ({protocol}) starting: data {data}, "
                 "snapshot {snap}{again}, {entries} log entries, hard state {hs}",
                 node=self.node_id, cluster=config.name, protocol=config.protocol,
                 data=self.me.data_dir, snap=self.driver.applied_index,
                 again=(f" (applying the log up to the newest snapshot, {newest.index}, "
                        f"again: watches resume from there)"
                        if newest and newest.index > self.driver.applied_index else ""),
                 entries=len(restored.entries),
                 hs=describe_hard_state(restored.hard_state, config.protocol))
        if self.storage.torn is not None:
            log.warn("the WAL had a torn tail (cut at restart): {torn}", torn=self.storage.torn)
        self._warn_open_api()
        self.book.started(self.driver.applied_config, self.driver.applied_index)
        for service in (self.transport, self.promotion, self.websocket, self.http, self.ticker,
                        self.watch):
            service.setServiceParent(self)
        super().startService()
        self.runner.schedule_pump()

    def _warn_open_api(self) -> None:
        """Loudly, at start: an API reachable from other machines that serves anonymous
        requests (any client there may write, remove nodes, read every session id)."""
        auth = self.config.auth
        if self.access.required:
            log.info("client API: bearer tokens required ({count} in {path})",
                     count=len(self.access.store.tokens.tokens), path=auth.tokens_file)
            return
        hosts = {a.host for n in self.config.nodes for a in (n.api, n.api_bind)}
        if all(is_loopback(h) for h in hosts):
            return
        log.warn("=" * 72)
        log.warn("WARNING: the client API on {api} serves ANONYMOUS requests with every role "
                 "(writes, membership changes, session ids) and the conf reaches beyond this "
                 "machine.  Set [auth] tokens_file and required = true "
                 "(docs/security.md).", api=str(self.me.api_bind))
        log.warn("=" * 72)

    def _installed(self, meta, old_config) -> None:
        """A received snapshot replaced the state: the log view starts afresh and the
        address book follows the restored table and configuration."""
        self.logview.reset()
        self.hub.installed(meta.index)
        self.book.restored(meta.config, meta.index, old_config)
        self.backups.applied(meta.index)

    def _applied(self, op) -> None:
        self.logview.applied(op)
        self.hub.applied(op)              # after the log view: tails read it
        self.backups.applied(self.driver.applied_index)

    def _config_applied(self, op) -> None:
        self.book.config_applied(op.old, op.new, op.index)
        self.events.config_applied(op)

    def _provenance(self) -> dict:
        """The ``backup`` header map of a backup taken on this node."""
        driver = self.driver
        return {"cluster": self.config.name, "protocol": self.config.protocol,
                "node": self.node_id, "taken_at": round(time.time(), 3),
                "leader": driver.replica.leader_id, "term": driver.replica.term}

    def _rows(self) -> list[dict]:
        sm = self.driver.machines.get("membership") if self.driver else None
        return sm.query({}).get("members", []) if sm is not None else []

    def _fatal(self, exc: BaseException) -> None:
        if self.on_fatal is not None:
            self.on_fatal(exc)

    @property
    def fatal(self) -> BaseException | None:
        return self.runner.fatal if self.driver is not None else None

    def close_storage(self) -> None:
        """After a failed start: release the data directory and the writer threads."""
        if self.writer is not None:
            self.writer.stop()
        if self.storage is not None:
            self.storage.close()

    @defer.inlineCallbacks
    def stopService(self):
        """Hand leadership over if we lead, stop taking requests, finish the Ready being
        persisted, then seal the WAL (fsync) and release the data directory."""
        if self.stopping or self.driver is None:
            return
        if self.driver.replica.role == Role.LEADER and self.fatal is None:
            yield self._transfer_before_stop()
        self.stopping = True
        self.views.stopping = True
        yield super().stopService()
        self.runner.stop()
        yield self.runner.idle()
        self.runner.close()
        try:
            yield self.writer.close()
        except Exception as exc:
            log.error("closing the WAL failed: {error}", error=exc)
        self.writer.stop()
        log.info("node {node} stopped", node=self.node_id)

    @defer.inlineCallbacks
    def _transfer_before_stop(self):
        target = self.admin.best_successor()
        if target is None:
            return
        try:
            self.runner.transfer_leadership(target)
        except (NotLeader, ValueError, Busy):
            return
        log.info("stopping: handing leadership to node {target}", target=target)
        timing = self.config.timing
        deadline = self.reactor.seconds() + 2 * timing.election_ticks * timing.tick_ms / 1000.0
        while (self.driver.replica.role == Role.LEADER and self.reactor.seconds() < deadline
               and self.fatal is None):
            yield task.deferLater(self.reactor, timing.tick_ms / 1000.0, lambda: None)
