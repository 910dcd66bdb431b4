"""The lock workload of a chaos run (``--lock-workers N``): N holders take turns at one
distributed lock (paxoslog/recipes.py, the Twisted ``TwistedLock``) while the nemesis
kills, pauses and partitions the servers, and each holder does *fenced writes* to the
resource the lock protects.

A fenced write is one transaction: "if ``lockfence/<name>`` <= my token, set it to my
token and write ``lockres/<name>``", so the resource refuses any token older than one it
has seen (what the docs tell lock users to do with the fencing token).  Every hold and
every write is recorded with client-side times (the run's clock) and, for writes, the
commit index.

The check (``check_lock_fencing``), after the run:

1. every hold has its own token, and tokens grow with acquisition;
2. the successful fenced writes, in commit order, never go back to an older token (a
   holder whose hold overlapped a newer holder's never wrote after it): the fencing
   tokens of overlapping holds never both succeed out of order;
3. no early hand-over: when holder B acquires while holder A still believes it holds
   (A had not released and had not noticed a loss), A's lease must have run out: B's
   acquisition comes no sooner than TTL x (1 - drift bound) after the send of A's last
   acknowledged renewal before it, and no renewal A sent after that is acknowledged.
   The servers are faulted, the lock clients are not, so two holders at once would be a
   lease that expired early.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field

from twisted.internet import defer, task

from paxoslog.client import Client, ClientError
from paxoslog.recipes import LockLost, TwistedLock

from .checks import CheckOutcome

__all__ = ["LockWorkload", "Hold", "FencedWrite", "check_lock_fencing"]


@dataclass
class FencedWrite:
    holder: int
    token: int
    sent: float
    acked: float | None = None
    ok: bool | None = None          # None: outcome unknown
    index: int | None = None


@dataclass
class Hold:
    holder: int
    token: int
    acquired: float                 # the acquisition's answer arrived
    released: float | None = None   # release was called (None: never, e.g. lost)
    lost_at: float | None = None    # the holder noticed the lease gone
    renewals: list = field(default_factory=list)     # (sent, acknowledged)
    floor: float = 0.0              # when acquire was called (before the grant was sent)


class LockWorkload:
    def __init__(self, reactor, endpoints: list[str], clock, *, holders: int = 3,
                 ttl_ms: int = 2000, hold_s: float = 0.3, name: str = "chaos",
                 cafile: str | None = None, token: str | None = None,
                 rng: random.Random | None = None) -> None:
        """``token``: the bearer token of a cluster that requires one (--auth); the
        holders write with clients' own random ids, so an unbound token."""
        self.reactor = reactor
        self.endpoints = endpoints
        self.clock = clock
        self.holders = holders
        self.ttl_ms = ttl_ms
        self.hold_s = hold_s
        self.name = name
        self.cafile = cafile
        self.token = token
        self.rng = rng or random.Random(0)
        self.holds: list[Hold] = []
        self.writes: list[FencedWrite] = []
        self.errors = 0
        self.stopping = False
        self._runs: list[defer.Deferred] = []
        self._clients: list[Client] = []

    def _client(self) -> Client:
        client = Client(self.endpoints, reactor=self.reactor, timeout=5.0,
                        attempt_timeout=1.0, cafile=self.cafile, token=self.token)
        self._clients.append(client)
        return client

    def start(self) -> None:
        self._runs = [defer.Deferred.fromCoroutine(self._holder(i + 1))
                      for i in range(self.holders)]

    async def stop(self) -> None:
        self.stopping = True
        for d in self._runs:
            try:
                await d
            except Exception:  # a holder's failure is in its records already
                pass
        for client in self._clients:
            await client.close()

    async def _pause(self, seconds: float) -> None:
        await task.deferLater(self.reactor, seconds, lambda: None)

    async def _holder(self, number: int) -> None:
        client = self._client()
        fence, resource = f"lockfence/{self.name}", f"lockres/{self.name}"
        while not self.stopping:
            try:
                await client.txn([{"key": fence, "target": "exists", "value": False}],
                                 [{"op": "put", "key": fence, "value": 0}])
                break
            except ClientError:
                await self._pause(0.2)
        while not self.stopping:
            hold = None

            def lost(exc: LockLost) -> None:
                if hold is not None and hold.lost_at is None:
                    hold.lost_at = self.clock()
            lock = TwistedLock(client, self.name, ttl_ms=self.ttl_ms, poll_s=0.02,
                               on_lost=lost, clock=self.clock)
            floor = self.clock()
            try:
                token = await lock.acquire(timeout_s=30.0)
            except ClientError:
                self.errors += 1
                await self._pause(self.rng.uniform(0.05, 0.2))
                continue
            hold = Hold(number, token, self.clock(), renewals=lock.renewals_sent, floor=floor)
            self.holds.append(hold)
            for n in range(3):
                if hold.lost_at is not None:
                    break
                write = FencedWrite(number, token, self.clock())
                self.writes.append(write)
                try:
                    body = await client.txn(
                        [{"key": fence, "target": "value", "cmp": "<=", "value": token}],
                        [{"op": "put", "key": fence, "value": token},
                         {"op": "put", "key": resource,
                          "value": {"token": token, "holder": number, "n": n}}])
                except ClientError as exc:
                    write.ok = False if getattr(exc, "status", None) in (400, 503) else None
                else:
                    write.acked = self.clock()
                    write.ok = body["result"]["succeeded"]
                    write.index = body["index"]
                await self._pause(self.hold_s / 3)
            hold.released = self.clock() if hold.lost_at is None else None
            try:
                await lock.release()
            except ClientError:
                self.errors += 1              # the lease expires on its own
            await self._pause(self.rng.uniform(0.0, 0.05))


def check_lock_fencing(holds: list[Hold], writes: list[FencedWrite], ttl_s: float,
                       drift_bound: float) -> CheckOutcome:
    problems: list[str] = []
    tokens = [h.token for h in holds]
    if len(set(tokens)) != len(tokens):
        problems.append(f"two holds share a token: {sorted(tokens)}")
    by_acquisition = sorted(holds, key=lambda h: h.acquired)
    for a, b in zip(by_acquisition, by_acquisition[1:]):
        if b.token <= a.token:
            problems.append(f"holder {b.holder} acquired at {b.acquired:.3f}s with token "
                            f"{b.token}, not above the previous hold's {a.token}")
    done = sorted((w for w in writes if w.ok and w.index is not None), key=lambda w: w.index)
    for x, y in zip(done, done[1:]):
        if y.token < x.token:
            problems.append(f"fenced write of token {y.token} (holder {y.holder}) succeeded "
                            f"at index {y.index}, after token {x.token} at index {x.index}")
    overlaps = 0
    for a in holds:
        for b in holds:
            if b.token <= a.token or b.acquired < a.acquired:
                continue
            end = a.released if a.released is not None else a.lost_at
            if end is not None and end <= b.acquired:
                continue
            overlaps += 1
            acked = [sent for sent, ok in a.renewals if ok]
            before = [a.floor] + [s for s in acked if s < b.acquired]
            earliest = max(before) + ttl_s * (1.0 - drift_bound)
            if b.acquired < earliest:
                problems.append(
                    f"holder {b.holder} acquired (token {b.token}) at {b.acquired:.3f}s while "
                    f"holder {a.holder} (token {a.token}) held it, {b.acquired - max(before):.3f}s "
                    f"after a renewal of its lease that was acknowledged: lease expired early")
            late = [s for s in acked if s >= b.acquired]
            if late:
                problems.append(f"holder {a.holder}'s renewal sent at {late[0]:.3f}s was "
                                f"acknowledged after holder {b.holder} acquired at "
                                f"{b.acquired:.3f}s")
    ok_writes = sum(1 for w in writes if w.ok)
    refused = sum(1 for w in writes if w.ok is False)
    summary = (f"{len(holds)} holds, {ok_writes} fenced writes succeeded, {refused} refused, "
               f"{overlaps} overlapping holds")
    return CheckOutcome("lock-fencing", not problems and len(holds) > 0,
                        "; ".join(problems[:5]) if problems else
                        (summary if holds else "no hold was ever acquired"),
                        {"holds": [asdict(h) for h in holds][:500],
                         "writes": [asdict(w) for w in writes][:2000],
                         "problems": problems[:50], "overlaps": overlaps})
