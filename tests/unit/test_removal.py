"""RemovalWitnesses: a removed node goes once a quorum of the new voters told it."""

from paxoslog.node.removal import RemovalWitnesses


def test_one_member_is_not_enough_a_quorum_of_the_voters_is():
    w = RemovalWitnesses()
    assert not w.told(1, 10, {1, 2, 4})
    assert not w.told(1, 12, {1, 2, 4})           # the same member again
    assert not w.told(5, 10, {1, 2, 4})           # not a voter of that configuration
    assert w.told(4, 10, {1, 2, 4})
    assert w.tellers() == [1, 4, 5]


def test_a_member_that_applied_further_knows_the_earlier_configuration_chosen():
    """Node 2 applied a later configuration (also without us): it knows the one node 1
    told about chosen too, so 1 and 2 are a quorum of {1, 2, 4}."""
    w = RemovalWitnesses()
    assert not w.told(1, 10, {1, 2, 4})
    assert w.told(2, 20, {1, 2})


def test_a_member_that_applied_less_far_does_not_count_for_the_later_one():
    w = RemovalWitnesses()
    assert not w.told(1, 20, {1, 2, 3})
    assert not w.told(2, 10, {2, 3, 4, 5, 6})     # applied only up to 10: knows less
    assert w.told(3, 20, {1, 2, 3})


def test_an_empty_or_older_report_changes_nothing():
    w = RemovalWitnesses()
    assert not w.told(1, 10, ())
    assert w.tellers() == []
    assert not w.told(1, 10, {1, 2, 3})
    assert not w.told(1, 5, {7, 8, 9})            # older than what it said before: ignored
    assert w.told(2, 10, {1, 2, 3})
