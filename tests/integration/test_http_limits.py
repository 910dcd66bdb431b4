"""The HTTP API against clients that attack it with time and memory rather than bad bytes:
a client that pipelines thousands of requests and never reads the answers, and slowloris
clients that send a byte at a time.  Real processes, real sockets (over TLS too)."""

from __future__ import annotations

import select
import socket
import ssl
import time

import pytest

from paxoslog_integration import wait_for

_MB = 1 << 20


def _status_kb(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _metric(c, node: int, name: str) -> float:
    """A metric's value; 0 when the node does not have it."""
    response = c.request(node, "GET", "/metrics")
    if response.status != 200:
        return 0.0
    for line in response.body.decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def _send_all(s: socket.socket, data: bytes, deadline_s: float) -> int:
    """Send as much of ``data`` as the connection takes before ``deadline_s``; bytes sent."""
    s.setblocking(False)
    sent = 0
    deadline = time.monotonic() + deadline_s
    while sent < len(data) and time.monotonic() < deadline:
        _, writable, _ = select.select([], [s], [], 0.2)
        if writable:
            try:
                sent += s.send(data[sent:sent + 65536])
            except (BlockingIOError, ssl.SSLWantWriteError):
                pass
    s.setblocking(True)
    s.settimeout(30)
    return sent


@pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls"])
def test_a_pipelining_client_that_never_reads_is_bounded_in_server_memory(make_cluster, tls):
    """3,000 pipelined prefix reads of ~50 KB answers (150 MB if all were queued), never
    read: the node stops reading the connection (paused gauge) and its peak RSS grows by
    less than 40 MB; once the client reads, all 3,000 answers arrive in order."""
    c = make_cluster("multipaxos", tls=tls)
    leader = c.wait_leader()
    node = next(n for n in c.ids if n != leader)
    for i in range(50):
        c.write(f"big/{i:03d}", "x" * 1000)
    _, last = c.write("big/zz", "end")
    c.wait_applied(node, last["index"])
    # The Host names the node: while anonymous requests are served, another is refused.
    request = (b"GET /api/v1/consensus/query?prefix=big/&consistency=stale&limit=1000 "
               b"HTTP/1.1\r\nHost: %s\r\n\r\n" % c.host_header(node))
    count = 3000
    pid = c.procs[node].pid
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")                            # reset the peak RSS (VmHWM)
    base = _status_kb(pid, "VmHWM")
    with c.raw_socket(node, timeout=30) as s:
        sent = _send_all(s, request * count, deadline_s=15)
        assert sent == len(request) * count, f"only {sent} bytes were taken"
        wait_for(lambda: _metric(c, node, "paxoslog_http_connections_paused") >= 1
                 or _status_kb(pid, "VmHWM") - base > 40 * 1024, 30,
                 what="the node to stop reading the connection")
        grown_mb = (_status_kb(pid, "VmHWM") - base) / 1024
        assert grown_mb < 40, f"peak RSS grew by {grown_mb:.0f} MB"
        s.settimeout(30)
        status_line = b"HTTP/1.1 200 OK"
        tail = b""
        answers = 0
        while answers < count:
            chunk = s.recv(1 << 20)
            assert chunk, f"closed after {answers} answers"
            data = tail + chunk
            answers += data.count(status_line)
            tail = data[-(len(status_line) - 1):]
    grown_mb = (_status_kb(pid, "VmHWM") - base) / 1024
    assert grown_mb < 40, f"peak RSS grew by {grown_mb:.0f} MB while the answers were read"
    print(f"\n[{'tls' if tls else 'tcp'}] peak RSS growth with {count} unread pipelined "
          f"answers of ~50 KB: {grown_mb:.1f} MB")


LIMITS = "\n[limits]\nheader_timeout_ms = 500\nbody_timeout_ms = 500\nidle_timeout_ms = 800\n"


def _drip(s: socket.socket, head: bytes, deadline_s: float = 10.0) -> tuple[bytes, float]:
    """Send ``head``, then one byte every 100 ms (the slowloris cadence) until the node
    closes the connection; (what it answered, seconds it took)."""
    started = time.monotonic()
    s.sendall(head)
    s.setblocking(False)
    answer = b""
    while time.monotonic() - started < deadline_s:
        readable, _, _ = select.select([s], [], [], 0.1)
        if readable:
            try:
                chunk = s.recv(65536)
            except (BlockingIOError, ssl.SSLWantReadError):
                continue
            except OSError:
                break
            if not chunk:
                break
            answer += chunk
            continue
        try:
            s.send(b"a")
        except (BrokenPipeError, ConnectionResetError):
            break
        except OSError:
            pass
    return answer, time.monotonic() - started


@pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls"])
def test_slowloris_connections_are_closed_by_the_read_deadlines(make_cluster, tls):
    """Headers or a body dripping one byte every 100 ms (which kept a connection open
    forever) get 408 within about header_timeout_ms / body_timeout_ms; an idle keep-alive
    connection is closed after idle_timeout_ms; the node keeps serving."""
    c = make_cluster("raft", extra=LIMITS, tls=tls)
    node = c.ids[0]
    host = c.host_header(node)
    with c.raw_socket(node) as s:
        answer, took = _drip(s, b"GET /health HTTP/1.1\r\nHost: %s\r\nX-Slow: " % host)
    assert answer.startswith(b"HTTP/1.1 408 ") and b'"request_timeout"' in answer, answer
    assert b"header_timeout_ms" in answer and took < 3.0, took
    with c.raw_socket(node) as s:
        answer, took = _drip(s, b"POST /api/v1/consensus/propose HTTP/1.1\r\nHost: %s\r\n"
                                b"Content-Length: 100000\r\n\r\n{" % host)
    assert answer.startswith(b"HTTP/1.1 408 ") and b"body_timeout_ms" in answer, answer
    assert took < 3.0, took
    with c.raw_socket(node) as s:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: %s\r\n\r\n" % host)
        started = time.monotonic()
        s.settimeout(10)
        data = b""
        while True:
            try:
                chunk = s.recv(65536)
            except (ConnectionResetError, OSError):
                break
            if not chunk:
                break
            data += chunk
        idle_for = time.monotonic() - started
    assert data.startswith(b"HTTP/1.1 200 ") and 0.7 < idle_for < 5.0, (data[:40], idle_for)
    assert _metric(c, node, "paxoslog_http_timeouts_total") >= 2
    if tls:
        # A client that never finishes its TLS handshake (the first bytes of a ClientHello,
        # then nothing) is closed by the same deadlines.
        with socket.create_connection(("127.0.0.1", c.api_ports[node]), timeout=10) as s:
            s.sendall(b"\x16\x03\x01\x00")
            started = time.monotonic()
            try:
                while s.recv(65536):
                    pass
            except OSError:
                pass
            stalled_for = time.monotonic() - started
        assert stalled_for < 5.0, stalled_for
    c.write("after-slowloris", 1)


def test_connections_from_one_address_are_capped(make_cluster):
    """Beyond connections_per_address_max from 127.0.0.1 a connection gets 503 naming the
    limit; closing one makes room again."""
    c = make_cluster("multipaxos", tls=False,
                     extra="\n[limits]\nconnections_per_address_max = 8\n")
    node = c.ids[1]
    held = [c.raw_socket(node) for _ in range(6)]    # + the harness's own connections
    try:
        extra = []
        answer = b""
        for _ in range(4):
            s = c.raw_socket(node)
            extra.append(s)
            s.settimeout(0.5)
            try:
                answer = s.recv(65536)
            except socket.timeout:
                continue
            if answer:
                break
        assert answer.startswith(b"HTTP/1.1 503 "), answer
        assert b"connections_per_address_max" in answer
    finally:
        for s in held + extra:
            s.close()
    wait_for(lambda: c.request(node, "GET", "/health").status == 200,
             what="room for a new connection")
