"""The chaos nemesis's schedule, the lost-unsynced-writes cut on a real WAL, the generated
conf, and the report files, without starting a cluster.

The WAL scenario: a log with two fsynced batches, then a third batch written but stopped
by the failpoint ``wal.before_fsync`` (as the ``lose-unsynced`` nemesis's node dies there);
cutting the unsynced tail must leave exactly the fsynced entries, and a torn cut must too.
"""

from __future__ import annotations

import os
import random

import pytest

from paxoslog.chaos.cluster import ClusterSpec, NodePorts, drop_unsynced, write_conf, \
    write_spare_conf
from paxoslog.chaos.history import OK, UNKNOWN, OpRecord
from paxoslog.chaos.nemesis import FAULT_KINDS, SPARES_MAX, FaultRecord, kinds_for, \
    parse_kinds, plan_schedule, spares_needed
from paxoslog.chaos.plot import render_timeline
from paxoslog.chaos.report import format_summary, scan_logs
from paxoslog.config import load_config
from paxoslog.core.log import ENTRY_NORMAL, Entry
from paxoslog.storage import failpoints
from paxoslog.storage.wal import WriteAheadLog


def test_each_kind_once_in_order_inside_the_window():
    """'each' plans every kind once, in order, between warm-up and tail, holds fitting."""
    kinds = ["kill-leader", "partition-half", "flaky-link"]
    plans = plan_schedule(kinds, seed=5, duration_s=20, warmup_s=2, tail_s=4,
                          election_timeout_s=0.3, random_mix=False)
    assert [p.kind for p in plans] == kinds
    assert plans[0].at_s == 2.0
    slot = (20 - 4 - 2) / 3
    for p in plans:
        assert 2 <= p.at_s and p.at_s + p.hold_s <= 16
        assert p.hold_s <= 0.5 * slot


def test_random_schedule_replays_from_its_seed():
    """The same seed gives the same faults; another seed another schedule."""
    args = dict(duration_s=120, warmup_s=5, tail_s=5, election_timeout_s=0.3, random_mix=True)
    a = plan_schedule(kinds_for(5), seed=11, **args)
    assert a == plan_schedule(kinds_for(5), seed=11, **args)
    assert a != plan_schedule(kinds_for(5), seed=12, **args)
    assert len(a) > 10 and len({p.kind for p in a}) > 5
    assert all(5 <= p.at_s and p.at_s + p.hold_s <= 115 for p in a)
    assert [p.at_s for p in a] == sorted(p.at_s for p in a)


def test_kind_parsing_checks_names_and_cluster_size():
    """Unknown kinds and the ring on 3 nodes are refused; 'all' fits the cluster."""
    assert "partition-ring" not in kinds_for(3) and "partition-ring" in kinds_for(5)
    assert "member-change" in parse_kinds("all", 5) and "member-change" in parse_kinds("all", 3)
    assert parse_kinds("kill-leader, member-change", 3) == ["kill-leader", "member-change"]
    with pytest.raises(ValueError):
        parse_kinds("kill-everything", 3)
    with pytest.raises(ValueError):
        parse_kinds("partition-ring", 3)
    assert set(kinds_for(5)) == set(FAULT_KINDS)


def test_spares_follow_the_planned_membership_changes():
    """One spare id per planned member-change plus one, none without, capped."""
    args = dict(seed=3, duration_s=600, warmup_s=5, tail_s=5, election_timeout_s=0.3)
    mixed = plan_schedule(kinds_for(5), random_mix=True, **args)
    changes = sum(1 for p in mixed if p.kind == "member-change")
    assert changes > 0 and spares_needed(mixed) == min(SPARES_MAX, changes + 1)
    assert spares_needed(plan_schedule(["kill-leader"], random_mix=True, **args)) == 0
    only = plan_schedule(["member-change"], random_mix=True, **args)
    assert spares_needed(only) == SPARES_MAX
    assert ClusterSpec(nodes=3, spares=2).spare_ids == [4, 5]


def _entries(directory: str) -> list[int]:
    wal = WriteAheadLog(directory)
    replay = wal.open()
    wal.close()
    return list(replay.entries.keys())


@pytest.mark.parametrize("torn", [False, True])
def test_drop_unsynced_cuts_exactly_the_batch_that_was_never_fsynced(tmp_path, torn):
    """After a stop at wal.before_fsync only the fsynced entries survive the cut."""
    data_dir = str(tmp_path)
    wal = WriteAheadLog(os.path.join(data_dir, "wal"))
    wal.open()
    for index in (1, 2):
        wal.append_entries([Entry(index, 1, ENTRY_NORMAL, (b"x" * 100,))])
        wal.sync()
    wal.append_entries([Entry(3, 1, ENTRY_NORMAL, (b"unsynced" * 50,))])
    failpoints.enable("wal.before_fsync", "panic")
    try:
        with pytest.raises(failpoints.FailpointPanic):
            wal.sync()
    finally:
        failpoints.clear()
    os.close(wal._fd)           # the process "died": no clean close (it would add a SYNC)
    assert _entries_readonly(data_dir) == [1, 2, 3]      # still in the page cache
    cut = drop_unsynced(data_dir, random.Random(3), torn=torn)
    assert cut["dropped_bytes"] > 0
    assert _entries(os.path.join(data_dir, "wal")) == [1, 2]


def _entries_readonly(data_dir: str) -> list[int]:
    wal = WriteAheadLog(os.path.join(data_dir, "wal"), read_only=True)
    return list(wal.open().entries.keys())


def test_generated_conf_routes_peers_through_the_proxy(tmp_path):
    """The conf loads; each node dials the proxy port and listens on its own."""
    spec = ClusterSpec(nodes=3, protocol="raft")
    ports = {n: NodePorts(9000 + n, 9100 + n, 9200 + n) for n in spec.node_ids}
    path = str(tmp_path / "conf.toml")
    write_conf(path, spec, ports, str(tmp_path / "data"), "chaos-1")
    config = load_config(path)
    assert config.protocol == "raft"
    for node in config.nodes:
        assert (node.peer.port, node.peer_bind.port, node.api.port) == (
            9000 + node.id, 9100 + node.id, 9200 + node.id)
        assert node.data_dir == str(tmp_path / "data" / f"n{node.id}")
    assert config.timing.election_ticks * config.timing.tick_ms == 300


def test_spare_conf_is_the_cluster_conf_plus_its_own_node(tmp_path):
    """A spare's conf loads, keeps the cluster's settings and nodes and adds the spare,
    whose peer address is its proxy listener; the cluster's conf does not list it."""
    spec = ClusterSpec(nodes=3, protocol="multipaxos", spares=2)
    ports = {n: NodePorts(9000 + n, 9100 + n, 9200 + n) for n in spec.all_ids}
    cluster_path = str(tmp_path / "conf.toml")
    text = write_conf(cluster_path, spec, ports, str(tmp_path / "data"), "chaos-1")
    assert [n.id for n in load_config(cluster_path).nodes] == [1, 2, 3]
    spare_path = str(tmp_path / "conf-n5.toml")
    write_spare_conf(spare_path, text, 5, ports[5], str(tmp_path / "data"))
    config = load_config(spare_path)
    assert config.name == "chaos-1" and config.protocol == "multipaxos"
    assert [n.id for n in config.nodes] == [1, 2, 3, 5]
    spare = config.node(5)
    assert (spare.peer.port, spare.peer_bind.port, spare.api.port) == (9005, 9105, 9205)
    assert spare.data_dir == str(tmp_path / "data" / "n5")


def _verdict(folder: str) -> dict:
    fault = FaultRecord(1, "kill-leader", start=1.0, heal=1.5, healed=2.0, targets=[2],
                        injected=True)
    return {"passed": False, "valid": True, "mode": "raft", "nodes": 3, "seed": 9,
            "duration_s": 10, "folder": folder, "replay": "python tools/chaos.py --seed 9",
            "ops": {"total": 3, "ok": 2, "fail": 0, "unknown": 1,
                    "ok_rate_before_first_fault": 150.0, "ok_rate_overall": 120.0},
            "faults_injected": 1, "faults_by_kind": {"kill-leader": 1},
            "checks": [{"name": "linearizable", "ok": False, "message": "not linearizable"}],
            "unavailability": [{"fault": 1, "kind": "kill-leader", "start": 1.0,
                                "after_fault_s": 0.4, "after_heal_s": 0.1}],
            "unavailability_by_kind": {"kill-leader": {"count": 1, "median_s": 0.4,
                                                       "worst_s": 0.4, "never": 0}},
            "faults": [fault.as_dict(), FaultRecord(2, "kill-random", note="skipped").as_dict()],
            "membership": {"initial": [1, 2, 3], "final": [2, 3, 4], "joined": [4],
                           "removed": [1], "spares_allocated": [4, 5], "spares_unused": [5]},
            "unexpected_exits": [{"node": 3, "generation": 2, "code": 1, "signal": None,
                                  "t": 4.0, "log": "logs/n3.log"}],
            "log_problems": {}, "http_statuses": {"504 outcome_unknown": 1},
            "timeline": "timeline.png", "notes": ["a note"]}


def test_summary_names_the_verdict_checks_faults_and_exits(tmp_path):
    """The human summary carries the result, the replay command and every fault."""
    text = format_summary(_verdict(str(tmp_path)))
    assert text.startswith("chaos run FAIL: raft")
    assert "python tools/chaos.py --seed 9" in text
    assert "[FAIL] linearizable" in text
    assert "kill-leader" in text and "not injected: skipped" in text
    assert "node 3 (start #2) code 1" in text
    assert "members: [1, 2, 3] at start, [2, 3, 4] at the end (joined [4], removed [1]" in text


def test_log_scan_counts_tracebacks_and_errors(tmp_path):
    """Error lines in node logs are counted per node, with examples."""
    log = tmp_path / "n1.log"
    log.write_text("12:00:00.000 INFO  [n1] x: fine\nTraceback (most recent call last):\n"
                   "12:00:01.000 ERROR [n1] y: bad\n")
    found = scan_logs({1: str(log), 2: str(tmp_path / "missing.log")})
    assert found == {"1": {"lines": 2, "examples": ["Traceback (most recent call last):",
                                                    "12:00:01.000 ERROR [n1] y: bad"]}}


def _records() -> list[OpRecord]:
    out = []
    for i in range(200):
        status = UNKNOWN if i % 50 == 7 else OK
        out.append(OpRecord(i, i, f"c-w{i % 4}-p{i}", 1, "put" if i % 2 else "get", "k", i,
                            call=i * 0.05, ret=None if status == UNKNOWN else i * 0.05 + 0.01,
                            status=status, end=i * 0.05 + 0.02))
    return out


@pytest.mark.parametrize("force_html", [False, True])
def test_timeline_is_written_as_png_or_html(tmp_path, force_html):
    """The plot renders operations, faults and leaders (PNG, or HTML without matplotlib)."""
    faults = [FaultRecord(1, "partition-half", start=3.0, heal=5.0, injected=True)]
    leaders = [(0.0, None, None), (0.5, 1, 1), (3.5, 2, 2)]
    path = render_timeline(str(tmp_path / "timeline"), _records(), faults, leaders, 10.0,
                           "test", force_html=force_html)
    assert os.path.getsize(path) > 1000
    if force_html:
        text = open(path).read()
        assert path.endswith(".html") and "<svg" in text and "partition-half" in text
