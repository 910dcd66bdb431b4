"""tools/trace_write.py: reading ``perf script`` lines into calls, and a write's stretches
from them (the live trace itself needs perf and root, and never runs in the tests)."""

from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "tools"))

from trace_write import Roles, parse_perf_script, render, stretches  # noqa: E402

LEADER, F1, F2 = 100, 200, 300
HTTP, TO_F1, TO_F2, FROM_LEADER = 13, 10, 12, 11


def _call(pid: int, cpu: int, start_us: int, end_us: int, name: str, fd: int | None = None,
          ret: int = 0, tid: int | None = None) -> list[str]:
    """An enter and an exit line as ``perf script -F pid,tid,cpu,time,event,trace``
    prints them (times in microseconds from 1000 s)."""
    tid = pid if tid is None else tid
    args = f"fd: 0x{fd:08x}, buff: 0x7f00, len: 0x000000c5" if fd is not None else ""
    ret_text = f"0x{ret & (2 ** 64 - 1):x}"
    return [f" {pid}/{tid}  [{cpu:03d}] {1000 + start_us / 1e6:.6f}:   "
            f"syscalls:sys_enter_{name}: {args}",
            f" {pid}/{tid}  [{cpu:03d}] {1000 + end_us / 1e6:.6f}:    "
            f"syscalls:sys_exit_{name}: {ret_text}"]


def _one_write(t: int) -> list[str]:
    """One client write starting at ``t`` us: the leader on core 1, follower 1 on core 1
    too (woken on the leader's core), follower 2 on core 0."""
    lines = []
    lines += _call(LEADER, 1, t, t + 5, "recvfrom", HTTP, 210)
    lines += _call(LEADER, 1, t + 125, t + 135, "sendto", TO_F1, 197)
    lines += _call(LEADER, 1, t + 165, t + 175, "sendto", TO_F2, 197)
    lines += _call(LEADER, 1, t + 205, t + 210, "pwrite64", 7, 210)
    lines += _call(LEADER, 1, t + 212, t + 392, "fdatasync", 7)
    lines += _call(F1, 1, t + 140, t + 145, "recvfrom", FROM_LEADER, 197)
    lines += _call(F1, 1, t + 255, t + 260, "pwrite64", 7, 210)
    lines += _call(F1, 1, t + 262, t + 542, "fdatasync", 7)
    lines += _call(F1, 1, t + 592, t + 600, "sendto", FROM_LEADER, 34)
    lines += _call(F2, 0, t + 400, t + 405, "recvfrom", FROM_LEADER, 197)
    lines += _call(F2, 0, t + 520, t + 525, "pwrite64", 7, 210)
    lines += _call(F2, 0, t + 527, t + 800, "fdatasync", 7)
    lines += _call(F2, 0, t + 850, t + 860, "sendto", FROM_LEADER, 34)
    lines += _call(LEADER, 1, t + 610, t + 615, "recvfrom", TO_F1, 34)
    lines += _call(LEADER, 1, t + 725, t + 745, "sendto", HTTP, 213)
    return lines


def _roles() -> Roles:
    return Roles(LEADER, frozenset({HTTP}), frozenset({TO_F1, TO_F2}),
                 {F1: frozenset({FROM_LEADER}), F2: frozenset({FROM_LEADER})})


def test_enter_and_exit_pair_per_thread_and_errors_are_negative():
    lines = ["some header line",
             *_call(LEADER, 0, 0, 50, "fdatasync", 7, tid=101),      # the WAL thread
             *_call(LEADER, 1, 10, 20, "recvfrom", HTTP, -11),          # EAGAIN
             f" {LEADER}/{LEADER}  [001] 1000.000030:    syscalls:sys_exit_sendto: 0x22"]
    calls = parse_perf_script("\n".join(lines))[LEADER]
    assert [(c.name, c.tid, c.fd, c.ret) for c in calls] == [
        ("fdatasync", 101, 7, 0), ("recvfrom", LEADER, HTTP, -11)]   # an exit alone: dropped
    assert calls[0].end - calls[0].start == pytest.approx(50e-6)


def test_a_writes_stretches_from_request_to_response():
    lines = _one_write(0) + _one_write(2000)
    micro, counts = stretches(parse_perf_script("\n".join(lines)), _roles())
    assert counts == {"writes": 2, "appends": 4, "appends_on_leader_core": 2}

    def each(name):
        return [round(v) for v in micro[name]]
    assert each("leader: request read -> first peer send") == [120, 120]
    assert each("leader: first -> second peer send") == [40, 40]
    assert each("leader: last peer send -> own WAL write") == [40, 40]
    assert each("leader: fdatasync") == [180, 180]
    assert each("leader: acknowledgement read -> response sent") == [110, 110]
    assert each("leader: request read -> response sent") == [720, 720]
    assert sorted(each("follower: append read -> WAL write")) == [110, 110, 115, 115]
    assert sorted(each("follower: fsync done -> acknowledgement sent")) == [50, 50, 50, 50]
    text = render(micro, counts, "title")
    assert "2 writes and 4 follower appends traced" in text
    assert "last ran on: 50 % of 4" in text


def test_an_unanswered_request_and_a_frame_without_a_wal_write_are_not_counted():
    lines = _one_write(0)[:-2]                    # the response never left
    lines += _call(LEADER, 1, 1000, 1005, "recvfrom", HTTP, 210)    # the next request
    lines += _call(F2, 0, 1100, 1105, "recvfrom", FROM_LEADER, 40)  # a heartbeat
    lines += _call(F2, 0, 1200, 1205, "recvfrom", FROM_LEADER, 40)
    micro, counts = stretches(parse_perf_script("\n".join(lines)), _roles())
    assert counts["writes"] == 0
    assert counts["appends"] == 2                 # the two appends of the first write only
    assert micro["leader: request read -> response sent"] == []
