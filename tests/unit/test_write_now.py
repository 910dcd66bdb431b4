"""``write_now``: straight to the socket only for a plain TCP connection with nothing
buffered; every other transport gets ``write`` (same bytes, same order)."""

from __future__ import annotations

import socket

from twisted.internet import tcp
from twisted.internet.testing import StringTransport

from paxoslog.server.sockets import write_now


def test_other_transports_get_write():
    transport = StringTransport()
    write_now(transport, b"one")
    write_now(transport, b"two")
    assert transport.value() == b"onetwo"


class _Reactor:
    """Enough of a reactor for a tcp.Connection that is never polled."""

    def addWriter(self, _):
        self.writer_added = True

    def removeWriter(self, _):
        pass

    def addReader(self, _):
        pass

    def removeReader(self, _):
        pass


def test_a_tcp_connection_sends_at_once_then_buffers_behind_what_is_pending():
    left, right = socket.socketpair()
    left.setblocking(False)
    try:
        reactor = _Reactor()
        conn = tcp.Connection(left, None, reactor)
        conn.connected = True
        write_now(conn, b"now")                       # nothing buffered: sent at once
        assert right.recv(16) == b"now" and not getattr(reactor, "writer_added", False)
        conn.write(b"later")                          # buffered by Twisted...
        write_now(conn, b"!")                         # ...so this one queues behind it
        right.setblocking(False)
        try:
            assert right.recv(16) == b""
        except BlockingIOError:
            pass                                      # nothing arrived out of order
        assert b"".join(conn._tempDataBuffer) == b"later!"
    finally:
        left.close()
        right.close()
