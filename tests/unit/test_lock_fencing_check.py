"""The chaos tool's lock check (paxoslog/chaos/locks.py) on hand-made records."""

from paxoslog.chaos.locks import FencedWrite, Hold, check_lock_fencing

TTL = 2.0


def _hold(holder, token, acquired, released, renewals=(), floor=None):
    return Hold(holder, token, acquired, released, renewals=list(renewals),
                floor=acquired - 0.1 if floor is None else floor)


def test_sequential_holds_with_ordered_writes_pass():
    """Hand-overs after release and writes in token order pass."""
    holds = [_hold(1, 10, 1.0, 2.0, [(1.5, True)]), _hold(2, 14, 2.1, 3.0)]
    writes = [FencedWrite(1, 10, 1.2, 1.3, True, 11), FencedWrite(2, 14, 2.2, 2.3, True, 15)]
    outcome = check_lock_fencing(holds, writes, TTL, 0.1)
    assert outcome.ok is True, outcome.message


def test_an_older_token_accepted_after_a_newer_one_fails():
    """A fenced write of an older token committed after a newer one is a violation."""
    holds = [_hold(1, 10, 1.0, 2.0), _hold(2, 14, 2.1, 3.0)]
    writes = [FencedWrite(2, 14, 2.2, 2.3, True, 15), FencedWrite(1, 10, 2.4, 2.5, True, 16)]
    outcome = check_lock_fencing(holds, writes, TTL, 0.1)
    assert outcome.ok is False and "after token 14" in outcome.message


def test_a_hand_over_before_the_lease_could_expire_fails():
    """B acquiring while A holds, too soon after A's acknowledged renewal, is flagged; so
    is a renewal of A acknowledged after B acquired."""
    holds = [_hold(1, 10, 1.0, None, [(1.5, True), (3.6, True)]), _hold(2, 14, 2.5, 3.0)]
    outcome = check_lock_fencing(holds, [], TTL, 0.1)
    assert outcome.ok is False
    assert "lease expired early" in outcome.message
    assert "acknowledged after holder 2 acquired" in " ".join(outcome.data["problems"])
    # Long enough after the last acknowledged renewal: a legitimate expiry.
    late = [_hold(1, 10, 1.0, None, [(1.5, True), (2.0, False)]), _hold(2, 14, 3.5, 4.0)]
    assert check_lock_fencing(late, [], TTL, 0.1).ok is True
