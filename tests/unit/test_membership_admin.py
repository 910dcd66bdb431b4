"""add-node refuses an id whose removal ran until the configuration without it but whose
row the leader never marked ``removed`` (paxoslog/server/admin.py): node ids are not
reused, so the id stays taken until remove-node finishes the row."""

from __future__ import annotations

from twisted.internet import task

from paxoslog.core.quorum import Config
from paxoslog.core.ready import Role
from paxoslog.server.admin import MembershipAdmin
from paxoslog.server.errors import ApiError


class _Port:
    node_id = 1

    def __init__(self, config: Config) -> None:
        self._config = config

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


def _add(config: Config, row: dict) -> object:
    admin = MembershipAdmin(_Port(config), _Book([row]), task.Clock(), cluster="t",
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
    # Still in the configuration (its removal has not got that far): the ordinary answer.
    answer = _add(Config(frozenset({1, 2, 3})), row)
    assert answer["node_id"] == 3 and answer["role"] == "voter"
