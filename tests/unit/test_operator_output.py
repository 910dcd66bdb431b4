"""Operator-facing output: episodes, the watch, log formats, DEBUG narration, terms and the
handshake's state-machine comparison."""

from __future__ import annotations

import io
import json
import re

from twisted.internet import task
from twisted.logger import LogLevel, eventsFromJSONLogFile

from paxoslog.core.ballot import Ballot
from paxoslog.core.messages import Nack, PreVote, RequestVoteReply
from paxoslog.core.quorum import Config
from paxoslog.server.episodes import Condition, Occurrences, format_duration
from paxoslog.server.frames import state_machine_difference
from paxoslog.server.httpstats import HttpStats
from paxoslog.server.logs import AccessLog, LogFile, format_line, iso_time, json_fields
from paxoslog.server.narrate import narrate
from paxoslog.server.watch import NodeLook, Watch, WatchLimits
from paxoslog.terms import describe_hard_state, describe_term, term_fields, user_term


class Lines:
    """An ``emit`` that keeps (level, text)."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []

    def __call__(self, level: str, text: str) -> None:
        self.lines.append((level, text))


# ---------------------------------------------------------------------- episodes

def test_condition_is_told_once_after_its_grace_and_once_when_over_with_the_duration():
    """A condition held for 30 s prints one start line (after 2 s) and one end line (30 s)."""
    clock, out = task.Clock(), Lines()
    c = Condition(clock.seconds, out, level="warn", after_s=2.0,
                  start_text="no leader for {duration}: {detail}",
                  end_text="{detail} after {duration}")
    c.update(True, "a")
    clock.advance(1.0)
    c.update(True, "b")
    assert out.lines == []
    for _ in range(29):
        clock.advance(1.0)
        c.update(True, "c")
    assert out.lines == [("warn", "no leader for 2.0 s: c")]
    c.update(False, "leader is node 2")
    assert out.lines[1] == ("warn", "leader is node 2 after 30.0 s")
    c.update(False)
    assert len(out.lines) == 2 and c.episodes == 1 and not c.active


def test_condition_shorter_than_its_grace_says_nothing():
    """Blips under after_s are not episodes."""
    clock, out = task.Clock(), Lines()
    c = Condition(clock.seconds, out, level="warn", after_s=5.0, start_text="x", end_text="y")
    for _ in range(3):
        c.update(True)
        clock.advance(4.0)
        c.update(False)
    assert out.lines == [] and c.episodes == 0


def test_occurrences_count_a_burst_and_end_after_quiet_or_recovery():
    """Slow fsyncs: one start line, the count and span at the end; recovered() ends at once."""
    clock, out = task.Clock(), Lines()
    o = Occurrences(clock.seconds, out, level="warn", quiet_s=10.0,
                    start_text="slow fsync: {detail}",
                    end_text="fast again: {count} slow over {duration}, last {detail}")
    o.occurred("1.5 s")
    clock.advance(3)
    o.occurred("2.0 s")
    clock.advance(9)
    o.tick()
    assert out.lines == [("warn", "slow fsync: 1.5 s")]
    clock.advance(1)
    o.tick()
    assert out.lines[1] == ("warn", "fast again: 2 slow over 3.0 s, last 2.0 s")
    o.occurred("x")
    clock.advance(1)
    o.recovered("ok")
    assert out.lines[3] == ("warn", "fast again: 1 slow over 1.0 s, last ok")
    assert o.episodes == 2 and not o.active


def test_durations_read_well():
    """Seconds, minutes, hours."""
    assert [format_duration(s) for s in (0.84, 12.34, 245, 7385)] == \
        ["0.8 s", "12.3 s", "4 min 05 s", "2 h 03 min"]


# ---------------------------------------------------------------------- watch

class FakeNode:
    def __init__(self, clock) -> None:
        self.clock = clock
        self.leader = 1
        self.heard = {2: 0.0, 3: 0.0}       # peer -> reactor time last heard
        self.removed = False

    def look(self) -> NodeLook:
        return NodeLook(node_id=1, role=lambda: "leader" if self.leader == 1 else "follower",
                        leader_id=lambda: self.leader, term=lambda: 4,
                        config=lambda: Config(frozenset({1, 2, 3})),
                        peers=lambda: [2, 3],
                        last_heard_s=lambda p: self.clock.seconds() - self.heard[p],
                        removed=lambda: self.removed)


def _watch(clock, node, out):
    limits = WatchLimits(election_s=1.0, heard_window_s=1.5, peer_unreachable_s=5.0,
                         fsync_slow_s=1.0, apply_slow_s=0.1, quiet_s=10.0)
    watch = Watch(node.look(), limits, clock, period_s=0.25, emit=out)
    watch.startService()
    return watch


def _run(clock, node, seconds, heard=()):
    """Advance in steps of 0.25 s; the peers in ``heard`` keep answering."""
    for _ in range(int(seconds / 0.25)):
        clock.advance(0.25)
        for peer in heard:
            node.heard[peer] = clock.seconds()


def test_watch_tells_quorum_loss_once_and_its_end_with_the_duration():
    """Two of three peers silent (stopped): one quorum-lost WARN, then the recovery line."""
    clock, out = task.Clock(), Lines()
    node = FakeNode(clock)
    watch = _watch(clock, node, out)
    _run(clock, node, 3, heard=(2, 3))
    assert out.lines == [] and watch.quorum_reachable()
    _run(clock, node, 10)
    node.leader = None                        # check-quorum made the leader step down
    _run(clock, node, 20)
    texts = [t for _, t in out.lines]
    assert sum(t.startswith("quorum lost: heard from voters [1] of [1, 2, 3]") for t in texts) == 1
    assert sum(t.startswith("no leader for") for t in texts) == 1
    assert sum("unreachable for" in t for t in texts) == 2
    node.leader = 2
    _run(clock, node, 1, heard=(2, 3))
    ends = [t for _, t in out.lines[len(texts):]]
    assert any(re.match(r"quorum regained after 28\.8 s", t) for t in ends), ends
    assert "node 2 leads (term 4) after" in " ".join(ends)
    assert any(t.startswith("node 3 reachable again after") for t in ends)
    assert all(level == "warn" for level, _ in out.lines)
    watch.stopService()


def test_watch_reports_slow_fsync_and_snapshot_failure_episodes():
    """Events from the runner: WARN for slow fsyncs, ERROR for failing snapshots."""
    clock, out = task.Clock(), Lines()
    watch = _watch(clock, FakeNode(clock), out)
    watch.fsynced(0.2)
    watch.fsynced(1.7)
    watch.fsynced(2.5)
    watch.snapshot_failed(100, "No space left on device")
    watch.snapshot_failed(200, "No space left on device")
    _run(clock, FakeNode(clock), 0)
    watch.snapshot_saved(300)
    assert [level for level, _ in out.lines] == ["warn", "error", "error"]
    assert out.lines[0][1].startswith("slow fsync: 1.700 s")
    assert out.lines[2][1] == ("snapshots work again (snapshot at index 300) after 2 "
                               "failure(s) over 0.0 s")
    watch.stopService()


# ---------------------------------------------------------------------- log formats

def test_text_lines_carry_an_iso8601_timestamp_with_its_zone():
    """2025-01-31T14:03:07.123+01:00 LEVEL [node] namespace: message."""
    event = {"log_level": LogLevel.warn, "log_namespace": "paxoslog.watch",
             "log_format": "quorum lost: {x}", "x": "now", "log_time": 1700000000.25}
    line = format_line(event, "n1", False)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.250[+-]\d\d:\d\d WARN  \[n1\] "
                        r"paxoslog\.watch: quorum lost: now\n", line), line
    assert iso_time(0.0).startswith(("1970-01-01T", "1969-12-31T"))


def test_json_lines_are_read_back_by_twisted_with_their_fields():
    """--log-format json: Twisted's JSON observer; time, level, node, message and fields."""
    from twisted.logger import jsonFileLogObserver
    stream = io.StringIO()
    observer = jsonFileLogObserver(stream, recordSeparator="")
    event = {"log_level": LogLevel.error, "log_namespace": "paxoslog.peers",
             "log_format": "refused node {peer}", "peer": 3, "log_time": 1700000000.0}
    observer(json_fields(event, "n1"))
    record = json.loads(stream.getvalue())
    assert record["message"] == "refused node 3" and record["peer"] == 3
    assert record["level"] == "error" and record["node"] == "n1"
    assert re.fullmatch(r"2023-11-1\dT\d\d:\d\d:20\.000[+-]\d\d:\d\d", record["time"])
    [back] = list(eventsFromJSONLogFile(io.StringIO(stream.getvalue())))
    assert back["peer"] == 3


def test_log_file_reopens_after_rotation_and_access_log_has_no_secrets(tmp_path):
    """logrotate moves the file; reopen() writes to a new one at the old path."""
    path = tmp_path / "node.log"
    out = LogFile(str(path))
    access = AccessLog(out)
    stats = HttpStats(lambda p: p if p == "/health" else "other", access, wall=lambda: 0.0)
    stats.responded("127.0.0.1", "GET", "/health", 200, 57, 0.0012)
    path.rename(tmp_path / "node.log.1")
    assert out.reopen() is None
    stats.responded("10.0.0.9", "POST", '/x"y', 404, 3, 0.5)
    old = (tmp_path / "node.log.1").read_text()
    assert old.split(" ", 1)[1] == '127.0.0.1 "GET /health" 200 57 0.001200\n'
    assert (tmp_path / "node.log").read_text().endswith('"POST /x%22y" 404 3 0.500000\n')
    stats.responded("10.0.0.9", "POST", "/a\rFAKE 200\n\x1b[2J\x7f\x9b\u2028", 404, 3, 0.5)
    last = (tmp_path / "node.log").read_text().splitlines()[-1]
    assert last.endswith('"POST /a%0DFAKE 200%0A%1B[2J%7F%C2%9B%E2%80%A8" 404 3 0.500000')
    assert set(stats.latency) == {("GET", "/health"), ("POST", "other")}
    (tmp_path / "gone").mkdir()
    bad = LogFile(str(tmp_path / "gone" / "f"))
    (tmp_path / "gone" / "f").unlink()
    (tmp_path / "gone").rmdir()
    assert "cannot reopen" in bad.reopen()           # the old file stays in use
    out.close()


# ---------------------------------------------------------------------- narration, terms

def test_debug_narration_explains_votes_in_the_api_vocabulary():
    """Ballots print as round.node with the term users see; heartbeats are not told."""
    assert narrate(PreVote(2, 1, Ballot(3, 2), 17)) == (
        "election: node 2 asks for a pre-vote for ballot 3.2 (term 3); its first unchosen "
        "slot is 17")
    assert narrate(Nack(3, 1, Ballot(3, 1), Ballot(4, 2))) == (
        "election: node 3 refuses ballot 3.1: it promised 4.2 (term 4)")
    assert narrate(RequestVoteReply(2, 1, 7, True, False)) == \
        "election: node 2 grants its vote in term 7"


def test_terms_show_the_ballot_round_never_the_packed_integer():
    """A packed Paxos ballot prints as its round (term) and r.n; Raft terms as they are."""
    packed = Ballot(2, 1).pack()
    assert packed == 8589934593
    assert user_term(packed, "multipaxos") == 2 and user_term(packed, None) == 2
    assert user_term(7, "raft") == 7 and user_term(7, None) == 7
    assert term_fields(packed, "multipaxos") == {"term": 2, "ballot": "2.1"}
    assert describe_term(packed, None) == "term 2 (ballot 2.1)"
    assert describe_hard_state((packed, 0, 9), "multipaxos") == \
        "term 2 (ballot 2.1) promised, commit 9"
    assert describe_hard_state((5, 3, 9), "raft") == "term 5, voted for 3, commit 9"


def test_state_machine_difference_names_every_difference():
    """Missing, extra and version mismatches, from this node's side."""
    mine = [["counter", 1], ["kv", 2], ["membership", 1]]
    assert state_machine_difference(mine, [["counter", 1], ["kv", 2], ["membership", 1]], 2) \
        is None
    text = state_machine_difference(mine, [["kv", 1], ["ledger", 3], ["membership", 1]], 2)
    assert "counter 1 is enabled here but not on node 2" in text
    assert "ledger 3 is enabled on node 2 but not here" in text
    assert "kv is version 2 here but version 1 on node 2" in text
    assert "malformed" in state_machine_difference(mine, "nope", 2)
