"""The report folder of a chaos run, and its human-readable summary.

Layout (``reports/chaos-<timestamp>-<mode>/``)::

    conf.toml           the generated cluster conf (peer traffic through the proxy)
    conf-n<id>.toml     each spare node's own conf (the cluster's plus its [[nodes]] table)
    history.jsonl       every client operation (see history.py), final reads included
    nemesis.jsonl       the fault and process timeline
    status.jsonl        each node's (role, leader, term) whenever it changed
    logs/n<id>.log      each node's output, all restarts appended, one marker line each
                        (joined and removed nodes included)
    data/n<id>/         each node's data directory as the run left it
    verdict.json        options, seed, replay command, checks, faults, unavailability
    summary.txt         the same, for people
    timeline.png        operations, faults and leader changes (timeline.html without
                        matplotlib)
"""

from __future__ import annotations

import json
import os
import re

__all__ = ["write_verdict", "format_summary", "scan_logs", "report_dir_name"]

_PROBLEM = re.compile(r"Traceback|\bCRITICAL\b|\bERROR\b")


def report_dir_name(root: str, stamp: str, mode: str) -> str:
    """A fresh folder name under ``root`` (suffixed when the second is already taken)."""
    base = os.path.join(root, f"chaos-{stamp}-{mode}")
    path, n = base, 1
    while os.path.exists(path):
        n += 1
        path = f"{base}-{n}"
    return path


def scan_logs(log_paths: dict[int, str], examples_max: int = 5) -> dict:
    """Count tracebacks and ERROR/CRITICAL lines per node log (reported, not judged:
    some errors are the expected reaction to a fault)."""
    out = {}
    for node, path in sorted(log_paths.items()):
        count, examples = 0, []
        try:
            with open(path, errors="replace") as f:
                for line in f:
                    if _PROBLEM.search(line):
                        count += 1
                        if len(examples) < examples_max:
                            examples.append(line.rstrip()[:300])
        except FileNotFoundError:
            continue
        if count:
            out[str(node)] = {"lines": count, "examples": examples}
    return out


def write_verdict(folder: str, verdict: dict) -> None:
    with open(os.path.join(folder, "verdict.json"), "w") as f:
        json.dump(verdict, f, indent=2, default=str)
        f.write("\n")
    with open(os.path.join(folder, "summary.txt"), "w") as f:
        f.write(format_summary(verdict))


def _fmt_s(value) -> str:
    return "never" if value is None else f"{value:.2f}s"


def format_summary(v: dict) -> str:
    lines = []
    add = lines.append
    result = "PASS" if v["passed"] else ("VOID" if not v["valid"] else "FAIL")
    add(f"chaos run {result}: {v['mode']}, {v['nodes']} nodes, seed {v['seed']}, "
        f"{v['duration_s']:.0f}s of traffic")
    add(f"report: {v['folder']}")
    add(f"replay: {v['replay']}")
    if v.get("void_reasons"):
        for reason in v["void_reasons"]:
            add(f"VOID: {reason}")
    ops = v["ops"]
    add(f"operations: {ops['total']} ({ops['ok']} ok, {ops['fail']} failed, "
        f"{ops['unknown']} unknown); {ops['ok_rate_before_first_fault']:.0f} ok/s before the "
        f"first fault, {ops['ok_rate_overall']:.0f} ok/s overall")
    add(f"faults injected: {v['faults_injected']} "
        f"({', '.join(f'{k} x{n}' for k, n in sorted(v['faults_by_kind'].items()))})")
    membership = v.get("membership")
    if membership and (membership.get("joined") or membership.get("removed")):
        add(f"members: {membership['initial']} at start, {membership['final']} at the end "
            f"(joined {membership['joined']}, removed {membership['removed']}; "
            f"{len(membership['spares_unused'])} of {len(membership['spares_allocated'])} "
            "spare ids unused)")
    for note in v.get("notes", []):
        add(f"note: {note}")
    add("")
    add("checks:")
    for check in v["checks"]:
        mark = {True: "ok  ", False: "FAIL", None: "FAIL"}[check["ok"]]
        add(f"  [{mark}] {check['name']}: {check['message']}")
    add("")
    add("unavailability (fault -> next acknowledged write), per kind:")
    add(f"  {'kind':<18} {'n':>3} {'median':>9} {'worst':>9}")
    for kind, row in v["unavailability_by_kind"].items():
        extra = []
        if row["never"]:
            extra.append(f"{row['never']} never")
        if row.get("interrupted"):
            extra.append(f"{row['interrupted']} cut short by the next fault, not counted")
        add(f"  {kind:<18} {row['count']:>3} {_fmt_s(row['median_s']):>9} "
            f"{_fmt_s(row['worst_s']):>9}" + (f"  ({'; '.join(extra)})" if extra else ""))
    add("")
    add("faults:")
    for fault in v["faults"]:
        if not fault["injected"]:
            add(f"  #{fault['number']:<3} {fault['kind']:<18} not injected: {fault['note']}")
            continue
        unavailable = next((u for u in v["unavailability"] if u["fault"] == fault["number"]),
                           None)
        add(f"  #{fault['number']:<3} {fault['kind']:<18} t={fault['start']:.2f}s "
            f"heal={fault['heal'] if fault['heal'] is None else round(fault['heal'], 2)}s "
            f"targets={fault['targets']} unavailable="
            f"{_fmt_s(unavailable['after_fault_s']) if unavailable else '?'}"
            + (f" {fault['detail']}" if fault["detail"] else "")
            + (f" note: {fault['note']}" if fault["note"] else ""))
    if v.get("unexpected_exits"):
        add("")
        add("unexpected process exits:")
        for item in v["unexpected_exits"]:
            add(f"  node {item['node']} (start #{item['generation']}) code {item['code']} "
                f"signal {item['signal']} at t={item['t']}s; log {item['log']}")
    if v.get("log_problems"):
        add("")
        add("error lines in node logs (see logs/):")
        for node, info in v["log_problems"].items():
            add(f"  n{node}: {info['lines']} lines, e.g. {info['examples'][0]}")
    if v.get("http_statuses"):
        add("")
        add("non-200 answers seen by clients: " + ", ".join(
            f"{k} x{n}" for k, n in sorted(v["http_statuses"].items())))
    add(f"timeline: {v.get('timeline')}")
    return "\n".join(lines) + "\n"
