"""What the node driver asks its shell to do.  Every event method of ``NodeDriver``
returns a list of these, in the order the shell must carry them out.

I/O the shell performs and reports back:

* ``Persist(ready, sync)``: write the Ready's durable part.  ``sync``: fsync, then call
  ``driver.persisted(ready)`` (it returns the Ready's messages; the rest of the Ready
  happens at the next ``pump``, which the shell runs after every event); not ``sync``
  (only the commit hint changed): append in order after everything persisted before, no
  report (the next fsync covers it).
* ``RestoreSnapshot(meta)``: a received snapshot was persisted; build fresh state machines
  from it (off the event loop if large) and call ``driver.snapshot_restored``.
* ``TakeSnapshot(meta, producers, sessions)``: write a local snapshot (verify it restores),
  calling the producers and ``sessions()`` (the session table's rows) off the loop; then call ``driver.snapshot_saved(meta, compaction_point)`` or ``snapshot_failed``.
* ``CompactLog(index)``: delete the WAL below ``index`` (after a snapshot covers it).
* ``Forward(request, peer, op, payload)``: send a client request to the leader; report
  ``forward_answered(request, status, body)`` or ``forward_failed(request)``.

Fire and forget:

* ``Send(messages)``: consensus messages to peers (the shell flushes once per list).
* ``OfferSnapshot(message)``: an InstallSnapshot the core wants sent with the snapshot
  file named by its index (the shell's snapshot shipper streams it).
* ``Reply(handle, status, body)``: the answer to a client request (``handle`` is what the
  shell passed in); status 200 or an error status with an ``{"error", "message"}`` body.
* ``Applied(entries, outcomes)``: committed entries were applied, in order (log view,
  streams, metrics); ``outcomes`` lists each command's ``CommandApplied``.
* ``RoleChange``, ``ConfigApplied``, ``RowApplied``: for status, logs and the membership
  services.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

from ..core.log import Entry, SnapshotMeta
from ..core.messages import InstallSnapshot
from ..core.quorum import Config
from ..core.ready import Ready

__all__ = ["Persist", "Send", "OfferSnapshot", "Forward", "Reply", "Applied",
           "CommandApplied", "RestoreSnapshot", "TakeSnapshot", "CompactLog", "RoleChange",
           "ConfigApplied", "RowApplied", "EXECUTED", "DUPLICATE", "STALE", "UNDECODABLE"]

# What applying one command did (``CommandApplied.outcome``).
EXECUTED = "executed"          # the state machine ran it
DUPLICATE = "duplicate"        # a retry: the session table answered with the first result
STALE = "stale"                # older than the session keeps: refused, not executed
UNDECODABLE = "undecodable"    # not a command map: skipped on every replica


class Persist(NamedTuple):
    ready: Ready
    sync: bool


class Send(NamedTuple):
    messages: list


class OfferSnapshot(NamedTuple):
    message: InstallSnapshot


class Forward(NamedTuple):
    request: Any
    peer: int
    op: str          # "propose" (payload: command bytes) or "read" (payload: {"query"})
    payload: Any


class Reply(NamedTuple):
    handle: Any
    status: int
    body: dict


class CommandApplied(NamedTuple):
    """One command applied.  ``index``/``term``: where its result was made (for a
    ``DUPLICATE``, the first execution's; the entry's otherwise).  ``sm`` is None for a
    batch (``command["batch"]``; its result is ``{"op": "batch", "results": [...]}``).

    ``changes``: the kv keys this command changed, in order, as
    ``(key, record, previous)`` with records ``(value, create_index, mod_index, version)``
    or None (absent); empty for anything that changed no key (a duplicate, a failed cas,
    another state machine).  Derived from the applied log alone, so identical on every
    replica: the watch streams are made from them.  Not part of the result (the session
    table and snapshots never see them)."""

    index: int
    term: int
    sm: str | None
    command: dict | None
    key: tuple[str, int] | None
    outcome: str
    result: Any
    changes: tuple = ()


class Applied(NamedTuple):
    entries: list[Entry]
    outcomes: list[CommandApplied]


class RestoreSnapshot(NamedTuple):
    meta: SnapshotMeta


class TakeSnapshot(NamedTuple):
    meta: SnapshotMeta
    producers: list[tuple[str, Callable[[], bytes]]]
    sessions: Callable[[], object]


class CompactLog(NamedTuple):
    index: int


class RoleChange(NamedTuple):
    role: str
    term: int
    leader: int | None
    old_role: str
    old_leader: int | None


class ConfigApplied(NamedTuple):
    old: Config
    new: Config
    index: int


class RowApplied(NamedTuple):
    """The membership table applied a command with this result row."""

    row: dict
