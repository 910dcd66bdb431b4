"""The replicated session table: exactly-once application of retried client commands.

Every command in the log may carry ``(client_id, sequence)``.  Applying one records its
result under that pair; a later copy of the same pair (a client or a follower retrying after
a timeout or a leader change) is not applied again and gets the recorded result instead.

Bounds, all deterministic (every replica applies the same commands, so evicts the same):
a session keeps its newest ``results_max`` results (older sequences fall below ``floor`` and
are refused as stale: the client reused a sequence it had long given up on); the table
keeps at most ``sessions_max`` sessions and ``results_total_max`` results, evicting the
sessions idle for the most log entries first.  A client whose session was evicted gets no
deduplication for retries of its old requests: retry within the request deadline.

Idle expiry: every command carries ``ts``, the wall clock (ms) of the node that put it in
the log.  The table's clock is the largest ``ts`` applied so far, the same on every replica
(it comes from the log, not from the replica's own clock), and a session whose newest
command is older than ``idle_ms`` on that clock is dropped (checked a few times per
``idle_ms`` of log time).  Clock skew between the nodes that propose shifts expiry by at
most the skew; correctness needs only that a client retries within ``idle_ms``.

Weights: the total bound counts results by weight, 1 for a plain result and the number of
operations for a batch's (``{"op": "batch", "results": [...]}``), so a table of batch
results is bounded by the operations it remembers, not by the batches.  The weight is
derived from the result itself, so a restored table counts exactly like the original.

Acknowledgement: a client names in ``acked`` the highest sequence up to which it has every
answer (the Raft dissertation's session design); applying that drops those results and
raises the floor to it.  A client loading batches through one session otherwise kept its
newest ``results_max`` batch results, one small map per operation.

Release: a node gives a client without a session one of its own (a fresh client id every
128 writes, see server/router.py), and once every write of such a generation is answered it
names the generation in a later command's ``release`` field.  Applying that command drops
the generation's results and keeps a tombstone whose floor is the generation's last
sequence, so a late copy of any of its writes (still in some log) is refused as stale
rather than applied twice.  Without it those results stayed until idle expiry (minutes),
up to ``results_total_max`` of them, and every snapshot copied them.

The table is part of every snapshot (``snapshot()``/``restore()``, plain CBOR-able lists;
``snapshot_producer()`` takes the copy now and builds the lists later, off the loop).
"""

from __future__ import annotations

import heapq

__all__ = ["SessionTable", "NEW", "DUPLICATE", "STALE", "RELEASE_MAX", "result_weight"]

NEW = 0
DUPLICATE = 1
STALE = 2

RELEASE_MAX = 64          # generations one command may release (more: the field is ignored)


def result_weight(result: object) -> int:
    """What a recorded result counts for against ``results_total_max``."""
    if type(result) is dict and result.get("op") == "batch":
        results = result.get("results")
        if type(results) is list:
            return max(1, len(results))
    return 1


class _Session:
    __slots__ = ("floor", "results", "heap", "last_index", "last_ts", "weight")

    def __init__(self, floor: int = 0, last_index: int = 0, last_ts: int = 0) -> None:
        self.floor = floor                  # every sequence <= floor is forgotten
        self.results: dict[int, tuple] = {}  # sequence -> (index, term, result)
        self.heap: list[int] = []
        self.last_index = last_index
        self.last_ts = last_ts              # log clock (ms) of its newest command
        self.weight = 0                     # sum of result_weight over results


class SessionTable:
    def __init__(self, sessions_max: int = 10_000, results_max: int = 256,
                 results_total_max: int = 500_000, idle_ms: int = 0) -> None:
        assert sessions_max >= 1 and results_max >= 1 and results_total_max >= results_max
        self.sessions_max = sessions_max
        self.results_max = results_max
        self.results_total_max = results_total_max
        self.idle_ms = idle_ms              # 0: no idle expiry
        self._sessions: dict[str, _Session] = {}
        self.results_total = 0
        self.clock = 0                      # the largest command ts applied (ms)
        self._swept_at = 0
        self.expired = 0

    def like(self) -> "SessionTable":
        """An empty table with the same bounds."""
        return SessionTable(self.sessions_max, self.results_max, self.results_total_max,
                            self.idle_ms)

    def observe(self, ts: object) -> None:
        """A command stamped ``ts`` is being applied: advance the log clock and drop the
        sessions idle for longer than ``idle_ms``.  Deterministic (log order only)."""
        if type(ts) is not int or ts <= self.clock:
            return
        if self.clock == 0:
            # The log's first stamp: the sessions recorded before it (at clock 0, by
            # commands without a ts) were last used now, not at 0, or it expired them all.
            for session in self._sessions.values():
                session.last_ts = ts
            self._swept_at = ts
        self.clock = ts
        idle = self.idle_ms
        if idle and ts - self._swept_at >= max(1, idle // 8):
            self._swept_at = ts
            horizon = ts - idle
            stale = [c for c, s in self._sessions.items() if s.last_ts < horizon]
            for client_id in stale:
                self.results_total -= self._sessions.pop(client_id).weight
            self.expired += len(stale)

    def observe_start(self, ts: object) -> None:
        """A command stamped ``ts_start`` (node/stamps.py: by a node that did not know the
        log clock) is being applied: it starts the clock of a log that has none, and never
        moves a running one."""
        if self.clock == 0 and type(ts) is int and ts > 0:
            self.observe(ts)

    def __len__(self) -> int:
        return len(self._sessions)

    def lookup(self, client_id: str, sequence: int) -> tuple[int, tuple | None]:
        """(NEW, None), (DUPLICATE, (index, term, result)) or (STALE, None)."""
        session = self._sessions.get(client_id)
        if session is None:
            return NEW, None
        hit = session.results.get(sequence)
        if hit is not None:
            return DUPLICATE, hit
        if sequence <= session.floor:
            return STALE, None
        return NEW, None

    def record(self, client_id: str, sequence: int, index: int, term: int,
               result: object) -> None:
        session = self._sessions.get(client_id)
        if session is None:
            session = self._sessions[client_id] = _Session()
        session.last_ts = self.clock
        weight = result_weight(result)
        previous = session.results.get(sequence)
        if previous is None:
            heapq.heappush(session.heap, sequence)
        else:
            weight -= result_weight(previous[2])
        session.weight += weight
        self.results_total += weight
        session.results[sequence] = (index, term, result)
        session.last_index = index
        if len(session.results) > self.results_max:
            oldest = heapq.heappop(session.heap)
            dropped = result_weight(session.results.pop(oldest)[2])
            session.weight -= dropped
            self.results_total -= dropped
            if oldest > session.floor:
                session.floor = oldest
        if (len(self._sessions) > self.sessions_max
                or self.results_total > self.results_total_max):
            self._evict_sessions(client_id)

    def acknowledge(self, client_id: str, sequence: int, through: object) -> None:
        """Apply a command's ``acked`` field: its client (``client_id``, writing
        ``sequence``) has the answers of all its sequences up to ``through``, and will not
        send them again.  Their results go and the floor rises to ``through``, so a copy of
        one of them that is still in flight is refused as stale, never applied again.
        Ignored unless ``through`` is an integer below ``sequence`` (the same on every
        replica), and for a session the table does not hold."""
        if type(through) is not int or not 0 < through < sequence:
            return
        session = self._sessions.get(client_id)
        if session is None or through <= session.floor:
            return
        results, heap = session.results, session.heap
        while heap and heap[0] <= through:
            dropped = result_weight(results.pop(heapq.heappop(heap))[2])
            session.weight -= dropped
            self.results_total -= dropped
        session.floor = through

    def release(self, pairs: object) -> None:
        """Apply a command's ``release`` field: ``[[client_id, last_sequence], ...]``, each a
        finished generation of a node's own sessions.  Its results go; the session stays as
        a tombstone whose floor refuses any sequence up to ``last_sequence`` as stale.  A
        malformed field is ignored whole (the same on every replica)."""
        if type(pairs) is not list or len(pairs) > RELEASE_MAX:
            return
        for pair in pairs:
            if (type(pair) is not list or len(pair) != 2 or type(pair[0]) is not str
                    or type(pair[1]) is not int or pair[1] < 0):
                return
        sessions = self._sessions
        for client_id, last in pairs:
            session = sessions.get(client_id)
            if session is None:
                # Nothing of it was applied yet (or it was evicted): the tombstone keeps a
                # late copy from being applied after its writer was told it failed.
                session = sessions[client_id] = _Session(last_ts=self.clock)
            self.results_total -= session.weight
            session.weight = 0
            session.results = {}
            session.heap = []
            if last > session.floor:
                session.floor = last
        if len(sessions) > self.sessions_max:
            self._evict_sessions("")

    def _evict_sessions(self, current: str) -> None:
        """Drop the least recently used sessions down to 90% of both bounds."""
        sessions_keep = max(1, self.sessions_max * 9 // 10)
        results_keep = self.results_total_max * 9 // 10
        by_age = sorted(self._sessions.items(), key=lambda item: (item[1].last_index, item[0]))
        for client_id, session in by_age:
            if len(self._sessions) <= sessions_keep and self.results_total <= results_keep:
                break
            if client_id == current:
                continue
            del self._sessions[client_id]
            self.results_total -= session.weight

    # ------------------------------------------------------------------ snapshots

    def snapshot(self) -> dict:
        """A deterministic, CBOR-able copy (sessions sorted by client id).  The log clock
        and the last sweep travel with it: a replica restored from it expires exactly the
        sessions the others expire, at the same commands."""
        return {"clock": self.clock, "swept_at": self._swept_at, "sessions": [
            [client_id, s.floor, s.last_index,
             [[seq, *s.results[seq]] for seq in sorted(s.results)], s.last_ts]
            for client_id, s in sorted(self._sessions.items())]}

    def snapshot_producer(self):
        """A callable that returns what ``snapshot()`` returns now: the sessions are copied
        now (each results dict shallowly: recorded results are never changed), and the
        sorted lists are built when it is called, on the snapshot thread."""
        cut = [(client_id, s.floor, s.last_index, dict(s.results), s.last_ts)
               for client_id, s in self._sessions.items()]
        clock, swept_at = self.clock, self._swept_at

        def produce() -> dict:
            cut.sort(key=lambda row: row[0])
            return {"clock": clock, "swept_at": swept_at, "sessions": [
                [client_id, floor, last_index,
                 [[seq, *results[seq]] for seq in sorted(results)], last_ts]
                for client_id, floor, last_index, results, last_ts in cut]}
        return produce

    def restore(self, data: object) -> None:
        sessions: dict[str, _Session] = {}
        clock = swept_at = 0
        if isinstance(data, dict):           # since idle expiry; a plain list before
            clock, swept_at = data.get("clock", 0), data.get("swept_at", 0)
            if type(clock) is not int or type(swept_at) is not int:
                raise ValueError("session table in the snapshot is damaged: bad clock")
            data = data.get("sessions")
        if data:
            try:
                for item in data:
                    client_id, floor, last_index, results = item[:4]
                    last_ts = item[4] if len(item) > 4 else 0   # older snapshots: no ts
                    if type(last_ts) is not int:
                        raise ValueError("session ts must be an integer")
                    session = _Session(floor, last_index, last_ts)
                    for seq, index, term, result in results:
                        session.results[seq] = (index, term, result)
                    session.heap = sorted(session.results)
                    session.weight = sum(result_weight(r[2]) for r in session.results.values())
                    sessions[client_id] = session
            except (TypeError, ValueError) as exc:
                raise ValueError(f"session table in the snapshot is damaged: {exc}") from None
        self._sessions = sessions
        self.results_total = sum(s.weight for s in sessions.values())
        self.clock, self._swept_at = clock, swept_at
