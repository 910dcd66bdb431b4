"""``MembershipAdmin``: add-node, remove-node and transfer-leader, run on the leader (other
nodes forward them), and the view of the membership the API shows.

Who votes is the core's business: the configuration is replicated in the log and changed by
joint consensus.  This service orders the steps around it, each retried until done or
the request's deadline (``until``):

* **add-node**: row ``add`` in the membership table -> configuration with the node as a
  learner -> the leader replicates the log (or a snapshot) to it -> once caught up, the
  promotion service (promotion.py) makes it a voter.  The answer says whether it is a
  learner or already a voter; ``"wait": "voter"`` holds it until it is a voter.
* **remove-node**: a leader asked to remove itself hands leadership to the most up-to-date
  connected voter first and forwards the request to it.  Otherwise: row ``leave`` ->
  configuration without the node (joint, then final) -> row ``remove``.
* **transfer-leader**: to a given voter, or the most up-to-date connected one.

Every operation is idempotent, so a client may retry one after any failure.

Liveness: a peer is *live* when its connection is up and the leader heard from it within an
election timeout (this leader itself is live).  A change of the voters is refused (409)
unless the live voters form a majority of the current voters AND of the new ones (joint
consensus needs both; etcd's strict reconfig check): otherwise the joint configuration
could never commit and, the core refusing other changes meanwhile, writes would stall until
the dead voters came back.  A transfer is refused (409) to a voter that is not live, and is
armed at most ``_TRANSFER_ARMS`` times, one election timeout apart: the core refuses
proposals while a transfer runs, so one that does not complete must not go on being renewed.
"""

from __future__ import annotations

from typing import Callable

from twisted.internet import defer, task
from twisted.logger import Logger

from paxoslog.config import NODE_ID_MAX, parse_address
from paxoslog.core.errors import Busy, ConfigChangeInProgress, NotLeader
from paxoslog.core.quorum import majority
from paxoslog.core.ready import Role

from .errors import ApiError, bad_request, unavailable

__all__ = ["MembershipAdmin", "validate_request"]

log = Logger(namespace="paxoslog.membership")

_NODE_ID_MAX = NODE_ID_MAX          # one bound for the conf, the API and the table
_TRANSIENT = (Busy, ConfigChangeInProgress)
# How many times a leadership transfer is armed (one election timeout apart) before the
# request fails and the leader, which refuses proposals while a transfer runs, takes them
# again: about two election timeouts at most without writes, not the request's deadline.
_TRANSFER_ARMS = 2


class MembershipAdmin:
    """``port``: the narrow view of the node this needs (role, configurations, progress,
    change_config, transfer_leadership, write_row, connected, forward, stopping; see
    node.py's ``ConsensusPort``); ``book``: the AddressBook."""

    def __init__(self, port, book, reactor, *, cluster: str, protocol: str, tick_s: float,
                 request_timeout_s: float) -> None:
        self.port = port
        self.book = book
        self.reactor = reactor
        self.cluster = cluster
        self.protocol = protocol
        self.tick_s = tick_s
        self.request_timeout_s = request_timeout_s
        # One membership operation at a time (leader): the token of the one that holds the
        # guard.  Only its holder releases it (an add lets go early so that promotion can
        # run while it waits; the operation that takes the guard next must keep it).
        self._holder: object | None = None
        self.rows_asked: set[int] = set()  # initial members whose rows were asked for

    @property
    def busy(self) -> bool:
        """A membership operation holds the guard (promotion.py waits meanwhile)."""
        return self._holder is not None

    def _release(self, token: object) -> None:
        if self._holder is token:
            self._holder = None

    # ------------------------------------------------------------------ entry

    def request(self, op: str, body: dict, forwarded: bool = False) -> defer.Deferred:
        """An add/remove/transfer request: run it here when leading, else forward it."""
        if self.book.removed:
            return defer.fail(ApiError(410, "removed", "this node was removed from the cluster"))
        try:
            body = validate_request(op, body)
        except ApiError as exc:
            return defer.fail(exc)
        if self.port.role() == Role.LEADER:
            return self._run_locally(op, body)
        if forwarded:
            return defer.fail(self._not_leader())
        return self._forward(op, body)

    @defer.inlineCallbacks
    def _forward(self, op: str, body: dict):
        port = self.port
        deadline = self.reactor.seconds() + self.request_timeout_s * 3
        while True:
            leader = port.leader_id()
            if leader is not None and leader != port.node_id and port.connected(leader):
                try:
                    status, reply = yield port.forward(leader, "member", {"op": op, "body": body})
                except Exception:
                    status, reply = 503, None
                if status == 200:
                    return reply
                if status != 503:
                    raise ApiError.from_body(status, reply)
            elif port.role() == Role.LEADER:
                result = yield self._run_locally(op, body)
                return result
            if self.reactor.seconds() > deadline:
                raise unavailable("no leader reachable for the membership change",
                                  leader=port.leader_id())
            yield task.deferLater(self.reactor, self.tick_s * 10, lambda: None)

    @defer.inlineCallbacks
    def _run_locally(self, op: str, body: dict):
        if self.busy:
            raise unavailable("another membership change is in progress on the leader",
                              code="busy")
        token = self._holder = object()
        try:
            run = {"add": self._add, "remove": self._remove, "transfer": self._transfer}[op]
            result = yield run(body, token)
        finally:
            self._release(token)
        return result

    # ------------------------------------------------------------------ one helper

    def until(self, done: Callable[[], bool], deadline: float, what: str,
              attempt: Callable[[], None] | None = None,
              leader_required: bool = True) -> defer.Deferred:
        """Fire once ``done()`` holds, calling ``attempt()`` (if any) before each wait of
        a tick; a core that is busy or mid-change is tried again.  Fails with 503 when
        leadership is lost (``leader_required``) and 504 at ``deadline``."""
        port = self.port

        @defer.inlineCallbacks
        def loop():
            while not done():
                if leader_required and port.role() != Role.LEADER:
                    raise self._not_leader("leadership changed during the membership "
                                           "change; retry (the request is idempotent)")
                if attempt is not None:
                    try:
                        attempt()
                    except _TRANSIENT:
                        pass
                if self.reactor.seconds() > deadline:
                    raise ApiError(504, "timeout", f"timed out {what}; the change may still "
                                                   "complete: check the cluster status")
                if port.stopping():
                    raise unavailable("the node is shutting down")
                yield task.deferLater(self.reactor, self.tick_s, lambda: None)
        return loop()

    # ------------------------------------------------------------------ add

    @defer.inlineCallbacks
    def _add(self, body: dict, token: object):
        port = self.port
        target, peer, api = body["node_id"], body["address"], body.get("api")
        deadline = self.reactor.seconds() + body.get("timeout_s", self.request_timeout_s * 4)
        row = self._row(target)
        config = port.config()
        if row is not None and row["status"] == "removed" or target in self.book.removed_ids:
            raise ApiError(409, "conflict", f"node {target} was removed from this cluster; "
                                            "node ids are not reused: pick a new id")
        if row is not None and row["status"] == "leaving" and target not in config.members:
            # Its removal ran until the configuration without it; the leader then died
            # before it wrote the row ``removed``.  Re-adding the id would reuse it: the
            # node may still be waiting for the members' word, or gone for good.
            raise ApiError(409, "conflict", f"node {target} was removed from this cluster "
                                            f"(its row still says leaving: run remove-node "
                                            f"{target} again to finish); node ids are not "
                                            "reused: pick a new id")
        if row is not None and row["address"] != peer:
            raise ApiError(409, "conflict", f"node {target} is a member with peer address "
                                            f"{row['address']}, not {peer}")
        known = self.book.book.get(target)
        if target in config.members and known is not None and str(known.peer) != peer:
            raise ApiError(409, "conflict", f"node {target} is a member with peer address "
                                            f"{known.peer}, not {peer}")
        if target in self.book.bootstrap and target not in config.members:
            raise ApiError(409, "conflict", f"node {target} was an initial member of this "
                                            "cluster; node ids are not reused: pick a new id")
        if body.get("joining"):
            self._refuse_holder_of_entries(target, config)
        if row is None:
            yield port.write_row({"op": "add", "node_id": target, "address": peer,
                                  **({"api": api} if api else {})})

        def add_learner() -> None:
            current = port.config()
            port.change_config(current.voters, current.learners | {target})
        yield self.until(lambda: target in port.config().members, deadline,
                         f"adding node {target} as a learner", add_learner)
        want_voter = body.get("wait") == "voter"
        self._release(token)       # promotion must be able to run meanwhile

        def arrived() -> bool:
            applied = port.applied_config()
            return target in applied.members and (not want_voter or target in applied.voters)
        yield self.until(arrived, deadline, f"node {target} becoming a "
                                            f"{'voter' if want_voter else 'learner'}",
                         leader_required=False)
        return self._member_answer(target)

    def _refuse_holder_of_entries(self, target: int, config) -> None:
        """The node's own join (``"joining": true``: ``serve --join`` asks only when its
        data directory is empty) for an id that is already a voter, or a learner holding
        log entries: the node lost its data.  Answering ok let it back in with an empty
        log under its old id: as a voter it could vote a lagging node into leadership, and
        a review lost an acknowledged write that way.  Only the retry of a join that
        crashed before the node received anything (a learner with nothing matched) goes
        through.  An operator's add-node (no ``joining``) stays idempotent: it is also how
        one waits for a joined node to become a voter."""
        if target in config.voters:
            held = "is a voter"
        else:
            progress = self.port.progress().get(target)
            if target not in config.learners or progress is None or progress.match <= 0:
                return
            held = f"is a learner holding log entries up to {progress.match}"
        raise ApiError(409, "conflict", f"node {target} {held}: a node that joins again "
                                        "has lost its data, and must not come back under "
                                        f"its old id; run remove-node {target}, then join "
                                        "it with a new id")

    def _member_answer(self, target: int) -> dict:
        applied = self.port.applied_config()
        role = ("voter" if target in applied.voters else "learner" if target in applied.learners
                else "none")
        out = {"status": "ok", "node_id": target, "role": role,
               "index": self.port.applied_index()}
        if role == "learner":
            out["promotion"] = ("automatic: the leader makes it a voter (joint consensus) once "
                                "its log has caught up with the commit index of the previous "
                                "check, a few heartbeats apart; watch GET /api/v1/cluster/status "
                                "(role learner -> follower) or add with \"wait\": \"voter\"")
        out.update(self.describe())
        return out

    # ------------------------------------------------------------------ remove

    @defer.inlineCallbacks
    def _remove(self, body: dict, token: object):
        port = self.port
        target = body["node_id"]
        deadline = self.reactor.seconds() + self.request_timeout_s * 4
        if target == port.node_id:
            config = port.config()
            if target in config.voters:
                self._refuse_without_live_quorum(config.voters, config.voters - {target},
                                                 f"removing node {target}")
            yield self._hand_over(deadline)
            self._release(token)
            result = yield self._forward("remove", body)
            return result
        removed = {"status": "ok", "node_id": target, "role": "removed"}
        config = port.config()
        if target not in config.members:
            row = self._row(target)
            if row is not None and row["status"] != "removed":
                yield port.write_row({"op": "remove", "node_id": target})
            elif row is None:
                raise ApiError(404, "not_found", f"node {target} is not a member")
            return {**removed, "index": port.applied_index(), **self.describe()}
        if config.voters == {target}:
            raise bad_request(f"node {target} is the only voter: it cannot be removed")
        if target in config.voters:
            # Before the row says leaving: a refused removal leaves no trace.
            self._refuse_without_live_quorum(config.voters, config.voters - {target},
                                             f"removing node {target}")
        row = self._row(target)
        entry = self.book.book.get(target)
        if row is None and entry is not None:
            # An initial member whose row the leader has not written yet: write it now, so
            # that the table records the removal (and a retry finds it).
            self.rows_asked.add(target)
            yield port.write_row({"op": "add", "node_id": target, "address": str(entry.peer),
                                  **({"api": str(entry.api)} if entry.api else {})})
            row = self._row(target)
        if row is not None and row["status"] == "active":
            yield port.write_row({"op": "leave", "node_id": target})

        def drop() -> None:
            current = port.config()
            if target in current.voters and not current.joint:
                # Checked again right before each proposal: a voter may have died while
                # the rows were written.  (A joint configuration is already under way.)
                self._refuse_without_live_quorum(current.voters, current.voters - {target},
                                                 f"removing node {target}")
            port.change_config(current.voters - {target}, current.learners - {target})
        yield self.until(lambda: target not in port.config().members, deadline,
                         f"removing node {target}", drop)

        def committed() -> bool:
            applied = port.applied_config()
            return target not in applied.members and not applied.joint
        yield self.until(committed, deadline, f"the configuration without node {target} to "
                                              "commit", leader_required=False)
        if self._row(target) is not None:
            yield port.write_row({"op": "remove", "node_id": target})
        return {**removed, "index": port.applied_index(), **self.describe()}

    def _hand_over(self, deadline: float) -> defer.Deferred:
        """The leader was asked to remove itself: hand leadership to the best voter."""
        target = self.best_successor()
        if target is None:
            return defer.fail(unavailable("no other voter is connected and heard from "
                                          "within an election timeout to take over "
                                          "leadership"))
        log.info("asked to remove myself: handing leadership to node {target}", target=target)
        return self.until(lambda: self.port.role() != Role.LEADER, deadline,
                          f"handing leadership to node {target}",
                          self._arm_transfer(target, ignore_invalid=True),
                          leader_required=False)

    def _arm_transfer(self, target: int, ignore_invalid: bool = False) -> Callable[[], None]:
        """The ``attempt`` of a transfer to ``target``: armed while this node leads, at most
        ``_TRANSFER_ARMS`` times one election timeout apart (the core gives up on one after
        an election timeout), each time only while the target is live.  Once the last one
        lapsed with this node still leading, the request fails (503): the core takes
        proposals again, instead of being re-armed every tick until the deadline with every
        write refused."""
        port = self.port
        armed: list[float] = []

        def attempt() -> None:
            if port.role() != Role.LEADER or target == port.node_id:
                return
            now = self.reactor.seconds()
            if armed and now < armed[-1] + self._election_s():
                return
            if len(armed) >= _TRANSFER_ARMS:
                raise unavailable(f"node {target} did not take over leadership within "
                                  f"{len(armed)} election timeouts; node {port.node_id} "
                                  "still leads and takes writes again")
            self._refuse_unreachable_target(target)
            armed.append(now)
            try:
                port.transfer_leadership(target)
            except ValueError as exc:
                if not ignore_invalid:
                    raise bad_request(str(exc)) from None
        return attempt

    def _election_s(self) -> float:
        return self.port.election_ticks() * self.tick_s

    def _live(self) -> set[int]:
        """This node and the peers it is connected to and heard from within an election
        timeout (the leader's progress view)."""
        port = self.port
        ticks = port.election_ticks()
        return {port.node_id} | {peer for peer, p in port.progress().items()
                                 if p.last_heard_ticks < ticks and port.connected(peer)}

    def _refuse_without_live_quorum(self, old: frozenset, new: frozenset, what: str) -> None:
        """409 unless the live voters are a majority of ``old`` and of ``new``: joint
        consensus needs both, and a joint configuration that cannot commit stalls every
        write until the dead voters come back."""
        live = self._live()
        if majority(new, live) and majority(old, live):
            return
        unreachable = sorted((old | new) - live)
        raise ApiError(409, "conflict",
                       f"{what} refused: it needs a live majority of the current voters "
                       f"{sorted(old)} and of the new voters {sorted(new)}, and node(s) "
                       f"{', '.join(map(str, unreachable))} are unreachable (not connected, "
                       "or not heard from within an election timeout); bring them back, or "
                       "remove an unreachable node first",
                       extra={"unreachable": unreachable})

    def _refuse_unreachable_target(self, target: int) -> None:
        if target not in self._live():
            raise ApiError(409, "conflict",
                           f"node {target} is unreachable (not connected, or not heard from "
                           "within an election timeout): it cannot take over leadership",
                           extra={"unreachable": [target]})

    def best_successor(self, exclude: int | None = None) -> int | None:
        """The live voter (connected, heard from within an election timeout) with the
        longest log (most recently heard on a tie)."""
        port = self.port
        voters = port.config().voters
        live = self._live()
        candidates = [(p.match, -p.last_heard_ticks, peer)
                      for peer, p in port.progress().items()
                      if peer in voters and peer != exclude and peer != port.node_id
                      and peer in live]
        return max(candidates)[2] if candidates else None

    # ------------------------------------------------------------------ transfer

    @defer.inlineCallbacks
    def _transfer(self, body: dict, token: object):
        port = self.port
        target = body.get("node_id")
        if target is None:
            target = self.best_successor()
            if target is None:
                raise unavailable("no other voter is connected and heard from within an "
                                  "election timeout to take over leadership")
        if target != port.node_id and target not in port.config().voters:
            raise bad_request(f"node {target} is not a voter")
        if target != port.node_id and port.role() == Role.LEADER:
            self._refuse_unreachable_target(target)
        deadline = self.reactor.seconds() + self.request_timeout_s * 2

        def arrived() -> bool:
            if target == port.node_id:
                return port.role() == Role.LEADER
            return port.leader_id() == target and port.role() != Role.LEADER

        yield self.until(arrived, deadline, f"node {target} taking over leadership",
                         self._arm_transfer(target), leader_required=False)
        return {"status": "ok", "leader": target, "term": port.term()}

    # ------------------------------------------------------------------ views

    def _row(self, node_id: int) -> dict | None:
        return next((r for r in self.book.rows() if r.get("node_id") == node_id), None)

    def _not_leader(self, message: str | None = None) -> ApiError:
        port = self.port
        return unavailable(message or f"node {port.node_id} is not the leader",
                           code="not_leader", leader=port.leader_id())

    def describe(self) -> dict:
        port = self.port
        config, applied = port.config(), port.applied_config()
        return {"cluster": self.cluster, "protocol": self.protocol,
                "bootstrap_voters": sorted(self.book.bootstrap), "origin": self.book.origin,
                "config": {"voters": sorted(config.voters), "outgoing": sorted(config.outgoing),
                           "learners": sorted(config.learners)},
                "applied_config": {"voters": sorted(applied.voters),
                                   "outgoing": sorted(applied.outgoing),
                                   "learners": sorted(applied.learners)},
                "leader": port.leader_id(),
                "nodes": self.book.describe(),
                # Rows of the replicated table keep "address"; "peer" is the same value
                # under the name the conf, the CLI and add-node use.
                "members": [{**row, "peer": row.get("address")} for row in self.book.rows()]}


# ====================================================================== validation

def _node_id(body: dict, required: bool = True) -> int | None:
    if "node_id" not in body and not required:
        return None
    node_id = body.get("node_id")
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


def validate_request(op: str, body: dict) -> dict:
    """The normalized body of a membership request, or ``ApiError`` 400."""
    if not isinstance(body, dict):
        raise bad_request("the body must be a JSON object")
    if op == "add":
        _only(body, {"node_id", "peer", "address", "api", "wait", "joining"})
        # "peer" as in the conf and the CLI; "address" is its old name, still accepted.
        if "peer" in body and "address" in body and body["peer"] != body["address"]:
            raise bad_request('"peer" and "address" (its old name) differ: give "peer" only')
        name = "peer" if "peer" in body else "address" if "address" in body else "peer"
        out = {"node_id": _node_id(body), "address": _address(body, name, True)}
        api = _address(body, "api", False)
        if api:
            out["api"] = api
        wait = body.get("wait", "learner")
        if wait not in ("learner", "voter"):
            raise bad_request('"wait" must be "learner" (default) or "voter"')
        out["wait"] = wait
        joining = body.get("joining", False)
        if type(joining) is not bool:
            raise bad_request('"joining" must be true or false')
        if joining:
            out["joining"] = True
        return out
    if op == "remove":
        _only(body, {"node_id"})
        return {"node_id": _node_id(body)}
    if op == "transfer":
        _only(body, {"node_id"})
        node_id = _node_id(body, required=False)
        return {} if node_id is None else {"node_id": node_id}
    raise bad_request(f"unknown membership operation {op!r:.20}")
