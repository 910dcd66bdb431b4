"""Scripted scenarios (tests/interaction/*.txt), each run against both protocols."""

import pathlib

import pytest

from paxoslog.sim.script import ScriptError, _Interpreter, _parse, run_script
from paxoslog.sim.trace import Tracer

HERE = pathlib.Path(__file__).parent
SCRIPTS = sorted(HERE.glob("*.txt"))


def _protocols(path: pathlib.Path) -> list[str]:
    for line in path.read_text().splitlines():
        if line.startswith("# protocols:"):
            return line.split(":", 1)[1].split()
    return ["multipaxos", "raft"]


CASES = [(path, protocol) for path in SCRIPTS for protocol in _protocols(path)]

# Scenarios whose expected output is the behaviour we want, which the production path does
# not have yet (reported; strict: each must keep failing until it is fixed).
KNOWN_DEFECTS = {
    ("r13_lost_acknowledged_entries", "raft"): (
        "R13 on the production path: node 3 learned commit=3 from a heartbeat, and the node "
        "driver writes a commit-only hard state without fsync, so the crash loses it; "
        "restarted with commit=2 and the log cut to 2, node 3 cannot tell that x is gone, "
        "votes for node 2, and x is overwritten (agreement violated).  With the commit "
        "point durable, MemoryStorage.load() refuses to start the node (CorruptLog) before "
        "the core's own check could run."),
}


def _cases():
    for path, protocol in CASES:
        reason = KNOWN_DEFECTS.get((path.stem, protocol))
        marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
        yield pytest.param(path, protocol, marks=marks, id=f"{path.stem}-{protocol}")


@pytest.mark.parametrize("path,protocol", list(_cases()))
def test_script(path, protocol):
    """The scenario's actual output equals the expected output in the script."""
    problems = run_script(str(path), protocol)
    assert not problems, "\n".join(problems)


def test_scripts_exist():
    """The classic-bug scenarios are all present."""
    names = {p.stem for p in SCRIPTS}
    for required in ("r1_figure8", "r1_figure8_overwrite", "r2_new_leader_commits_tail",
                     "r3_config_change_waits_for_the_term", "r4_prevote_rejoin",
                     "r4_no_prevote_disrupts", "r4_removed_node", "r4_check_quorum",
                     "r4_asymmetric_partition", "r5_stale_leader_read", "r5_lease_read",
                     "r6_dueling_proposers", "r7_hole_filling", "r8_persist_before_reply",
                     "r8_vote_survives_restart", "r13_lost_acknowledged_entries",
                     "r13_lost_entries_refused_at_boot", "k1_exactly_once_retry",
                     "phase1_minority_accepted", "leader_completeness", "leader_transfer",
                     "log_matching_truncation", "membership_joint", "send_before_persist",
                     "fast_failover", "fast_failover_lease",
                     "membership_uncommitted_config", "membership_isolated_leader",
                     "membership_removed_leader", "membership_joint_restart"):
        assert required in names, required


def _outputs(path: pathlib.Path, protocol: str, traced: bool):
    """Each command's output, and every node's applied values and disk at the end."""
    _, blocks = _parse(path.read_text())
    interp = _Interpreter(protocol)
    outputs = []
    for block in blocks:
        try:
            outputs.append(interp.run(block.command))
        except ScriptError as exc:
            outputs.append(f"error: {exc}")
        if traced and interp.cluster is not None and interp.cluster.tracer is None:
            interp.cluster.tracer = Tracer(protocol)
    state = {i: (n.applied, n.disk.durable_state()) for i, n in interp.cluster.nodes.items()}
    return outputs, state


@pytest.mark.parametrize("path,protocol", CASES,
                         ids=[f"{p.stem}-{proto}" for p, proto in CASES])
def test_trace_mode_only_adds_lines(path, protocol):
    """With a tracer attached from the start, every command's output is the untraced output
    preceded by trace lines, and the run ends in the same state (the trace is passive)."""
    plain, plain_state = _outputs(path, protocol, traced=False)
    traced, traced_state = _outputs(path, protocol, traced=True)
    assert traced_state == plain_state
    for quiet, loud in zip(plain, traced):
        assert loud.endswith(quiet)
