"""The stream hub (paxoslog/server/streams.py) on a task.Clock with fake connections: live
tails and watches share one encoding, catch-up from the log view and the event history,
pause/resume without queueing, slow consumers, compacted starts, snapshot installs,
progress messages; and the message codecs' splicing and input checks."""

from __future__ import annotations

import json

import cbor2
import pytest
from twisted.internet import defer, task

from paxoslog.config import WebSocketConf
from paxoslog.core.log import ENTRY_NOOP, ENTRY_NORMAL, Entry
from paxoslog.node.commands import encode_command
from paxoslog.node.instructions import EXECUTED, Applied, CommandApplied
from paxoslog.server.errors import ApiError
from paxoslog.server.logview import LogView
from paxoslog.server.streams import TAIL, WATCH, EventHistory, StreamHub, Subscription
from paxoslog.server.wscodec import BadMessage, CborCodec, JsonCodec, plain_exceeds


class Sink:
    def __init__(self, codec=None) -> None:
        self.codec = codec or JsonCodec(32)
        self.paused = False
        self.sent: list[bytes] = []
        self.ended: list[int] = []

    def send_stream(self, data: bytes) -> None:
        self.sent.append(data)

    def stream_ended(self, sub) -> None:
        self.ended.append(sub.stream)

    def messages(self) -> list[dict]:
        decode = (lambda b: cbor2.loads(b)) if self.codec.binary else json.loads
        return [decode(b) for b in self.sent]


class FakeWal:
    def __init__(self, entries=(), first=None) -> None:
        self.entries = {e.index: e for e in entries}
        self.first = first
        self.enabled = True
        self.reads = []

    def read(self, start, end, bytes_max):
        self.reads.append((start, end))
        out = []
        index = start
        while index <= end and index in self.entries:
            out.append(self.entries[index])
            index += 1
        return defer.succeed((out, self.first))


class Node:
    """A log of kv puts applied through a LogView and a hub, like the runner does."""

    def __init__(self, kept: int = 100, events_max: int = 1000, wal=None, **options) -> None:
        self.clock = task.Clock()
        self.applied = 0
        self.logview = LogView(kept, 1 << 30, False, lambda t: t, 1000)
        conf = WebSocketConf(watch_history_events=events_max, progress_interval_ms=1000,
                             stream_message_bytes=options.pop("message_bytes", 1 << 20),
                             **options)
        self.hub = StreamHub(self.clock, logview=self.logview, wal=wal,
                             applied_index=lambda: self.applied, options=conf,
                             clock=self.clock.seconds)
        self.hub.start()
        self.values: dict = {}

    def apply(self, *puts, noop: bool = False) -> int:
        """One entry: kv puts ``(key, value)``; its index."""
        index = self.applied + 1
        if noop:
            entry = Entry(index, 1, ENTRY_NOOP, ())
            outcomes = []
        else:
            datas = []
            outcomes = []
            for key, value in puts:
                data = encode_command("kv", {"op": "put", "key": key, "value": value}, "c",
                                      index, 0)
                datas.append(data)
                prev = self.values.get(key)
                record = (value, prev[1] if prev else index, index, prev[3] + 1 if prev else 1)
                self.values[key] = record
                outcomes.append(CommandApplied(index, 1, "kv", {}, None, EXECUTED, {},
                                               ((key, record, prev),)))
            entry = Entry(index, 1, ENTRY_NORMAL, tuple(datas))
        self.applied = index
        op = Applied([entry], outcomes)
        self.logview.applied(op)
        self.hub.applied(op)
        return index

    def turn(self) -> None:
        self.clock.advance(0)


def tail(node: Node, sink: Sink, start=None, stream: int = 1) -> Subscription:
    sub = Subscription(stream, sink, TAIL, start)
    result = node.hub.subscribe_tail(sub)
    assert isinstance(result, dict), result
    return sub


def watch(node: Node, sink: Sink, start=None, stream: int = 1, **kw) -> Subscription:
    sub = Subscription(stream, sink, WATCH, start, **kw)
    node.hub.subscribe_watch(sub)
    return sub


def indexes(sink: Sink) -> list[int]:
    return [e["index"] for m in sink.messages() if m.get("type") == "entries"
            for e in m["entries"]]


def test_a_live_tail_gets_every_entry_once_in_order():
    """From now: each applied entry goes out at once, no-ops included."""
    node = Node()
    node.apply(("a", 1))
    sink = Sink()
    sub = tail(node, sink)
    assert sub.next == 2
    node.apply(("a", 2))
    node.apply(noop=True)
    node.apply(("b", 3), ("c", 4))
    node.turn()
    assert indexes(sink) == [2, 3, 4]
    last = sink.messages()[-1]
    assert last["stream"] == 1 and len(last["entries"][0]["command"]) == 2


def test_live_subscribers_share_one_encoding_and_only_the_stream_id_differs():
    """Two tails and two watches of one prefix: each message is the shared encoding with
    its own stream id, in both codecs."""
    node = Node()
    json_sink, cbor_sink = Sink(), Sink(CborCodec(32))
    tail(node, json_sink, stream=1)
    tail(node, cbor_sink, stream=7)
    watch(node, json_sink, stream=2, prefix="k")
    watch(node, cbor_sink, stream=8, prefix="k")
    node.apply(("k1", "v"), ("x", 0))
    a, b = json_sink.messages(), cbor_sink.messages()
    assert [m["stream"] for m in a] == [1, 2] and [m["stream"] for m in b] == [7, 8]
    for m, n in zip(a, b):
        m.pop("stream"), n.pop("stream")
        assert m == n
    assert a[1]["events"] == [{"type": "put", "key": "k1", "value": "v", "version": 1,
                               "create_index": 1, "mod_index": 1}]


def test_a_tail_from_the_past_catches_up_from_the_log_view_then_goes_live():
    """Start at 2 of 5 applied: 2..5 from the log view, then 6 live, nothing twice."""
    node = Node()
    for i in range(5):
        node.apply((f"k{i}", i))
    sink = Sink()
    sub = tail(node, sink, start=2)
    node.apply(("late", 0))             # before the catch-up ran: not live yet
    node.turn()
    node.apply(("live", 0))
    node.turn()
    assert indexes(sink) == [2, 3, 4, 5, 6, 7] and sub.next == 8


def test_a_paused_connection_queues_nothing_and_catches_up_on_resume():
    """While paused no message is built for it; on resume it gets everything it missed,
    from the log view."""
    node = Node()
    sink = Sink()
    tail(node, sink)
    node.apply(("a", 1))
    sink.paused = True
    node.hub.paused(sink)
    for i in range(20):
        node.apply(("a", i))
    node.turn()
    assert indexes(sink) == [1]
    sink.paused = False
    node.hub.resume(sink)
    for _ in range(5):
        node.turn()
    assert indexes(sink) == list(range(1, 22))


def node_behind_its_log_view() -> tuple[Node, list[Entry]]:
    """A node whose log view keeps 5 of its 10 entries, and the entries (for a WAL)."""
    node = Node(kept=5)
    entries = []
    for i in range(10):
        node.apply((f"k{i}", i))
        entries.append(Entry(i + 1, 1, ENTRY_NORMAL, node.logview.recent[-1][3]))
    return node, entries


def test_a_tail_behind_the_log_view_reads_the_wal_then_the_log_view():
    """The log view keeps 5 entries; a tail from 1 reads 1..N from the WAL first."""
    node, entries = node_behind_its_log_view()
    node.hub.wal = FakeWal(entries, first=1)
    sink = Sink()
    result = node.hub.subscribe_tail(Subscription(1, sink, TAIL, 1))
    assert isinstance(result, defer.Deferred) and result.result["from"] == 1
    for _ in range(5):
        node.turn()
    assert indexes(sink) == list(range(1, 11))


class SlowWal(FakeWal):
    """A WAL whose reads answer only when ``finish()`` is called."""

    def read(self, start, end, bytes_max):
        self.pending = (super().read(start, end, bytes_max).result, defer.Deferred())
        return self.pending[1]

    def finish(self) -> None:
        self.pending[1].callback(self.pending[0])


@pytest.mark.parametrize("how", ["cancel", "close"])
def test_a_tail_cancelled_or_closed_while_its_start_is_read_is_never_registered(how):
    """A tail from the past reads its start from the WAL; cancelled (or its connection
    closed) meanwhile, it used to be registered when the read finished, and every later
    entry was rendered and sent to a client that was gone (found by a review)."""
    node, entries = node_behind_its_log_view()
    node.hub.wal = SlowWal(entries, first=1)
    sink = Sink()
    sub = Subscription(1, sink, TAIL, 1)
    result = node.hub.subscribe_tail(sub)
    if how == "cancel":
        node.hub.cancel(sub)
    else:
        node.hub.sink_closed(sink)
    node.hub.wal.finish()
    assert result.result["cancelled"] is True
    node.apply(("late", 1))
    for _ in range(5):
        node.turn()
    assert node.hub.subs == set() and sink.sent == []

def test_a_tail_start_nobody_keeps_is_refused_compacted_with_the_first_index():
    """Below the log view and below what the WAL can serve: 410 compacted."""
    node = Node(kept=3)
    for i in range(6):
        node.apply((f"k{i}", i))
    node.hub.wal = FakeWal([], first=3)
    d = node.hub.subscribe_tail(Subscription(1, Sink(), TAIL, 1))
    failure = []
    d.addErrback(failure.append)
    error = failure[0].value
    assert isinstance(error, ApiError) and error.status == 410 and error.code == "compacted"
    assert error.extra == {"first_index": 3}


def test_a_watch_from_an_old_revision_replays_then_goes_live():
    """Events from revision 2 under prefix p/, each revision whole, then live ones."""
    node = Node()
    node.apply(("p/a", 1))
    node.apply(("q", 1), ("p/b", 2))
    node.apply(("p/a", 3))
    sink = Sink()
    sub = watch(node, sink, start=2, prefix="p/", prev=True)
    node.turn()
    node.apply(("p/c", 4))
    got = [(e["key"], e["mod_index"]) for m in sink.messages() for e in m.get("events", [])]
    assert got == [("p/b", 2), ("p/a", 3), ("p/c", 4)]
    replay = sink.messages()[0]
    assert replay["revision"] == 3 and replay["events"][1]["prev"]["value"] == 1
    assert sub.next == 5


def test_a_watch_older_than_the_history_is_compacted_and_a_lagging_one_ends_slow():
    """The history keeps 3 events: a start before it is 410 compacted; a paused watcher
    whose position falls out of it ends slow_consumer with the revision to resume from."""
    node = Node(events_max=3)
    sink = Sink()
    sub = watch(node, sink, prefix="")
    node.apply(("k", 0))
    sink.paused = True
    start = sub.next
    for i in range(5):
        node.apply(("k", i))
    assert node.hub.events.first == 4
    with pytest.raises(ApiError) as refused:
        watch(node, Sink(), start=3, prefix="", stream=2)
    assert refused.value.status == 410 and refused.value.code == "compacted"
    assert refused.value.extra == {"first_revision": 4}
    sink.paused = False
    node.hub.resume(sink)
    node.turn()
    end = sink.messages()[-1]
    assert end["type"] == "end" and end["error"] == "slow_consumer"
    assert end["resume_from"] == start == 2 and sink.ended == [1]


def test_a_watch_of_one_key_skips_other_keys_and_stays_current():
    """Revisions without its key send nothing; a later event says the revision."""
    node = Node()
    sink = Sink()
    sub = watch(node, sink, key="a")
    node.apply(("b", 1))
    node.apply(("a", 2))
    assert [m["revision"] for m in sink.messages()] == [2] and sub.next == 3


def test_progress_tells_a_quiet_subscriber_how_current_it_is():
    """After a quiet progress interval: {"type": "progress"} with the applied index."""
    node = Node()
    sink = Sink()
    watch(node, sink, key="a", stream=1)
    tail(node, sink, stream=2)
    node.apply(("b", 1))
    sink.sent.clear()
    node.clock.advance(1.0)
    node.clock.advance(1.0)
    progress = sink.messages()
    assert {"stream": 1, "type": "progress", "revision": 1} in progress
    assert {"stream": 2, "type": "progress", "index": 1} in progress



def test_progress_on_one_connection_tells_each_stream_its_own_position():
    """Two watches on one connection, one current at revision 2, one waiting for a
    revision to come: the progress of each names its own position.  They once shared one
    encoding per connection and kind, so the current watch could be told it had seen a
    revision it had not, and skip events (found by a review)."""
    node = Node()
    sink = Sink()
    node.apply(("a", 1))
    node.apply(("b", 1))
    watch(node, sink, key="a", stream=1, start=5)      # ahead: resumed from a lagging node
    watch(node, sink, key="a", stream=2)
    sink.sent.clear()
    node.clock.advance(1.0)
    node.clock.advance(1.0)
    progress = {m["stream"]: m["revision"] for m in sink.messages()
                if m.get("type") == "progress"}
    assert progress.get(2) == 2 and progress.get(1, 4) == 4


def test_a_catching_up_watch_renders_each_event_about_once(monkeypatch):
    """A watch from revision 1 over a long history is sent a message per pump; each pump
    used to render every event left, so catching up was quadratic (7 s of event loop for
    16 watches over 100,000 events: found by a review)."""
    import paxoslog.server.streams as streams
    rendered = []
    real = streams.render_event
    monkeypatch.setattr(streams, "render_event",
                        lambda *a: rendered.append(1) or real(*a))
    node = Node(message_bytes=1024, events_max=100_000)
    for i in range(2000):
        node.apply((f"k{i}", "x" * 50))
    sink = Sink()
    rendered.clear()
    watch(node, sink, prefix="", start=1)
    for _ in range(200):
        node.turn()
    events = [e for m in sink.messages() if m.get("type") == "events" for e in m["events"]]
    assert len(events) == 2000
    assert len(rendered) < 2 * 2000

def test_a_snapshot_install_ends_subscriptions_that_need_what_it_replaced():
    """installed(10) ends a subscription at 5 with compacted (first index 11) and keeps
    one already past 10."""
    node = Node()
    behind, ahead = Sink(), Sink()
    tail(node, behind, start=1)
    sub = tail(node, ahead, start=20)
    node.hub.installed(10)
    end = behind.messages()[-1]
    assert end["type"] == "end" and end["error"] == "compacted" and end["first_index"] == 11
    assert sub in node.hub.subs and node.hub.events.first == 11


def test_big_batches_are_cut_into_messages_at_revision_boundaries():
    """stream_message_bytes 1 KiB: many messages, none splitting a revision."""
    node = Node(message_bytes=1024)
    sink = Sink()
    watch(node, sink, prefix="")
    tail(node, sink, stream=2)
    for i in range(10):
        node.apply(*[(f"k{j}", "x" * 100) for j in range(5)])
    events = [m for m in sink.messages() if m.get("type") == "events"]
    assert len(events) > 1
    for m in events:
        assert {e["mod_index"] for e in m["events"]} <= set(range(1, m["revision"] + 1))
        assert len(m["events"]) % 5 == 0
    assert indexes(sink) == list(range(1, 11))


def test_the_event_history_trims_whole_revisions_and_moves_its_first_revision():
    """Beyond events_max the oldest revisions go and ``first`` follows."""
    history = EventHistory(events_max=4, bytes_max=1 << 20, first=1)
    for revision in range(1, 6):
        history.add(revision, (("k", None, None),) * 2, 10)
    assert history.first == 4 and len(history) == 2
    assert [r for r, _, _ in history.since(4)] == [4, 5] and history.since(3) is None


def test_codecs_refuse_garbage_deep_nesting_and_non_json_values():
    """Malformed JSON/CBOR, too deep, a CBOR byte string or tag, NaN: BadMessage."""
    codec = JsonCodec(4)
    with pytest.raises(BadMessage, match="malformed JSON"):
        codec.decode(b"{nope")
    with pytest.raises(BadMessage, match="nests deeper"):
        codec.decode(json.dumps({"a": [[[[[[[[1]]]]]]]]}).encode())
    with pytest.raises(BadMessage, match="UTF-8"):
        codec.decode(b'"\xff"')
    with pytest.raises(BadMessage):
        codec.decode(b'{"v": NaN}')
    cbor = CborCodec(4)
    with pytest.raises(BadMessage, match="bytes"):
        cbor.decode(cbor2.dumps({"v": b"raw"}))
    with pytest.raises(BadMessage):
        cbor.decode(cbor2.dumps(cbor2.CBORTag(99, 1)))
    with pytest.raises(BadMessage, match="malformed CBOR"):
        cbor.decode(b"\xff\xff")
    assert plain_exceeds({"a": [1, 2.5, None, True, "x"]}, 3) is None
    assert cbor.decode(cbor2.dumps([{"id": 1}])) == [{"id": 1}]


def test_the_cbor_codec_refuses_integers_json_cannot_print_and_shared_values():
    """A 5,000-digit bignum (no JSON encoder prints it) and value sharing (tags 28/29: a
    small frame, an exponential tree) are refused; a 70-bit bignum is a plain integer."""
    codec = CborCodec(4)
    with pytest.raises(BadMessage, match="too large for JSON"):
        codec.decode(cbor2.dumps({"v": [1, {"x": -(10 ** 5000)}]}))
    shared = [1]
    for _ in range(3):
        shared = [shared, shared]
    with pytest.raises(BadMessage, match="tag 28"):
        CborCodec(32).decode(cbor2.dumps({"v": shared}, value_sharing=True))
    assert codec.decode(cbor2.dumps({"v": 2 ** 70})) == {"v": 2 ** 70}


@pytest.mark.parametrize("raw", [b'{"v": "\\ud800"}', b'{"v": ["a", {"x": "b\\uDFFFc"}]}',
                                 b'{"\\udc00": 1}', b'{"v": "\\ude00\\ud83d"}'])
def test_the_json_codec_refuses_a_lone_surrogate(raw):
    """Half of a UTF-16 pair decodes to a string no UTF-8 encoder takes: refused, in a
    key or a value, at any depth (a reversed pair is two lone halves)."""
    with pytest.raises(BadMessage, match="lone UTF-16 surrogate"):
        JsonCodec(4).decode(raw)


def test_the_json_codec_takes_a_surrogate_pair_and_escapes_outside_the_range():
    codec = JsonCodec(4)
    assert codec.decode(b'{"v": "\\ud83d\\ude00 \\u00e9 \\uFFFF"}') == {"v": "\U0001f600 \u00e9 \uffff"}


def test_spliced_messages_equal_plain_encodings():
    """shared + spliced is byte-for-byte a message with the stream id first."""
    rest = {"type": "events", "revision": 3, "events": [{"k": "v"}]}
    for codec in (JsonCodec(8), CborCodec(8)):
        message = codec.spliced(12345, codec.shared(rest))
        assert codec.decode(message) == {"stream": 12345, **rest}
        assert message == codec.encode({"stream": 12345, **rest})
