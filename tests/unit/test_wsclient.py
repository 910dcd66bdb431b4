"""The client's stream cursors (paxoslog/wsclient.py): the one implementation of the resume
rules both client drivers use."""

from __future__ import annotations

import pytest

from paxoslog.wsclient import StreamGap, TailCursor, WatchCursor, ws_url


def entries(*indexes) -> dict:
    return {"type": "entries", "entries": [{"index": i} for i in indexes]}


def test_a_tail_cursor_delivers_each_index_once_and_resumes_after_the_last():
    """Duplicates (a resubscription that overlaps) are dropped; the resume point is the
    index after the last one delivered."""
    cursor = TailCursor()
    cursor.started({"from": 5})
    assert cursor.subscribe(1) == {"id": 1, "op": "tail", "from": 5}
    assert [e["index"] for e in cursor.accept(entries(5, 6))] == [5, 6]
    assert cursor.accept(entries(5, 6)) == [] and cursor.duplicates == 2
    assert [e["index"] for e in cursor.accept(entries(6, 7))] == [7]
    assert cursor.subscribe(2)["from"] == 8


def test_a_tail_cursor_refuses_a_gap():
    """An index after a missing one raises StreamGap (the driver resubscribes)."""
    cursor = TailCursor(3)
    with pytest.raises(StreamGap):
        cursor.accept(entries(4))


def test_a_watch_cursor_moves_with_revisions_and_progress():
    """Events below the resume point are dropped; a message's revision and a progress
    message move the resume point even without events."""
    cursor = WatchCursor(prefix="p/", start=10, prev=True)
    assert cursor.subscribe(1) == {"id": 1, "op": "watch", "prefix": "p/", "from": 10,
                                   "prev": True}
    got = cursor.accept({"type": "events", "revision": 12, "events": [
        {"mod_index": 9}, {"mod_index": 11}, {"mod_index": 12}]})
    assert [e["mod_index"] for e in got] == [11, 12] and cursor.next == 13
    cursor.accept({"type": "progress", "revision": 20})
    assert cursor.next == 21 and cursor.revision == 20
    with pytest.raises(ValueError):
        WatchCursor()


def test_endpoints_become_websocket_urls():
    """http -> ws, https -> wss, the endpoint path appended."""
    assert ws_url("http://h:1/") == "ws://h:1/api/v1/ws"
    assert ws_url("https://h:2") == "wss://h:2/api/v1/ws"
    assert ws_url("h:3") == "ws://h:3/api/v1/ws"


_REFUSED = r"""
import socket
from twisted.internet import reactor
from paxoslog.wsclient import connect_twisted
with socket.socket() as s:                 # a port nobody listens on
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
d = connect_twisted(reactor, f"http://127.0.0.1:{port}", timeout_s=60.0)
d.addBoth(lambda r: (print(type(r.value).__name__, r.value), reactor.stop()))
reactor.run()
"""


def test_the_twisted_client_fails_at_once_on_a_refused_endpoint():
    """connect_twisted reports a refused connection as such, not after its timeout: a
    stream cycling over its endpoints used to spend the whole timeout on each one that was
    down (a chaos run's streams fell behind every node's log that way)."""
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-c", _REFUSED], capture_output=True, text=True,
                         timeout=30).stdout
    assert out.startswith("ConnectionError cannot connect to http://127.0.0.1:"), out
    assert "refused" in out
