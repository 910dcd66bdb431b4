"""The client retry planner: which endpoint to try next, after what delay, and what a
request's outcome was when the retries stop.  One pure implementation shared by the three
clients (``SyncClient`` and the Twisted ``Client`` in client.py, the chaos workload); each
is a thin driver that performs the attempts the planner asks for and reports what happened.

Sans-I/O: no sockets, no Twisted, no clock.  The driver passes ``now`` (seconds on any
monotonic clock) into every call and sleeps the delays itself, so the rules can be tested
exhaustively on made-up attempt sequences.

The question behind every rule is "may this request have reached a server?".  A request may
have reached one as soon as any of its bytes may have been written to a connected socket, so
a transport failure is one of three kinds (each client stack has a small function that sorts
its exceptions into them):

* ``NOT_CONNECTED``: no connection was ever open (refused, DNS, connect timeout, a pooled
  connection found closed before anything was written).  Proves nothing was delivered.
* ``SENT``: the connection broke after the request was (maybe partly) written.
* ``TIMED_OUT``: no complete answer within the attempt's timeout after connecting.

``SENT``, ``TIMED_OUT``, a 504 and any other 5xx but 503 are *maybe-delivered*: the write
may have been, or may still be, applied.  A 503 (``unavailable``/``not_leader``/``busy``)
and a 410 (the node was removed) are definite: that attempt applied nothing.

The rules, per request:

=====================  =======================================================================
outcome of an attempt   what the planner does
=====================  =======================================================================
2xx                     stop: ``ANSWERED`` (a write committed, a read answered)
4xx but 410             stop: ``REFUSED`` (bad input, 404...); but a write with an earlier
                        maybe-delivered attempt stops ``UNKNOWN`` (the 4xx says nothing of
                        the earlier copy, e.g. ``stale_sequence``)
503 future revision     stop: ``REFUSED`` (``revision_not_reached`` with ``future``: a read's
                        ``min_revision`` is beyond the cluster's commit point; no node has it)
503, 410, not-connected retry (another endpoint: the leader hint first, honouring Retry-After)
maybe-delivered         retry if the request is *resendable*, else stop ``UNKNOWN``
deadline / attempts     stop: ``UNKNOWN`` for a write with any maybe-delivered attempt,
                        ``NOT_APPLIED`` otherwise
=====================  =======================================================================

A request is resendable when sending it twice is the same as sending it once: a read, a
write carrying a (client_id, sequence) session (the servers' session table answers a
duplicate with the first result, so a later 2xx is the truth), or an idempotent write (the
membership admin calls).  A write without a session is never resent once it may have been
delivered: a second copy could apply twice.  The safety rule that follows: **a write that
may have reached a server is never reported ``NOT_APPLIED``**, whatever later attempts say.
Reads have no effect, so they are never ``UNKNOWN``: a read that failed is ``NOT_APPLIED``.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import Hashable, Mapping, Sequence

__all__ = ["TransportFailure", "NoReply", "Reply", "Request", "RetryPolicy", "Endpoints",
           "RetryPlan", "Attempt", "Finish", "Verdict", "parse_retry_after"]


class TransportFailure(enum.Enum):
    """How an attempt failed without an HTTP answer (see the module docstring)."""

    NOT_CONNECTED = "not-connected"
    SENT = "sent-maybe-delivered"
    TIMED_OUT = "timed-out-after-send"

    @property
    def maybe_delivered(self) -> bool:
        return self is not TransportFailure.NOT_CONNECTED


class Verdict(enum.Enum):
    """What a finished request amounts to."""

    ANSWERED = "answered"          # 2xx: committed (a write) or answered (a read)
    REFUSED = "refused"            # 4xx: the request was refused; nothing was applied
    NOT_APPLIED = "not-applied"    # no attempt could have applied it (reads: it failed)
    UNKNOWN = "unknown"            # a write that may or may not have been applied


@dataclass(frozen=True)
class Reply:
    """An HTTP answer: status, the parsed JSON body (None if absent or unparseable) and
    the Retry-After header in seconds (None when absent)."""

    status: int
    body: object = None
    retry_after_s: float | None = None

    def field(self, name: str, default=None):
        return self.body.get(name, default) if isinstance(self.body, dict) else default

    @property
    def future_revision(self) -> bool:
        """A read refused at a confirmed read point for its ``min_revision``: no node has
        that revision yet, so asking another one now cannot help."""
        return (self.status == 503 and self.field("error") == "revision_not_reached"
                and self.field("future") is True)

    @property
    def maybe_delivered(self) -> bool:
        """Does this answer leave a write's fate open?  2xx and 4xx settle it; 503 says it
        was not applied; 504, 500 and anything odd say the server had it."""
        s = self.status
        return not (200 <= s < 300 or 400 <= s < 500 or s == 503)


@dataclass(frozen=True)
class NoReply:
    """An attempt that ended without an HTTP answer; ``detail`` says why, for messages."""

    kind: TransportFailure
    detail: str = ""

    @property
    def maybe_delivered(self) -> bool:
        return self.kind.maybe_delivered


@dataclass(frozen=True)
class Request:
    """What the planner needs to know of a request: does it change state (``write``) and
    may it be sent again after it may have been delivered (``resendable``)."""

    write: bool
    resendable: bool

    @classmethod
    def read(cls) -> "Request":
        return cls(write=False, resendable=True)

    @classmethod
    def write_with(cls, *, session: bool, idempotent: bool = False) -> "Request":
        """A write; resendable with a (client_id, sequence) ``session`` or when
        ``idempotent`` (applying it twice is applying it once)."""
        return cls(write=True, resendable=session or idempotent)


@dataclass(frozen=True)
class RetryPolicy:
    """Time limits and pacing.  ``timeout_s`` bounds the whole request, retries included;
    each attempt gets at most ``attempt_timeout_s``.  The n-th retry waits ``backoff_s[n]``
    (the last value repeats), or longer when the endpoint it goes to answered with a
    Retry-After, honoured up to ``retry_after_max_s`` (the servers say 1 s, the least a
    header can say, while an election takes a few hundred ms).  ``attempts_max`` (None:
    no limit but the deadline) caps the attempts: 1 makes the planner a classifier."""

    timeout_s: float = 10.0
    attempt_timeout_s: float = 3.0
    backoff_s: tuple[float, ...] = (0.02, 0.05, 0.1, 0.2, 0.3, 0.5)
    retry_after_max_s: float = 0.5
    attempts_max: int | None = None

    def __post_init__(self) -> None:
        if self.timeout_s <= 0 or self.attempt_timeout_s <= 0:
            raise ValueError("timeouts must be positive")
        if not self.backoff_s or min(self.backoff_s) <= 0:
            raise ValueError("backoff_s needs positive delays (a retry must let time pass)")
        if self.retry_after_max_s < 0 or (self.attempts_max is not None
                                          and self.attempts_max < 1):
            raise ValueError("retry_after_max_s >= 0 and attempts_max >= 1")

    def backoff(self, retry_number: int) -> float:
        return self.backoff_s[min(retry_number, len(self.backoff_s) - 1)]


class Endpoints:
    """The endpoints a client knows, kept across its requests: which one leads (when
    known) and which answered last.  An endpoint is any hashable the driver can send to
    (a URL, a node id); ``node_ids`` maps node id -> endpoint, so a leader hint (a node id
    in a 503 body) can be followed."""

    def __init__(self, endpoints: Sequence[Hashable],
                 node_ids: Mapping[int, Hashable] | None = None) -> None:
        if not endpoints:
            raise ValueError("at least one endpoint is needed")
        self.endpoints: list = list(dict.fromkeys(endpoints))
        self.node_ids: dict = dict(node_ids or {})
        self.leader = None
        self.preferred = 0

    def add(self, endpoint: Hashable, node_id: int | None = None) -> None:
        if endpoint not in self.endpoints:
            self.endpoints.append(endpoint)
        if node_id is not None:
            self.node_ids[node_id] = endpoint

    def order(self) -> list:
        """Where to start: the leader, else the last endpoint that answered, then the rest."""
        first = self.leader if self.leader is not None else \
            self.endpoints[self.preferred % len(self.endpoints)]
        return [first] + [e for e in self.endpoints if e != first]

    def note_leader(self, node_id: object):
        """A leader hint; returns its endpoint, or None when the id is unknown."""
        known = isinstance(node_id, int) and not isinstance(node_id, bool)
        endpoint = self.node_ids.get(node_id) if known else None
        if endpoint is not None:
            self.add(endpoint)
            self.leader = endpoint
        return endpoint

    def answered(self, endpoint: Hashable) -> None:
        if endpoint in self.endpoints:
            self.preferred = self.endpoints.index(endpoint)

    def forget(self, endpoint: Hashable) -> None:
        """``endpoint`` failed: stop leading with it."""
        if self.leader == endpoint:
            self.leader = None
        if endpoint in self.endpoints:
            self.preferred = (self.endpoints.index(endpoint) + 1) % len(self.endpoints)


@dataclass(frozen=True)
class Attempt:
    """Instruction: wait ``delay_s``, then send the request to ``endpoint`` and give up on
    that attempt after ``timeout_s``."""

    endpoint: Hashable
    delay_s: float
    timeout_s: float


@dataclass(frozen=True)
class Finish:
    """The request is over.  ``reply`` is the last HTTP answer (None if the last attempt
    had none); ``reason`` says in words what the last attempt ended with."""

    verdict: Verdict
    reply: Reply | None
    reason: str
    attempts: int
    maybe_delivered: bool
    endpoint: Hashable = None


class RetryPlan:
    """The retries of one request.  ``start(now)`` gives the first instruction; after each
    attempt the driver calls ``record(endpoint, outcome, now)`` with a ``Reply`` or a
    ``NoReply`` and follows the ``Attempt`` it returns, until a ``Finish``.  The
    ``Endpoints`` book is updated on the way (leader hints, failed endpoints).

    ``maybe_delivered`` becomes True once an attempt of a write may have reached a server;
    from then on the request can only end ``ANSWERED`` or ``UNKNOWN``."""

    def __init__(self, request: Request, policy: RetryPolicy, book: Endpoints) -> None:
        self.request = request
        self.policy = policy
        self.book = book
        self.deadline = math.inf
        self.attempts = 0
        self.maybe_delivered = False
        self.finished: Finish | None = None
        self._not_before: dict = {}       # endpoint -> when its Retry-After runs out
        self._outstanding = None          # the endpoint of the attempt in flight

    def start(self, now: float) -> Attempt:
        if self.attempts or self._outstanding is not None:
            raise RuntimeError("start() is called once, before any attempt")
        self.deadline = now + self.policy.timeout_s
        return self._attempt(self.book.order()[0], 0.0, now)

    def record(self, endpoint: Hashable, outcome: Reply | NoReply, now: float) -> Attempt | Finish:
        if self.finished is not None or self._outstanding is None:
            raise RuntimeError("record() follows an Attempt instruction")
        self._outstanding = None
        self.attempts += 1
        if isinstance(outcome, Reply):
            return self._on_reply(endpoint, outcome, now)
        self.maybe_delivered |= self.request.write and outcome.maybe_delivered
        self.book.forget(endpoint)
        reason = f"{endpoint}: {outcome.kind.value}" + (f" ({outcome.detail})"
                                                        if outcome.detail else "")
        if outcome.maybe_delivered and not self.request.resendable:
            return self._finish(Verdict.UNKNOWN, None, reason, endpoint)
        return self._retry(endpoint, None, None, reason, now)

    # ------------------------------------------------------------------ rules

    def _on_reply(self, endpoint, reply: Reply, now: float) -> Attempt | Finish:
        reason = f"{endpoint}: HTTP {reply.status}" + (
            f" {reply.field('error')}" if reply.field("error") else "") + (
            f": {reply.field('message')}" if reply.field("message") else "")
        if 200 <= reply.status < 300:
            self.book.answered(endpoint)
            return self._finish(Verdict.ANSWERED, reply, reason, endpoint)
        if (400 <= reply.status < 500 and reply.status != 410) or reply.future_revision:
            verdict = Verdict.UNKNOWN if self.maybe_delivered else Verdict.REFUSED
            return self._finish(verdict, reply, reason, endpoint)
        hint = None
        if reply.maybe_delivered:
            self.maybe_delivered |= self.request.write
            if not self.request.resendable:
                return self._finish(Verdict.UNKNOWN, reply, reason, endpoint)
        else:
            # 503 or 410: a definite "not here".  Only a 503 names who leads.
            self.book.forget(endpoint)
            if reply.status == 503:
                hint = self.book.note_leader(reply.field("leader"))
        if reply.retry_after_s is not None:
            wait = min(max(reply.retry_after_s, 0.0), self.policy.retry_after_max_s)
            self._not_before[endpoint] = now + wait
        return self._retry(endpoint, hint, reply, reason, now)

    def _retry(self, failed, hint, reply: Reply | None, reason: str,
               now: float) -> Attempt | Finish:
        if self.policy.attempts_max is not None and self.attempts >= self.policy.attempts_max:
            return self._give_up(reply, reason, failed)
        earliest = now + self.policy.backoff(self.attempts - 1)
        endpoint = self._next_endpoint(failed, hint, earliest)
        start = max(earliest, self._not_before.get(endpoint, -math.inf))
        if start >= self.deadline:
            return self._give_up(reply, reason, failed)
        return self._attempt(endpoint, start - now, now)

    def _next_endpoint(self, failed, hint, earliest: float):
        """The hint, the known leader, then the endpoints after ``failed`` in turn (itself
        last): the first one whose Retry-After has run out by ``earliest``, else the one
        free soonest."""
        endpoints = self.book.endpoints
        after = endpoints.index(failed) + 1 if failed in endpoints else 0
        turn = endpoints[after:] + endpoints[:after]
        candidates = list(dict.fromkeys(
            [e for e in (hint, self.book.leader) if e is not None and e != failed] + turn))
        for endpoint in candidates:
            if self._not_before.get(endpoint, -math.inf) <= earliest:
                return endpoint
        return min(candidates, key=lambda e: self._not_before[e])

    def _attempt(self, endpoint, delay_s: float, now: float) -> Attempt:
        self._outstanding = endpoint
        timeout_s = min(self.policy.attempt_timeout_s, self.deadline - (now + delay_s))
        return Attempt(endpoint, delay_s, timeout_s)

    def _give_up(self, reply: Reply | None, reason: str, endpoint) -> Finish:
        verdict = Verdict.UNKNOWN if self.maybe_delivered else Verdict.NOT_APPLIED
        return self._finish(verdict, reply, reason, endpoint)

    def _finish(self, verdict: Verdict, reply: Reply | None, reason: str, endpoint) -> Finish:
        self.finished = Finish(verdict, reply, reason, self.attempts, self.maybe_delivered,
                               endpoint)
        return self.finished


def parse_retry_after(value: str | bytes | None) -> float | None:
    """A Retry-After header in delta-seconds; None when absent or an HTTP date (which the
    servers never send)."""
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None
