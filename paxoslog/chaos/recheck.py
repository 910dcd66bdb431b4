"""Check a saved chaos report again, from its files alone (``tools/chaos.py --recheck``).

Re-runs the checks that need only ``history.jsonl`` and ``verdict.json`` (linearizability,
possibly with a longer checker timeout; lost writes, from the final reads kept in the
history; liveness after the final heal; unavailability per fault) with the current code,
and keeps the checks that needed the live cluster (replica agreement, state hashes, the
applied membership, process exits) as the run recorded them.  Writes ``recheck.json`` next to the verdict.
"""

from __future__ import annotations

import json
import os

from . import checks
from .history import OK, load_history
from .nemesis import FaultRecord

__all__ = ["recheck"]

_LIVE_ONLY = ("replicas-agree", "state-hashes", "membership", "no-unexpected-exits")


def recheck(folder: str, checker_timeout_s: float) -> dict:
    with open(os.path.join(folder, "verdict.json")) as f:
        verdict = json.load(f)
    records = load_history(os.path.join(folder, "history.jsonl"))
    final_values, unread = {}, set()
    final = [r for r in records if "-final-" in r.client_id]
    for r in final:
        if r.status == OK:
            final_values[r.key] = r.output
    unread = {r.key for r in final} - set(final_values)
    faults = [FaultRecord(**f) for f in verdict.get("faults", [])]
    results = [checks.check_linearizable(records, checker_timeout_s),
               checks.check_lost_writes(records, final_values, unread)]
    if verdict.get("final_heal_s") is not None:
        results.append(checks.check_liveness(records, verdict["final_heal_s"],
                                             verdict["election_timeout_s"], None))
    recorded = {c["name"]: c for c in verdict.get("checks", [])}
    kept = [recorded[name] for name in _LIVE_ONLY if name in recorded]
    rows = checks.unavailability(faults, records)
    out = {"folder": folder, "checks": [r.as_dict() for r in results] + kept,
           "unavailability": rows,
           "unavailability_by_kind": checks.summarize_unavailability(rows)}
    out["passed"] = bool(verdict.get("valid")) and all(c["ok"] is True for c in out["checks"])
    with open(os.path.join(folder, "recheck.json"), "w") as f:
        json.dump(out, f, indent=2, default=str)
        f.write("\n")
    return out
