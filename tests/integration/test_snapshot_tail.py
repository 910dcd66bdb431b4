"""Log tail after compaction, on a real 3-node cluster in both protocol modes.

The leader snapshots every 40 entries and compacts its log only up to the snapshot before
the newest one, so it always keeps one snapshot interval of entries.  A follower killed a
few entries before the leader's newest snapshot is caught up by entries when it comes back
(its ``paxoslog_snapshots_installed_total`` stays 0); killed again and left behind until
the leader compacted past it, it gets a snapshot (the counter goes to 1).  Every wait polls
with a deadline.
"""

from __future__ import annotations

from paxoslog_integration import wait_for

SNAPSHOT_EVERY = 40


def installed(c, node: int) -> int:
    text = c.request(node, "GET", "/metrics").body.decode()
    line = next(l for l in text.splitlines()
                if l.startswith("paxoslog_snapshots_installed_total "))
    return int(float(line.split()[1]))


def write_until(c, nodes, prefix: str, condition, most: int) -> int:
    """Write ``prefix<i>`` keys through ``nodes`` until ``condition()``; how many."""
    for i in range(most):
        if condition():
            return i
        c.write(f"{prefix}{i}", i, nodes=nodes)
    assert condition(), f"still not there after {most} writes"
    return most


def test_follower_behind_the_newest_snapshot_catches_up_by_entries(make_cluster, protocol):
    """A follower behind the leader's newest snapshot but inside the kept tail gets
    entries; once the leader compacted past it, it gets a snapshot."""
    c = make_cluster(protocol, extra=f"\n[snapshot]\nentries = {SNAPSHOT_EVERY}\n")
    leader = c.wait_leader()
    lagging = next(n for n in c.ids if n != leader)
    up = [n for n in c.ids if n != lagging]

    # Two snapshots on the leader: its log is compacted up to the first one.
    write_until(c, c.ids, "a", lambda: c.status(leader)["snapshot_index"] >= 2 * SNAPSHOT_EVERY,
                6 * SNAPSHOT_EVERY)
    _, body = c.write("a-last", "x")
    at_kill = c.wait_applied(lagging, body["index"])["applied_index"]
    previous = c.status(leader)["snapshot_index"]
    assert previous <= at_kill
    c.kill(lagging)

    # The leader takes its next snapshot beyond the lagging node; it compacts to `previous`.
    write_until(c, up, "b", lambda: c.status(leader)["snapshot_index"] > at_kill,
                4 * SNAPSHOT_EVERY)
    status = wait_for(lambda: (lambda s: s if s["first_index"] == previous + 1 else None)(
        c.status(leader)), what="the leader to compact up to its previous snapshot")
    assert status["first_index"] <= at_kill + 1 < status["snapshot_index"] + 1, status
    assert status["leader"] == leader

    c.start(lagging)
    _, body = c.write("b-last", "y", nodes=up)
    c.wait_applied(lagging, body["index"], timeout=20)
    assert installed(c, lagging) == 0, "caught up by a snapshot, not by entries"
    assert c.get(lagging, "b3", "stale").body["value"] == 3
    assert c.get(lagging, "b-last", "stale").body["value"] == "y"

    # Left behind past the kept tail: now a snapshot is the only way.
    at_kill = c.status(lagging)["applied_index"]
    c.kill(lagging)
    write_until(c, up, "c", lambda: c.status(leader)["first_index"] > at_kill + 1,
                6 * SNAPSHOT_EVERY)
    c.start(lagging)
    _, body = c.write("c-last", "z", nodes=up)
    c.wait_applied(lagging, body["index"], timeout=20)
    assert installed(c, lagging) == 1
    assert c.get(lagging, "c1", "stale").body["value"] == 1
    assert c.get(lagging, "a1", "stale").body["value"] == 1
