"""The chaos tool's verdict logic on hand-made histories, without a cluster.

Each test builds the few operations a scenario needs (times in seconds, as the clients
would have recorded them) and checks one rule: how outcomes reach the linearizability
checker, when a final value means an acknowledged write was lost, when replicas disagree,
the liveness limit after the heal, the unavailability measure, and the void rule's rate.
"""

from __future__ import annotations

import json

from paxoslog.chaos import checks
from paxoslog.chaos.history import FAIL, OK, UNKNOWN, History, OpRecord, load_history, \
    to_operations
from paxoslog.chaos.nemesis import FaultRecord
from paxoslog.sim.linearizability import CheckResult


def op(id, kind, key, value=None, call=0.0, ret=None, status=OK, output=None, expected=None,
       process=None):
    return OpRecord(id=id, process=process or id, client_id=f"t-w0-p{id}", node=1, kind=kind,
                    key=key, value=value, expected=expected, call=call,
                    ret=ret if status != UNKNOWN else None, status=status, output=output,
                    end=ret)


def test_to_operations_keeps_known_results_and_unknown_writes_only():
    """ok ops keep results, unknown writes become indeterminate, failures and unknown reads go."""
    records = [op(1, "put", "k", 1, 0, 1), op(2, "get", "k", None, 1, 2, output=1),
               op(3, "put", "k", 2, 2, 3, status=FAIL), op(4, "cas", "k", 3, 3, 4, UNKNOWN,
                                                             expected=1),
               op(5, "get", "k", None, 4, 5, status=UNKNOWN)]
    ops = to_operations(records)
    assert [(o.kind, o.value, o.ret) for o in ops] == [("put", 1, 1), ("get", None, 2),
                                                       ("cas", 3, None)]
    assert ops[1].output == 1


def test_linearizable_history_passes_and_a_stale_read_fails():
    """A read of an overwritten value after the overwrite completed is not linearizable."""
    good = [op(1, "put", "k", 1, 0, 1), op(2, "put", "k", 2, 1.5, 2), op(3, "get", "k", None,
                                                                         2.5, 3, output=2)]
    assert checks.check_linearizable(good, 10).ok is True
    stale = good[:2] + [op(3, "get", "k", None, 2.5, 3, output=1)]
    result = checks.check_linearizable(stale, 10)
    assert result.ok is False and not result.passed


def test_checker_timeout_is_a_failure(monkeypatch):
    """A checker that gives up (ok None) fails the run, and the message says so."""
    def gave_up(ops, timeout_s):
        return CheckResult(ok=None, key="k", message="gave up", ops_checked=1)

    monkeypatch.setattr(checks, "check_history", gave_up)
    result = checks.check_linearizable([op(1, "put", "k", 1, 0, 1)], timeout_s=5.0)
    assert result.ok is None and not result.passed
    assert "counts as a failure" in result.message


def test_lost_write_is_detected_when_the_final_value_is_older():
    """The final value came from a write that ended before an acknowledged write began."""
    records = [op(1, "put", "k", 1, 0, 1), op(2, "put", "k", 2, 2, 3)]
    result = checks.check_lost_writes(records, {"k": 1})
    assert result.ok is False
    assert result.data["problems"][0]["lost"] == [2]
    assert checks.check_lost_writes(records, {"k": 2}).ok is True


def test_concurrent_or_unknown_final_writers_are_allowed():
    """Overlapping writes may end in either order; an unknown write may land late."""
    overlapping = [op(1, "put", "k", 1, 0, 2), op(2, "put", "k", 2, 1, 3)]
    assert checks.check_lost_writes(overlapping, {"k": 1}).ok is True
    late = [op(1, "put", "k", 1, 0, 1, status=UNKNOWN), op(2, "put", "k", 2, 2, 3)]
    assert checks.check_lost_writes(late, {"k": 1}).ok is True


def test_impossible_final_values_are_reported():
    """Absent after an ack, a value nobody wrote, a failed write's value, a no-swap cas."""
    acked = [op(1, "put", "k", 1, 0, 1)]
    assert checks.check_lost_writes(acked, {"k": None}).ok is False
    assert checks.check_lost_writes(acked, {"k": 99}).ok is False
    failed = acked + [op(2, "put", "k", 2, 2, 3, status=FAIL)]
    assert checks.check_lost_writes(failed, {"k": 2}).ok is False
    no_swap = acked + [op(3, "cas", "k", 3, 2, 3, output=False, expected=7)]
    assert checks.check_lost_writes(no_swap, {"k": 3}).ok is False


def test_unread_keys_make_the_lost_write_check_undecided():
    """A key whose final read failed cannot be judged: not a pass."""
    result = checks.check_lost_writes([op(1, "put", "k", 1, 0, 1)], {}, ["k"])
    assert result.ok is None and not result.passed


def test_replicas_agree_only_on_identical_state_and_index():
    """Same records and applied index pass; a differing record or index fails."""
    state = {"a": (1, 3, 3, 1)}
    assert checks.check_replicas_agree({1: state, 2: dict(state)}, {1: 9, 2: 9}).ok is True
    other = {"a": (2, 3, 5, 2)}
    result = checks.check_replicas_agree({1: state, 2: other}, {1: 9, 2: 9})
    assert result.ok is False and result.data["diffs"][0]["keys"] == ["a"]
    assert checks.check_replicas_agree({1: state, 2: state}, {1: 9, 2: 8}).ok is False
    assert checks.check_replicas_agree({1: state}, {1: 9}, expected_nodes=[1, 2]).ok is None
    assert checks.check_replicas_agree({1: state, 2: state}, {1: 9, 2: 9},
                                       hashes={1: "x", 2: "y"}).ok is False


def test_liveness_needs_an_ack_within_ten_election_timeouts():
    """The first write invoked after the heal must be acknowledged within 10 ET."""
    records = [op(1, "put", "k", 1, 10.1, 10.2), op(2, "get", "k", None, 10.0, 10.05, output=1)]
    assert checks.check_liveness(records, 10.0, 0.3, 10.0).ok is True
    slow = [op(1, "put", "k", 1, 10.1, 13.5)]
    assert checks.check_liveness(slow, 10.0, 0.3, 10.0).ok is False
    assert checks.check_liveness([], 10.0, 0.3, None).ok is False


def test_unavailability_is_fault_start_to_next_acknowledged_write():
    """Writes invoked before the fault do not count; a cas that did not swap does."""
    fault = FaultRecord(1, "kill-leader", start=5.0, heal=6.0, injected=True)
    skipped = FaultRecord(2, "kill-random", note="no running node to kill")
    records = [op(1, "put", "k", 1, 4.9, 5.2),           # invoked before the fault
               op(2, "get", "k", None, 5.1, 5.15, output=1),
               op(3, "cas", "k", 3, 5.5, 5.9, output=False, expected=8),
               op(4, "put", "k", 4, 6.1, 6.3)]
    rows = checks.unavailability([fault, skipped], records)
    assert rows == [{"fault": 1, "kind": "kill-leader", "start": 5.0, "after_fault_s": 0.9,
                     "after_heal_s": 0.3, "interrupted": False}]
    summary = checks.summarize_unavailability(rows + [dict(rows[0], after_fault_s=None)])
    assert summary["kill-leader"] == {"count": 2, "median_s": 0.9, "worst_s": None, "never": 1,
                                      "interrupted": 0}


def test_a_fault_hit_by_the_next_one_before_recovering_is_not_counted():
    """When the next fault starts before the first ack, the row is marked and left out."""
    first = FaultRecord(1, "kill-all", start=1.0, heal=2.0, injected=True)
    second = FaultRecord(2, "kill-all", start=3.0, heal=3.5, injected=True)
    records = [op(1, "put", "k", 1, 1.1, 4.0), op(2, "put", "k", 2, 3.6, 3.8)]
    rows = checks.unavailability([second, first], records)
    assert [(r["fault"], r["after_fault_s"], r["interrupted"]) for r in rows] == [
        (1, 2.8, True), (2, 0.8, False)]
    summary = checks.summarize_unavailability(rows)
    assert summary["kill-all"] == {"count": 2, "median_s": 0.8, "worst_s": 0.8, "never": 0,
                                   "interrupted": 1}


def test_member_change_unavailability_is_its_worst_step():
    """A fault made of steps gets a delay per step; its figure is the worst one."""
    steps = [{"step": "add", "node": 4, "start": 1.0, "voter": 2.0},
             {"step": "remove", "node": 1, "was_leader": True, "start": 3.0, "done": 3.2}]
    fault = FaultRecord(1, "member-change", start=1.0, heal=3.2, healed=3.2, injected=True,
                        detail={"steps": steps})
    records = [op(1, "put", "k", 1, 1.05, 1.1),          # after the add: 0.1 s
               op(2, "put", "k", 2, 3.1, 3.9),           # after the leader's removal: 0.9 s
               op(3, "put", "k", 3, 3.5, 3.6)]
    [row] = checks.unavailability([fault], records)
    assert row["steps"] == [{"step": "add", "node": 4, "start": 1.0, "after_s": 0.1},
                            {"step": "remove", "node": 1, "start": 3.0, "after_s": 0.6}]
    assert row["after_fault_s"] == 0.6 and row["after_heal_s"] == 0.4
    assert not row["interrupted"]
    following = FaultRecord(2, "kill-leader", start=3.4, heal=3.5, injected=True)
    rows = checks.unavailability([fault, following], records)
    assert rows[0]["interrupted"]          # the removal's outage ran into the next fault


def _members_body(voters, rows, learners=()):
    return {"applied_config": {"voters": list(voters), "outgoing": [],
                               "learners": list(learners)},
            "members": [{"node_id": n, "status": s} for n, s in rows.items()]}


def test_membership_check_wants_the_driven_configuration_everywhere():
    """Members must apply exactly the current voters, and the table must mark removals."""
    rows = {1: "removed", 2: "active", 3: "active", 4: "active"}
    good = {n: _members_body([2, 3, 4], rows) for n in (2, 3, 4)}
    result = checks.check_membership(good, [2, 3, 4], [1])
    assert result.ok is True and "removed [1]" in result.message
    stale = {**good, 4: _members_body([1, 2, 3], rows)}
    assert checks.check_membership(stale, [2, 3, 4], [1]).ok is False
    learner = {**good, 3: _members_body([2, 3, 4], rows, learners=[5])}
    assert checks.check_membership(learner, [2, 3, 4], [1]).ok is False
    still_active = {n: _members_body([2, 3, 4], {**rows, 1: "leaving"}) for n in (2, 3, 4)}
    result = checks.check_membership(still_active, [2, 3, 4], [1])
    assert result.ok is False and "node 1 is leaving" in result.message
    missing = {n: good[n] for n in (2, 3)}
    assert checks.check_membership(missing, [2, 3, 4], [1]).ok is None


def test_ok_rate_counts_completions_in_the_window():
    """The void rule's rate: ok completions per second in [start, end)."""
    records = [op(i, "get", "k", None, i * 0.01, i * 0.01 + 0.005, output=None)
               for i in range(300)] + [op(999, "put", "k", 1, 0, 0.5, status=FAIL)]
    assert 99 < checks.ok_rate(records, 0.0, 3.0) <= 100


def test_history_file_round_trips_and_closes_in_flight_ops_as_unknown(tmp_path):
    """Completed ops are written as they end; in-flight ones become unknown on close."""
    now = [0.0]
    history = History(str(tmp_path / "h.jsonl"), lambda: now[0])
    p = history.new_process()
    a = history.invoke(p, "c", 1, "put", "k", 1)
    now[0] = 0.5
    history.complete(a, OK, index=3)
    assert history.acked_since(0.0) and not history.acked_since(0.1)
    b = history.invoke(p, "c", 2, "cas", "k", 2, expected=1)
    now[0] = 1.0
    history.close()
    loaded = load_history(str(tmp_path / "h.jsonl"))
    assert [(r.id, r.status, r.ret, r.end) for r in loaded] == [(1, OK, 0.5, 0.5),
                                                                (2, UNKNOWN, None, 1.0)]
    assert json.loads((tmp_path / "h.jsonl").read_text().splitlines()[0])["index"] == 3
    assert b.acknowledged is False and a.acknowledged is True


def test_recheck_uses_the_saved_history_and_final_reads(tmp_path):
    """--recheck re-judges a saved report: the final read of a lost write fails it."""
    from paxoslog.chaos.recheck import recheck

    records = [op(1, "put", "k", 1, 0, 1), op(2, "put", "k", 2, 2, 3),
               OpRecord(3, 3, "t-final-p3", 1, "get", "k", call=5.0, ret=5.1, status=OK,
                        output=1, end=5.1)]
    (tmp_path / "history.jsonl").write_text(
        "".join(json.dumps(r.as_dict()) + "\n" for r in records))
    fault = FaultRecord(1, "kill-leader", start=1.5, heal=1.8, injected=True)
    verdict = {"valid": True, "final_heal_s": 4.0, "election_timeout_s": 0.3,
               "faults": [fault.as_dict()],
               "checks": [{"name": "replicas-agree", "ok": True, "message": "kept"}]}
    (tmp_path / "verdict.json").write_text(json.dumps(verdict))
    out = recheck(str(tmp_path), checker_timeout_s=10)
    by_name = {c["name"]: c for c in out["checks"]}
    assert by_name["linearizable"]["ok"] is False
    assert by_name["no-lost-writes"]["ok"] is False
    assert by_name["replicas-agree"]["message"] == "kept"
    assert out["passed"] is False and (tmp_path / "recheck.json").exists()
    assert out["unavailability"][0]["after_fault_s"] == 1.5


def _entry(index, *puts, kind="normal"):
    commands = [{"sm": "kv", "op": "put", "key": k, "value": v, "client_id": "c",
                 "sequence": index * 10 + i, "ts": 1} for i, (k, v) in enumerate(puts)]
    return {"index": index, "term": 1, "kind": kind, "command": commands if puts else None}


def _observers(log, events, **changes):
    tail = {"name": "tail", "kind": "tail", "items": log, "next": len(log) + 1,
            "duplicates": 0, "gaps": 0, "reconnects": 0, "ends": [], "error": None}
    watch = {"name": "watch", "kind": "watch", "items": events, "next": len(log) + 1,
             "duplicates": 0, "gaps": 0, "reconnects": 1, "ends": [], "error": None,
             "prefix": "k", "prev": False}
    watch.update(changes)
    return [tail, watch]


def test_streams_pass_when_tails_and_watches_match_the_log_and_the_history():
    """A gap-free tail, a watch with exactly the log's events, writes acknowledged at the
    indexes of their events: pass."""
    log = [_entry(1, kind="noop"), _entry(2, ("k1", 10)), _entry(3, ("x", 1), ("k1", 11))]
    events = [{"type": "put", "key": "k1", "value": 10, "version": 1, "create_index": 2,
               "mod_index": 2},
              {"type": "put", "key": "k1", "value": 11, "version": 2, "create_index": 2,
               "mod_index": 3}]
    records = [op(1, "put", "k1", 10, 0, 1), op(2, "put", "k1", 11, 1, 2)]
    records[0].index, records[1].index = 2, 3
    result = checks.check_streams(_observers(log, events), records, 3)
    assert result.ok is True, result.message


def test_streams_fail_on_a_missing_event_a_duplicate_or_a_failed_write_seen():
    """A watch that skipped an event, a stream that dropped duplicates, an event of a
    write the history calls failed, an acknowledged write with no event: each fails."""
    log = [_entry(1, ("k1", 10)), _entry(2, ("k1", 11))]
    full = [{"type": "put", "key": "k1", "value": 10, "version": 1, "create_index": 1,
             "mod_index": 1},
            {"type": "put", "key": "k1", "value": 11, "version": 2, "create_index": 1,
             "mod_index": 2}]
    assert checks.check_streams(_observers(log, full[1:]), [], 2).ok is False
    assert checks.check_streams(_observers(log, full, duplicates=1), [], 2).ok is False
    failed = op(1, "put", "k1", 11, 0, 1, status=FAIL)
    result = checks.check_streams(_observers(log, full), [failed], 2)
    assert result.ok is False and "failed" in result.message
    acked = op(2, "put", "k1", 12, 0, 1)
    acked.index = 2
    assert checks.check_streams(_observers(log, full), [acked], 2).ok is False
    assert checks.check_streams([], [], 2).ok is None
