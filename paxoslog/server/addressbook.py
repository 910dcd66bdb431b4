"""``AddressBook``: where every member is (node id -> peer and API addresses), and whether
this node itself was removed.

The initial members come from the conf; every node added later has a row in the internal
``membership`` state machine (the seed's cluster_members table), written through the log
before the configuration entry that makes it a learner, so every replica knows where to
reach a node before it has to send to it.  The book follows the applied rows and
configurations (``row_applied``, ``config_applied``, ``restored``), keeps members.json up
to date and tells the peer transport whom to dial.

A node that applies a final configuration without some member tells it so (a ``REMOVED``
frame on the authenticated peer connection, with how far it applied and the voters of
that configuration), then where those voters listen (a ``VOTER_ADDRESSES`` frame: a node
that was down while voters were added does not know them).  A node told so by a quorum of
those voters (paxoslog/node/removal.py), whether or not it knew them, writes
``removed_at`` into members.json, stops serving and exits; it never starts again on that
data directory.  A node that applies a configuration without itself stops serving
clients (410) but waits for the members' word before it writes that and exits: under
Multi-Paxos a voter follows a configuration only once it knows it chosen, and the removed
node (a removed leader killed before its hand-over) may be the only one that knows; were
it gone for good, the remaining voters could never gather the promises they need to learn
it.
"""

from __future__ import annotations

import re
from typing import Callable

from twisted.logger import Logger

from paxoslog.config import NODE_ID_MAX, parse_address
from paxoslog.core.quorum import Config
from paxoslog.node.removal import RemovalWitnesses

from . import frames as F
from .members_file import MembersFile, NodeAddresses, RemovedNode

__all__ = ["AddressBook"]

log = Logger(namespace="paxoslog.membership")

_EXIT_DELAY_S = 1.0
_TELL_REMOVED_S = 600.0    # how long members keep dialing a removed node to tell it
_VOTERS_MAX = 1024         # a REMOVED frame's voters (a bound, far above any real cluster)
_ADDRESS_CHARS_MAX = 300   # one address in a VOTER_ADDRESSES frame
_NODE_ID_MAX = NODE_ID_MAX       # as the conf allows
# A host a member may tell this node to dial: a name or an IP literal, nothing the resolver
# could choke on (an IPv6 zone, spaces, control characters).
_HOST = re.compile(r"[A-Za-z0-9._:-]{1,253}")


class AddressBook:
    """``rows()``: the membership table's rows; ``transport``: set_peers / send_frame /
    disconnect."""

    def __init__(self, config, node_id: int, transport, reactor,
                 rows: Callable[[], list]) -> None:
        self.cluster = config.name
        self.node_id = node_id
        self.transport = transport
        self.reactor = reactor
        self.rows = rows
        self.file = MembersFile(config.node(node_id).data_dir)
        self.bootstrap: frozenset[int] = frozenset(config.node_ids)
        self.book: dict[int, NodeAddresses] = {
            n.id: NodeAddresses(n.peer, n.api) for n in config.nodes}
        self.removed_ids: set[int] = set()
        self.removed_at: int | None = None     # persisted: a member said so
        self.leaving_at: int | None = None     # applied a configuration without this node
        self._applied: Config | None = None    # the last final configuration applied...
        self._applied_index = 0                # ...and how far this node had applied then
        self.witnesses = RemovalWitnesses()    # members that told this node it was removed
        self.origin: str | None = None        # the log origin of a restored/recovered cluster
        self.on_removed: Callable[[int], None] | None = None   # the CLI exits
        self._told: set[int] = set()
        self._ignored: set[int] = set()             # removed tellers (logged once each)
        self._removed_seen: dict[int, float] = {}   # removed peer -> when (reactor time)
        self._heard: dict[int, NodeAddresses] = {}  # voters a teller named, not in the book

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
        if data["cluster"] not in (None, self.cluster):
            raise ValueError(f"{self.file.path}: written for cluster {data['cluster']!r}, "
                             f"the conf says {self.cluster!r}")
        self.bootstrap = data["bootstrap_voters"]
        self.origin = data["origin"]
        me = self.book.get(self.node_id)
        book = dict(data["nodes"])
        if me is not None:
            book[self.node_id] = me           # our own addresses: the conf is right
        self._warn_overridden(book)
        if self.node_id not in self.bootstrap:
            # A node that joined: the conf's other nodes are not necessarily members.
            self.book = book
        else:
            self.book.update(book)
        self.removed_at = data["removed_at"]
        if self.removed_at is not None:
            raise RemovedNode(f"node {self.node_id} was removed from cluster "
                              f"{self.cluster!r} at index {self.removed_at} "
                              f"(see {self.file.path}); it cannot serve again: start a new "
                              f"node with a new id and an empty data directory, with --join")

    def _warn_overridden(self, recorded: dict) -> None:
        """The conf's address of another member that differs from the one the cluster
        recorded: the recorded one is used (the members agree on it through the log), so
        an edit of the conf alone silently changed nothing (found by a review: the node
        moved to the new port was cut off, with no word anywhere)."""
        for node_id, entry in sorted(recorded.items()):
            conf = self.book.get(node_id)
            if node_id != self.node_id and conf is not None and conf.peer != entry.peer:
                log.warn("the conf gives node {node} peer address {conf}, but the cluster "
                         "records {recorded} ({path}); the recorded one is used.  A member's "
                         "address does not change by editing the conf: remove the node and "
                         "join it again under a new id", node=node_id, conf=str(conf.peer),
                         recorded=str(entry.peer), path=self.file.path)

    def bootstrap_config(self) -> Config:
        return Config(self.bootstrap)

    def log_origin(self) -> object:
        """What peers compare at the handshake: where every member's log starts.  The sorted
        bootstrap voters (the wire format of clusters that began empty), or with an origin
        ``{"voters": [...], "origin": id}`` (a restored or recovered cluster)."""
        voters = sorted(self.bootstrap)
        return voters if self.origin is None else {"voters": voters, "origin": self.origin}

    def peer_addresses(self) -> dict[int, NodeAddresses]:
        """Every node this node should be connected to (itself excluded): the members,
        and for ``_TELL_REMOVED_S`` a node removed since this process started (the lower id
        dials, so a removed node that was cut off when it was removed would otherwise
        never hear of it, and never exit).  Told or not: a REMOVED frame handed to a
        connection may be lost with it, and the node then waits, restarted or not.  Also,
        until this node exits, the voters its tellers named that it did not know
        (``voter_addresses_frame``): their word is what it waits for."""
        now = self.reactor.seconds()
        peers = {n: a for n, a in self.book.items()
                 if n != self.node_id and (n not in self.removed_ids or (
                     now - self._removed_seen.get(n, -_TELL_REMOVED_S) < _TELL_REMOVED_S))}
        if self.removed_at is None:
            for n, a in self._heard.items():
                peers.setdefault(n, a)
        return peers

    def api_address(self, node_id: int) -> str | None:
        entry = self.book.get(node_id)
        return str(entry.api) if entry is not None and entry.api is not None else None

    def _persist(self) -> None:
        try:
            self.file.write(self.cluster, self.bootstrap, self.book, self.removed_at,
                            self.origin)
        except OSError as exc:
            log.error("cannot write {path}: {error}", path=self.file.path, error=exc)

    def started(self, applied: Config | None = None, index: int = 0) -> None:
        """The state machines were loaded (snapshot, then the log replays): follow the
        restored table and start dialing.  ``applied``: the configuration they were
        restored at, ``index`` how far (a snapshot taken after this node's removal holds
        no configuration entry to apply again)."""
        for row in self.rows():
            self.row_applied(row)
        if applied is not None:
            # Not a member, and its own row says it is going: removed (a node that joins
            # starts outside the configuration, with a row that says "active").
            self._note_applied(applied, index,
                               self._row(self.node_id).get("status") in ("leaving", "removed"))
        self.sync_transport()

    def sync_transport(self) -> None:
        self.transport.bootstrap = self.log_origin()
        self.transport.set_peers(self.peer_addresses(), self._gone(), waiting=self.waiting)

    def _gone(self) -> frozenset[int]:
        """Nodes removed for good: a ``removed`` row, or a ``leaving`` one outside the
        configuration applied here (the leader that removed it died before it wrote
        ``removed``).  Members tell them so and hang up; their word counts for nothing."""
        applied = self._applied
        if applied is None:
            return frozenset(self.removed_ids)
        return frozenset(self.removed_ids).union(
            r.get("node_id") for r in self.rows()
            if r.get("status") == "leaving" and r.get("node_id") not in applied.members)

    @property
    def waiting(self) -> bool:
        """Removed, or told so, and not gone yet: members hang up once they told it."""
        return self.removed_at is None and (
            self.leaving_at is not None or bool(self.witnesses.tellers()))

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
                if node_id != self.node_id:
                    self._removed_seen[node_id] = self.reactor.seconds()
                    self.reactor.callLater(_TELL_REMOVED_S, self.sync_transport)
                changed = True
        else:
            try:
                entry = NodeAddresses(parse_address(row["address"]),
                                      parse_address(row["api"]) if row.get("api") else None)
            except (KeyError, ValueError):
                return
            if node_id == self.node_id:
                return                           # our own addresses come from our conf
            if self.book.get(node_id) != entry:
                self.book[node_id] = entry
                changed = True
            self.removed_ids.discard(node_id)
        if changed:
            self._persist()
            self.sync_transport()

    def restored(self, config: Config, index: int, old: Config) -> None:
        """A snapshot replaced the state: rebuild from its membership table and its
        configuration."""
        for row in self.rows():
            self.row_applied(row)
        if config != old:
            self.config_applied(old, config, index)

    def config_applied(self, old: Config, new: Config, index: int) -> None:
        """A configuration entry was applied (it is committed)."""
        if new.joint:
            return
        if self._note_applied(new, index, self.node_id in old.members):
            return
        for peer in old.members - new.members:
            self.tell_removed(peer)
        self.sync_transport()       # a node left with its row leaving: redialed slowly

    def _note_applied(self, config: Config, index: int, was_member: bool) -> bool:
        """Follow a final configuration; True when this node, a member before, is not
        among its members (it stops serving and waits for the members' word: module
        docstring)."""
        if config.joint:
            return False
        self._applied, self._applied_index = config, index
        if self.node_id in config.members or not was_member:
            return False
        if self.leaving_at is None and self.removed_at is None:
            self.leaving_at = max(index, 1)
            self.sync_transport()              # redials back off to _REMOVED_REDIAL_S
            log.warn("this node ({node}) applied a configuration without it (index {index}); "
                     "it stops serving and exits once a quorum of its voters confirms",
                     node=self.node_id, index=index)
        return True

    def tell_removed(self, peer: int) -> None:
        """Tell ``peer`` it is not in the configuration this node applied (module
        docstring); nothing before this node applied one."""
        applied, index = self._applied, self._applied_index
        if applied is None or peer in applied.members or self.node_id not in applied.members:
            return
        frame = [F.REMOVED, self.cluster, index, sorted(applied.voters)]
        if not self.transport.send_frame(peer, frame):
            return
        # Where those voters listen: the removed node may have been down while some of them
        # were added, and it counts their word too (a frame of its own: a node of an older
        # version, which would refuse a longer REMOVED frame, only drops this one).
        where = [[n, str(self.book[n].peer)] for n in sorted(applied.voters)
                 if n in self.book and n != peer]
        self.transport.send_frame(peer, [F.VOTER_ADDRESSES, self.cluster, where])
        if peer not in self._told:
            self._told.add(peer)           # logged once; told again on every connection
            log.info("told node {peer} it was removed (applied up to index {index})",
                     peer=peer, index=index)

    def peer_up(self, peer: int) -> None:
        """An authenticated peer connected: a removed one learns it was removed (also one
        whose row still says ``leaving``, when the configuration applied here is without
        it: the leader that removed it may have died before writing ``removed``)."""
        applied = self._applied
        if applied is None or peer in applied.members or self.node_id not in applied.members:
            return
        if peer not in self._gone():
            return
        self.tell_removed(peer)
        self.transport.disconnect(peer)

    def _row(self, node_id: int) -> dict:
        """The membership table's row of ``node_id`` ({} when it has none)."""
        return next((r for r in self.rows() if r.get("node_id") == node_id), {})

    def removed_frame(self, peer: int, payload: list) -> None:
        """A member says this node is not in the configuration it applied up to
        ``index``: final once a quorum of that configuration's voters said so.  The teller
        counts whether or not this node knew it: one added while this node was down is as
        much a voter (node ids are never reused, and the frame comes over the authenticated
        peer link); the simulator counts every teller the same way.  Not a node this node
        knows was removed."""
        _, cluster, index, voters = payload
        if (cluster != self.cluster or type(index) is not int or index < 0
                or type(voters) is not list or not 0 < len(voters) <= _VOTERS_MAX
                or any(type(v) is not int or not 0 < v <= _NODE_ID_MAX for v in voters)):
            raise ValueError("bad removed frame")
        if self.node_id in voters:
            raise ValueError("bad removed frame: it lists this node among the voters")
        if peer in self._gone():
            # Removed itself, so a voter of no later configuration: no honest member
            # speaks as it (its credentials may outlive it: certificates are not revoked).
            if peer not in self._ignored:
                self._ignored.add(peer)
                log.warn("ignored a removed frame from node {peer}, which was itself "
                         "removed", peer=peer)
            return
        first = peer not in self.witnesses.tellers()
        if self.witnesses.told(peer, index, voters):
            tellers = ", ".join(map(str, self.witnesses.tellers()))
            self.mark_removed(index, f"nodes {tellers} say so")
        elif first and self.removed_at is None:    # members tell on every connection
            log.info("node {peer} says this node was removed (index {index}); waiting for a "
                     "quorum of voters {voters}", peer=peer, index=index, voters=voters)
            self.sync_transport()              # redials back off to _REMOVED_REDIAL_S

    def voter_addresses_frame(self, peer: int, payload: list) -> None:
        """After its REMOVED frame, a member says where the voters it named listen.  The
        ones this node does not know (added while it was down) are dialed until it exits,
        so that their word reaches it even after they stopped dialing it."""
        _, cluster, where = payload
        if (cluster != self.cluster or type(where) is not list or len(where) > _VOTERS_MAX
                or any(type(row) is not list or len(row) != 2 or type(row[0]) is not int
                       or not 0 < row[0] <= _NODE_ID_MAX or type(row[1]) is not str
                       or len(row[1]) > _ADDRESS_CHARS_MAX for row in where)):
            raise ValueError("bad voter-addresses frame")
        where = {node_id: parse_address(text) for node_id, text in where}
        if not all(_HOST.fullmatch(address.host) for address in where.values()):
            raise ValueError("bad voter-addresses frame: a host that is neither a name nor "
                             "an IP address")
        named = self.witnesses.voters_named(peer)
        if self.removed_at is not None or not named:
            return                          # only after that member's REMOVED frame
        # The first address given for a voter stays (two members' books may spell it
        # differently); all of them together are bounded like one frame's.
        new = {n: NodeAddresses(address, None) for n, address in where.items()
               if n in named and n != self.node_id and n not in self.book
               and n not in self._heard}
        new = dict(list(new.items())[:_VOTERS_MAX - len(self._heard)])
        if new:
            self._heard.update(new)
            log.info("node {peer} named voters this node did not know: {voters}; dialing "
                     "them for their word", peer=peer, voters=sorted(new))
            self.sync_transport()

    def mark_removed(self, index: int, why: str) -> None:
        if self.removed_at is not None:
            return
        self.removed_at = max(index, 1)
        log.error("this node ({node}) was removed from the cluster at index {index} ({why}); "
                  "it stops serving; wipe its data directory before it may join again",
                  node=self.node_id, index=index, why=why)
        self._persist()
        if self._heard:
            self.sync_transport()           # the voters it did not know: their word is in
        if self.on_removed is not None:
            # Stop serving at once (the API answers 410), exit a little later: replies this
            # node still relays (e.g. the remove request it forwarded) get out first.
            self.reactor.callLater(_EXIT_DELAY_S, self.on_removed, self.removed_at)

    @property
    def removed(self) -> bool:
        """Not a member any more (it may still wait for a member's word to exit)."""
        return self.removed_at is not None or self.leaving_at is not None

    @property
    def removed_index(self) -> int | None:
        return self.removed_at if self.removed_at is not None else self.leaving_at

    def describe(self) -> dict[str, dict]:
        return {str(n): a.to_json() for n, a in sorted(self.book.items())
                if n not in self.removed_ids}
