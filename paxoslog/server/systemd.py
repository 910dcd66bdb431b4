"""Talking to systemd: ``sd_notify(3)`` over ``$NOTIFY_SOCKET``, with the stdlib only.

A unit with ``Type=notify`` (conf/paxoslog@.service) learns from these datagrams that the
node is up (``READY=1``: its data directory is loaded and its peer and API ports listen;
whether the cluster has a leader is ``GET /health?ready=1``'s business), reloading
(``RELOADING=1`` on SIGHUP, then ``READY=1`` again), stopping (``STOPPING=1``), and what it
is doing (``STATUS=...``, shown by ``systemctl status``).  With ``WatchdogSec=`` set,
systemd passes ``$WATCHDOG_USEC`` and the node sends ``WATCHDOG=1`` from its event loop at
half that period: an event loop that stalls gets the node restarted.

Without ``$NOTIFY_SOCKET`` (not started by systemd) every call does nothing.  A failure to
send is logged once and never stops the node.
"""

from __future__ import annotations

import os
import socket
import time

from twisted.internet import task
from twisted.logger import Logger

__all__ = ["SystemdNotifier", "notify"]

log = Logger(namespace="paxoslog.systemd")


def notify(message: str, environ=os.environ) -> bool:
    """Send one sd_notify datagram; False when there is no (usable) ``$NOTIFY_SOCKET``.
    Raises OSError when the socket is there but the send fails."""
    path = environ.get("NOTIFY_SOCKET", "")
    if path.startswith("@"):
        path = "\0" + path[1:]                 # the abstract namespace
    elif not path.startswith("/"):
        return False                           # unset, or a kind we do not speak (vsock)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        sock.connect(path)
        sock.sendall(message.encode())
    return True


class SystemdNotifier:
    """The node's side of ``Type=notify``; ``environ`` and ``reactor`` are injected."""

    def __init__(self, reactor, environ=os.environ) -> None:
        self.reactor = reactor
        self.environ = environ
        self.enabled = bool(environ.get("NOTIFY_SOCKET"))
        self._failed = False
        self._watchdog = None

    def _send(self, *fields: str) -> None:
        if not self.enabled:
            return
        try:
            notify("\n".join(fields), self.environ)
        except OSError as exc:
            if not self._failed:
                self._failed = True
                log.warn("cannot notify systemd ({error}); going on without", error=exc)

    def ready(self, status: str) -> None:
        self._send("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")
        self._start_watchdog()

    def reloading(self) -> None:
        # MONOTONIC_USEC lets Type=notify-reload units match the reload with the signal.
        self._send("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")

    def reloaded(self, status: str) -> None:
        self._send("READY=1", f"STATUS={status}")

    def status(self, status: str) -> None:
        self._send(f"STATUS={status}")

    def stopping(self) -> None:
        self._send("STOPPING=1", "STATUS=stopping")
        if self._watchdog is not None and self._watchdog.running:
            self._watchdog.stop()

    def _start_watchdog(self) -> None:
        usec = self.environ.get("WATCHDOG_USEC", "")
        pid = self.environ.get("WATCHDOG_PID", "")
        if not self.enabled or not usec.isdigit() or int(usec) <= 0:
            return
        if pid and pid != str(os.getpid()):
            return                             # meant for another process
        self._watchdog = task.LoopingCall(self._send, "WATCHDOG=1")
        self._watchdog.clock = self.reactor
        self._watchdog.start(int(usec) / 2e6, now=True)
