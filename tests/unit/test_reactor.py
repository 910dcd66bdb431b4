"""The serving reactor (paxoslog/server/reactor.py): Twisted's epoll reactor without the
per-event logging context, still dispatching every ready socket and surviving a handler
that raises."""

from __future__ import annotations

import socket

import pytest
from twisted.internet.abstract import FileDescriptor
from twisted.logger import globalLogPublisher

reactor_module = pytest.importorskip("paxoslog.server.reactor")
if not hasattr(reactor_module, "LeanEPollReactor"):
    pytest.skip("no epoll here", allow_module_level=True)


class Reader(FileDescriptor):
    def __init__(self, reactor, sock: socket.socket, fail: bool = False) -> None:
        super().__init__(reactor)
        self.sock, self.fail = sock, fail
        self.data: list[bytes] = []
        self.lost = []

    def fileno(self) -> int:
        return self.sock.fileno()

    def doRead(self):
        if self.fail:
            raise RuntimeError("doRead broke")
        self.data.append(self.sock.recv(100))

    def connectionLost(self, reason) -> None:
        self.lost.append(reason)
        if self.fail:
            raise RuntimeError("connectionLost broke too")


@pytest.fixture
def lean():
    r = reactor_module.LeanEPollReactor()
    socks = []
    yield r, socks
    r.removeAll()
    r._poller.close()
    for s in socks:
        s.close()


def pair(socks: list) -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair()
    a.setblocking(False)
    socks += (a, b)
    return a, b


def test_every_ready_socket_is_handed_to_its_reader(lean):
    r, socks = lean
    (a1, b1), (a2, b2) = pair(socks), pair(socks)
    first, second = Reader(r, a1), Reader(r, a2)
    r.addReader(first)
    r.addReader(second)
    b1.send(b"one")
    b2.send(b"two")
    r.doIteration(1.0)
    assert first.data == [b"one"] and second.data == [b"two"]


def test_a_handler_that_raises_is_logged_and_the_turn_goes_on(lean):
    """A doRead that raises loses its connection (Twisted's own handling); if even that
    raises, the error is logged and the other ready sockets are still served."""
    r, socks = lean
    (a1, b1), (a2, b2) = pair(socks), pair(socks)
    broken, fine = Reader(r, a1, fail=True), Reader(r, a2)
    r.addReader(broken)
    r.addReader(fine)
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        b1.send(b"x")
        b2.send(b"y")
        r.doIteration(1.0)
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert fine.data == [b"y"]
    assert len(broken.lost) == 1
    failures = [e for e in events if "log_failure" in e]
    assert any("connectionLost broke too" in str(e["log_failure"].value) for e in failures)
    assert any(e.get("log_namespace") == "paxoslog.reactor" for e in failures)


def test_serve_runs_on_the_lean_reactor():
    """``install`` makes it the process's reactor (in a fresh interpreter, as serve does)."""
    import subprocess
    import sys
    code = ("from paxoslog.server import reactor as m; assert m.install(); "
            "from twisted.internet import reactor; print(type(reactor).__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "LeanEPollReactor"


def test_calls_at_the_turn_end_run_where_call_later_zero_would(lean):
    """``call_at_turn_end`` (the runner's pump): at the end of the next
    ``runUntilCurrent``, after the thread calls and due timers, in order; one queued by a
    thread call (a WAL job's result) or a timer still runs in that turn, one queued by a
    turn-end call waits for the next; while any waits the loop polls without blocking."""
    r, socks = lean
    order = []
    assert r.timeout() is None                   # nothing to do: the poll may block
    r.call_at_turn_end(lambda: order.append("first"))
    r.call_at_turn_end(lambda: (order.append("second"),
                                r.call_at_turn_end(lambda: order.append("next turn"))))
    r.callFromThread(lambda: (order.append("thread call"),
                              r.call_at_turn_end(lambda: order.append("after thread"))))
    r.callLater(0, lambda: (order.append("timer"),
                            r.call_at_turn_end(lambda: order.append("after timer"))))
    assert r.timeout() == 0
    r.runUntilCurrent()
    assert order == ["thread call", "timer", "first", "second", "after thread",
                     "after timer"]
    assert r.timeout() == 0                      # "next turn" is waiting
    r.runUntilCurrent()
    assert order[-1] == "next turn" and r.timeout() is None


def test_leaving_the_loop_from_a_turn_end_call_keeps_the_calls_not_yet_run(lean):
    r, socks = lean
    ran = []

    def leave():
        raise SystemExit(3)
    r.call_at_turn_end(lambda: ran.append(1))
    r.call_at_turn_end(leave)
    r.call_at_turn_end(lambda: ran.append(3))
    with pytest.raises(SystemExit):
        r.runUntilCurrent()
    assert ran == [1]
    r.runUntilCurrent()
    assert ran == [1, 3]


def test_a_turn_end_call_that_raises_is_logged_and_the_others_still_run(lean):
    r, socks = lean
    ran = []
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        r.call_at_turn_end(lambda: 1 / 0)
        r.call_at_turn_end(lambda: ran.append(True))
        r.runUntilCurrent()
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert ran == [True]
    assert any("log_failure" in e and isinstance(e["log_failure"].value, ZeroDivisionError)
               for e in events)
