"""The ``ts`` a node stamps on commands (paxoslog/node/stamps.py), on hand-driven clocks:
a node whose wall clock runs fast cannot push the log clock ahead of real time, so it
cannot expire the sessions of every client at once (found by a review: one command stamped
eleven minutes ahead wiped the session table, and a client's retry then ran twice)."""

from __future__ import annotations

from paxoslog.node.machines import StateMachines
from paxoslog.node.sessions import SessionTable
from paxoslog.node.stamps import CommandClock, FirstStamp
from statemachines.kv import KVStateMachine

MINUTE = 60_000


class Clocks:
    def __init__(self, wall: int, mono: int = 5_000) -> None:
        self.wall, self.mono = wall, mono

    def advance(self, ms: int) -> None:
        self.wall += ms
        self.mono += ms


def test_a_fast_wall_clock_stamps_no_further_than_the_log_allows():
    applied = {"clock": 1_000_000}
    fast = Clocks(wall=1_000_000 + 11 * MINUTE)            # eleven minutes ahead
    clock = CommandClock(lambda: applied["clock"], lambda: fast.wall, lambda: fast.mono)
    assert clock() == 1_000_000
    fast.advance(2_000)
    assert clock() == 1_002_200                             # the time that passed, x 1.1
    applied["clock"] = 1_005_000                            # another node is further on
    assert clock() == 1_005_000
    fast.advance(1_000)
    assert clock() == 1_006_100


def test_an_honest_clock_stamps_its_wall_time_and_a_slow_one_stamps_lower():
    applied = {"clock": 1_000_000}
    honest = Clocks(wall=1_000_050)
    clock = CommandClock(lambda: applied["clock"], lambda: honest.wall, lambda: honest.mono)
    assert clock() == 1_000_000                              # the log's value, just seen
    applied["clock"] = 1_000_040
    honest.advance(10)
    assert clock() == 1_000_040
    slow = Clocks(wall=900_000)
    assert CommandClock(lambda: 1_000_000, lambda: slow.wall, lambda: slow.mono)() == 900_000
    new_cluster = Clocks(wall=1_700_000_000_000)
    assert CommandClock(lambda: 0, lambda: new_cluster.wall,
                        lambda: new_cluster.mono)() == 1_700_000_000_000


def test_a_fast_node_cannot_expire_an_idle_clients_session_early():
    """Client c writes at log time T; a node eleven minutes fast stamps the next command.
    With the wall clock as its stamp the session table expired c's session (idle 10
    minutes) and c's retry of the same write was applied again; with CommandClock c's
    retry is still a duplicate."""
    m = StateMachines({"kv": KVStateMachine()}, SessionTable(idle_ms=10 * MINUTE),
                      lambda name: KVStateMachine(), record_terms=True)
    honest = Clocks(wall=1_000_000)
    fast = Clocks(wall=1_000_000 + 11 * MINUTE)
    stamps = {name: CommandClock(lambda: m.sessions.clock, lambda c=c: c.wall,
                                 lambda c=c: c.mono)
              for name, c in (("honest", honest), ("fast", fast))}

    def write(node: str, client: str, sequence: int, value: int, index: int) -> str:
        data = m.encode_write("kv", {"op": "put", "key": "k", "value": value}, client,
                              sequence, stamps[node]())
        return m.apply_command(index, 1, data).outcome

    assert write("honest", "c", 1, 1, 1) == "executed"
    for c in (honest, fast):
        c.advance(1_000)
    assert write("fast", "other", 1, 2, 2) == "executed"     # stamped from the fast node
    assert write("honest", "c", 1, 1, 3) == "duplicate"      # c's retry: not applied again
    assert m.machines["kv"].get("k")["value"] == 2



def test_a_node_that_knows_no_log_clock_gives_a_stamp_that_may_only_start_one():
    """A node that has applied nothing since it started (restarted without a snapshot, a
    new member catching up), or no ``ts`` yet, gives a ``FirstStamp`` (``ts_start``): it
    starts the clock of a log that has none and never moves a running one, so a fast wall
    clock there is harmless (the simulator's skewed clocks found that its plain ``ts``,
    ten minutes fast after a restart, expired every session and a retry ran twice).  It
    is not latched either: once the log's clock is known, stamps hold to it."""
    state = {"applied": None}
    fast = Clocks(wall=1_000_000 + 10 * MINUTE)
    clock = CommandClock(lambda: state["applied"], lambda: fast.wall, lambda: fast.mono)
    first = clock()
    assert type(first) is FirstStamp and first == fast.wall
    state["applied"] = 0
    assert type(clock()) is FirstStamp
    state["applied"] = 1_000_000                             # caught up: the log's clock
    fast.advance(1_000)
    assert type(clock()) is int and clock() == 1_000_000
    fast.advance(1_000)
    assert clock() == 1_001_100


def test_a_first_stamp_starts_a_log_clock_but_never_moves_a_running_one():
    """Client c writes at log time T; a node ten minutes fast, just restarted (it knows no
    log clock), encodes the next command; c's retry is still a duplicate."""
    m = StateMachines({"kv": KVStateMachine()}, SessionTable(idle_ms=5 * MINUTE),
                      lambda name: KVStateMachine(), record_terms=True)

    def write(client: str, value: int, index: int, ts) -> str:
        data = m.encode_write("kv", {"op": "put", "key": "k", "value": value}, client, 1, ts)
        return m.apply_command(index, 1, data).outcome

    assert write("c", 1, 1, FirstStamp(1_000_000)) == "executed"       # starts the clock
    assert m.sessions.clock == 1_000_000
    assert write("d", 2, 2, 1_000_500) == "executed"
    assert write("e", 3, 3, FirstStamp(1_000_000 + 10 * MINUTE)) == "executed"
    assert m.sessions.clock == 1_000_500                                 # not moved
    assert write("c", 1, 4, 1_001_000) == "duplicate"
    assert m.machines["kv"].get("k")["value"] == 3


def test_the_first_stamp_of_a_log_does_not_expire_the_sessions_recorded_before_it():
    """Commands without a ``ts`` (a node's internal ones, or from before stamps) are
    recorded at log clock 0; the log's first stamp re-bases them, so a retry of such a
    write is still a duplicate (a stamp far above 0 made them idle since 0)."""
    m = StateMachines({"kv": KVStateMachine()}, SessionTable(idle_ms=10 * MINUTE),
                      lambda name: KVStateMachine(), record_terms=True)

    def write(client: str, value: int, index: int, ts) -> str:
        data = m.encode_write("kv", {"op": "put", "key": "k", "value": value}, client, 1, ts)
        return m.apply_command(index, 1, data).outcome

    m.sessions.record("early", 1, 1, 1, {"op": "put"})
    assert m.sessions.clock == 0
    assert write("first-stamp", 2, 2, 1_700_000_000_000) == "executed"
    assert write("early", 1, 3, 1_700_000_000_100) == "duplicate"


def test_after_an_outage_the_log_clock_catches_up_with_honest_wall_clocks():
    """The log's newest ts is an hour old (every node was down): stamps start there and
    gain 10 % on real time until they reach the wall clock, then follow it."""
    honest = Clocks(wall=1_000_000 + 60 * MINUTE)
    applied = {"clock": 1_000_000}
    clock = CommandClock(lambda: applied["clock"], lambda: honest.wall, lambda: honest.mono)
    assert clock() == 1_000_000
    honest.advance(10 * 60 * MINUTE)                         # ten hours later
    assert clock() == honest.wall
