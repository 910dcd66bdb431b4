"""The client history of a chaos run: every operation as the clients saw it.

One record per operation (Jepsen's invoke + completion folded into one line)::

    {"id": 17, "process": 4, "client_id": "chaos-w1-g2", "node": 2, "kind": "cas",
     "key": "k3.0", "value": 1234, "expected": 1200, "call": 3.2101, "ret": 3.2190,
     "status": "ok" | "fail" | "unknown", "output": true, "error": null,
     "index": 88, "term": 4, "end": 3.2190}

``end`` is when the client stopped waiting, whatever the outcome (``ret`` equals it unless
the outcome is unknown).  ``status`` is the retry planner's verdict (paxoslog/retry.py) on
all the attempts of the operation: ``ok`` (answered: a known result), ``fail`` (definitely
no effect: refused with a 4xx before any attempt may have been delivered, or every attempt
was a refused connection, a 503 or a 410), ``unknown`` (a write that may or may not have taken
effect: some attempt may have reached a server, a 504, a timeout or a connection lost after
sending, and no later attempt got the answer).  Reads are never unknown (no effect).
``ret`` is None for unknown outcomes.  Times are seconds on one monotonic clock since
the start of the run.  ``output``: for get the value read (None = absent), for cas whether it
swapped.  Jepsen's rule holds: after an unknown outcome a client's process never issues
another operation (the worker continues as a new process, with a new ``client_id``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Iterable, Iterator

from paxoslog.sim.linearizability import Operation

__all__ = ["OpRecord", "History", "OK", "FAIL", "UNKNOWN", "WRITE_KINDS", "to_operations",
           "load_history"]

OK = "ok"
FAIL = "fail"
UNKNOWN = "unknown"
WRITE_KINDS = frozenset(("put", "cas", "delete"))


@dataclass
class OpRecord:
    id: int
    process: int
    client_id: str
    node: int | None
    kind: str
    key: str
    value: object = None
    expected: object = None
    call: float = 0.0
    ret: float | None = None
    status: str | None = None          # None while in flight
    output: object = None
    error: str | None = None
    index: int | None = None
    term: int | None = None
    end: float | None = None           # when the client stopped waiting (any outcome)

    @property
    def is_write(self) -> bool:
        return self.kind in WRITE_KINDS

    @property
    def acknowledged(self) -> bool:
        """A write that completed with a known effect (a cas only when it swapped)."""
        if self.status != OK or not self.is_write:
            return False
        return self.kind != "cas" or self.output is True

    def as_dict(self) -> dict:
        return asdict(self)


class History:
    """Collects operations; completed ones are appended to a JSON-lines file as they end
    (so a crashed run still leaves its history), in-flight ones on ``close``."""

    def __init__(self, path: str | None, clock) -> None:
        self.clock = clock
        self.records: list[OpRecord] = []
        self._next_id = 0
        self._next_process = 0
        self._file = open(path, "w") if path else None
        self._pending: dict[int, OpRecord] = {}
        self.last_ack_call = -1.0      # call time of the latest-invoked acknowledged write

    def new_process(self) -> int:
        self._next_process += 1
        return self._next_process

    def invoke(self, process: int, client_id: str, node: int | None, kind: str, key: str,
               value: object = None, expected: object = None) -> OpRecord:
        self._next_id += 1
        record = OpRecord(self._next_id, process, client_id, node, kind, key, value, expected,
                          call=round(self.clock(), 6))
        self.records.append(record)
        self._pending[record.id] = record
        return record

    def complete(self, record: OpRecord, status: str, output: object = None,
                 error: str | None = None, index: int | None = None,
                 term: int | None = None) -> None:
        assert record.status is None, f"operation {record.id} completed twice"
        assert status in (OK, FAIL, UNKNOWN), status
        record.status = status
        record.end = round(self.clock(), 6)
        record.ret = record.end if status != UNKNOWN else None
        record.output = output
        record.error = error
        record.index = index
        record.term = term
        self._pending.pop(record.id, None)
        if status == OK and record.is_write and record.call > self.last_ack_call:
            self.last_ack_call = record.call
        self._write(record)

    def _write(self, record: OpRecord) -> None:
        if self._file is not None:
            self._file.write(json.dumps(record.as_dict(), separators=(",", ":")) + "\n")

    def close(self) -> None:
        """Operations still in flight become unknown (the run ended before they did)."""
        for record in list(self._pending.values()):
            self.complete(record, UNKNOWN, error="in flight when the run ended")
        if self._file is not None:
            self._file.close()
            self._file = None

    # ------------------------------------------------------------------ summaries

    def acked_since(self, t: float) -> bool:
        """Was a write invoked at or after ``t`` acknowledged?"""
        return self.last_ack_call >= t

    def counts(self) -> dict[str, int]:
        out = {OK: 0, FAIL: 0, UNKNOWN: 0, "pending": 0}
        for record in self.records:
            out[record.status or "pending"] += 1
        return out

    def ok_rate(self, start: float, end: float) -> float:
        """Operations completed ok per second with ``ret`` in [start, end)."""
        if end <= start:
            return 0.0
        ok = sum(1 for r in self.records if r.status == OK and start <= r.ret < end)
        return ok / (end - start)


def to_operations(records: Iterable[OpRecord]) -> list[Operation]:
    """The history as the linearizability checker wants it.

    Completed operations keep their result; unknown writes become indeterminate (ret None);
    failed operations and unknown reads are left out (neither had an effect)."""
    ops = []
    for r in records:
        if r.status == OK:
            output = r.output
            if r.kind == "cas":
                output = bool(output)
            ops.append(Operation(r.process, r.kind, r.key, r.value, r.expected, r.call, r.ret,
                                 output))
        elif r.status == UNKNOWN and r.is_write:
            ops.append(Operation(r.process, r.kind, r.key, r.value, r.expected, r.call, None))
    return ops


def load_history(path: str) -> list[OpRecord]:
    """Read a history.jsonl back (for re-checking a saved run)."""
    out = []
    with open(path) as f:
        for line in f:
            if line.strip():
                out.append(OpRecord(**json.loads(line)))
    return out


def iter_writes(records: Iterable[OpRecord]) -> Iterator[OpRecord]:
    return (r for r in records if r.is_write)
