"""add-node refuses an id whose removal ran until the configuration without it but whose
row the leader never marked ``removed`` (paxoslog/server/admin.py): node ids are not
reused, so the id stays taken until remove-node finishes the row.  It also refuses a node
that already holds entries (a voter, or a learner the leader has matched): one that joins
again has lost its data.

Then, on a fake leader driven by a ``task.Clock``: voter changes need a live quorum of the
old and the new voters; the one-change-at-a-time guard is released only by its holder;
transfers go only to live voters and are armed at most twice; one node id bound."""

from __future__ import annotations

import tomllib
from types import SimpleNamespace

import pytest
from twisted.internet import defer, task

from paxoslog.config import NODE_ID_MAX, ConfigError, parse_config
from paxoslog.core.quorum import Config
from paxoslog.core.ready import Role
from paxoslog.server.admin import MembershipAdmin, validate_request
from paxoslog.server.errors import ApiError
from statemachines.membership import MembershipStateMachine


class _Port:
    node_id = 1

    def __init__(self, config: Config, progress: dict | None = None) -> None:
        self._config = config
        self._progress = progress or {}

    def progress(self) -> dict:
        return self._progress

    def role(self):
        return Role.LEADER

    def config(self) -> Config:
        return self._config

    applied_config = config

    def leader_id(self) -> int:
        return 1

    def applied_index(self) -> int:
        return 40


class _Book:
    removed = False
    removed_ids: frozenset = frozenset()
    bootstrap = frozenset({1, 2})
    book: dict = {}
    origin = None

    def __init__(self, rows: list) -> None:
        self._rows = rows

    def rows(self) -> list:
        return self._rows

    def describe(self) -> dict:
        return {}


def _add(config: Config, row: dict, progress: dict | None = None,
         joining: bool = False) -> object:
    """add-node of node 3: an operator's, or the node's own join (``joining``)."""
    admin = MembershipAdmin(_Port(config, progress), _Book([row]), task.Clock(), cluster="t",
                            protocol="raft", tick_s=0.01, request_timeout_s=1.0)
    outcome = []
    body = {"node_id": 3, "peer": "127.0.0.1:7003", **({"joining": True} if joining else {})}
    admin.request("add", body).addBoth(outcome.append)
    return outcome[0]


def test_add_node_refuses_an_id_whose_removal_left_its_row_leaving():
    row = {"node_id": 3, "address": "127.0.0.1:7003", "api": None, "status": "leaving",
           "added_at_index": 5, "removed_at_index": None}
    refused = _add(Config(frozenset({1, 2})), row)
    assert refused.check(ApiError)
    assert refused.value.status == 409 and "still says leaving" in refused.value.message
    # Still in the configuration (its removal has not got that far): the ordinary answer.
    answer = _add(Config(frozenset({1, 2, 3})), row)
    assert answer["node_id"] == 3 and answer["role"] == "voter"


ACTIVE = {"node_id": 3, "address": "127.0.0.1:7003", "api": None, "status": "active",
          "added_at_index": 5, "removed_at_index": None}


def test_add_node_refuses_a_member_that_holds_entries_as_one_that_lost_its_data():
    """A review lost an acknowledged write: a joined voter's disk was wiped, the same
    ``serve --join`` was run again, add-node answered ok, and the empty voter elected a
    lagging node.  The node's own join (``"joining": true``, sent by ``serve --join`` on
    an empty data directory) is refused for a voter, or a learner the leader has matched.
    An operator's add-node stays idempotent (it is also how one waits for a joined node
    to become a voter: the chaos harness does; the first version refused it too)."""
    voter = _add(Config(frozenset({1, 2, 3})), ACTIVE, joining=True)
    assert voter.check(ApiError) and voter.value.status == 409
    assert "is a voter" in voter.value.message and "new id" in voter.value.message
    matched = _add(Config(frozenset({1, 2}), learners=frozenset({3})), ACTIVE,
                   {3: SimpleNamespace(match=17)}, joining=True)
    assert matched.check(ApiError) and matched.value.status == 409
    assert "up to 17" in matched.value.message
    # The retry of a join that crashed before the node received anything goes through.
    answer = _add(Config(frozenset({1, 2}), learners=frozenset({3})), ACTIVE,
                  {3: SimpleNamespace(match=0)}, joining=True)
    assert answer["node_id"] == 3 and answer["role"] == "learner"
    # An operator's add-node of a member: the ordinary answer.
    assert _add(Config(frozenset({1, 2, 3})), ACTIVE)["role"] == "voter"
    assert _add(Config(frozenset({1, 2}), learners=frozenset({3})), ACTIVE,
                {3: SimpleNamespace(match=17)})["role"] == "learner"


# ====================================================================== liveness and the guard
#
# A fake of the leader's side of the core: ``progress`` with ``last_heard_ticks``, the peer
# links (``connected``), configuration changes applied at once, and transfers recorded.
# Time is a ``task.Clock`` advanced tick by tick.

TICK_S = 0.01
ELECTION_TICKS = 10                     # an election timeout of 0.1 s
REQUEST_TIMEOUT_S = 1.0


class _Core:
    def __init__(self, clock: task.Clock, voters, node_id: int, *, down=(), stale=(),
                 match: dict | None = None) -> None:
        self.clock = clock
        self.node_id = node_id
        self._config = self._applied = Config(frozenset(voters))
        self.down = set(down)            # not connected
        self.stale = set(stale)          # connected, not heard from for an election timeout
        self.match = match or {}
        self._role = Role.LEADER
        self._leader = node_id
        self.changes: list[tuple] = []
        self.transfers: list[tuple[float, int]] = []
        self.rows: list[dict] = []

    # what MembershipAdmin asks
    def role(self):
        return self._role

    def leader_id(self):
        return self._leader

    def term(self) -> int:
        return 7

    def config(self) -> Config:
        return self._config

    def applied_config(self) -> Config:
        return self._applied

    def applied_index(self) -> int:
        return 40

    def commit_index(self) -> int:
        return 40

    def election_ticks(self) -> int:
        return ELECTION_TICKS

    def progress(self) -> dict:
        return {peer: SimpleNamespace(match=self.match.get(peer, 40), next=41,
                                      last_heard_ticks=ELECTION_TICKS + 5
                                      if peer in self.stale else 1)
                for peer in sorted(self._config.members - {self.node_id})}

    def connected(self, peer: int) -> bool:
        return peer not in self.down

    def change_config(self, voters, learners) -> None:
        self.changes.append((frozenset(voters), frozenset(learners)))
        self._config = self._applied = Config(frozenset(voters),
                                              learners=frozenset(learners) - frozenset(voters))

    def transfer_leadership(self, target: int) -> None:
        self.transfers.append((self.clock.seconds(), target))

    def write_row(self, command: dict):
        self.rows.append(command)
        return defer.succeed(None)

    def stopping(self) -> bool:
        return False

    # what the test does
    def lead_to(self, target: int) -> None:
        self._role, self._leader = Role.FOLLOWER, target


def _admin(core: _Core, clock: task.Clock, rows: list | None = None) -> MembershipAdmin:
    book = _Book(rows if rows is not None else [
        {**ACTIVE, "node_id": n, "address": f"127.0.0.1:{7000 + n}"}
        for n in sorted(core.config().voters)])
    book.bootstrap = frozenset(core.config().voters)
    return MembershipAdmin(core, book, clock, cluster="t", protocol="raft", tick_s=TICK_S,
                           request_timeout_s=REQUEST_TIMEOUT_S)


def _start(admin: MembershipAdmin, op: str, body: dict) -> list:
    outcome: list = []
    admin.request(op, body).addBoth(outcome.append)
    return outcome


def _run(clock: task.Clock, seconds: float) -> None:
    for _ in range(round(seconds / TICK_S)):
        clock.advance(TICK_S)


def test_remove_node_refuses_a_voter_set_without_a_live_quorum():
    """Bug 1 (3 nodes, leader 3, node 1 killed, remove node 2): the joint configuration
    {1,2,3} -> {1,3} could never commit and every write stalled.  Refused (409) up front,
    naming the unreachable voter, before the row says leaving or the core is asked."""
    clock = task.Clock()
    core = _Core(clock, {1, 2, 3}, node_id=3, down={1})
    outcome = _start(_admin(core, clock), "remove", {"node_id": 2})
    refused = outcome[0]
    assert refused.check(ApiError), refused
    assert refused.value.status == 409 and refused.value.code == "conflict"
    assert "node(s) 1 are unreachable" in refused.value.message
    assert refused.value.body()["unreachable"] == [1]
    assert core.changes == [] and core.rows == []
    # Connected but silent for an election timeout counts as unreachable too.
    core = _Core(clock, {1, 2, 3}, node_id=3, stale={1})
    refused = _start(_admin(core, clock), "remove", {"node_id": 2})[0]
    assert refused.check(ApiError) and refused.value.status == 409
    assert refused.value.body()["unreachable"] == [1] and core.changes == []
    # The leader removing itself while another voter is down: refused before handing over.
    core = _Core(clock, {1, 2, 3}, node_id=3, down={1})
    refused = _start(_admin(core, clock), "remove", {"node_id": 3})[0]
    assert refused.check(ApiError) and refused.value.status == 409
    assert refused.value.body()["unreachable"] == [1] and core.transfers == []
    # Five voters, two down: removing a live one leaves {1,3,4,5} with only {3,4} live.
    core = _Core(clock, {1, 2, 3, 4, 5}, node_id=3, down={1, 5})
    refused = _start(_admin(core, clock), "remove", {"node_id": 2})[0]
    assert refused.check(ApiError) and refused.value.body()["unreachable"] == [1, 5]


def test_remove_node_of_the_dead_voter_itself_still_works():
    """3 nodes, node 1 dead: the rest {2, 3} is a quorum of both configurations."""
    clock = task.Clock()
    core = _Core(clock, {1, 2, 3}, node_id=3, down={1})
    outcome = _start(_admin(core, clock), "remove", {"node_id": 1})
    _run(clock, 0.1)
    assert outcome and not hasattr(outcome[0], "check"), outcome
    assert outcome[0]["role"] == "removed" and outcome[0]["node_id"] == 1
    assert core.changes == [(frozenset({2, 3}), frozenset())]
    assert [r["op"] for r in core.rows] == ["leave", "remove"]
    # Five voters, two down (one of them the one removed): {2,3,4} of {1,2,3,4,5} and of
    # {2,3,4,5} are majorities.
    core = _Core(clock, {1, 2, 3, 4, 5}, node_id=3, down={1, 5})
    outcome = _start(_admin(core, clock), "remove", {"node_id": 1})
    _run(clock, 0.1)
    assert outcome[0]["role"] == "removed", outcome


def test_the_guard_stays_with_the_operation_that_took_it():
    """Bug 2: an add lets the guard go once the node is a learner (promotion must run while
    it waits); a transfer then takes it; the add finishing must not clear the transfer's."""
    clock = task.Clock()
    core = _Core(clock, {1, 2, 3}, node_id=1)
    admin = _admin(core, clock)
    add = _start(admin, "add", {"node_id": 4, "peer": "127.0.0.1:7004", "wait": "voter"})
    _run(clock, 0.02)
    assert 4 in core.config().learners and not add and not admin.busy
    transfer = _start(admin, "transfer", {"node_id": 2})
    assert not transfer and admin.busy
    # Node 4 becomes a voter: the add answers ...
    core.change_config({1, 2, 3, 4}, set())
    _run(clock, 0.02)
    assert add and add[0]["role"] == "voter", add
    # ... and the transfer still holds the guard: a third change is refused (busy).
    assert admin.busy
    third = _start(admin, "remove", {"node_id": 4})[0]
    assert third.check(ApiError) and third.value.code == "busy"
    core.lead_to(2)
    _run(clock, 0.02)
    assert transfer and transfer[0]["leader"] == 2, transfer
    assert not admin.busy


def test_transfer_to_an_unreachable_voter_is_refused_at_once():
    """Bug 3: a transfer to a voter that is down used to block writes (the core refuses
    proposals while a transfer runs) for twice the request timeout."""
    clock = task.Clock()
    for kind in ("down", "stale"):
        core = _Core(clock, {1, 2, 3}, node_id=1, **{kind: {2}})
        refused = _start(_admin(core, clock), "transfer", {"node_id": 2})
        assert refused, "answered at once"
        assert refused[0].check(ApiError) and refused[0].value.status == 409, refused
        assert "node 2 is unreachable" in refused[0].value.message
        assert core.transfers == []


def test_a_transfer_that_does_not_complete_is_armed_twice_then_fails():
    """Bug 3: ``attempt()`` re-armed the core's transfer every tick until the deadline.
    Now at most twice, an election timeout apart, then 503 and the leader writes again."""
    clock = task.Clock()
    core = _Core(clock, {1, 2, 3}, node_id=1)
    outcome = _start(_admin(core, clock), "transfer", {"node_id": 2})
    election_s = ELECTION_TICKS * TICK_S
    _run(clock, 2 * election_s + 5 * TICK_S)
    assert outcome, "failed within about two election timeouts"
    assert outcome[0].check(ApiError) and outcome[0].value.status == 503, outcome
    assert "did not take over" in outcome[0].value.message
    times = [t for t, _target in core.transfers]
    assert len(times) == 2 and times[1] - times[0] >= election_s - 1e-9, core.transfers
    _run(clock, 2 * REQUEST_TIMEOUT_S)
    assert len(core.transfers) == 2


def test_hand_over_goes_to_a_live_voter_and_is_not_re_armed_every_tick():
    """Removing the leader hands over first: to the longest log among the voters heard
    from within an election timeout (node 2, connected but silent, is skipped), armed at
    most twice."""
    clock = task.Clock()
    core = _Core(clock, {1, 2, 3, 4, 5}, node_id=1, stale={2}, match={2: 90, 3: 50, 4: 60})
    outcome = _start(_admin(core, clock), "remove", {"node_id": 1})
    assert core.transfers == [(0, 4)]
    _run(clock, 2 * REQUEST_TIMEOUT_S)
    assert [target for _t, target in core.transfers] == [4, 4]
    assert outcome and outcome[0].check(ApiError) and outcome[0].value.status == 503


def test_one_node_id_bound_for_the_conf_the_api_and_the_table():
    """Bug 4: the conf accepted ids up to 2^32-1 that add-node and the membership table
    refuse."""
    assert NODE_ID_MAX == (1 << 31) - 1
    table = MembershipStateMachine()
    assert table.validate({"op": "leave", "node_id": NODE_ID_MAX})["node_id"] == NODE_ID_MAX
    assert validate_request("remove", {"node_id": NODE_ID_MAX}) == {"node_id": NODE_ID_MAX}
    with pytest.raises(ApiError):
        validate_request("remove", {"node_id": NODE_ID_MAX + 1})
    conf = ('cluster = "t"\nprotocol = "raft"\ndata_dir = "/tmp/x/{node}"\n'
            '[[nodes]]\nid = %d\npeer = "127.0.0.1:7001"\napi = "127.0.0.1:8001"\n')
    assert parse_config(tomllib.loads(conf % NODE_ID_MAX), "c.toml").nodes[0].id == NODE_ID_MAX
    with pytest.raises(ConfigError) as refused:
        parse_config(tomllib.loads(conf % (1 << 31)), "c.toml")
    assert refused.value.key == "nodes[0].id" and str(NODE_ID_MAX) in refused.value.message
