"""Named simulator profiles: a seed's default options, changed by a profile's own stream.

``SimOptions.random_for(seed, protocol, nodes, profile)`` draws the default options of the
seed exactly as without a profile, then hands them to the profile with
``random.Random(f"{profile}/{seed}")``, so adding or changing a profile never changes what
any seed does in the default profile (or in another profile).

Profiles that must pass every checker on every seed:

* ``lease``: lease reads with clock drift within the bound.  Each node's clock runs at its
  own rate (its ticks are ``TICK_MS * rate`` apart, rate in [1 - d, 1 + d], some redrawn
  during the run), ``lease_ticks = election_ticks - margin`` and ``d`` is below
  ``lease_drift_max`` for that lease, with crashes, pauses (a resumed node catches up its
  missed ticks, as the server does) and partitions.
* ``sessions``: K1, client sessions.  Replies are lost on the way back, attempts time out
  and are retried with the same (client, sequence), possibly at another node; the state
  machine executes each sequence once and answers retries with the first result.  A client
  takes a new client id every 3 operations and releases the old one in its next write,
  as a node does for writes without a session (sessions.py): late copies meet a tombstone.
* ``batches``: the sessions profile with every first, second or third write sent as a
  batch command (one operation, one session pair for the batch): batches are applied,
  answered and deduplicated like single writes, and their kv changes agree everywhere.
* ``acked``: the sessions profile with long sessions (one client id each) whose every
  write names the earlier sequences as answered (``acked``): the table drops their
  results and raises the floor, so a late copy of a write the client gave up on is
  refused as stale.  Negative control ``acked-keeps-floor``: the results are dropped but
  the floor stays, and such a late copy executes again.
* ``membership``: R3/R19, frequent membership changes (removing the leader itself, one add
  plus one remove, two adds, two removes) with spares, crashes, pauses, isolated-leader
  and majority/minority partitions, and kill-all-and-restart, also right after a change.
* ``failover``: fast failover (issue 17).  The leader is killed often (kill -9 resets
  its peers' connections, so its followers may take it as gone at once; most crashes are
  kills here) and connections between live nodes are reset, often several times in a row
  (a flapping link, with the leader alive); on half the seeds lease reads are on (no clock
  drift): a reset must not end a follower's promise to the leader's lease.
  ``failover_ticks`` / ``failovers`` is the mean time from a leader's kill to the next
  leader elected.
* ``single-voter``: send before persist where the leader's own acceptance is a quorum by
  itself: node 1 is the only voter, the other bootstrap members are learners; the voter
  crashes often (losing its unsynced tail) under a steady write load.

* ``leases``: kv leases kept alive and let run out, and bank transfers in transactions
  (coordination.py), with clock drift within the stated bound: the conf's margin
  ``lease_drift_bound`` is drawn, every clock's rate stays within it (some leaders made
  fast, the direction that shortens a TTL), with crashes, pauses and partitions.  No
  lease may expire earlier than TTL x (1 - bound) after its last acknowledged keep-alive,
  and the bank total never changes on any replica.

Negative profiles, which must fail on some seeds (tests pin such seeds):

* ``lease-beyond``: the same lease reads with clocks far beyond the bound (a node's ticks
  up to 2.5 times apart while others run twice as fast) and isolated leaders: an old
  leader's lease outlives the followers' election timeout and serves stale reads.
* ``leases-beyond``: the leases profile with clocks beyond the bound (every clock at
  least 2.5 times fast against a 5% margin): the leader counts a TTL in a fraction of
  it and expires leases early, which the lease checker catches.
* ``sessions-nodedup``: the sessions profile with the session table off: retried writes
  are executed twice.
* ``sessions-release-deletes``: the sessions profile with a release that deletes the
  released sessions instead of keeping tombstones: a late copy of a released write (still
  in some log, or still being retried by a node) is executed again.
* ``skew``: the sessions profile with skewed wall clocks (one node ten minutes fast, others
  slow or a little off, from a moment after the cluster formed) and session expiry after
  a few client give-up times: each node stamps with the production ``CommandClock``, so
  no session expires while its client still retries.  ``skew-birth``: the same clocks
  from the start.  Negative control ``skew-wallclock``: raw wall-clock stamps; the fast
  node's first command expires every session and a retry runs twice.
* ``own-ack-early``: the single-voter profile with deliberately broken replicas
  (paxoslog/sim/broken.py) that count the leader's own acceptance before its fsync: the
  learners apply entries the crashed voter never persisted (agreement violated).
"""

from __future__ import annotations

import dataclasses
import random
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from .cluster import SimOptions

__all__ = ["PROFILES", "NEGATIVE_PROFILES", "apply_profile", "lease_drift_max"]


def lease_drift_max(election_ticks: int, lease_ticks: int) -> float:
    """The largest clock drift ``d`` (every clock's rate in [1 - d, 1 + d]) under which a
    lease of ``lease_ticks`` is safe with followers that refuse votes for
    ``election_ticks`` ticks after hearing from the leader.

    A lease runs from the tick at or before the heartbeat a quorum acknowledged: it ends
    at most ``lease_ticks`` leader ticks after that heartbeat was sent.  A follower that
    received the heartbeat refuses votes until its ``election_ticks``-th tick after that,
    which comes no sooner than ``election_ticks - 1`` full follower ticks (the first
    tick may fall at once).  Safe when ``lease * (1 + d) <= (election - 1) * (1 - d)``:
    the conf's ``clock_drift_margin_ticks`` must cover the drift *and* one tick.
    """
    ratio = (election_ticks - 1) / lease_ticks
    return max(0.0, (ratio - 1.0) / (ratio + 1.0))


def _rates(rng: random.Random, count: int, drift: float) -> tuple[float, ...]:
    """Clock rates in [1 - drift, 1 + drift], often at the extremes."""
    return tuple(rng.choice([1.0 - drift, 1.0 + drift, rng.uniform(1.0 - drift, 1.0 + drift)])
                 for _ in range(count))


def _lease(o: "SimOptions", rng: random.Random) -> "SimOptions":
    election = rng.choice([8, 10, 12, 16, 20])
    margin = rng.choice([2, 3, 4])
    lease = election - margin
    drift = lease_drift_max(election, lease) * rng.uniform(0.5, 0.99)
    count = o.nodes + o.spares
    if rng.random() < 0.5:
        # The worst case inside the bound: every clock fast, and the leader's made slow.
        rates, leader_rate, strobe = (1.0 - drift,) * count, 1.0 + drift, rng.choice([1.0, 2.0, 4.0])
    else:
        rates, leader_rate, strobe = _rates(rng, count, drift), 0.0, rng.choice([0.0, 1.0, 2.0])
    return dataclasses.replace(
        o, profile="lease", election_ticks=election, lease_ticks=lease,
        clock_rates=rates, clock_drift=drift, clock_strobe_rate=strobe,
        clock_leader_rate=leader_rate, tick_catch_up=True, lease_reads=True,
        crash_rate=rng.choice([0.0, 0.5, 1.0]), pause_rate=rng.choice([0.5, 1.0, 2.0]),
        partition_rate=rng.choice([0.5, 1.0, 2.0]), clients=rng.randint(2, 5))


def _lease_beyond(o: "SimOptions", rng: random.Random) -> "SimOptions":
    # lease = election - 1 leaves no room for any drift, and clocks differ up to 6 times:
    # every node's runs fast (0.5 to 1), and from time to time the leader's turns slow
    # (3).  Only isolated leaders, no other faults, so that a majority can elect a new
    # leader while the old one still trusts its lease.
    return dataclasses.replace(
        o, profile="lease-beyond", election_ticks=10, lease_ticks=9,
        clock_rates=tuple(rng.uniform(0.5, 1.0) for _ in range(o.nodes + o.spares)),
        clock_strobe_rate=rng.choice([2.0, 4.0]), clock_leader_rate=3.0,
        tick_catch_up=True, lease_reads=True,
        crash_rate=0.0, pause_rate=0.0, membership_rate=0.0, transfer_rate=0.0, eio_rate=0.0,
        bitflip=False, partition_rate=rng.choice([1.0, 2.0, 3.0]),
        partition_kinds=("isolate-leader",), clients=rng.randint(3, 6),
        keys=rng.randint(3, 4), client_timeout_ms=rng.choice([50.0, 100.0]),
        read_ratio=rng.choice([0.5, 0.8, 0.95]))


def _leases(o: "SimOptions", rng: random.Random) -> "SimOptions":
    bound = rng.choice([0.05, 0.1, 0.2])
    drift = bound * rng.uniform(0.5, 1.0)
    count = o.nodes + o.spares
    # Fast clocks (rate < 1: ticks closer together) shorten a TTL in real time: the
    # leader is made fast half the time, as far as the bound allows.
    rates = _rates(rng, count, drift)
    leader_rate = 1.0 - drift if rng.random() < 0.5 else 0.0
    return dataclasses.replace(
        o, profile="leases", lease_holders=rng.randint(2, 4), bank_clients=rng.randint(2, 4),
        lease_drift_bound=bound, clock_rates=rates, clock_drift=drift,
        clock_strobe_rate=rng.choice([0.0, 1.0, 2.0]), clock_leader_rate=leader_rate,
        tick_catch_up=True, crash_rate=rng.choice([0.0, 0.5, 1.0]),
        pause_rate=rng.choice([0.5, 1.0, 2.0]), partition_rate=rng.choice([0.5, 1.0, 2.0]),
        duration_ms=4000.0)


def _leases_beyond(o: "SimOptions", rng: random.Random) -> "SimOptions":
    # Every clock 2.5 to 4 times fast against a stated bound of 5%, and no faults but
    # the clocks: only the lease checker can fail the run.
    return dataclasses.replace(
        o, profile="leases-beyond", lease_holders=4, bank_clients=0,
        lease_drift_bound=0.05,
        clock_rates=tuple(rng.uniform(0.25, 0.4) for _ in range(o.nodes + o.spares)),
        clock_drift=0.0, clock_strobe_rate=0.0, clock_leader_rate=0.0, tick_catch_up=True,
        crash_rate=0.0, pause_rate=0.0, partition_rate=0.0, membership_rate=0.0,
        transfer_rate=0.0, eio_rate=0.0, bitflip=False, duration_ms=3000.0)


def _sessions(o: "SimOptions", rng: random.Random) -> "SimOptions":
    return dataclasses.replace(
        o, profile="sessions", sessions=True, dedup=True, session_generation=3,
        response_loss_rate=rng.choice([0.05, 0.1, 0.2, 0.4]),
        client_timeout_ms=rng.choice([60.0, 150.0, 400.0]),
        give_up_ms=rng.choice([800.0, 1500.0, 3000.0]),
        crash_rate=rng.choice([0.0, 0.5, 1.0, 2.0]), partition_rate=rng.choice([0.5, 1.0, 2.0]))


# A wall clock in the simulator's "skew" profiles: the epoch in ms (realistic widths) plus
# real time plus the node's offset.
WALL_EPOCH_MS = 1_800_000_000_000


def _skew(o: "SimOptions", rng: random.Random) -> "SimOptions":
    nodes = o.nodes + o.spares
    offsets = [WALL_EPOCH_MS + rng.choice([0.0, 0.0, -600_000.0, rng.uniform(-2000.0, 2000.0)])
               for _ in range(nodes)]
    offsets[rng.randrange(nodes)] = WALL_EPOCH_MS + 600_000.0   # ten minutes fast
    give_up = rng.choice([400.0, 800.0])
    return dataclasses.replace(
        _sessions(o, rng), profile="skew", wall_offsets_ms=tuple(offsets),
        wall_step_at_ms=rng.choice([400.0, 800.0, 1500.0]),
        client_timeout_ms=rng.choice([60.0, 150.0]), give_up_ms=give_up,
        session_idle_ms=int(6 * give_up))


def _skew_birth(o: "SimOptions", rng: random.Random) -> "SimOptions":
    return dataclasses.replace(_skew(o, rng), profile="skew-birth", wall_step_at_ms=0.0)


def _skew_wallclock(o: "SimOptions", rng: random.Random) -> "SimOptions":
    return dataclasses.replace(_skew(o, rng), profile="skew-wallclock", raw_wall_stamps=True)


def _sessions_nodedup(o: "SimOptions", rng: random.Random) -> "SimOptions":
    return dataclasses.replace(_sessions(o, rng), profile="sessions-nodedup", dedup=False)


def _sessions_release_deletes(o: "SimOptions", rng: random.Random) -> "SimOptions":
    return dataclasses.replace(_sessions(o, rng), profile="sessions-release-deletes",
                               release_deletes=True)


def _acked(o: "SimOptions", rng: random.Random) -> "SimOptions":
    return dataclasses.replace(_sessions(o, rng), profile="acked", acked=True,
                               session_generation=0, batch_every=rng.choice([0, 0, 2]))


def _acked_keeps_floor(o: "SimOptions", rng: random.Random) -> "SimOptions":
    return dataclasses.replace(_acked(o, rng), profile="acked-keeps-floor",
                               acked_keeps_floor=True)


def _batches(o: "SimOptions", rng: random.Random) -> "SimOptions":
    return dataclasses.replace(_sessions(o, rng), profile="batches",
                               batch_every=rng.choice([1, 2, 3]))


def _membership(o: "SimOptions", rng: random.Random) -> "SimOptions":
    return dataclasses.replace(
        o, profile="membership", spares=rng.choice([1, 2, 2, 3]),
        membership_rate=rng.choice([2.0, 3.0, 5.0]),
        member_remove_leader=rng.choice([0.2, 0.4]), member_replace=rng.choice([0.2, 0.3]),
        crash_rate=rng.choice([0.5, 1.0, 2.0]), pause_rate=rng.choice([0.0, 0.5, 1.0]),
        partition_rate=rng.choice([1.0, 2.0]), partition_kinds=("isolate-leader", "split"),
        kill_all_rate=rng.choice([0.0, 0.3, 0.6]),
        kill_all_after_change=rng.choice([0.05, 0.1, 0.2]))


def _failover(o: "SimOptions", rng: random.Random) -> "SimOptions":
    lease = rng.random() < 0.5
    return dataclasses.replace(
        o, profile="failover", crash_rate=rng.choice([1.0, 2.0, 3.0]),
        kill_fraction=rng.choice([0.7, 1.0]),
        reset_rate=rng.choice([1.0, 3.0, 10.0]), pause_rate=rng.choice([0.0, 0.5]),
        partition_rate=rng.choice([0.0, 0.5]), kill_all_rate=0.0,
        lease_ticks=o.election_ticks - 3 if lease else 0, lease_reads=lease,
        clients=rng.randint(2, 5))


def _single_voter(o: "SimOptions", rng: random.Random) -> "SimOptions":
    # One voter, learners, no spares or membership changes (they would add voters), no bit
    # flips (a lone voter whose log is damaged cannot recover); frequent crashes of the
    # voter during slower fsyncs, so that crashes often land while a Ready is persisted; a
    # wide pipeline, so that Raft sends new entries to learners at once (as Multi-Paxos
    # always does) rather than only within a few entries of what they acknowledged.
    return dataclasses.replace(
        o, profile="single-voter", learners=o.nodes - 1, spares=0, membership_rate=0.0,
        limits=dataclasses.replace(o.limits, pipeline_window=rng.choice([64, 256])),
        transfer_rate=0.0, bitflip=False, kill_all_rate=0.0,
        kill_fraction=0.0,          # power losses only: each may lose the unsynced tail
        crash_rate=rng.choice([1.5, 3.0]), fault_duration_ms=(20.0, 200.0),
        pause_rate=rng.choice([0.0, 0.5]), partition_rate=rng.choice([0.0, 0.5, 1.0]),
        fsync_ms=(0.2, rng.choice([2.0, 4.0])), clients=rng.randint(3, 6))


def _own_ack_early(o: "SimOptions", rng: random.Random) -> "SimOptions":
    return dataclasses.replace(_single_voter(o, rng), profile="own-ack-early",
                               own_ack_before_fsync=True)


PROFILES: dict[str, Callable[["SimOptions", random.Random], "SimOptions"]] = {
    "lease": _lease,
    "lease-beyond": _lease_beyond,
    "leases": _leases,
    "leases-beyond": _leases_beyond,
    "sessions": _sessions,
    "sessions-release-deletes": _sessions_release_deletes,
    "sessions-nodedup": _sessions_nodedup,
    "skew": _skew,
    "skew-wallclock": _skew_wallclock,
    "skew-birth": _skew_birth,
    "batches": _batches,
    "acked": _acked,
    "acked-keeps-floor": _acked_keeps_floor,
    "membership": _membership,
    "failover": _failover,
    "single-voter": _single_voter,
    "own-ack-early": _own_ack_early,
}
NEGATIVE_PROFILES = frozenset({"lease-beyond", "leases-beyond", "sessions-nodedup",
                               "skew-wallclock",
                               "sessions-release-deletes", "own-ack-early",
                               "acked-keeps-floor"})


def apply_profile(options: "SimOptions", name: str, rng: random.Random) -> "SimOptions":
    """``options`` changed as profile ``name`` draws them from ``rng``."""
    try:
        profile = PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown profile {name!r}; expected one of "
                         f"{', '.join(sorted(PROFILES))}") from None
    return profile(options, rng)
