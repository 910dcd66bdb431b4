"""The verdict of a chaos run: pure functions over the history, the faults and the final
state, so they can be tested on hand-made inputs.

* ``check_linearizable``: the simulator's checker (paxoslog/sim/linearizability.py) on the
  whole history, final reads included; a checker timeout is a failure, never a pass.
* ``check_lost_writes``: every key's final value must be one a write could have left: not
  the value of a write that finished before an acknowledged write on the same key started
  (that write was lost), not the value of a write reported as failed, not absent after an
  acknowledged write (the workload never deletes).
* ``check_replicas_agree``: every node ends at the same applied index with the same
  key-value state (the records themselves, read back from each node).
* ``check_state_hashes``: nodes that report the same applied index report the same digest
  of every state machine (``GET /api/v1/cluster/status?hashes=1``: ``state_hashes``).
* ``check_membership``: every current member applied the configuration the harness drove
  (its voters are exactly the current members, no joint or learner left) and its membership
  table lists the members as active and the removed nodes as removed.
* ``check_liveness``: after the final heal a write is acknowledged within
  ``factor`` election timeouts.
* ``check_streams``: the stream observers (streams.py) against the final log and the
  history: every tail delivered 1..N without a gap or a duplicate and all tails agree on
  every index (the final log); replaying that log through the kv state machine gives the
  events every watch must have delivered, exactly (a gap-free, duplicate-free subsequence
  of the log); each event's value comes from a write the history does not call failed,
  and every acknowledged write is an event at the index its answer named.
* ``unavailability``: per fault, the time from the fault (and from its heal) to the next
  acknowledged write invoked after it; for a fault made of steps (``member-change``), per
  step, the fault's figure being its worst step.
"""

from __future__ import annotations

import json

import bisect
import math
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Iterable

from paxoslog.sim.linearizability import check_history

from .history import FAIL, OK, OpRecord, to_operations

__all__ = ["CheckOutcome", "check_linearizable", "check_lost_writes", "check_replicas_agree",
           "check_streams",
           "check_state_hashes", "check_membership", "check_liveness", "unavailability",
           "summarize_unavailability", "ok_rate"]


@dataclass
class CheckOutcome:
    name: str
    ok: bool | None             # None: could not decide (counts as a failure)
    message: str
    data: dict = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.ok is True

    def as_dict(self) -> dict:
        return asdict(self)


def check_linearizable(records: Iterable[OpRecord], timeout_s: float) -> CheckOutcome:
    ops = to_operations(records)
    started = time.monotonic()
    result = check_history(ops, timeout_s=timeout_s)
    elapsed = time.monotonic() - started
    if result.ok is None:
        message = f"checker gave up after {timeout_s:.0f}s (counts as a failure): {result.message}"
    else:
        message = result.message
    return CheckOutcome("linearizable", result.ok, message,
                        {"operations": len(ops), "ops_checked": result.ops_checked,
                         "key": result.key, "elapsed_s": round(elapsed, 2)})


def check_lost_writes(records: list[OpRecord], final_values: dict[str, object],
                      unread_keys: Iterable[str] = ()) -> CheckOutcome:
    """``final_values``: key -> value read after the run (None = absent), for every key
    written; ``unread_keys``: keys whose final read failed (the check cannot pass)."""
    writes_by_key: dict[str, list[OpRecord]] = {}
    for r in records:
        if r.is_write:
            writes_by_key.setdefault(r.key, []).append(r)
    problems = []
    acked_total = 0
    for key, writes in sorted(writes_by_key.items()):
        acked = [w for w in writes if w.acknowledged]
        acked_total += len(acked)
        if key not in final_values:
            continue
        value = final_values[key]
        if value is None:
            if acked:
                problems.append({"key": key, "problem": "absent after acknowledged writes",
                                 "acknowledged": [w.id for w in acked[-5:]]})
            continue
        writers = [w for w in writes if w.value == value]
        if not writers:
            problems.append({"key": key, "problem": "final value written by no operation",
                             "value": value})
            continue
        writer = writers[0]
        if writer.status == OK and not writer.acknowledged:
            problems.append({"key": key, "problem": "final value is that of a cas that "
                             "reported no swap", "op": writer.id})
            continue
        if writer.status not in (OK, "unknown"):
            problems.append({"key": key, "problem": f"final value is that of a write "
                             f"reported as {writer.status} ({writer.error})", "op": writer.id})
            continue
        if writer.ret is None:
            continue            # an unknown write may take effect at any time after its call
        later = [w for w in acked if w.call > writer.ret]
        if later:
            problems.append({"key": key, "problem": "acknowledged write lost: the final value "
                             "is older", "final_writer": writer.id,
                             "lost": [w.id for w in later[:5]], "lost_count": len(later)})
    missing = sorted(set(unread_keys))
    if missing:
        return CheckOutcome("no-lost-writes", None,
                            f"final read failed for {len(missing)} keys", {"unread": missing[:20],
                                                                           "problems": problems})
    if problems:
        return CheckOutcome("no-lost-writes", False,
                            f"{len(problems)} keys with lost or impossible final values",
                            {"problems": problems[:50]})
    return CheckOutcome("no-lost-writes", True,
                        f"{acked_total} acknowledged writes on {len(writes_by_key)} keys: "
                        "every final value is allowed", {"keys": len(writes_by_key)})


def check_replicas_agree(states: dict[int, dict], applied: dict[int, int | None],
                         hashes: dict[int, object] | None = None,
                         expected_nodes: Iterable[int] = ()) -> CheckOutcome:
    """``states``: node -> {key: record}; ``applied``: node -> applied index;
    ``hashes``: node -> any digest to compare as well (the chaos run compares the status
    API's per-state-machine digests in ``check_state_hashes`` instead)."""
    missing = sorted(set(expected_nodes) - set(states))
    data: dict = {"applied": {str(k): v for k, v in sorted(applied.items())}}
    if missing:
        return CheckOutcome("replicas-agree", None, f"no final state from nodes {missing}",
                            data)
    if hashes:
        data["hashes"] = {str(k): v for k, v in sorted(hashes.items())}
        if len(set(map(str, hashes.values()))) > 1:
            return CheckOutcome("replicas-agree", False, "state hashes differ", data)
    if len(set(applied.values())) > 1:
        return CheckOutcome("replicas-agree", False, "nodes ended at different applied indexes",
                            data)
    reference_node = min(states)
    reference = states[reference_node]
    diffs = []
    for node, state in sorted(states.items()):
        if state == reference:
            continue
        keys = set(state) | set(reference)
        differing = sorted(k for k in keys if state.get(k) != reference.get(k))
        diffs.append({"node": node, "vs": reference_node, "keys": differing[:10],
                      "count": len(differing),
                      "examples": {k: [reference.get(k), state.get(k)] for k in differing[:3]}})
    if diffs:
        data["diffs"] = diffs
        return CheckOutcome("replicas-agree", False, "replica states differ", data)
    how = "state hash and records" if hashes else "records"
    return CheckOutcome("replicas-agree", True,
                        f"{len(states)} nodes agree on {len(reference)} keys at applied index "
                        f"{next(iter(applied.values()), None)} ({how})", data)


def check_state_hashes(reports: dict[int, dict],
                       expected_nodes: Iterable[int] = ()) -> CheckOutcome:
    """``reports``: node -> its status body (``applied_index``, ``state_hashes``:
    {state machine: hex digest}).  Nodes at the same applied index must agree on the digest
    of every state machine (one missing on some of them counts as a difference).

    Fails on any difference; undecided (None) when some node could not be compared (no
    report, or no other node at its applied index); passes, noting that nothing was
    compared, when no node reports ``state_hashes`` at all (an API without them)."""
    name = "state-hashes"
    expected = set(expected_nodes) | set(reports)
    hashed = {n: r for n, r in reports.items()
              if isinstance(r, dict) and isinstance(r.get("state_hashes"), dict)}
    data: dict = {"applied": {str(n): (r or {}).get("applied_index")
                              for n, r in sorted(reports.items())},
                  "hashes": {str(n): r["state_hashes"] for n, r in sorted(hashed.items())}}
    if not hashed:
        data["skipped"] = True
        return CheckOutcome(name, True, "not compared: no node reports state_hashes "
                            "(GET /api/v1/cluster/status?hashes=1)", data)
    groups: dict[object, list[int]] = {}
    for node, report in sorted(hashed.items()):
        groups.setdefault(report.get("applied_index"), []).append(node)
    mismatches = []
    compared: list[int] = []
    for index, nodes in sorted(groups.items(), key=lambda item: str(item[0])):
        if len(nodes) < 2 or type(index) is not int:
            continue
        compared += nodes
        names = sorted(set().union(*(hashed[n]["state_hashes"] for n in nodes)))
        for sm in names:
            digests = {n: hashed[n]["state_hashes"].get(sm) for n in nodes}
            if len(set(digests.values())) > 1:
                mismatches.append({"state_machine": sm, "applied_index": index,
                                   "digests": {str(n): d for n, d in digests.items()}})
    if mismatches:
        first = mismatches[0]
        nodes_text = ", ".join(f"node {n}: {d if d is not None else 'not reported'}"
                               for n, d in first["digests"].items())
        more = f" (and {len(mismatches) - 1} more differences)" if len(mismatches) > 1 else ""
        data["mismatches"] = mismatches
        return CheckOutcome(name, False, f"state machine {first['state_machine']!r} differs "
                            f"between nodes at applied index {first['applied_index']}: "
                            f"{nodes_text}{more}", data)
    left_out = sorted(expected - set(compared))
    if left_out:
        data["not_compared"] = left_out
        return CheckOutcome(name, None, f"nodes {left_out} could not be compared (no state "
                            f"hashes, or no other node at their applied index)", data)
    indexes = sorted(i for i, nodes in groups.items() if len(nodes) >= 2)
    machines = sorted(set().union(*(r["state_hashes"] for r in hashed.values())))
    return CheckOutcome(name, True, f"{len(compared)} nodes agree on the state hashes of "
                        f"{', '.join(machines) or 'no state machine'} at applied index "
                        f"{', '.join(map(str, indexes))}", data)


def check_membership(reports: dict[int, dict], members: Iterable[int],
                     removed: Iterable[int] = ()) -> CheckOutcome:
    """``reports``: member -> its ``GET /api/v1/cluster/members`` body.  Every member must
    report ``applied_config`` voters == ``members`` with no outgoing voters or learners, and
    a membership table with every member ``active`` and every node in ``removed``
    ``removed``.  A member without a report leaves the check undecided (a failure)."""
    name = "membership"
    members = sorted(members)
    removed = sorted(removed)
    data: dict = {"members": members, "removed": removed,
                  "applied_config": {str(n): (r or {}).get("applied_config")
                                     for n, r in sorted(reports.items())}}
    problems = []
    for node in members:
        report = reports.get(node)
        if not isinstance(report, dict) or not isinstance(report.get("applied_config"), dict):
            continue
        config = report["applied_config"]
        voters = sorted(config.get("voters") or [])
        if voters != members:
            problems.append(f"node {node} applied voters {voters}, expected {members}")
        if config.get("outgoing") or config.get("learners"):
            problems.append(f"node {node} is left with outgoing {config.get('outgoing')} "
                            f"learners {config.get('learners')}")
        rows = {row.get("node_id"): row.get("status") for row in report.get("members") or []
                if isinstance(row, dict)}
        wrong = {n: rows.get(n) for n in members if rows.get(n) != "active"}
        wrong.update({n: rows.get(n) for n in removed if rows.get(n) != "removed"})
        if wrong:
            problems.append(f"node {node}'s membership table: "
                            + ", ".join(f"node {n} is {s or 'missing'}"
                                        for n, s in sorted(wrong.items())))
    if problems:
        data["problems"] = problems
        return CheckOutcome(name, False, problems[0] + (f" (and {len(problems) - 1} more)"
                                                        if len(problems) > 1 else ""), data)
    missing = [n for n in members if not isinstance((reports.get(n) or {}).get(
        "applied_config"), dict)]
    if missing:
        return CheckOutcome(name, None, f"nodes {missing} did not report their configuration "
                            "(GET /api/v1/cluster/members)", data)
    return CheckOutcome(name, True, f"{len(members)} members applied voters {members}"
                        + (f"; removed {removed} are marked removed" if removed else ""), data)


def check_streams(observers: list[dict], records: list[OpRecord],
                  final_index: int | None) -> CheckOutcome:
    """See the module docstring; ``final_index``: the index every replica converged on."""
    import json

    import cbor2

    from paxoslog.node.machines import StateMachines
    from paxoslog.node.sessions import SessionTable
    from paxoslog.server.streams import render_event
    from statemachines.kv import KVStateMachine

    problems: list[str] = []
    for o in observers:
        if o["duplicates"] or o["gaps"]:
            problems.append(f"{o['name']}: {o['duplicates']} duplicates, {o['gaps']} gaps")
        if o["error"]:
            problems.append(f"{o['name']} gave up: {o['error']}")
        if final_index is not None and (o["next"] or 1) <= final_index:
            problems.append(f"{o['name']} stopped before {o['next']}; the log reached "
                            f"{final_index}")
    log: dict[int, tuple] = {}
    for o in observers:
        if o["kind"] != "tail":
            continue
        indexes = [e["index"] for e in o["items"]]
        if indexes != list(range(1, len(indexes) + 1)):
            problems.append(f"{o['name']}: indexes are not 1..{len(indexes)} in order")
        for e in o["items"]:
            value = (e["kind"], json.dumps(e["command"], sort_keys=True))
            if log.setdefault(e["index"], value) != value:
                problems.append(f"tails disagree at index {e['index']}")
    top = 0
    while top + 1 in log:
        top += 1
    machines = StateMachines({"kv": KVStateMachine()}, SessionTable(),
                             lambda name: KVStateMachine(), record_terms=False)
    expected = []
    for index in range(1, top + 1):
        kind, commands = log[index]
        if kind != "normal":
            continue
        for command in json.loads(commands):
            outcome = machines.apply_command(index, 0, cbor2.dumps(command))
            expected += [render_event(index, change, True) for change in outcome.changes]
    for o in observers:
        if o["kind"] != "watch":
            continue
        covered = min((o["next"] or 1) - 1, top)
        want = [e for e in expected if e["key"].startswith(o["prefix"])
                and e["mod_index"] <= covered]
        if not o.get("prev"):
            want = [{k: v for k, v in e.items() if k != "prev"} for e in want]
        got = [e for e in o["items"] if e["mod_index"] <= covered]
        if got != want:
            first = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b),
                         min(len(got), len(want)))
            problems.append(f"{o['name']}: {len(got)} events up to revision {covered}, the "
                            f"log makes {len(want)}; first difference at #{first}")
    # Values may be objects (the lock workload's fenced writes): compare them as JSON.
    writes = {(r.key, _hashable(r.value)): r for r in records if r.kind in ("put", "cas")}
    events = {(e["key"], _hashable(e.get("value"))): e for e in expected if e["type"] == "put"}
    for key_value, event in events.items():
        record = writes.get(key_value)
        if record is not None and record.status == FAIL:
            problems.append(f"event {event} comes from a write the history calls failed")
    for key_value, record in writes.items():
        if record.acknowledged and record.index is not None and record.index <= top:
            event = events.get(key_value)
            if event is None or event["mod_index"] != record.index:
                problems.append(f"acknowledged {record.kind} {key_value} at index "
                                f"{record.index} is not an event there")
    data = {"log_entries": top, "events": len(expected),
            "observers": [{k: v for k, v in o.items() if k != "items"} | {
                "delivered": len(o["items"])} for o in observers],
            "problems": problems[:50]}
    if not observers:
        return CheckOutcome("streams", None, "no stream observers ran", data)
    if problems:
        return CheckOutcome("streams", False, f"{len(problems)} stream problems: "
                                              f"{problems[0]}", data)
    return CheckOutcome("streams", True, f"{len(observers)} streams followed {top} log "
                                         f"entries and {len(expected)} events exactly", data)


def check_liveness(records: list[OpRecord], heal_s: float, election_timeout_s: float,
                   leader_seen_s: float | None, factor: float = 10.0) -> CheckOutcome:
    """A write invoked after the final heal is acknowledged within ``factor`` election
    timeouts of the heal; ``leader_seen_s``: when a leader was first seen after the heal."""
    limit = factor * election_timeout_s
    first = next_ack_after(records, heal_s)
    data = {"heal_s": heal_s, "limit_s": round(limit, 3), "leader_seen_s": leader_seen_s}
    if first is None:
        return CheckOutcome("liveness-after-heal", False,
                            "no write was acknowledged after the final heal", data)
    delay = first - heal_s
    data["first_ack_after_heal_s"] = round(delay, 3)
    ok = delay <= limit
    return CheckOutcome("liveness-after-heal", ok,
                        f"first acknowledged write {delay:.2f}s after the final heal "
                        f"(limit {limit:.2f}s = {factor:g} election timeouts)", data)


def next_ack_after(records: Iterable[OpRecord], t: float) -> float | None:
    """Completion time of the first acknowledged write invoked at or after ``t``."""
    best = None
    for r in records:
        if r.is_write and r.status == OK and r.call >= t and (best is None or r.ret < best):
            best = r.ret
    return best


def unavailability(faults: list, records: list[OpRecord]) -> list[dict]:
    """Per injected fault: seconds from its start (and from its heal) to the next
    acknowledged write invoked after it; None when none came before the run ended.  A
    fault with ``detail["steps"]`` (each with a ``start``: member-change) also gets the
    delay after each step, and its ``after_fault_s`` is the worst of them and of the
    delay after its start.
    ``interrupted``: the next fault started before that write was acknowledged, so the
    time measures both faults (left out of the per-kind figures)."""
    acks = sorted((r.call, r.ret) for r in records if r.is_write and r.status == OK)
    injected = sorted((f for f in faults if f.injected and f.start is not None),
                      key=lambda f: f.start)
    rows = []
    for position, fault in enumerate(injected):
        after = _first_ack_delay(acks, fault.start)
        recovered_at = None if after is None else fault.start + after
        steps = [s for s in (fault.detail or {}).get("steps") or ()
                 if isinstance(s, dict) and s.get("start") is not None]
        step_rows = []
        for step in steps:
            delay = _first_ack_delay(acks, step["start"])
            step_rows.append({"step": step.get("step"), "node": step.get("node"),
                              "start": step["start"], "after_s": delay})
            if delay is None:
                after = recovered_at = None
            elif after is not None and delay > after:
                after, recovered_at = delay, step["start"] + delay
        following = injected[position + 1].start if position + 1 < len(injected) else None
        interrupted = following is not None and (recovered_at is None or
                                                 recovered_at > following)
        row = {"fault": fault.number, "kind": fault.kind, "start": fault.start,
               "after_fault_s": after,
               "after_heal_s": (_first_ack_delay(acks, fault.heal)
                                if fault.heal is not None else None),
               "interrupted": interrupted}
        if step_rows:
            row["steps"] = step_rows
        rows.append(row)
    return rows


def _first_ack_delay(acks: list[tuple[float, float]], t: float) -> float | None:
    """``acks`` sorted by call time; the earliest ``ret`` among calls at or after ``t``."""
    best = None
    for i in range(bisect.bisect_left(acks, (t, -math.inf)), len(acks)):
        call, ret = acks[i]
        if best is not None and call > best:
            break                       # every later ack returns after ``best``
        if best is None or ret < best:
            best = ret
    return None if best is None else round(best - t, 4)


def summarize_unavailability(rows: list[dict]) -> dict[str, dict]:
    """Per fault kind: count, median and worst of ``after_fault_s`` over the faults not
    interrupted by the next one (None = some never saw an acknowledged write)."""
    by_kind: dict[str, list] = {}
    interrupted: dict[str, int] = {}
    for row in rows:
        values = by_kind.setdefault(row["kind"], [])
        if row.get("interrupted"):
            interrupted[row["kind"]] = interrupted.get(row["kind"], 0) + 1
        else:
            values.append(row["after_fault_s"])
    out = {}
    for kind, values in sorted(by_kind.items()):
        known = [v for v in values if v is not None]
        out[kind] = {"count": len(values) + interrupted.get(kind, 0),
                     "median_s": round(statistics.median(known), 3) if known else None,
                     "worst_s": (None if len(known) < len(values) or not known
                                 else round(max(known), 3)),
                     "never": len(values) - len(known),
                     "interrupted": interrupted.get(kind, 0)}
    return out


def ok_rate(records: Iterable[OpRecord], start: float, end: float) -> float:
    """Operations completed ok per second, completions in [start, end)."""
    if end <= start:
        return 0.0
    return sum(1 for r in records if r.status == OK and start <= r.ret < end) / (end - start)


def _hashable(value: object) -> object:
    """``value`` as a dict key: scalars as they are, objects and arrays as canonical JSON."""
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True, separators=(",", ":"))
    return value
