"""``StreamHub``: the tail and watch subscriptions of one node (docs/websocket.md).

A **tail** delivers committed log entries from an index on, every index once, in order
(no-ops and configuration entries included: the index space has no gaps).  A **watch**
delivers the kv changes under a key or a prefix from a revision (a log index) on, as
``put``/``delete`` events, grouped by revision and never splitting one.  Both come from
this node's own applied log, so a follower serves them too, and both are resumable: a
client that saw everything up to index/revision R subscribes again from R + 1, here or
at any other node, and misses and repeats nothing.

Where the data comes from:

* live: the runner hands every ``Applied`` instruction to ``applied()`` (after the log
  view), before the writers of those entries get their answers.  A subscription that is
  caught up and whose connection is writable gets the new entries or events at once;
  every caught-up subscriber of the same thing (all tails; the watches of one key or
  prefix with the same options) shares one encoding of the message;
* entries from the past: the log view's recent entries (``limits.recent_entries_kept``),
  then the node's WAL read on a thread (walhistory.py), above its last compaction point;
* events from the past: ``EventHistory``, the newest ``websocket.watch_history_events``
  events kept in memory.  Events are *derived*: the kv state machine reports each change
  it makes with the previous record (``CommandApplied.changes``), identical on every
  replica, so they cannot be rebuilt from log entries without the state: what the history
  no longer holds is compacted (read the state with a range query, then watch from its
  ``index`` + 1).

Backpressure: nothing is queued per subscription.  A subscription is a position; when its
connection's transport buffer is full (the transport pauses the connection, a streaming
producer), it simply stops, and on resume it catches up from the log view, the WAL or the
event history.  If its position fell out of those meanwhile, or the connection stays
paused for ``websocket.slow_consumer_ms``, it ends with ``slow_consumer`` and the index to
resume from.  A snapshot install (this node was far behind) ends the subscriptions that
need entries the snapshot replaced: ``compacted`` (another node may still have them).
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Callable, Protocol

from twisted.internet import task
from twisted.logger import Logger

from .errors import ApiError

__all__ = ["StreamHub", "EventHistory", "Subscription", "Sink", "TAIL", "WATCH"]

log = Logger(namespace="paxoslog.streams")

TAIL = "tail"
WATCH = "watch"
_EVENT_OVERHEAD = 48
_PUMP_MESSAGES = 8            # catch-up messages per subscription per reactor turn
_HOW_TO_SNAPSHOT = ("read the state instead: GET /api/v1/log/entries for what this node "
                    "still keeps, a range query (GET /api/v1/consensus/query?prefix=) for the "
                    "kv state with its index, or a backup of every state machine at one "
                    "index (GET /api/v1/snapshot, paxoslog snapshot save)")


class Sink(Protocol):
    """What a subscription needs of its connection (websocket.py)."""

    codec: object
    paused: bool

    def send_stream(self, data: bytes) -> None: ...
    def stream_ended(self, sub: "Subscription") -> None: ...


class Subscription:
    """One tail or watch: a position (``next``: the next index/revision to deliver)."""

    __slots__ = ("stream", "sink", "kind", "next", "key", "prefix", "prev", "group",
                 "last_sent", "pending", "reading", "ended")

    def __init__(self, stream: int, sink: Sink, kind: str, start: int, *, key=None,
                 prefix=None, prev: bool = False) -> None:
        self.stream = stream
        self.sink = sink
        self.kind = kind
        self.next = start
        self.key = key
        self.prefix = prefix
        self.prev = prev
        self.group = (key, prefix, prev)
        self.last_sent = 0.0
        self.pending: list | None = None     # entries read from the WAL, not sent yet
        self.reading = False                 # a WAL read is under way
        self.ended = False

    def matches(self, key: str) -> bool:
        return key == self.key if self.prefix is None else key.startswith(self.prefix)


class EventHistory:
    """The kv changes of recent revisions: ``(revision, changes, weight)`` for every
    revision that changed a key, oldest first.  Every revision >= ``first`` (and up to
    ``last``) is complete here: a revision absent in that range changed no key."""

    def __init__(self, events_max: int, bytes_max: int, first: int) -> None:
        self.events_max = events_max
        self.bytes_max = bytes_max
        self.first = first
        self.last = first - 1
        self._revs: list[int] = []
        self._items: list[tuple] = []
        self._head = 0
        self.events = 0
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._revs) - self._head

    def add(self, revision: int, changes: tuple, weight: int) -> None:
        self._revs.append(revision)
        self._items.append((revision, changes, weight))
        self.events += len(changes)
        self.bytes += weight
        self._trim()

    def advance(self, last: int) -> None:
        """Revisions up to ``last`` are recorded."""
        self.last = max(self.last, last)

    def _trim(self) -> None:
        items = self._items
        while (self.events > self.events_max or self.bytes > self.bytes_max) and \
                self._head < len(items):
            revision, changes, weight = items[self._head]
            items[self._head] = None
            self._head += 1
            self.events -= len(changes)
            self.bytes -= weight
            self.first = revision + 1
        if self._head > 64 and self._head * 2 > len(items):
            del self._revs[:self._head], self._items[:self._head]
            self._head = 0

    def reset(self, first: int) -> None:
        """Forget everything: revisions from ``first`` on will be recorded."""
        self.__init__(self.events_max, self.bytes_max, first)

    def since(self, start: int):
        """The recorded revisions >= ``start`` in order, or None when ``start`` is older
        than the history reaches."""
        if start < self.first:
            return None
        position = bisect_left(self._revs, start, self._head)
        return (self._items[i] for i in range(position, len(self._items)))


def _by_stream(sub: "Subscription") -> int:
    return sub.stream


def render_event(revision: int, change: tuple, prev: bool) -> dict:
    key, record, previous = change
    if record is None:
        event = {"type": "delete", "key": key, "mod_index": revision}
    else:
        event = {"type": "put", "key": key, "value": record[0], "version": record[3],
                 "create_index": record[1], "mod_index": record[2]}
    if prev and previous is not None:
        event["prev"] = {"value": previous[0], "version": previous[3],
                         "create_index": previous[1], "mod_index": previous[2]}
    return event


class StreamHub:
    """``logview``: recent entries; ``wal``: a WalHistory (or None); ``applied_index()``:
    the driver's; ``options``: the conf's [websocket]; ``clock()``: seconds."""

    def __init__(self, reactor, *, logview, wal, applied_index: Callable[[], int],
                 options, clock: Callable[[], float] | None = None) -> None:
        self.reactor = reactor
        self.logview = logview
        self.wal = wal
        self.applied_index = applied_index
        self.options = options
        self.clock = clock or reactor.seconds
        self.events = EventHistory(options.watch_history_events, options.watch_history_bytes,
                                   applied_index() + 1)
        self.subs: set[Subscription] = set()
        self.message_bytes = options.stream_message_bytes
        self._to_pump: set[Subscription] = set()
        self._starting: set[Subscription] = set()    # tails whose start is read from the WAL
        self._pump_call = None
        self._progress = None
        self.stats = {"subscriptions": 0, "messages": 0, "entries": 0, "events": 0,
                      "progress": 0, "wal_reads": 0, "ended_slow_consumer": 0,
                      "ended_compacted": 0}

    # ================================================================== lifecycle

    def start(self) -> None:
        interval = self.options.progress_interval_ms
        if interval:
            self._progress = task.LoopingCall(self.send_progress)
            self._progress.clock = self.reactor
            self._progress.start(interval / 1000.0, now=False)

    def stop(self) -> None:
        if self._progress is not None and self._progress.running:
            self._progress.stop()
        if self._pump_call is not None and self._pump_call.active():
            self._pump_call.cancel()
        self._pump_call = None

    # ================================================================== subscribing

    def first_index(self) -> int:
        """The oldest index the log view keeps (applied + 1 when it keeps none)."""
        first = self.logview.first_index
        return first if first is not None else self.applied_index() + 1

    def subscribe_tail(self, sub: Subscription):
        """Start a tail (``sub.next`` None: from the next applied entry).  Returns the
        subscribe reply body, or a Deferred of it when the start must be read from the
        WAL first; raises ``ApiError`` 410 ``compacted`` when it cannot be served here."""
        applied = self.applied_index()
        if sub.next is None:
            sub.next = applied + 1
        if sub.next > applied or sub.next >= self.first_index():
            return self._started(sub)
        if self.wal is None or not self.wal.enabled:
            raise self._compacted_error(sub.next, self.first_index())
        sub.reading = True
        self._starting.add(sub)
        self.stats["wal_reads"] += 1
        d = self.wal.read(sub.next, min(applied, self.first_index() - 1), self._read_bytes())

        def read(result):
            sub.reading = False
            self._starting.discard(sub)
            if sub.ended:
                # Cancelled, or its connection closed, while the WAL was read: never
                # registered, so nothing renders entries for a client that is gone.
                return {"stream": sub.stream, "kind": sub.kind, "from": sub.next,
                        "cancelled": True}
            entries, first = result
            if not entries or entries[0].index != sub.next:
                lowest = self.first_index() if first is None else min(first, self.first_index())
                raise self._compacted_error(sub.next, lowest)
            sub.pending = entries
            return self._started(sub)

        def failed(failure):
            sub.reading = False
            self._starting.discard(sub)
            return failure
        return d.addCallbacks(read, failed)

    def subscribe_watch(self, sub: Subscription) -> dict:
        """Start a watch; raises ``ApiError`` 410 ``compacted`` when its start revision is
        older than the event history."""
        if sub.next is None:
            sub.next = self.applied_index() + 1
        if sub.next < self.events.first:
            self.stats["ended_compacted"] += 1
            raise ApiError(410, "compacted",
                           f"revision {sub.next} is older than this node's watch history, "
                           f"which starts at revision {self.events.first}; {_HOW_TO_SNAPSHOT}"
                           f", then watch from its index + 1",
                           extra={"first_revision": self.events.first})
        return self._started(sub)

    def _compacted_error(self, start: int, first: int) -> ApiError:
        self.stats["ended_compacted"] += 1
        return ApiError(410, "compacted", f"index {start} is no longer in this node's log "
                                          f"(the first it can serve is {first}); another node "
                                          f"may still have it, else {_HOW_TO_SNAPSHOT}",
                        extra={"first_index": first})

    def _started(self, sub: Subscription) -> dict:
        self.subs.add(sub)
        self.stats["subscriptions"] += 1
        sub.last_sent = self.clock()
        self._schedule(sub)
        body = {"stream": sub.stream, "kind": sub.kind, "from": sub.next,
                "applied_index": self.applied_index()}
        if sub.kind == WATCH:
            body["first_revision"] = self.events.first
        else:
            body["first_index"] = self.first_index()
        return body

    def cancel(self, sub: Subscription) -> None:
        sub.ended = True
        self.subs.discard(sub)
        self._starting.discard(sub)
        self._to_pump.discard(sub)
        sub.pending = None

    def end(self, sub: Subscription, code: str, message: str, **extra) -> None:
        """End ``sub`` with an error message the client sees (then the sink forgets it)."""
        if sub.ended:
            return
        self.cancel(sub)
        self.stats[f"ended_{code}"] = self.stats.get(f"ended_{code}", 0) + 1
        body = {"type": "end", "error": code, "message": message, "resume_from": sub.next}
        body.update(extra)
        codec = sub.sink.codec
        sub.sink.send_stream(codec.spliced(sub.stream, codec.shared(body)))
        sub.sink.stream_ended(sub)

    # ================================================================== the applied log

    def applied(self, op) -> None:
        """An ``Applied`` instruction (after the log view recorded its entries)."""
        entries = op.entries
        if not entries:
            return
        first, last = entries[0].index, entries[-1].index
        by_revision: dict[int, list] = {}
        for outcome in op.outcomes:
            if outcome.changes:
                found = by_revision.get(outcome.index)
                if found is None:
                    by_revision[outcome.index] = list(outcome.changes)
                else:
                    found += outcome.changes
        revisions = []
        if by_revision:
            for entry in entries:
                changes = by_revision.get(entry.index)
                if changes is not None:
                    weight = (sum(len(d) for d in entry.payload)
                              + _EVENT_OVERHEAD * len(changes))
                    revisions.append((entry.index, tuple(changes), weight))
                    self.events.add(entry.index, revisions[-1][1], weight)
        self.events.advance(last)
        if not self.subs:
            return
        tails = []
        groups: dict[tuple, list] = {}
        for sub in self.subs:
            if sub.next != first or sub.sink.paused or sub.reading or sub.pending:
                if sub.next <= last and not sub.sink.paused:
                    self._schedule(sub)
                continue
            if sub.kind == TAIL:
                tails.append(sub)
            else:
                groups.setdefault(sub.group, []).append(sub)
        now = self.clock()
        if tails:
            rendered = self._tail_messages(entries)
            self._deliver(tails, rendered, last, now, "entries")
        for subs in groups.values():
            messages = self._event_messages(subs[0], revisions, last, last)
            self._deliver(subs, messages, last, now, "events")

    def _deliver(self, subs: list, messages: list, last: int, now: float, what: str) -> None:
        """Send ``messages`` [(upto, rest, count)] to every sub in ``subs``: one shared
        encoding per codec, and one message object per stream id (subscribers with the
        same stream id get the same bytes, which the connection frames once); a sub whose
        connection fills up stops where it is."""
        shared: dict = {}
        spliced: dict = {}
        subs.sort(key=_by_stream)            # equal stream ids back to back: one framing
        for sub in subs:
            sink = sub.sink
            codec = sink.codec
            for upto, rest, count in messages:
                if sink.paused or sub.ended:
                    break
                key = (id(codec), upto, sub.stream)
                message = spliced.get(key)
                if message is None:
                    encoded = shared.get(key[:2])
                    if encoded is None:
                        encoded = shared[key[:2]] = codec.shared(rest)
                    message = spliced[key] = codec.spliced(sub.stream, encoded)
                sink.send_stream(message)
                sub.next = upto + 1
                sub.last_sent = now
                self.stats["messages"] += 1
                self.stats[what] += count
            else:
                sub.next = last + 1

    # ================================================================== messages

    def _read_bytes(self) -> int:
        return 4 * self.message_bytes

    def _tail_messages(self, items) -> list:
        """[(upto, rest, count)] for entries (``Entry`` or log view tuples), cut at about
        ``stream_message_bytes`` of payload."""
        render = self.logview.render
        messages = []
        batch = []
        size = 0
        for item in items:
            index, term, kind, payload = item[0], item[1], item[2], item[3]
            weight = sum(len(d) for d in payload) + 64
            if batch and size + weight > self.message_bytes:
                messages.append((batch[-1]["index"], {"type": "entries", "entries": batch},
                                 len(batch)))
                batch, size = [], 0
            batch.append(render(index, term, kind, payload))
            size += weight
        if batch:
            messages.append((batch[-1]["index"], {"type": "entries", "entries": batch},
                             len(batch)))
        return messages

    def _event_messages(self, sub: Subscription, revisions, last: int, through: int,
                        most: int | None = None) -> list:
        """[(upto, rest, count)] for the events of ``revisions`` that ``sub`` (its group)
        wants, cut at revision boundaries beyond about ``stream_message_bytes``.  The last
        message covers ``through`` (so the watcher knows it is current up to there) and
        is sent only if it holds events.  ``most``: stop after that many messages (a
        catching-up watch sends one per pump: rendering the whole backlog for each made
        its catch-up quadratic)."""
        messages = []
        events = []
        size = 0
        upto = None
        matches, prev = sub.matches, sub.prev
        for revision, changes, weight in revisions:
            if revision > last:
                break
            found = False
            for change in changes:
                if matches(change[0]):
                    events.append(render_event(revision, change, prev))
                    found = True
            if found:
                size += weight
                upto = revision
                if size >= self.message_bytes:
                    messages.append((upto, {"type": "events", "revision": upto,
                                            "events": events}, len(events)))
                    if most is not None and len(messages) >= most:
                        return messages
                    events, size = [], 0
        if events:
            messages.append((through, {"type": "events", "revision": through,
                                       "events": events}, len(events)))
        return messages

    # ================================================================== catching up

    def resume(self, sink) -> None:
        """``sink``'s connection is writable again: its subscriptions catch up."""
        for sub in list(self.subs):
            if sub.sink is sink:
                self._schedule(sub)

    def paused(self, sink) -> None:
        """``sink``'s connection filled up: WAL entries read for it are dropped (read
        again on resume), so a stalled client holds no memory here."""
        for sub in self.subs:
            if sub.sink is sink:
                sub.pending = None

    def _schedule(self, sub: Subscription) -> None:
        self._to_pump.add(sub)
        if self._pump_call is None:
            self._pump_call = self.reactor.callLater(0, self._pump_all)

    def _pump_all(self) -> None:
        self._pump_call = None
        subs, self._to_pump = self._to_pump, set()
        for sub in subs:
            if not sub.ended:
                try:
                    self._pump(sub)
                except Exception:
                    log.failure("stream {stream} failed", stream=sub.stream)
                    self.end(sub, "internal", "internal error")

    def _pump(self, sub: Subscription) -> None:
        """Send what ``sub`` is missing, a few messages per turn."""
        applied = self.applied_index()
        sink = sub.sink
        for _ in range(_PUMP_MESSAGES):
            if sub.ended or sink.paused or sub.reading or sub.next > applied:
                return
            if sub.kind == TAIL:
                if not self._pump_tail(sub, applied):
                    return
            elif not self._pump_watch(sub, applied):
                return
        if sub.next <= applied:
            self._schedule(sub)

    def _send(self, sub: Subscription, upto: int, rest: dict, count: int, what: str) -> None:
        codec = sub.sink.codec
        sub.sink.send_stream(codec.spliced(sub.stream, codec.shared(rest)))
        sub.next = upto + 1
        sub.last_sent = self.clock()
        self.stats["messages"] += 1
        self.stats[what] += count

    def _pump_tail(self, sub: Subscription, applied: int) -> bool:
        if sub.pending:
            entries = sub.pending
            if entries[0].index != sub.next:
                sub.pending = None
                return True
            upto, rest, count = self._tail_messages(entries)[0]
            sub.pending = entries[count:] or None
            self._send(sub, upto, rest, count, "entries")
            return True
        items = self.logview.since(sub.next, applied, self.message_bytes)
        if items is not None:
            upto, rest, count = self._tail_messages(items)[0]
            self._send(sub, upto, rest, count, "entries")
            return True
        first = self.first_index()
        if sub.next >= first:
            return False                       # not applied yet
        if self.wal is None or not self.wal.enabled:
            self.end(sub, "slow_consumer", f"the stream fell behind what this node keeps "
                                           f"(from index {first})", first_index=first)
            return False
        sub.reading = True
        self.stats["wal_reads"] += 1
        start = sub.next
        d = self.wal.read(start, min(applied, first - 1), self._read_bytes())
        d.addCallbacks(self._wal_read, self._wal_failed, callbackArgs=(sub, start),
                       errbackArgs=(sub,))
        return False

    def _wal_read(self, result, sub: Subscription, start: int) -> None:
        sub.reading = False
        if sub.ended or sub.next != start:
            return
        entries, first = result
        if not entries or entries[0].index != start:
            lowest = self.first_index() if first is None else min(first, self.first_index())
            self.end(sub, "slow_consumer", f"the stream fell behind what this node keeps: "
                                           f"index {start} is gone (the first it can serve is "
                                           f"{lowest}); resume elsewhere or "
                                           f"{_HOW_TO_SNAPSHOT}", first_index=lowest)
            return
        if not sub.sink.paused:
            sub.pending = entries
        self._schedule(sub)

    def _wal_failed(self, failure, sub: Subscription) -> None:
        sub.reading = False
        log.error("reading the WAL for stream {stream} failed: {error}", stream=sub.stream,
                  error=failure.getErrorMessage())
        self.end(sub, "unavailable", "reading this node's log failed; resume elsewhere")

    def _pump_watch(self, sub: Subscription, applied: int) -> bool:
        revisions = self.events.since(sub.next)
        if revisions is None:
            self.end(sub, "slow_consumer", f"the watch fell behind this node's event history "
                                           f"(from revision {self.events.first}); "
                                           f"{_HOW_TO_SNAPSHOT}, then watch from its index + 1",
                     first_revision=self.events.first)
            return False
        through = min(applied, self.events.last)
        messages = self._event_messages(sub, revisions, through, through, most=1)
        if not messages:
            sub.next = through + 1             # nothing it wants up to there
            return False
        upto, rest, count = messages[0]
        self._send(sub, upto, rest, count, "events")
        return True

    # ================================================================== upkeep

    def installed(self, index: int) -> None:
        """A received snapshot replaced the state at ``index``: neither entries nor events
        up to it exist here; subscriptions that still need them end ``compacted``."""
        self.events.reset(index + 1)
        for sub in list(self.subs):
            if sub.next <= index:
                self.end(sub, "compacted", f"this node installed a snapshot at index {index}: "
                                           f"what came before is not in its log; resume at "
                                           f"another node, or {_HOW_TO_SNAPSHOT}",
                         first_index=index + 1)

    def send_progress(self) -> None:
        """A progress message to every caught-up subscription that has been quiet for a
        progress interval: it is current up to the applied index."""
        now = self.clock()
        quiet = now - self.options.progress_interval_ms / 1000.0
        applied = self.applied_index()
        shared: dict = {}
        for sub in list(self.subs):
            if sub.ended or sub.sink.paused or sub.next <= applied or sub.last_sent > quiet:
                continue
            codec = sub.sink.codec
            key = (id(codec), sub.kind, sub.next)     # each stream's own position
            encoded = shared.get(key)
            if encoded is None:
                field = "revision" if sub.kind == WATCH else "index"
                encoded = shared[key] = codec.shared({"type": "progress", field: sub.next - 1})
            sub.sink.send_stream(codec.spliced(sub.stream, encoded))
            sub.last_sent = now
            self.stats["progress"] += 1

    def slow_consumer(self, sink) -> None:
        """``sink``'s client did not read for ``slow_consumer_ms``: end its streams."""
        for sub in list(self.subs):
            if sub.sink is sink:
                self.end(sub, "slow_consumer",
                         f"the client read nothing for {self.options.slow_consumer_ms} ms "
                         f"(websocket.slow_consumer_ms); resume from resume_from")

    def sink_closed(self, sink) -> None:
        for sub in [*self.subs, *self._starting]:
            if sub.sink is sink:
                self.cancel(sub)
