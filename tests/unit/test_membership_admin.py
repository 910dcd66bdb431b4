"""add-node refuses an id whose removal ran until the configuration without it but whose
row the leader never marked ``removed`` (paxoslog/server/admin.py): node ids are not
reused, so the id stays taken until remove-node finishes the row.  It also refuses a node
that already holds entries (a voter, or a learner the leader has matched): one that joins
again has lost its data."""

from __future__ import annotations

from types import SimpleNamespace

from twisted.internet import task

from paxoslog.core.quorum import Config
from paxoslog.core.ready import Role
from paxoslog.server.admin import MembershipAdmin
from paxoslog.server.errors import ApiError


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


def _add(config: Config, row: dict, progress: dict | None = None) -> object:
    admin = MembershipAdmin(_Port(config, progress), _Book([row]), task.Clock(), cluster="t",
                            protocol="raft", tick_s=0.01, request_timeout_s=1.0)
    outcome = []
    admin.request("add", {"node_id": 3, "peer": "127.0.0.1:7003"}).addBoth(outcome.append)
    return outcome[0]


def test_add_node_refuses_an_id_whose_removal_left_its_row_leaving():
    row = {"node_id": 3, "address": "127.0.0.1:7003", "api": None, "status": "leaving",
           "added_at_index": 5, "removed_at_index": None}
    refused = _add(Config(frozenset({1, 2})), row)
    assert refused.check(ApiError)
    assert refused.value.status == 409 and "still says leaving" in refused.value.message
    # Still a voter (its removal has not got that far): refused as a voter.
    voter = _add(Config(frozenset({1, 2, 3})), row)
    assert voter.check(ApiError) and voter.value.status == 409


ACTIVE = {"node_id": 3, "address": "127.0.0.1:7003", "api": None, "status": "active",
          "added_at_index": 5, "removed_at_index": None}


def test_add_node_refuses_a_member_that_holds_entries_as_one_that_lost_its_data():
    """A review lost an acknowledged write: a joined voter's disk was wiped, the same
    ``serve --join`` was run again, add-node answered ok, and the empty voter elected a
    lagging node.  A voter, or a learner the leader has matched, is refused now."""
    voter = _add(Config(frozenset({1, 2, 3})), ACTIVE)
    assert voter.check(ApiError) and voter.value.status == 409
    assert "is a voter" in voter.value.message and "new id" in voter.value.message
    matched = _add(Config(frozenset({1, 2}), learners=frozenset({3})), ACTIVE,
                   {3: SimpleNamespace(match=17)})
    assert matched.check(ApiError) and matched.value.status == 409
    assert "up to 17" in matched.value.message
    # The retry of a join that crashed before the node received anything: idempotent.
    answer = _add(Config(frozenset({1, 2}), learners=frozenset({3})), ACTIVE,
                  {3: SimpleNamespace(match=0)})
    assert answer["node_id"] == 3 and answer["role"] == "learner"
