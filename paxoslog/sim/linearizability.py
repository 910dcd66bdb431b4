"""Linearizability checker for key-value client histories.

The search is Wing & Gong's, with Lowe's memoisation, as Porcupine implements it
(github.com/anishathalye/porcupine, ``checkSingle``): the history becomes a doubly
linked list of call and return entries sorted by time; the search repeatedly
linearizes ("lifts") the earliest pending call the model accepts, and backtracks
when it reaches a return entry whose call could not be placed.  A cache of
(linearized-ops bitset, model state) pairs prunes states already explored.  The
history is first split per key (P-compositionality: a key-value store is
linearizable iff each key's sub-history is), and keys are checked one by one.

Model, per key: the state is the value, or None when the key is absent.

* ``put(value)``: sets the value.
* ``delete``: makes the key absent.
* ``get``: must return the current value (None = absent).
* ``cas(expected, value)``: if current == expected, sets value and returns True;
  otherwise returns False and changes nothing.  ``expected=None`` means "absent".

Values are compared with ``==`` (so ``1``, ``1.0`` and ``True`` are the same value),
and a stored None is indistinguishable from an absent key.

Indeterminate operations (``ret is None``: timed out, outcome unknown) may take
effect at any point after their call, or never; their output is unconstrained.
Following Porcupine they are treated as returning at +infinity, and the search
stops as soon as every completed operation is linearized, so an indeterminate
operation never has to be placed.

Plain WGL blows up on two common shapes of history: pending indeterminate writes
(writes lost in a partition, then reads: the search tries every subset of them at
every later position) and many concurrent reads (every subset of them before a
write).  These rules cut the search down; each keeps a linearization whenever one
exists, because an indeterminate operation may always be left out of a
linearization and a read leaves the state unchanged:

1. Before the search, an indeterminate write (put, delete, cas) is removed when
   no operation could have observed the value it writes: no completed get
   returning it and no completed successful cas expecting it after the write's
   call, no indeterminate cas expecting it, and no completed cas that failed
   after the write's call (etcd's robustness tests "patch" such writes likewise).
2. An indeterminate operation is not linearized where it leaves the state
   unchanged.
3. A put or delete is not linearized right after an indeterminate operation (that
   operation would be overwritten unseen; the order without it covers the case).
4. A completed read (a get, or a cas that returned False) the model accepts is
   linearized at once, and when that branch fails the alternatives are not
   tried: everything that must precede the read is already linearized (its call
   is reached only after every earlier return), so any linearization can be
   rearranged to place it there.
5. Values that no operation reads (no completed get returns them, no cas expects
   them) are one model state: every operation treats them alike.
6. Indeterminate writes with the same effect on every state (all deletes; puts of
   one value, every value nobody reads counting as one; cas ops with the same
   expected and new values) are interchangeable, so only the earliest-called one not yet linearized is tried:
   a linearization that uses m of them at some positions can use the m earliest
   called ones at the same positions instead (the i-th earliest is called no later
   than the i-th position, and none of them has a return to respect).  Many
   pending deletes and unread writes (a partition's lost writes) once made the
   search try every subset of them at every position (seed 40072 of the
   simulator's membership profile gave up after 558 million steps).

Also before the search, a completed read of a value that no operation invoked
before the read returned could have written is reported at once, without a search.

Caller's obligations: pass only operations that either completed with a known
result or whose outcome is unknown; operations known to have failed without
effect must be left out.  Results of ``None`` (gave up at the deadline) must be
treated as failures, never as passes.  The search is exponential in the worst case
(many concurrent or indeterminate operations on one key), and proving a long
history *not* linearizable costs far more than accepting a legal one, since every
alternative must be exhausted; keep per-key concurrency low and always pass a
timeout in unattended runs.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Iterable

__all__ = ["Operation", "CheckResult", "check_history", "check_key"]

KINDS = ("put", "get", "delete", "cas")

# How many search steps run between two looks at the clock (a power of two).
_DEADLINE_CHECK_STEPS = 1024
# How many operations of the longest linearizable prefix a failure message shows.
_MESSAGE_PREFIX_OPS_MAX = 8

_PUT, _GET, _DELETE, _CAS = range(4)
_KIND_CODES = {"put": _PUT, "get": _GET, "delete": _DELETE, "cas": _CAS}
_ABSENT = 0  # interned id of None, i.e. of an absent key


class _Unread:
    def __repr__(self) -> str:
        return "<a value no operation reads>"


_UNREAD = _Unread()   # the one model state of every value nobody reads (rule 5)


@dataclass(frozen=True)
class Operation:
    """One client operation on one key, as the client saw it.

    ``value``: for put the value written, for cas the new value; None otherwise.
    ``expected``: cas only, the value the key must hold (None = absent).
    ``call``/``ret``: invocation and completion times on one clock; ``ret=None``
    means the outcome is unknown (timed out), and then ``output`` is ignored.
    ``output``: get the value read (None = absent); cas True/False (swapped or
    not); put/delete ignored.

    Raises ValueError on a malformed operation (unknown kind, non-finite or
    reversed times, a completed cas whose output is not a bool).
    """

    client_id: int
    kind: str
    key: str
    value: object = None
    expected: object = None
    call: float = 0.0
    ret: float | None = None
    output: object = None

    def __post_init__(self) -> None:
        if self.kind not in _KIND_CODES:
            raise ValueError(f"unknown operation kind {self.kind!r}; expected one of {KINDS}")
        if not math.isfinite(self.call):
            raise ValueError(f"call time must be finite, got {self.call!r}")
        if self.ret is not None:
            if not math.isfinite(self.ret):
                raise ValueError(
                    f"ret must be finite, or None for an unknown outcome; got {self.ret!r}"
                )
            if self.ret < self.call:
                raise ValueError(f"ret {self.ret!r} is before call {self.call!r}")
            if self.kind == "cas" and not isinstance(self.output, bool):
                raise ValueError(f"a completed cas needs output True or False, got {self.output!r}")

    def describe(self) -> str:
        """Short human-readable form, e.g. ``c3 cas('k', 1 -> 2) = True [1.5, 2.0]``."""
        if self.kind == "put":
            text = f"put({self.key!r}, {self.value!r})"
        elif self.kind == "delete":
            text = f"delete({self.key!r})"
        elif self.kind == "get":
            text = f"get({self.key!r})"
        else:
            text = f"cas({self.key!r}, {self.expected!r} -> {self.value!r})"
        if self.ret is None:
            return f"c{self.client_id} {text} = ? [{self.call}, unknown]"
        if self.kind in ("get", "cas"):
            text = f"{text} = {self.output!r}"
        return f"c{self.client_id} {text} [{self.call}, {self.ret}]"


@dataclass
class CheckResult:
    """Verdict of a check.

    ``ok``: True linearizable, False not, None gave up at the deadline (treat None
    as a failure).  ``key``: the first key whose sub-history failed or timed out,
    None when ok.  ``message``: human-readable explanation; for a failure it names
    the key, the longest linearizable prefix found and the operation that could not
    be placed after it.  ``ops_checked``: operations in the sub-histories examined
    (all of them when ok is True).
    """

    ok: bool | None
    key: str | None
    message: str
    ops_checked: int


def check_history(ops: Iterable[Operation], timeout_s: float | None = 60.0) -> CheckResult:
    """Check a whole key-value history, one key at a time.

    Keys are checked in order of first appearance and the check stops at the first
    key that is not linearizable or runs out of time.  ``timeout_s`` bounds the
    whole call (None = no limit).
    """
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    by_key: dict[str, list[Operation]] = {}
    for op in ops:
        by_key.setdefault(op.key, []).append(op)
    checked = 0
    for key_ops in by_key.values():
        result = check_key(key_ops, deadline)
        checked += len(key_ops)
        if result.ok is not True:
            result.ops_checked = checked
            return result
    return CheckResult(
        ok=True,
        key=None,
        message=f"linearizable: {checked} operations on {len(by_key)} keys",
        ops_checked=checked,
    )


def check_key(ops: list[Operation], deadline: float | None) -> CheckResult:
    """Check the sub-history of a single key.

    ``deadline`` is an absolute ``time.monotonic()`` value, or None for no limit.
    All operations must share one key (ValueError otherwise).
    """
    if not ops:
        return CheckResult(ok=True, key=None, message="linearizable: empty history", ops_checked=0)
    key = ops[0].key
    for op in ops:
        if op.key != key:
            raise ValueError(f"check_key got keys {key!r} and {op.key!r}; use check_history")
    impossible = _unwritten_read(ops)
    if impossible is not None:
        message = (
            f"key {key!r}: not linearizable ({len(ops)} operations). "
            f"{impossible.describe()} saw a value that no operation invoked before it "
            "returned could have written"
        )
        return CheckResult(ok=False, key=key, message=message, ops_checked=len(ops))
    search = _Search(ops)
    verdict = search.run(deadline)
    if verdict is True:
        message = f"linearizable: {len(ops)} operations on key {key!r}"
        return CheckResult(ok=True, key=None, message=message, ops_checked=len(ops))
    if verdict is None:
        message = (
            f"key {key!r}: gave up at the deadline after {search.steps} search steps "
            f"({len(ops)} operations); result unknown, treat as a failure. "
            + search.describe_progress()
        )
        return CheckResult(ok=None, key=key, message=message, ops_checked=len(ops))
    message = f"key {key!r}: not linearizable ({len(ops)} operations). "
    return CheckResult(
        ok=False, key=key, message=message + search.describe_progress(), ops_checked=len(ops)
    )


class _Values:
    """Interns values as small ints so model states are cheap to hash and compare.

    Equality follows ``==``; unhashable values (lists, dicts) are compared one by one.
    """

    def __init__(self) -> None:
        self.values: list[object] = [None]
        self._hashable: dict[object, int] = {}
        self._unhashable: list[int] = []

    def intern(self, value: object) -> int:
        if value is None:
            return _ABSENT
        try:
            found = self._hashable.get(value)
        except TypeError:
            found = None
            hashable = False
        else:
            hashable = True
        if found is not None:
            return found
        # An unhashable value may equal a hashable one (bytearray(b"x") == b"x"): it is
        # compared with every value, so the ids never depend on the order of interning.
        for index in (self._unhashable if hashable else range(1, len(self.values))):
            if self.values[index] == value:
                return index
        index = len(self.values)
        self.values.append(value)
        if hashable:
            self._hashable[value] = index
        else:
            self._unhashable.append(index)
        return index


def _unwritten_read(ops: list[Operation]) -> Operation | None:
    """The first completed read of a value no earlier-invoked operation could write.

    A get returning v, or a successful cas expecting v (v not None), needs some
    put or cas writing v whose call is no later than the read's return; a cas that
    completed and failed wrote nothing.  This catches garbage reads without a search.
    """
    values = _Values()
    writes: dict[int, list[tuple[float, int]]] = {}  # value id -> (call, op index) of writers
    for index, op in enumerate(ops):
        if op.kind == "put" or (op.kind == "cas" and (op.ret is None or op.output)):
            writes.setdefault(values.intern(op.value), []).append((op.call, index))
    for writers in writes.values():
        writers.sort()
    for index, op in enumerate(ops):
        if op.ret is None:
            continue
        if op.kind == "get":
            seen = values.intern(op.output)
        elif op.kind == "cas" and op.output:
            seen = values.intern(op.expected)
        else:
            continue
        if seen == _ABSENT:
            continue
        # The two earliest writers suffice: a cas may not supply its own expected value.
        earliest = [call for call, writer in writes.get(seen, [])[:2] if writer != index]
        if not earliest or earliest[0] > op.ret:
            return op
    return None


def _drop_unobservable(ops: list[Operation], values: _Values) -> list[Operation]:
    """The operations minus indeterminate ones whose effect nobody could have seen.

    Indeterminate gets have no effect.  An indeterminate write of value v can be
    left out of any linearization if nothing between it and the next write could
    tell v from the previous value (rule 1 in the module docstring).  Observers are
    completed gets returning v, completed successful cas ops expecting v and any
    completed failed cas, each only if it returned at or after the write's call;
    and indeterminate cas ops expecting v, whenever invoked.
    """
    observed_until: dict[int, float] = {}  # value id -> latest return of an op that saw it
    cas_failed_until = -math.inf
    cas_unknown_expects: set[int] = set()
    for op in ops:
        if op.kind == "get" and op.ret is not None:
            seen = values.intern(op.output)
        elif op.kind == "cas" and op.ret is None:
            cas_unknown_expects.add(values.intern(op.expected))
            continue
        elif op.kind == "cas" and op.output:
            seen = values.intern(op.expected)
        elif op.kind == "cas":
            cas_failed_until = max(cas_failed_until, op.ret)
            continue
        else:
            continue
        observed_until[seen] = max(observed_until.get(seen, -math.inf), op.ret)

    def observable(op: Operation) -> bool:
        written = _ABSENT if op.kind == "delete" else values.intern(op.value)
        return (
            observed_until.get(written, -math.inf) >= op.call
            or written in cas_unknown_expects
            or cas_failed_until >= op.call
        )

    return [op for op in ops if op.ret is not None or (op.kind != "get" and observable(op))]


class _Search:
    """One key's history as a linked list of entries, and the WGL search over it.

    Nodes are integers indexing parallel lists: node 0 is the head sentinel, the
    last node is the tail sentinel.  Completed operations get a call node and a
    return node; indeterminate ones only a call node (their return is at +infinity,
    and the search ends before reaching it).
    """

    def __init__(self, ops: list[Operation]) -> None:
        values = _Values()
        self.ops = _drop_unobservable(ops, values)
        n = len(self.ops)
        self.kind = [_KIND_CODES[op.kind] for op in self.ops]
        self.overwrites = [op.kind in ("put", "delete") for op in self.ops]
        self.reads = [
            op.ret is not None and (op.kind == "get" or (op.kind == "cas" and not op.output))
            for op in self.ops
        ]
        self.definite = [op.ret is not None for op in self.ops]
        self.expected = [values.intern(op.expected) for op in self.ops]
        self.output = [
            values.intern(op.output) if op.kind == "get" else op.output for op in self.ops
        ]
        # Rule 5: values no operation can tell apart are one state.  A value written but
        # never read (no completed get returns it, no cas expects it) only ever answers
        # "not the value you expect", like any other such value.
        observed = {self.expected[i] for i in range(n) if self.kind[i] == _CAS}
        observed.update(self.output[i] for i in range(n)
                        if self.kind[i] == _GET and self.definite[i])
        unread = len(values.values)
        values.values.append(_UNREAD)
        self.arg = []
        for op in self.ops:
            written = values.intern(op.value)
            self.arg.append(written if written in observed or written == _ABSENT else unread)
        self.values = values.values
        # Rule 6: indeterminate writes with the same effect (every delete; puts of an
        # unread value; cas ops with the same expected and written values) are
        # interchangeable.  Only the earliest-called one not yet linearized is tried.
        self.same_before = [-1] * n       # the previous interchangeable op, by call time
        latest: dict[tuple, int] = {}
        for index in sorted(range(n), key=lambda i: (self.ops[i].call, i)):
            if self.definite[index] or self.kind[index] == _GET:
                continue
            effect = (self.kind[index], self.arg[index], self.expected[index])
            self.same_before[index] = latest.get(effect, -1)
            latest[effect] = index

        # (time, 0 for call / 1 for return, op index): at equal times calls sort
        # before returns, so touching operations count as concurrent.
        events = []
        for index, op in enumerate(self.ops):
            events.append((op.call, 0, index))
            if op.ret is not None:
                events.append((op.ret, 1, index))
        events.sort()
        count = len(events) + 2
        self.tail = count - 1
        self.next = list(range(1, count)) + [self.tail]
        self.prev = [0] + list(range(count - 1))
        self.op_of = [-1] * count
        self.match = [-1] * count  # call node -> its return node (-1: none, or a return node)
        self.is_call = [False] * count
        call_node = [0] * n
        for node, (_, is_return, index) in enumerate(events, start=1):
            self.op_of[node] = index
            if is_return:
                self.match[call_node[index]] = node
            else:
                self.is_call[node] = True
                call_node[index] = node

        self.steps = 0
        # Longest linearizable prefix seen (op indices) and the completed operation that
        # could not be placed next.
        self.best_prefix: list[int] = []
        self.best_blocked: int | None = None

    def _step(self, index: int, state: int) -> tuple[bool, int]:
        kind = self.kind[index]
        if kind == _PUT:
            return True, self.arg[index]
        if kind == _DELETE:
            return True, _ABSENT
        if kind == _GET:
            return state == self.output[index], state
        swaps = state == self.expected[index]
        if not self.definite[index]:
            return True, self.arg[index] if swaps else state
        if self.output[index]:
            return swaps, self.arg[index]
        return not swaps, state

    def _lift(self, node: int) -> None:
        nxt, prv = self.next, self.prev
        nxt[prv[node]] = nxt[node]
        prv[nxt[node]] = prv[node]
        ret = self.match[node]
        if ret >= 0:
            nxt[prv[ret]] = nxt[ret]
            prv[nxt[ret]] = prv[ret]

    def _unlift(self, node: int) -> None:
        nxt, prv = self.next, self.prev
        ret = self.match[node]
        if ret >= 0:
            nxt[prv[ret]] = ret
            prv[nxt[ret]] = ret
        nxt[prv[node]] = node
        prv[nxt[node]] = node

    def run(self, deadline: float | None) -> bool | None:
        """True if linearizable, False if not, None at the deadline."""
        remaining = sum(self.definite)  # completed operations not yet linearized
        if remaining == 0:
            return True
        nxt, is_call, op_of, definite = self.next, self.is_call, self.op_of, self.definite
        overwrites, reads, same_before = self.overwrites, self.reads, self.same_before
        step = self._step
        # Memo of (linearized bitset, search state); the search state is the model
        # state times two, plus one when the last linearized op was indeterminate
        # (which forbids an overwrite next: rule 3 in the module docstring).
        cache: set[tuple[int, int]] = set()
        stack: list[tuple[int, int, bool]] = []  # (call node, model state, after_unknown) before it
        state = _ABSENT
        after_unknown = False
        linearized = 0
        node = nxt[0]
        steps = 0
        while True:
            steps += 1
            if steps & (_DEADLINE_CHECK_STEPS - 1) == 0:
                self.steps = steps
                if deadline is not None and time.monotonic() >= deadline:
                    self._record_progress(stack, state, None)
                    return None
            # With completed operations left, a return node always lies ahead.
            assert node != self.tail, "search ran off the end of the history"
            index = op_of[node]
            if is_call[node]:
                accepted, new_state = step(index, state)
                if accepted and after_unknown and overwrites[index]:
                    accepted = False  # rule 3
                if accepted and not definite[index] and new_state == state:
                    accepted = False  # rule 2
                if accepted and not definite[index]:
                    before = same_before[index]
                    if before >= 0 and not (linearized >> before) & 1:
                        accepted = False  # rule 6: an interchangeable one was called earlier
                if accepted:
                    new_linearized = linearized | (1 << index)
                    entry = (new_linearized, 2 * new_state + (not definite[index]))
                    if entry not in cache:
                        cache.add(entry)
                        stack.append((node, state, after_unknown))
                        state = new_state
                        after_unknown = not definite[index]
                        linearized = new_linearized
                        self._lift(node)
                        if definite[index]:
                            remaining -= 1
                            if remaining == 0:
                                self.steps = steps
                                return True
                        node = nxt[0]
                        continue
                node = nxt[node]
            else:
                # The call of this completed operation could not be placed here:
                # undo the most recent linearization and try its next alternative.
                # A completed read needs no alternatives (rule 4), so undo past it.
                if len(stack) > len(self.best_prefix) or self.best_blocked is None:
                    self._record_progress(stack, state, index)
                while True:
                    if not stack:
                        self.steps = steps
                        return False
                    node, state, after_unknown = stack.pop()
                    index = op_of[node]
                    linearized ^= 1 << index
                    if definite[index]:
                        remaining += 1
                    self._unlift(node)
                    if not reads[index]:
                        break
                node = nxt[node]

    def _record_progress(
        self, stack: list[tuple[int, int, bool]], state: int, blocked: int | None
    ) -> None:
        if len(stack) >= len(self.best_prefix):
            self.best_prefix = [self.op_of[node] for node, _, _ in stack]
            self.best_blocked = blocked

    def _value_after(self, prefix: list[int]) -> object:
        """The key's value after ``prefix`` in order, as written (rule 5 made values
        nobody reads one model state; a message names the real one)."""
        value = None
        for index in prefix:
            op = self.ops[index]
            if op.kind == "put" or (op.kind == "cas" and op.ret is not None and op.output):
                value = op.value
            elif op.kind == "delete":
                value = None
            elif op.kind == "cas" and op.ret is None and value == op.expected:
                value = op.value
        return value

    def describe_progress(self) -> str:
        """The longest linearizable prefix found and what could not follow it."""
        prefix = self.best_prefix
        completed = sum(self.definite)
        placed = sum(1 for index in prefix if self.definite[index])
        lines = [
            f"Longest linearizable prefix: {len(prefix)} operations "
            f"({placed} of {completed} completed ones)"
        ]
        shown = prefix[-_MESSAGE_PREFIX_OPS_MAX:]
        if len(shown) < len(prefix):
            lines.append(f"  ... {len(prefix) - len(shown)} earlier operations")
        lines.extend(f"  {self.ops[index].describe()}" for index in shown)
        lines.append(f"model state after it: {self._value_after(prefix)!r}")
        if self.best_blocked is not None:
            lines.append(
                "could not be placed next (no pending operation fits before it returns): "
                + self.ops[self.best_blocked].describe()
            )
        return "\n".join(lines)
