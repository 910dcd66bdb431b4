"""``LeaseTable``: the replicated half of kv leases (which leases exist, their TTLs, the
keys attached to each).  The other half, *when* a lease runs out, is not replicated: the
leader's lease keeper (paxoslog/node/leases.py) counts it on its own ticks and proposes
the expiry through the log.  This module is pure data owned by the kv state machine; it
knows no clock.

A lease's id is the log index of the entry that granted it, or one more than the last id
given when that is larger (an entry carries a batch of commands, several grants among
them): unique, deterministic, increasing, never reused.

Stale expiries.  A leader proposes ``lease_expire`` with its term.  A new leader first
commits ``lease_promote`` with its own term and only then keeps leases alive (or expires
them); the table remembers the highest promoted term, and an expiry proposed in an older
term that is applied after it is ignored.  So a deposed leader's expiry that commits late
(Raft: an entry of an old term committed by the next leader; Multi-Paxos: a value
re-proposed from a higher ballot) can never delete a lease that a newer leader has kept
alive since.
"""

from __future__ import annotations

__all__ = ["LeaseTable"]


class LeaseTable:
    """Lease id -> TTL (ms), the keys attached to each lease, and the promoted term."""

    __slots__ = ("ttl_ms", "keys", "key_lease", "promoted_term", "last_id")

    def __init__(self) -> None:
        self.ttl_ms: dict[int, int] = {}
        self.keys: dict[int, set[str]] = {}
        self.key_lease: dict[str, int] = {}
        self.promoted_term = 0
        self.last_id = 0

    def new_id(self, index: int) -> int:
        """The id of a lease granted by a command of the entry at ``index``."""
        self.last_id = max(index, self.last_id + 1)
        return self.last_id

    def __len__(self) -> int:
        return len(self.ttl_ms)

    def __contains__(self, lease: object) -> bool:
        return lease in self.ttl_ms

    def grant(self, lease: int, ttl_ms: int) -> None:
        assert lease not in self.ttl_ms, lease
        self.ttl_ms[lease] = ttl_ms
        self.keys[lease] = set()

    def attach(self, key: str, lease: int) -> None:
        """``key`` now belongs to ``lease`` (which must exist) and to no other."""
        self.detach(key)
        self.keys[lease].add(key)
        self.key_lease[key] = lease

    def detach(self, key: str) -> None:
        lease = self.key_lease.pop(key, None)
        if lease is not None:
            self.keys[lease].discard(key)

    def remove(self, lease: int) -> list[str]:
        """Forget ``lease``; the keys that were attached to it, sorted (the caller deletes
        them in this order, identically on every replica)."""
        del self.ttl_ms[lease]
        keys = sorted(self.keys.pop(lease))
        for key in keys:
            del self.key_lease[key]
        return keys

    def promote(self, term: int) -> None:
        self.promoted_term = max(self.promoted_term, term)

    def expiry_is_current(self, term: int) -> bool:
        """False for an expiry proposed in a term older than the last promotion."""
        return term >= self.promoted_term

    # ------------------------------------------------------------------ snapshots

    def state(self) -> list:
        """The CBOR-able table (without key attachments: the kv rows carry those).  kv
        writes it whenever a lease was ever granted (``last_id`` non-zero), also once every
        lease is gone: a replica restored without ``last_id`` would give old ids again."""
        return [self.promoted_term, sorted(self.ttl_ms.items()), self.last_id]

    def load(self, state: list, attachments) -> None:
        """Replace the table from ``state()`` and ``attachments`` ((key, lease) pairs).
        Older snapshots: a table without ``last_id`` gives the highest live lease id; none
        at all (kv passes ``[0, []]``) gives 0."""
        promoted, leases, *rest = state
        if type(promoted) is not int:
            raise ValueError("bad promoted term")
        if rest and type(rest[0]) is not int:
            raise ValueError("bad last lease id")
        self.__init__()
        self.promoted_term = promoted
        self.last_id = rest[0] if rest else max((lease for lease, _ in leases), default=0)
        for lease, ttl in leases:
            if type(lease) is not int or type(ttl) is not int:
                raise ValueError("bad lease row")
            self.grant(lease, ttl)
        for key, lease in attachments:
            if lease not in self.ttl_ms:
                raise ValueError(f"key {key!r:.40} is attached to an unknown lease {lease}")
            self.attach(key, lease)
