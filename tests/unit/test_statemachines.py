"""The state machine plug-in interface: registry (built-ins + entry points), the counter
built-in, the node's generic validation, and determinism of error results."""

from __future__ import annotations

import random
from importlib import metadata

import pytest

import statemachines
from paxoslog.config import ConfigError, parse_config
from statemachines import BadCommand, StateMachine, create, snapshot_producer
from statemachines.counter import CounterStateMachine
from statemachines.kv import KVStateMachine

NODES = '[[nodes]]\nid = 1\npeer = "127.0.0.1:7001"\napi = "127.0.0.1:8001"\n'
BASE = 'cluster = "t"\ndata_dir = "d/{node}"\n'


def test_builtins_are_registered_and_follow_the_protocol():
    """kv and counter are available by name and satisfy the StateMachine protocol."""
    assert {"kv", "counter"} <= set(statemachines.available())
    for name in ("kv", "counter"):
        sm = create(name)
        assert sm.name == name and isinstance(sm, StateMachine)
    with pytest.raises(ValueError, match="unknown state machine 'nope'"):
        create("nope")


def test_entry_points_are_discovered(monkeypatch):
    """A name from the entry-point group paxoslog.state_machines can be created and
    enabled in a conf; one that lacks the protocol's methods is refused."""

    class Tiny:
        name = "tiny"

        def apply(self, index, command):
            return index

        def query(self, request):
            return None

        def snapshot(self):
            return b""

        def restore(self, data):
            pass

    class Broken:
        name = "broken"

    fake = {"tiny": Tiny, "broken": Broken}

    class EP:
        def __init__(self, name):
            self.name, self.value = name, f"x:{name}"

        def load(self):
            return fake[self.name]

    def entry_points(group):
        assert group == "paxoslog.state_machines"
        return [EP("tiny"), EP("broken")]

    monkeypatch.setattr(metadata, "entry_points", entry_points)
    assert {"tiny", "broken", "kv"} <= set(statemachines.available())
    assert create("tiny").apply(7, {}) == 7
    with pytest.raises(ValueError, match="lacks apply, query, snapshot, restore"):
        create("broken")
    config = parse_config(
        __import__("tomllib").loads(BASE + '[state_machines]\nenabled = ["kv", "tiny"]\n'
                                    + NODES))
    assert config.state_machines == ("kv", "tiny")


def test_conf_refuses_unknown_names_and_lists_the_known_ones():
    import tomllib
    with pytest.raises(ConfigError, match="state_machines.enabled.*'dns'.*counter, kv"):
        parse_config(tomllib.loads(BASE + '[state_machines]\nenabled = ["kv", "dns"]\n'
                                   + NODES), "x.toml")


def test_counter_add_get_reset_return_the_new_value():
    c = CounterStateMachine()
    assert c.apply(1, c.validate({"op": "add", "name": "hits"})) == {"name": "hits", "value": 1}
    assert c.apply(2, c.validate({"op": "add", "name": "hits", "delta": 41}))["value"] == 42
    assert c.apply(3, c.validate({"op": "add", "name": "hits", "delta": -2}))["value"] == 40
    assert c.query({"name": "hits"}) == {"name": "hits", "value": 40}
    assert c.query({"op": "get", "name": "other"}) == {"name": "other", "value": 0}
    assert c.apply(4, c.validate({"op": "reset", "name": "hits"})) == {"name": "hits",
                                                                       "value": 0}
    assert c.query({"name": "hits"})["value"] == 0 and len(c) == 0


@pytest.mark.parametrize("command, words", [
    ({"op": "incr", "name": "a"}, '"op" must be one of add, reset'),
    ({"name": "a"}, '"op" must be one of'),
    ({"op": "add"}, '"name" must be a string'),
    ({"op": "add", "name": ""}, '"name" must be a string'),
    ({"op": "add", "name": 5}, '"name" must be a string'),
    ({"op": "add", "name": "a", "delta": "1"}, '"delta" must be a 64-bit integer'),
    ({"op": "add", "name": "a", "delta": True}, '"delta" must be a 64-bit integer'),
    ({"op": "add", "name": "a", "delta": 1.5}, '"delta" must be a 64-bit integer'),
    ({"op": "add", "name": "a", "delta": 1 << 70}, '"delta" must be a 64-bit integer'),
    ({"op": "add", "name": "a", "colour": 1}, "unknown field"),
    ({"op": "reset", "name": "a", "delta": 1}, "unknown field"),
])
def test_counter_validation_refuses_bad_commands(command, words):
    with pytest.raises(BadCommand, match=words):
        CounterStateMachine().validate(command)


def test_counter_overflow_is_an_apply_error_that_changes_nothing():
    """An add past 64 bits raises in apply (the node turns it into an error result, the
    same on every replica); the counter keeps its value."""
    c = CounterStateMachine()
    c.apply(1, {"op": "add", "name": "x", "delta": (1 << 63) - 1})
    with pytest.raises(BadCommand, match="overflow"):
        c.apply(2, {"op": "add", "name": "x", "delta": 1})
    assert c.query({"name": "x"})["value"] == (1 << 63) - 1
    with pytest.raises(BadCommand):
        c.query({"name": "x", "delta": 1})


def test_counter_snapshot_is_deterministic_and_restores():
    a, b = CounterStateMachine(), CounterStateMachine()
    rng = random.Random(4)
    for index in range(1, 400):
        command = rng.choice([{"op": "add", "name": f"c{rng.randrange(20)}",
                               "delta": rng.randrange(-5, 6)},
                              {"op": "reset", "name": f"c{rng.randrange(20)}"}])
        assert a.apply(index, dict(command)) == b.apply(index, dict(command))
    data = a.snapshot()
    assert data == b.snapshot() == snapshot_producer(b)()
    c = CounterStateMachine()
    c.restore(data)
    assert c.snapshot() == data
    c.restore(b"")
    assert len(c) == 0
    with pytest.raises(ValueError, match="damaged"):
        c.restore(b"\xff\x00")


def _machines(sms: dict):
    """The node's state machines and session table (Multi-Paxos: terms not recorded)."""
    from paxoslog.node.machines import StateMachines
    from paxoslog.node.sessions import SessionTable
    return StateMachines(sms, SessionTable(), create=lambda name: None, record_terms=False)


class _Raising:
    name = "boom"
    ops = ("explode", "fine")

    def __init__(self):
        self.applied = []

    def apply(self, index, command):
        if command["op"] == "explode":
            raise ZeroDivisionError("division by zero")
        self.applied.append(index)
        return {"ok": index}

    def query(self, request):
        return None

    def snapshot(self):
        return b""

    def restore(self, data):
        pass


def test_node_validates_commands_through_validate_or_ops():
    """A command is checked by its state machine's validate, else its ops list."""
    node = _machines({"counter": CounterStateMachine(), "boom": _Raising()})
    assert node.validate({"sm": "counter", "op": "add", "name": "a",
                                  "client_id": "c", "sequence": 1}) == {
        "op": "add", "name": "a", "delta": 1}
    with pytest.raises(BadCommand, match="unknown state machine"):
        node.validate({"sm": "nope", "op": "x"})
    with pytest.raises(BadCommand, match="unknown op 'melt' for state machine 'boom'"):
        node.validate({"sm": "boom", "op": "melt"})
    assert node.validate({"sm": "boom", "op": "fine", "x": 1}) == {"op": "fine",
                                                                           "x": 1}


def test_a_raising_state_machine_gives_an_identical_error_result_and_apply_goes_on():
    """Two replicas applying the same commands, one of which raises, record the same error
    result in the session table and go on applying the next command."""
    from paxoslog.node.commands import encode_command
    results = []
    for _ in range(2):
        sm = _Raising()
        node = _machines({"boom": sm})
        commands = [encode_command("boom", {"op": "fine"}, "c", 1, ts=1),
                    encode_command("boom", {"op": "explode"}, "c", 2, ts=1),
                    encode_command("nosuch", {"op": "fine"}, "c", 3, ts=1),
                    encode_command("boom", {"op": "fine"}, "c", 4, ts=1)]
        for index, data in enumerate(commands, 1):
            node.apply_command(index, 1, data)
        assert sm.applied == [1, 4]
        results.append([node.sessions.lookup("c", seq)[1] for seq in (1, 2, 3, 4)])
    assert results[0] == results[1]
    error = results[0][1][2]
    assert error == {"error": "apply_failed", "message": "state machine 'boom' failed: "
                                                         "ZeroDivisionError: division by zero"}
    assert results[0][2][2]["error"] == "bad_request"


def test_membership_rows_and_transitions():
    """add -> active (added_at_index), leave -> leaving, remove -> removed
    (removed_at_index, row kept); a removed id is never re-added (ids are not reused)."""
    from statemachines.membership import MembershipStateMachine
    m = create("membership")
    assert isinstance(m, MembershipStateMachine)
    add = m.validate({"op": "add", "node_id": 4, "address": "10.0.0.4:7100",
                      "api": "10.0.0.4:8100"})
    assert m.apply(10, add) == {"node_id": 4, "address": "10.0.0.4:7100",
                                "api": "10.0.0.4:8100", "status": "active",
                                "added_at_index": 10, "removed_at_index": None}
    assert m.apply(11, m.validate({"op": "leave", "node_id": 4}))["status"] == "leaving"
    removed = m.apply(12, m.validate({"op": "remove", "node_id": 4}))
    assert removed["status"] == "removed" and removed["removed_at_index"] == 12
    assert m.query({"node_id": "4"})["status"] == "removed"
    with pytest.raises(BadCommand, match="not reused"):
        m.apply(13, add)
    five = m.apply(14, m.validate({"op": "add", "node_id": 5, "address": "h5:1"}))
    assert five["api"] is None
    assert m.query({}) == {"members": [removed, five]}
    assert m.query({"node_id": 9}) is None
    data = m.snapshot()
    other = MembershipStateMachine()
    other.restore(data)
    assert other.snapshot() == data and other.query({}) == m.query({})
    assert other.restores == 1


def test_membership_restores_rows_written_before_the_api_field():
    import cbor2
    from statemachines.membership import MembershipStateMachine
    m = MembershipStateMachine()
    m.restore(cbor2.dumps([[2, "h:1", "active", 3, None]]))
    assert m.query({"node_id": 2}) == {"node_id": 2, "address": "h:1", "api": None,
                                       "status": "active", "added_at_index": 3,
                                       "removed_at_index": None}


@pytest.mark.parametrize("command, words", [
    ({"op": "join", "node_id": 1}, '"op" must be one of add, leave, remove'),
    ({"op": "add", "node_id": 0, "address": "h:1"}, '"node_id" must be an integer'),
    ({"op": "add", "node_id": "1", "address": "h:1"}, '"node_id" must be an integer'),
    ({"op": "add", "node_id": 1}, '"address" must be "host:port"'),
    ({"op": "add", "node_id": 1, "address": "h:99999"}, '"address" must be "host:port"'),
    ({"op": "leave", "node_id": 1, "address": "h:1"}, "unknown field"),
    ({"op": "add", "node_id": 1, "address": "h:1", "api": "nope"}, '"api" must be "host:port"'),
])
def test_membership_validation_refuses_bad_commands(command, words):
    from statemachines.membership import MembershipStateMachine
    with pytest.raises(BadCommand, match=words):
        MembershipStateMachine().validate(command)


def test_membership_apply_errors_leave_the_table_unchanged():
    from statemachines.membership import MembershipStateMachine
    m = MembershipStateMachine()
    with pytest.raises(BadCommand, match="not a member"):
        m.apply(1, {"op": "remove", "node_id": 2})
    m.apply(2, {"op": "add", "node_id": 2, "address": "h:1"})
    with pytest.raises(BadCommand, match="already a member"):
        m.apply(3, {"op": "add", "node_id": 2, "address": "h:2"})
    m.apply(4, {"op": "leave", "node_id": 2})
    with pytest.raises(BadCommand, match="already leaving"):
        m.apply(5, {"op": "leave", "node_id": 2})
    assert m.query({"node_id": 2})["address"] == "h:1"


def test_kv_prefix_reads_are_cut_by_bytes_and_say_more():
    """A prefix read stops before result_bytes_max bytes of records (JSON, ASCII-escaped)
    with more: true; the first record always comes back; rows still cap it too."""
    import json
    from statemachines.kv import KVStateMachine
    kv = KVStateMachine(result_bytes_max=5000)
    for i in range(20):
        kv.apply(i + 1, {"op": "put", "key": f"k{i:02d}", "value": "é" * 400})
    out = kv.query({"prefix": "k", "limit": 100})
    assert out["more"] is True and 0 < len(out["kvs"]) < 20
    assert len(json.dumps(out["kvs"])) <= 5000
    assert [r["key"] for r in out["kvs"]] == [f"k{i:02d}" for i in range(len(out["kvs"]))]
    tiny = KVStateMachine(result_bytes_max=10)
    tiny.apply(1, {"op": "put", "key": "a", "value": "x" * 100})
    assert tiny.query({"prefix": ""}) == {"kvs": [tiny.get("a")], "more": False}
    roomy = KVStateMachine()
    for i in range(5):
        roomy.apply(i + 1, {"op": "put", "key": f"k{i}", "value": i})
    assert roomy.query({"prefix": "k", "limit": 3}) == {
        "kvs": [roomy.get(f"k{i}") for i in range(3)], "more": True, "cursor": "k2"}


def test_kv_prefix_cursor_walks_every_key_once_and_delete_range_continues():
    """Pages follow "cursor" (passed back as "after") without repeats or gaps, even with
    keys added below the cursor meanwhile; delete_range deletes LIMIT keys per command."""
    kv = KVStateMachine()
    for i in range(2500):
        kv.apply(i + 1, kv.validate({"op": "put", "key": f"p/{i:05d}", "value": i}))
    kv.apply(9000, kv.validate({"op": "put", "key": "q", "value": 0}))
    seen, after = [], None
    while True:
        page = kv.query({"prefix": "p/", "limit": 700, **({"after": after} if after else {})})
        seen += [r["key"] for r in page["kvs"]]
        if not page["more"]:
            assert "cursor" not in page
            break
        after = page["cursor"]
        kv.apply(9001, kv.validate({"op": "put", "key": "p/", "value": "below"}))
    assert seen == [f"p/{i:05d}" for i in range(2500)]
    with pytest.raises(BadCommand, match="after"):
        kv.validate({"op": "delete_range", "prefix": "p/", "after": 5})
    command = kv.validate({"op": "delete_range", "prefix": "p/0", "limit": 1000})
    first = kv.apply(9002, command)
    assert first == {"op": "delete_range", "deleted": 1000, "more": True, "cursor": "p/00999"}
    second = kv.apply(9003, kv.validate({"op": "delete_range", "prefix": "p/0",
                                          "after": first["cursor"]}))     # default: 1000
    assert second == {"op": "delete_range", "deleted": 1000, "more": True, "cursor": "p/01999"}
    third = kv.apply(9004, kv.validate({"op": "delete_range", "prefix": "p/0", "limit": 9999,
                                         "after": second["cursor"]}))
    assert third == {"op": "delete_range", "deleted": 500, "more": False}
    assert kv.query({"prefix": ""})["kvs"] == [kv.get("p/"), kv.get("q")]
