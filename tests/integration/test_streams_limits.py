"""The WebSocket endpoint's limits and bad input on real clusters, both protocol modes:
malformed frames and messages, unknown ops, oversized frames, too many requests in flight
or subscriptions, idle connections, unknown subprotocols: each gets its documented error
and the node stays healthy; a consumer that stops reading costs the node a bounded amount
of memory (RSS from /proc) and is ended ``slow_consumer`` with the point to resume from."""

from __future__ import annotations

import json

import cbor2
import pytest

from paxoslog.client import SyncClient
from paxoslog_integration import wait_for
from wsprobe import CBOR, WsProbe

LIMITS = ("\n[websocket]\nmessage_bytes_max = 4096\ninflight_requests_max = 8\n"
          "subscriptions_max = 2\nidle_timeout_ms = 1000\n")


def url(c, node: int) -> str:
    return c.url(node)


def healthy(c, node: int) -> None:
    assert c.request(node, "GET", "/health").status == 200
    with WsProbe.of(c, node) as probe:
        assert probe.request({"op": "put", "key": "alive", "value": 1})[0] == 200


@pytest.fixture
def limited(make_cluster, protocol):
    return make_cluster(protocol, extra=LIMITS)


def test_bad_messages_get_documented_errors_on_a_connection_that_stays_open(limited):
    """Malformed JSON, a binary frame on the JSON subprotocol, a non-object, no id, an
    unknown op, the HTTP API's own validation errors, too deep a message, a CBOR byte
    string: 400 answers; the connection keeps serving."""
    c = limited
    node = c.ids[0]
    with WsProbe.of(c, node) as probe:
        probe.send_raw(b"{nope")
        probe.send_raw(b"\x01\x02", binary=True)
        probe.send_raw(b"[1, 2]")
        probe.send({"op": "put", "key": "k", "value": 1})
        probe.wait(lambda: len(probe.answers) >= 5, 10, "five answers")
        assert [(a["id"], a["status"], a["body"]["error"]) for a in probe.answers] == [
            (None, 400, "bad_message")] * 4 + [(None, 400, "bad_request")]
        assert "malformed JSON" in probe.answers[0]["body"]["message"]
        assert "text frames" in probe.answers[1]["body"]["message"]
        codes = []
        for status, body in ((probe.request({"op": "fly"})),
                             (probe.request({"op": "put", "value": 1})),
                             (probe.request({"op": "cas", "key": "k", "value": 1})),
                             (probe.request({"op": "get", "key": 5})),
                             (probe.request({"op": "put", "key": "k",
                                             "value": [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[
                                                 1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}))):
            codes.append((status, body["error"]))
        assert codes == [(400, "unknown_op"), (400, "bad_request"), (400, "bad_request"),
                         (400, "bad_request"), (400, "bad_request")]
        assert probe.request({"op": "put", "key": "k", "value": 1})[0] == 200
        assert probe.closed is None
    with WsProbe.of(c, node, CBOR) as probe:
        probe.send_raw(cbor2.dumps({"id": 1, "op": "put", "key": "k", "value": b"raw"}), True)
        reply = probe.wait(lambda: probe.replies.get(None), 10, "the CBOR refusal")
        assert reply["status"] == 400 and "bytes" in reply["body"]["message"]
        assert probe.request({"op": "get", "key": "k"})[1]["value"] == 1
    healthy(c, node)


def test_cbor_values_json_cannot_carry_are_refused_and_prefix_reads_go_on(limited):
    """A bignum of 5,000 digits (over the 4,300 digits Python prints: once stored, every
    node whose prefix read met it died) and shared values (tags 28/29: 167 bytes expanding
    to four million items, which held the event loop for seconds; a short one here) are
    refused with 400 and stored nowhere; a bignum JSON can carry is taken; prefix reads
    and the node go on."""
    c = limited
    node = c.ids[0]
    shared = "leaf"
    for _ in range(3):
        shared = [shared, shared]
    with WsProbe.of(c, node, CBOR) as probe:
        for frame, why in ((cbor2.dumps({"id": 1, "op": "put", "key": "p/poison",
                                         "value": 10 ** 5000}), "too large for JSON"),
                           (cbor2.dumps({"id": 2, "op": "put", "key": "p/shared",
                                         "value": shared}, value_sharing=True), "tag 28")):
            probe.send_raw(frame, True)
            reply = probe.wait(lambda: probe.replies.pop(None, None), 10, "the refusal")
            assert reply["status"] == 400 and why in reply["body"]["message"], reply
        assert probe.request({"op": "put", "key": "p/big", "value": 2 ** 70})[0] == 200
    r = c.request(node, "GET", "/api/v1/consensus/query?prefix=p/")
    assert r.status == 200 and [kv["key"] for kv in r.body["kvs"]] == ["p/big"], r
    assert r.body["kvs"][0]["value"] == 2 ** 70
    healthy(c, node)


def test_an_oversized_frame_closes_the_connection_with_1009_and_nothing_else(limited):
    """A message over websocket.message_bytes_max: close code 1009 naming the size limit;
    the node and other connections go on."""
    c = limited
    node = c.ids[1]
    with WsProbe.of(c, node) as other, WsProbe.of(c, node) as probe:
        probe.send({"id": 1, "op": "put", "key": "big", "value": "x" * 5000})
        code, reason = probe.wait(lambda: probe.closed, 10, "the close")
        assert code == 1009 and "4096" in reason
        assert other.request({"op": "get", "key": "alive"})[0] in (200, 404)
    healthy(c, node)


def test_too_many_requests_in_flight_and_subscriptions_are_refused_429(limited):
    """One frame of 20 writes with 8 allowed in flight: the excess answered 429
    too_many_requests naming the limit, the rest committed; a third subscription is
    refused 429 too_many_subscriptions."""
    c = limited
    node = c.ids[2]
    with WsProbe.of(c, node) as probe:
        probe.send([{"id": f"p{i}", "op": "put", "key": f"f{i}", "value": i} for i in range(20)])
        replies = probe.wait(lambda: len(probe.replies) >= 20 and probe.replies, 20,
                             "20 answers")
        statuses = sorted(r["status"] for r in replies.values())
        assert statuses.count(200) >= 8 and 429 in statuses
        refused = next(r for r in replies.values() if r["status"] == 429)
        assert refused["body"]["error"] == "too_many_requests"
        assert "websocket.inflight_requests_max" in refused["body"]["message"]
        probe.subscribe({"op": "tail"})
        probe.subscribe({"op": "watch", "key": "a"})
        status, body = probe.request({"op": "watch", "key": "b"})
        assert status == 429 and body["error"] == "too_many_subscriptions"
        assert "websocket.subscriptions_max" in body["message"]
    healthy(c, node)



def test_answers_larger_than_a_client_message_arrive_and_a_huge_frame_is_refused(limited):
    """websocket.message_bytes_max (4 KiB here) bounds what a client sends, not what it is
    answered: a prefix read of about 12 kB is answered whole (autobahn's send check once
    dropped it, and every answer packed with it, committed writes' included).  A frame of
    more requests than 4 x inflight_requests_max (8 here) gets one 400 instead of one
    answer each (half a million held the event loop for seconds: found by a review)."""
    c = limited
    node = c.ids[0]
    client = SyncClient([c.url(n) for n in c.ids])
    for i in range(12):
        client.put(f"wide/{i:02d}", "v" * 1000)
    with WsProbe.of(c, node) as probe:
        status, body = probe.request({"op": "get", "prefix": "wide/"})
        assert status == 200 and [kv["key"] for kv in body["kvs"]] == [
            f"wide/{i:02d}" for i in range(12)]
        probe.send([{"id": f"x{i}", "op": "get", "key": "alive"} for i in range(33)])
        reply = probe.wait(lambda: probe.replies.get(None), 10, "the frame's refusal")
        assert reply["status"] == 400 and "at most 32 requests" in reply["body"]["message"]
        assert not any(isinstance(key, str) and key.startswith("x") for key in probe.replies)
        assert probe.request({"op": "put", "key": "after", "value": 1})[0] == 200
    healthy(c, node)

def test_idle_connections_close_4000_and_unknown_subprotocols_are_refused(limited):
    """No subscription, nothing in flight, nothing received for idle_timeout_ms: closed
    with 4000; a handshake that offers only unknown subprotocols fails; a plain GET of the
    endpoint is 426."""
    c = limited
    node = c.ids[0]
    with WsProbe.of(c, node) as probe:
        code, reason = probe.wait(lambda: probe.closed, 15, "the idle close")
        assert code == 4000 and "websocket.idle_timeout_ms" in reason
    odd = WsProbe.of(c, node, "chat.v9")
    assert odd.protocol is None and odd.closed is not None
    odd.close()
    plain = c.request(node, "GET", "/api/v1/ws")
    assert plain.status == 426 and plain.body["error"] == "upgrade_required"
    healthy(c, node)


def test_a_node_that_stops_closes_every_websocket_4001_and_logs_no_error(make_cluster,
                                                                         protocol):
    """A graceful stop (SIGTERM) closes each open WebSocket with 4001 "the node is
    stopping" (autobahn refuses 1001 from an application: the first close raised, the
    others were never sent, and the stop logged an unhandled error)."""
    c = make_cluster(protocol)
    node = c.ids[-1]
    probes = [WsProbe.of(c, node) for _ in range(2)]
    try:
        assert c.stop(node) == 0
        for probe in probes:
            code, reason = probe.wait(lambda p=probe: p.closed, 15, "the close")
            assert (code, reason) == (4001, "the node is stopping")
    finally:
        for probe in probes:
            probe.close()
    with open(c.log_path(node)) as f:
        log = f.read()
    assert "Unhandled error" not in log and "invalid close code" not in log


def _metric(c, node: int, name: str) -> float:
    text = c.request(node, "GET", "/metrics").body.decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name + " "))


def _rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_a_consumer_that_stops_reading_costs_bounded_memory_and_ends_slow(make_cluster,
                                                                        protocol):
    """A tail and a watch of everything on follower A whose client stops reading, while
    ~30 MB of batches commit: A's RSS grows no more than follower B's (no consumer) plus
    a margin far below the data volume; after slow_consumer_ms the streams end
    slow_consumer with their resume point and the connection closes 4008."""
    c = make_cluster(protocol, extra="\n[limits]\nrecent_bytes_max = 4000000\n"
                                     "\n[websocket]\nwatch_history_bytes = 4000000\n"
                                     "slow_consumer_ms = 15000\n")
    leader = c.wait_leader()
    a, b = [n for n in c.ids if n != leader]
    writer = SyncClient([url(c, leader)], timeout=30, cafile=c.ca_file)
    writer.batch([{"key": "warm", "value": "x" * 2000}] * 10)
    with WsProbe.of(c, a) as probe:
        tail = probe.subscribe({"op": "tail"})
        watch = probe.subscribe({"op": "watch", "prefix": ""})
        probe.pause_reading()
        before = {n: _rss_kb(c.procs[n].pid) for n in (a, b)}
        volume = 0
        for round_ in range(150):
            ops = [{"key": f"slow/{i}", "value": f"{round_}:" + "v" * 2500} for i in range(80)]
            writer.batch(ops)
            volume += len(json.dumps(ops))
        top = writer.put("slow/done", 1)["index"]
        c.wait_applied(a, top)
        c.wait_applied(b, top)
        growth = {n: _rss_kb(c.procs[n].pid) - before[n] for n in (a, b)}
        assert volume > 25_000_000
        assert growth[a] < growth[b] + 20_000, (growth, volume)
        ended = 'paxoslog_ws_streams_ended_total{reason="slow_consumer"}'
        wait_for(lambda: _metric(c, a, ended) >= 2, 40, what="the streams to end slow")
        probe.resume_reading()
        probe.wait(lambda: probe.closed, 40, "the slow-consumer close")
        assert probe.closed[0] in (4008, 1006)
        for stream in (tail, watch):
            end = probe.end(stream)
            if end is not None:
                assert end["error"] == "slow_consumer" and end["resume_from"] >= 1
        got = probe.entries(tail)
        assert [e["index"] for e in got] == list(range(got[0]["index"],
                                                       got[0]["index"] + len(got)))
    wait_for(lambda: _rss_kb(c.procs[a].pid) > 0, 5, what="node A still running")
    healthy(c, a)
