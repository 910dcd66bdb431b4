"""The event loop ``paxoslog serve`` runs on: Twisted's epoll reactor, minus one wrapper
per event.

``EPollReactor.doPoll`` hands every ready socket to its handler through
``log.callWithLogger``, which asks the connection for its ``logPrefix()`` and pushes a
legacy logging context (``{"system": prefix}``) around the call.  A node's event loop
runs that once per client request and per peer frame; at 64 connections of
linearizable reads it was 5-6 % of the loop's py-spy samples (reads/s rose 7-10 %
without it, docs/design-notes.md).  paxoslog logs through ``twisted.logger`` namespaces and never
reads the ``system`` key, so ``LeanEPollReactor`` calls the handler directly.  What
``callWithLogger`` guaranteed stays: an exception that escapes a handler is logged and
the loop goes on (the reactor's ``_doReadOrWrite`` already turns a failing
``doRead``/``doWrite`` into a lost connection, as before).

It also has ``call_at_turn_end(f)``: ``callLater(0, f)`` without the timer.  The node's
shell asks for its Ready loop that way after nearly every event (runner.py,
``schedule_pump``), and each ``callLater(0)`` built a ``DelayedCall``, pushed it onto the
timer heap and popped it off again, comparing it in Python with ``__lt__`` each step: on
a leader serving one client, 80 of the 1,100 Python calls per write (issue 17).  The
queued functions run at the end of the next ``runUntilCurrent``, after its thread calls
and due timers.  That is where a ``callLater(0)`` made in the poll's handlers or in a
thread call (a WAL job's result) runs too; one queued by a timer runs in the same turn
(a ``callLater(0)`` would wait for the next), and one queued by a turn-end call waits for
the next turn.  The loop does not wait in its poll while any is queued.  There is no
cancel: a caller keeps its own flag.

``install()`` makes it the process's reactor; call it before anything imports
``twisted.internet.reactor``.  Where epoll is missing, Twisted's default is kept.
"""

from __future__ import annotations

import errno

from twisted.logger import Logger

__all__ = ["install"]

log = Logger(namespace="paxoslog.reactor")

try:
    from twisted.internet.epollreactor import EPollReactor
except ImportError:              # no epoll on this platform
    EPollReactor = None


if EPollReactor is not None:
    class LeanEPollReactor(EPollReactor):
        def __init__(self) -> None:
            self._turn_end: list = []
            super().__init__()

        def call_at_turn_end(self, f) -> None:
            """Call ``f()`` when ``callLater(0, f)`` would have (see the module docstring)."""
            self._turn_end.append(f)

        def runUntilCurrent(self) -> None:
            super().runUntilCurrent()
            calls, self._turn_end = self._turn_end, []
            for i, f in enumerate(calls):
                try:
                    f()
                except Exception:
                    log.failure("unhandled error in a call at the end of a turn")
                except BaseException:        # leaving the loop: keep what did not run
                    self._turn_end[:0] = calls[i + 1:]
                    raise

        def timeout(self):
            if self._turn_end:
                return 0
            return super().timeout()

        def doPoll(self, timeout):
            if timeout is None:
                timeout = -1                 # wait until something happens
            try:
                ready = self._poller.poll(timeout, len(self._selectables))
            except OSError as err:
                if err.errno == errno.EINTR:
                    return
                raise
            handle, selectables = self._doReadOrWrite, self._selectables
            for fd, event in ready:
                selectable = selectables.get(fd)
                if selectable is None:       # removed by a handler earlier in this turn
                    continue
                try:
                    handle(selectable, fd, event)
                except Exception:
                    log.failure("unhandled error in an event handler; the loop goes on")

        doIteration = doPoll

    __all__.append("LeanEPollReactor")


def install() -> bool:
    """Install ``LeanEPollReactor`` as the reactor; False (nothing done) without epoll.
    Raises ``ReactorAlreadyInstalledError`` when a reactor is already installed."""
    if EPollReactor is None:
        return False
    from twisted.internet.main import installReactor
    installReactor(LeanEPollReactor())
    return True
