"""``write_now``: hand bytes to a TCP socket at once instead of at the reactor's next turn.

Twisted's ``transport.write`` only buffers: the bytes reach the socket when the reactor
next polls (``doWrite``), after registering the socket for writability and before
unregistering it (two ``epoll_ctl`` calls).  On the path of one client write there are
three such hops (leader -> followers, follower -> leader, leader -> client) and each waited
for the rest of its reactor turn, tens to hundreds of microseconds (issue 17).  When nothing
is buffered, ``write_now`` sends directly (a non-blocking ``send``) and buffers only what
the kernel did not take, so the order of bytes and the transport's flow control are as with
``write``.  TLS transports (and anything that is not a plain TCP connection) just get
``write``.
"""

from __future__ import annotations

from twisted.internet import tcp

__all__ = ["write_now"]


_MISSING = object()


def write_now(transport, data: bytes) -> None:
    # The buffer attributes are Twisted's own (tcp.Connection via abstract.FileDescriptor):
    # if a release renames one, every write simply takes the ``write`` path.
    if (type(data) is bytes and isinstance(transport, tcp.Connection)
            and not getattr(transport, "TLS", True) and transport.connected
            and not transport.disconnecting
            and getattr(transport, "_writeDisconnected", _MISSING) is False
            and getattr(transport, "dataBuffer", _MISSING) == b""
            and getattr(transport, "_tempDataBuffer", _MISSING) == []):
        try:
            sent = transport.socket.send(data)
        except OSError:
            # EAGAIN, or a broken connection that the reactor's own write will notice.
            sent = 0
        if sent == len(data):
            return
        data = data[sent:]
    transport.write(data)
