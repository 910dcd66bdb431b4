"""Live membership: the address book, add-node / remove-node / transfer-leader, learner
promotion, and what a removed node does.

Who votes is the core's business: the configuration is replicated in the log and changed by
joint consensus (``replica.change_config``).  This module does the rest, on every node:

* **The address book** (node id -> peer and API addresses).  The initial members come from
  the conf; every node added later gets a row in the ``membership`` state machine (the
  seed's cluster_members table), written through the log *before* the configuration entry
  that makes it a learner, so every replica knows where to reach a node before it has to
  send to it.  The book is also kept in ``<data_dir>/members.json`` (atomic replace), so a
  node that restarts can dial its peers before it has replayed its log.

* **add-node** (leader; other nodes forward it): row ``add`` -> configuration with the node
  as a learner -> the leader replicates the log (or a snapshot) to it -> once the learner's
  log has caught up with what was committed one check earlier, the leader promotes it to
  voter (joint consensus).  The response says whether it is a learner or already a voter,
  and how promotion happens; ``"wait": "voter"`` holds the response until it is a voter.

* **remove-node** (leader): a leader asked to remove itself hands leadership to the most
  up-to-date connected voter first and forwards the request to it.  Otherwise: row
  ``leave`` -> configuration without the node (joint, then final) -> row ``remove``.
  Nodes that apply the final configuration tell the removed node so (``REMOVED`` frame on
  the authenticated peer connection) and stop dialing it.

* **A removed node** (it applied a final configuration without itself, or a peer told it)
  writes ``removed_at`` into members.json, stops serving and exits; it refuses to start
  again on that data directory.  It never campaigns: the core only lets voters campaign and
  the members ignore vote requests from non-members.

* **Joining** (``paxoslog serve --join URL``): ``join_cluster`` asks any member to add this
  node, checks the cluster name and protocol, and writes members.json (the cluster's
  bootstrap voters and address book) before the data directory is created, so the new
  node's log starts from the same initial configuration as everybody else's and it never
  believes it is a voter before the log says so.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from twisted.internet import defer, task
from twisted.logger import Logger

from paxoslog.config import Address, parse_address
from paxoslog.core.errors import Busy, ConfigChangeInProgress, NotLeader
from paxoslog.core.quorum import Config
from paxoslog.core.ready import Role
from paxoslog.storage.durable import atomic_write, make_dirs

from .commands import encode_command
from .errors import ApiError, bad_request, unavailable

__all__ = ["MembershipManager", "MembersFile", "MEMBERS_FILE", "NodeAddresses",
           "join_cluster", "JoinError"]

log = Logger(namespace="paxoslog.membership")

MEMBERS_FILE = "members.json"
_FORMAT = 1
_NODE_ID_MAX = (1 << 31) - 1
_EXIT_DELAY_S = 1.0


@dataclass(frozen=True)
class NodeAddresses:
    peer: Address
    api: Address | None

    def to_json(self) -> dict:
        return {"peer": str(self.peer), "api": str(self.api) if self.api else None}

    @classmethod
    def from_json(cls, data: dict) -> "NodeAddresses":
        api = data.get("api")
        return cls(parse_address(data["peer"]), parse_address(api) if api else None)


class MembersFile:
    """``<data_dir>/members.json``: bootstrap voters, address book, removal mark."""

    def __init__(self, data_dir: str) -> None:
        self.path = os.path.join(data_dir, MEMBERS_FILE)
        self.data_dir = data_dir

    def exists(self) -> bool:
        return os.path.exists(self.path)

    def read(self) -> dict | None:
        try:
            with open(self.path, "rb") as f:
                data = json.loads(f.read())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise ValueError(f"{self.path}: unreadable membership file: {exc}") from None
        try:
            if data.get("format") != _FORMAT:
                raise ValueError(f"format {data.get('format')!r}, expected {_FORMAT}")
            voters = frozenset(int(n) for n in data["bootstrap_voters"])
            if not voters:
                raise ValueError("no bootstrap voters")
            book = {int(n): NodeAddresses.from_json(a) for n, a in data["nodes"].items()}
            removed_at = data.get("removed_at")
            if removed_at is not None and type(removed_at) is not int:
                raise ValueError("removed_at must be an integer")
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"{self.path}: damaged membership file: {exc}") from None
        return {"cluster": data.get("cluster"), "bootstrap_voters": voters, "nodes": book,
                "removed_at": removed_at}

    def write(self, cluster: str, bootstrap: frozenset[int], book: dict[int, NodeAddresses],
              removed_at: int | None = None) -> None:
        make_dirs(self.data_dir)
        data = {"format": _FORMAT, "cluster": cluster, "bootstrap_voters": sorted(bootstrap),
                "nodes": {str(n): a.to_json() for n, a in sorted(book.items())},
                "removed_at": removed_at}
        atomic_write(self.path, json.dumps(data, indent=1, sort_keys=True).encode() + b"\n")


# ====================================================================== the manager

class MembershipManager:
    """One per node.  ``node`` is the NodeService (replica, transport, sms, submit_write)."""

    def __init__(self, node) -> None:
        self.node = node
        config = node.config
        self.file = MembersFile(node.me.data_dir)
        self.bootstrap: frozenset[int] = frozenset(config.node_ids)
        self.book: dict[int, NodeAddresses] = {
            n.id: NodeAddresses(n.peer, n.api) for n in config.nodes}
        self.removed_ids: set[int] = set()
        self.removed_at: int | None = None
        self.on_removed = None           # callable(index): set by the CLI (exit)
        self._joined = False
        self._loop = None
        self._busy = False               # one membership operation at a time (leader)
        self._promote_marks: dict[int, int] = {}
        self._rows_asked: set[int] = set()
        self._told: set[int] = set()
        self._seen_config: Config | None = None
        self._seen_restores: tuple = ()

    # ------------------------------------------------------------------ startup

    def load(self) -> None:
        """Read members.json (before the replica is created).  Raises ``RemovedNode`` when
        this node was removed, ValueError when the file is damaged."""
        data = self.file.read()
        if data is None:
            # First start (or data from before members.json): the conf's nodes are the
            # initial voters; write them down so a later edit of the conf (adding a node
            # that joined) does not change this node's idea of the initial configuration.
            self._persist()
            return
        if data["cluster"] not in (None, self.node.config.name):
            raise ValueError(f"{self.file.path}: written for cluster {data['cluster']!r}, "
                             f"the conf says {self.node.config.name!r}")
        self._joined = True
        self.bootstrap = data["bootstrap_voters"]
        me = self.book.get(self.node.node_id)
        book = dict(data["nodes"])
        if me is not None:
            book[self.node.node_id] = me      # our own addresses: the conf is right
        if self.node.node_id not in self.bootstrap:
            # A node that joined: the conf's other nodes are not necessarily members.
            self.book = book
        else:
            self.book.update(book)
        self.removed_at = data["removed_at"]
        if self.removed_at is not None:
            raise RemovedNode(f"node {self.node.node_id} was removed from cluster "
                              f"{self.node.config.name!r} at index {self.removed_at} "
                              f"(see {self.file.path}); it cannot serve again: start a new "
                              f"node with a new id and an empty data directory, with --join")

    def start(self) -> None:
        self._loop = task.LoopingCall(self._maintain)
        self._loop.clock = self.node.reactor
        t = self.node.timing
        self._loop.start(max(0.02, t.heartbeat_ticks * t.tick_ms / 1000.0), now=False)

    def stop(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None

    def bootstrap_config(self) -> Config:
        return Config(self.bootstrap)

    def peer_addresses(self) -> dict[int, NodeAddresses]:
        """Every node this node should be connected to (itself excluded)."""
        return {n: a for n, a in self.book.items()
                if n != self.node.node_id and n not in self.removed_ids}

    def api_address(self, node_id: int) -> str | None:
        entry = self.book.get(node_id)
        return str(entry.api) if entry is not None and entry.api is not None else None

    def _persist(self) -> None:
        try:
            self.file.write(self.node.config.name, self.bootstrap, self.book, self.removed_at)
        except OSError as exc:
            log.error("cannot write {path}: {error}", path=self.file.path, error=exc)

    # ------------------------------------------------------------------ applied state

    def row_applied(self, row: object) -> None:
        """The membership state machine applied a command with this result."""
        if not isinstance(row, dict) or "error" in row:
            return
        node_id = row.get("node_id")
        if type(node_id) is not int:
            return
        changed = False
        if row.get("status") == "removed":
            if node_id not in self.removed_ids:
                self.removed_ids.add(node_id)
                changed = True
        else:
            try:
                entry = NodeAddresses(parse_address(row["address"]),
                                      parse_address(row["api"]) if row.get("api") else None)
            except (KeyError, ValueError):
                return
            if node_id == self.node.node_id:
                return                           # our own addresses come from our conf
            if self.book.get(node_id) != entry:
                self.book[node_id] = entry
                changed = True
            self.removed_ids.discard(node_id)
        if changed:
            self._persist()
            self._update_transport()

    def _update_transport(self) -> None:
        transport = self.node.transport
        transport.bootstrap = sorted(self.bootstrap)
        transport.set_peers(self.peer_addresses(), frozenset(self.removed_ids))

    def sync(self) -> None:
        """Catch up with the applied state: a restored membership table (snapshot) and
        configuration changes (entries or snapshot).  Cheap when nothing changed."""
        node = self.node
        sm = node.sms.get("membership")
        restores = (id(sm), getattr(sm, "restores", 0))   # a snapshot may bring a new object
        if restores != self._seen_restores:
            self._seen_restores = restores
            self.table_restored()
        config = node.applied_config
        if self._seen_config is None:
            self._seen_config = config
            self._update_transport()
        elif config != self._seen_config:
            old, self._seen_config = self._seen_config, config
            self.config_applied(old, config, node.applied_index)

    def table_restored(self) -> None:
        """A snapshot replaced the membership table: rebuild what follows from it."""
        for row in self.rows():
            self.row_applied(row)

    def config_applied(self, old: Config, new: Config, index: int) -> None:
        """A configuration entry was applied (it is committed)."""
        if new.joint:
            return
        me = self.node.node_id
        gone = old.members - new.members
        if me in gone or (me in old.members and me not in new.members):
            self.mark_removed(index, "the configuration without it was committed")
            return
        for peer in gone:
            self.tell_removed(peer, index)

    def tell_removed(self, peer: int, index: int) -> None:
        from . import frames as F
        if (self.node.transport.send_frame(peer, [F.REMOVED, self.node.config.name, index])
                and peer not in self._told):
            self._told.add(peer)           # it may redial a few times before it exits
            log.info("told node {peer} it was removed (index {index})", peer=peer, index=index)

    def peer_up(self, peer: int) -> None:
        """An authenticated peer connected: a removed one learns it was removed."""
        if peer in self.removed_ids:
            row = self._row(peer)
            self.tell_removed(peer, (row or {}).get("removed_at_index") or 0)
            self.node.transport.disconnect(peer)

    def removed_frame(self, peer: int, payload: list) -> None:
        _, cluster, index = payload
        if cluster != self.node.config.name or type(index) is not int:
            raise ValueError("bad removed frame")
        config = self.node.replica.config
        if self.node.node_id in config.all_voters and peer not in config.members:
            return        # from a node that is itself not a member in our view: ignore
        self.mark_removed(index, f"node {peer} says so")

    def mark_removed(self, index: int, why: str) -> None:
        if self.removed_at is not None:
            return
        self.removed_at = max(index, 1)
        log.warn("this node ({node}) was removed from the cluster at index {index} ({why}); "
                 "it stops serving", node=self.node.node_id, index=index, why=why)
        self._persist()
        if self.on_removed is not None:
            # Stop serving at once (the API answers 410), exit a little later: replies this
            # node still relays (e.g. the remove request it forwarded) get out first.
            self.node.reactor.callLater(_EXIT_DELAY_S, self.on_removed, self.removed_at)

    @property
    def removed(self) -> bool:
        return self.removed_at is not None

    def _row(self, node_id: int) -> dict | None:
        sm = self.node.sms.get("membership")
        return sm.query({"node_id": node_id}) if sm is not None else None

    def rows(self) -> list[dict]:
        sm = self.node.sms.get("membership")
        return sm.query({}).get("members", []) if sm is not None else []

    # ------------------------------------------------------------------ leader upkeep

    def _maintain(self) -> None:
        """Every node: catch up with restored state.  The leader also promotes caught-up
        learners and gives the initial members their rows in the membership table."""
        node = self.node
        try:
            self.sync()
        except Exception:
            log.failure("membership sync failed")
        if (self._busy or node.fatal is not None or node._stopping
                or node.replica.role != Role.LEADER):
            self._promote_marks.clear()
            return
        try:
            self._promote_learners()
            self._fill_rows()
        except Exception:
            log.failure("membership upkeep failed")

    def _promote_learners(self) -> None:
        node = self.node
        replica = node.replica
        config = replica.config
        if config.joint or not config.learners or config != node.applied_config:
            return
        progress = replica.status().progress
        commit = replica.commit_index
        heard_max = node.timing.election_ticks
        for learner in sorted(config.learners):
            p = progress.get(learner)
            mark = self._promote_marks.get(learner)
            self._promote_marks[learner] = commit
            if (p is None or mark is None or p.match < mark
                    or p.last_heard_ticks >= heard_max
                    or not node.transport.connected(learner)):
                continue
            try:
                replica.change_config(config.voters | {learner}, config.learners - {learner})
            except (ConfigChangeInProgress, Busy, NotLeader, ValueError):
                return
            log.info("promoting learner {learner} to voter (its log reached index {match}, "
                     "commit {commit})", learner=learner, match=p.get("match"), commit=commit)
            self._promote_marks.pop(learner, None)
            node.schedule_pump()
            return

    def _fill_rows(self) -> None:
        node = self.node
        sm = node.sms.get("membership")
        if sm is None:
            return
        for member in sorted(node.applied_config.members):
            if member in self._rows_asked or self._row(member) is not None:
                continue
            entry = self.book.get(member)
            if entry is None:
                continue
            self._rows_asked.add(member)
            d = self._write_row({"op": "add", "node_id": member, "address": str(entry.peer),
                                 **({"api": str(entry.api)} if entry.api else {})})
            d.addErrback(lambda _f, m=member: self._rows_asked.discard(m))

    def _write_row(self, command: dict) -> defer.Deferred:
        node = self.node
        client_id, sequence = node.next_client_sequence()
        data = encode_command("membership", command, client_id, sequence)
        return node.submit_write(client_id, sequence, data)

    # ------------------------------------------------------------------ operations (API)

    def describe(self) -> dict:
        node = self.node
        config = node.replica.config
        return {"cluster": node.config.name, "protocol": node.protocol,
                "bootstrap_voters": sorted(self.bootstrap),
                "config": {"voters": sorted(config.voters), "outgoing": sorted(config.outgoing),
                           "learners": sorted(config.learners)},
                "applied_config": {"voters": sorted(node.applied_config.voters),
                                   "outgoing": sorted(node.applied_config.outgoing),
                                   "learners": sorted(node.applied_config.learners)},
                "leader": node.replica.leader_id,
                "nodes": {str(n): a.to_json() for n, a in sorted(self.book.items())
                          if n not in self.removed_ids},
                "members": self.rows()}

    def request(self, op: str, body: dict, forwarded: bool = False) -> defer.Deferred:
        """An add/remove/transfer request: run it here when leading, else forward it."""
        if self.removed:
            return defer.fail(ApiError(410, "removed", "this node was removed from the cluster"))
        validate = {"add": _validate_add, "remove": _validate_remove,
                    "transfer": _validate_transfer}[op]
        try:
            body = validate(body)
        except ApiError as exc:
            return defer.fail(exc)
        node = self.node
        if node.replica.role == Role.LEADER:
            return self._run_locally(op, body)
        if forwarded:
            return defer.fail(node._not_leader_error())
        return self._forward(op, body)

    @defer.inlineCallbacks
    def _forward(self, op: str, body: dict):
        node = self.node
        deadline = node.reactor.seconds() + node.request_timeout * 3
        while True:
            leader = node.replica.leader_id
            if leader is not None and leader != node.node_id and node.transport.connected(leader):
                try:
                    status, reply = yield node.transport.forward(leader, "member",
                                                                 {"op": op, "body": body})
                except Exception:
                    status, reply = 503, None
                if status == 200:
                    return reply
                if status != 503:
                    raise ApiError.from_body(status, reply)
            elif node.replica.role == Role.LEADER:
                result = yield self._run_locally(op, body)
                return result
            if node.reactor.seconds() > deadline:
                raise unavailable("no leader reachable for the membership change",
                                  leader=node.replica.leader_id)
            yield task.deferLater(node.reactor, node.retry_delay * 5, lambda: None)

    @defer.inlineCallbacks
    def _run_locally(self, op: str, body: dict):
        if self._busy:
            raise unavailable("another membership change is in progress on the leader",
                              code="busy")
        self._busy = True
        try:
            if op == "add":
                result = yield self._add(body)
            elif op == "remove":
                result = yield self._remove(body)
            else:
                result = yield self._transfer(body)
        finally:
            self._busy = False
        return result

    # ---- add

    @defer.inlineCallbacks
    def _add(self, body: dict):
        node = self.node
        replica = node.replica
        target = body["node_id"]
        peer = body["address"]
        api = body.get("api")
        deadline = node.reactor.seconds() + body.get("timeout_s", node.request_timeout * 4)
        row = self._row(target)
        config = replica.config
        if row is not None and row["status"] == "removed" or target in self.removed_ids:
            raise ApiError(409, "conflict", f"node {target} was removed from this cluster; "
                                            "node ids are not reused: pick a new id")
        if row is not None and row["status"] != "removed" and row["address"] != peer:
            raise ApiError(409, "conflict", f"node {target} is a member with peer address "
                                            f"{row['address']}, not {peer}")
        known = self.book.get(target)
        if target in config.members and known is not None and str(known.peer) != peer:
            raise ApiError(409, "conflict", f"node {target} is a member with peer address "
                                            f"{known.peer}, not {peer}")
        if target in self.bootstrap and target not in config.members:
            raise ApiError(409, "conflict", f"node {target} was an initial member of this "
                                            "cluster; node ids are not reused: pick a new id")
        if row is None:
            command = {"op": "add", "node_id": target, "address": peer}
            if api:
                command["api"] = api
            yield self._write_row(command)
        while target not in replica.config.members:
            self._check_leader()
            config = replica.config
            try:
                replica.change_config(config.voters, config.learners | {target})
                node.schedule_pump()
            except (ConfigChangeInProgress, Busy):
                pass
            yield self._tick_wait(deadline, f"adding node {target} as a learner")
        want_voter = body.get("wait") == "voter"
        self._busy = False          # promotion (_maintain) must be able to run meanwhile
        while True:
            applied = node.applied_config
            if target in applied.members and (not want_voter or target in applied.voters):
                break
            self._check_leader(allow_lost=True)
            yield self._tick_wait(deadline, f"node {target} becoming a "
                                            f"{'voter' if want_voter else 'learner'}")
        return self._membership_response(target)

    def _membership_response(self, target: int) -> dict:
        node = self.node
        applied = node.applied_config
        role = ("voter" if target in applied.voters else "learner" if target in applied.learners
                else "none")
        out = {"status": "ok", "node_id": target, "role": role, "index": node.applied_index}
        if role == "learner":
            out["promotion"] = ("automatic: the leader makes it a voter (joint consensus) once "
                                "its log has caught up with the commit index of the previous "
                                "check, a few heartbeats apart; watch GET /api/v1/cluster/status "
                                "(role learner -> follower) or add with \"wait\": \"voter\"")
        out.update(self.describe())
        return out

    # ---- remove

    @defer.inlineCallbacks
    def _remove(self, body: dict):
        node = self.node
        replica = node.replica
        target = body["node_id"]
        deadline = node.reactor.seconds() + node.request_timeout * 4
        if target == node.node_id:
            yield self._hand_over(deadline)
            self._busy = False
            result = yield self._forward("remove", body)
            return result
        config = replica.config
        if target not in config.members:
            row = self._row(target)
            if row is not None and row["status"] != "removed":
                yield self._write_row({"op": "remove", "node_id": target})
            elif row is None:
                raise ApiError(404, "not_found", f"node {target} is not a member")
            return {"status": "ok", "node_id": target, "role": "removed",
                    "index": node.applied_index, **self.describe()}
        if config.voters == {target}:
            raise bad_request(f"node {target} is the only voter: it cannot be removed")
        row = self._row(target)
        entry = self.book.get(target)
        if row is None and entry is not None:
            # An initial member whose row the leader has not written yet: write it now, so
            # that the table records the removal (and a retry finds it).
            self._rows_asked.add(target)
            yield self._write_row({"op": "add", "node_id": target, "address": str(entry.peer),
                                   **({"api": str(entry.api)} if entry.api else {})})
            row = self._row(target)
        if row is not None and row["status"] == "active":
            yield self._write_row({"op": "leave", "node_id": target})
        while target in replica.config.members:
            self._check_leader()
            config = replica.config
            try:
                replica.change_config(config.voters - {target}, config.learners - {target})
                node.schedule_pump()
            except (ConfigChangeInProgress, Busy):
                pass
            yield self._tick_wait(deadline, f"removing node {target}")
        while target in node.applied_config.members or node.applied_config.joint:
            self._check_leader(allow_lost=True)
            yield self._tick_wait(deadline, f"the configuration without node {target} to "
                                            "commit")
        if self._row(target) is not None:
            yield self._write_row({"op": "remove", "node_id": target})
        return {"status": "ok", "node_id": target, "role": "removed",
                "index": node.applied_index, **self.describe()}

    @defer.inlineCallbacks
    def _hand_over(self, deadline: float):
        """The leader was asked to remove itself: hand leadership to the best voter."""
        node = self.node
        replica = node.replica
        target = self.best_successor()
        if target is None:
            raise unavailable("no other voter is connected to take over leadership")
        log.info("asked to remove myself: handing leadership to node {target}", target=target)
        while replica.role == Role.LEADER:
            try:
                replica.transfer_leadership(target)
                node.schedule_pump()
            except (Busy, ConfigChangeInProgress, ValueError):
                pass
            yield self._tick_wait(deadline, f"handing leadership to node {target}")

    def best_successor(self, exclude: int | None = None) -> int | None:
        node = self.node
        replica = node.replica
        progress = replica.status().progress
        voters = replica.config.voters
        candidates = [(p.match, -p.last_heard_ticks, peer)
                      for peer, p in progress.items()
                      if peer in voters and peer != exclude and peer != node.node_id
                      and node.transport.connected(peer)]
        return max(candidates)[2] if candidates else None

    # ---- transfer

    @defer.inlineCallbacks
    def _transfer(self, body: dict):
        node = self.node
        replica = node.replica
        target = body.get("node_id")
        if target is None:
            target = self.best_successor()
            if target is None:
                raise unavailable("no other voter is connected to take over leadership")
        if target != node.node_id and target not in replica.config.voters:
            raise bad_request(f"node {target} is not a voter")
        deadline = node.reactor.seconds() + node.request_timeout * 2
        while replica.leader_id != target or replica.role == Role.LEADER and target != node.node_id:
            if replica.role == Role.LEADER:
                try:
                    replica.transfer_leadership(target)
                    node.schedule_pump()
                except (Busy, ConfigChangeInProgress):
                    pass
                except ValueError as exc:
                    raise bad_request(str(exc)) from None
            yield self._tick_wait(deadline, f"node {target} taking over leadership")
            if target == node.node_id and replica.role == Role.LEADER:
                break
        return {"status": "ok", "leader": target, "term": node.api_term(replica.term)}

    # ---- helpers

    def _check_leader(self, allow_lost: bool = False) -> None:
        if self.node.replica.role != Role.LEADER and not allow_lost:
            raise unavailable("leadership changed during the membership change; retry (the "
                              "request is idempotent)", code="not_leader",
                              leader=self.node.replica.leader_id)

    def _tick_wait(self, deadline: float, what: str) -> defer.Deferred:
        node = self.node
        if node.reactor.seconds() > deadline:
            return defer.fail(ApiError(504, "timeout", f"timed out {what}; the change may still "
                                                       "complete: check the cluster status"))
        if node._stopping or node.fatal is not None:
            return defer.fail(unavailable("the node is shutting down"))
        return task.deferLater(node.reactor, node.tick_ms / 1000.0, lambda: None)


class RemovedNode(Exception):
    """This node's data directory belongs to a node removed from its cluster."""


# ====================================================================== validation

def _node_id(body: dict, required: bool = True) -> int | None:
    node_id = body.get("node_id")
    if node_id is None and not required:
        return None
    if type(node_id) is not int or not 1 <= node_id <= _NODE_ID_MAX:
        raise bad_request(f'"node_id" must be an integer in 1..{_NODE_ID_MAX}')
    return node_id


def _address(body: dict, name: str, required: bool) -> str | None:
    text = body.get(name)
    if text is None and not required:
        return None
    try:
        address = parse_address(text)
    except ValueError as exc:
        raise bad_request(f'"{name}": {exc}') from None
    if address.port == 0:
        raise bad_request(f'"{name}": port 0 is not an address others can reach')
    return str(address)


def _only(body: dict, allowed: set[str]) -> None:
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise bad_request(f"unknown field(s): {', '.join(unknown)[:200]}")


def _validate_add(body: dict) -> dict:
    _only(body, {"node_id", "address", "api", "wait"})
    out = {"node_id": _node_id(body), "address": _address(body, "address", True)}
    api = _address(body, "api", False)
    if api:
        out["api"] = api
    wait = body.get("wait", "learner")
    if wait not in ("learner", "voter"):
        raise bad_request('"wait" must be "learner" (default) or "voter"')
    out["wait"] = wait
    return out


def _validate_remove(body: dict) -> dict:
    _only(body, {"node_id"})
    return {"node_id": _node_id(body)}


def _validate_transfer(body: dict) -> dict:
    _only(body, {"node_id"})
    node_id = _node_id(body, required=False)
    return {} if node_id is None else {"node_id": node_id}


# ====================================================================== joining

class JoinError(Exception):
    """Joining failed: the message says why (for the CLI)."""


def join_cluster(config, node_id: int, endpoints: list[str], timeout: float = 60.0) -> dict:
    """Ask a member (any of ``endpoints``) to add this node, then write members.json in its
    data directory.  Blocking (the CLI calls it before the reactor runs).  Idempotent: a
    node that crashed half way through joining asks again and gets the same answer."""
    from paxoslog.client import ClientError, SyncClient
    me = config.node(node_id)
    members = MembersFile(me.data_dir)
    body = {"node_id": node_id, "address": str(me.peer), "api": str(me.api)}
    where = ", ".join(endpoints)
    with SyncClient(endpoints, timeout=timeout, attempt_timeout=min(10.0, timeout)) as client:
        try:
            # Check that we are joining the right cluster before asking to be added.
            _check_cluster(client.members(), config, where)
            info = client.request("POST", "/api/v1/cluster/add-node", body, write=True)
        except ClientError as exc:
            raise JoinError(f"cannot join through {where}: {exc}") from None
    _check_cluster(info, config, where)
    try:
        bootstrap = frozenset(int(n) for n in info["bootstrap_voters"])
        book = {int(n): NodeAddresses.from_json(a) for n, a in info["nodes"].items()}
    except (KeyError, TypeError, ValueError) as exc:
        raise JoinError(f"unexpected answer to add-node: {exc}") from None
    if node_id in bootstrap:
        raise JoinError(f"node {node_id} is one of the cluster's initial voters: it starts "
                        "without --join")
    book[node_id] = NodeAddresses(me.peer, me.api)
    members.write(config.name, bootstrap, book)
    return info


def _check_cluster(info: dict, config, where: str) -> None:
    if info.get("cluster") != config.name:
        raise JoinError(f"the cluster at {where} is {info.get('cluster')!r}; "
                        f"{config.path} says cluster = {config.name!r}")
    if info.get("protocol") != config.protocol:
        raise JoinError(f"the cluster at {where} runs {info.get('protocol')!r}; "
                        f"{config.path} says protocol = {config.protocol!r}")
