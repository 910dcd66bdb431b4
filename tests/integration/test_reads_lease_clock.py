"""In-process checks (no processes) of the node's tick accounting that lease reads rely
on: the core is ticked once per tick_ms of monotonic time, missed ticks included (bounded
by more than twice the election timeout), and a lease read first brings the core's clock
up to date, so a leader resumed after a pause never answers from a lease that ran out while
it was stopped, even when the request is handled before the tick loop runs."""

from __future__ import annotations

from twisted.internet import task

from paxoslog.core.ready import Role
from paxoslog.server import node as node_module
from paxoslog.server.node import NodeService


class FakeReplica:
    """A leader whose lease holds for ``lease`` ticks from now = 0."""

    def __init__(self, lease: int) -> None:
        self.role = Role.LEADER
        self.now = 0
        self.lease = lease
        self.asked_at: list[int] = []
        self.read_index_calls = 0
        self.leader_id = 1

    def tick(self) -> None:
        self.now += 1

    def lease_read_index(self):
        self.asked_at.append(self.now)
        return 5 if self.now < self.lease else None

    def read_index(self, request_id) -> None:
        self.read_index_calls += 1

    def ready(self):
        return None


def make_node(replica, monotonic, election_ticks=15):
    node = NodeService.__new__(NodeService)
    node.replica = replica
    node.reactor = task.Clock()
    node.tick_ms = 10
    node.request_timeout = 3.0
    node.retry_delay = 0.02
    node.stats = dict.fromkeys(("reads", "stale_reads", "lease_reads", "lease_reads_served"), 0)
    node._stopping = False
    node.fatal = None
    node._pump_call = None
    node._busy = False
    node._read_batch = []
    node._read_batches = {}
    node._served_batches = {}
    node._waiting_reads = []
    node._next_read_batch = 0
    node.applied_index = 5
    node._tick_origin = monotonic()
    node._ticks_done = 0
    node._tick_catchup_max = max(node_module._TICK_CATCHUP_MAX, 2 * election_ticks + 1)
    node._query = lambda query, stale: {"value": "v", "index": node.applied_index}
    return node


def test_ticks_follow_monotonic_time_including_missed_ones(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr(node_module.time, "monotonic", lambda: clock[0])
    replica = FakeReplica(lease=10)
    node = make_node(replica, lambda: clock[0])
    clock[0] += 0.035
    node._tick(1)
    assert replica.now == 3
    clock[0] += 0.5                     # a 500 ms stall: LoopingCall reports count > 1
    node._tick(50)
    assert replica.now == 53
    node._tick(1)                       # no time passed: no tick
    assert replica.now == 53
    clock[0] += 3600                    # paused for an hour: bounded catch-up ...
    node._tick(360000)
    assert replica.now - 53 == node._tick_catchup_max >= 2 * 15 + 1
    clock[0] += 0.01                    # ... and no backlog afterwards
    node._tick(1)
    assert replica.now - 53 == node._tick_catchup_max + 1


def test_lease_read_catches_up_the_clock_before_trusting_the_lease(monkeypatch):
    """Served from the lease while it holds; after a pause longer than the lease, the read
    ticks the core first, finds the lease gone and falls back to a ReadIndex round."""
    clock = [50.0]
    monkeypatch.setattr(node_module.time, "monotonic", lambda: clock[0])
    replica = FakeReplica(lease=10)
    node = make_node(replica, lambda: clock[0])
    clock[0] += 0.05
    served = []
    node.submit_read({"key": "k"}, "lease").addCallback(served.append)
    assert replica.asked_at == [5] and served == [{"value": "v", "index": 5}]
    assert node.stats["lease_reads_served"] == 1
    clock[0] += 2.0                     # SIGSTOP for 2 s; no LoopingCall has run since
    pending = node.submit_read({"key": "k"}, "lease")
    assert replica.asked_at[-1] == 205, "the lease was checked with a stale clock"
    assert node.stats["lease_reads_served"] == 1 and not pending.called
    assert node._read_batch, "the read must fall back to read_index"
    node._pump_call.cancel()
    for call in node.reactor.getDelayedCalls():
        call.cancel()
