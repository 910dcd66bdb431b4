"""RaftLog (paxoslog.core.raftlog) on its own: term lookups, configuration entries that
come and go with the log, and the unpersisted suffix it hands out."""

from __future__ import annotations

import pytest

from paxoslog.core.log import ENTRY_NORMAL, Entry, SnapshotMeta, config_entry
from paxoslog.core.quorum import Config
from paxoslog.core.raftlog import RaftLog

BOOT = Config(frozenset({1, 2, 3}))
GROWN = Config(frozenset({1, 2, 3, 4}))


def log_with_terms(*terms: int) -> RaftLog:
    log = RaftLog(BOOT)
    log.append([Entry(i, t, ENTRY_NORMAL, (b"%d" % i,)) for i, t in enumerate(terms, 1)])
    return log


def test_term_lookups_bisect_the_log():
    """term_at, first_index_of_term and last_index_with_term_at_most over 1 1 2 2 2 4."""
    log = log_with_terms(1, 1, 2, 2, 2, 4)
    assert (log.last_index, log.last_term()) == (6, 4)
    assert [log.term_at(i) for i in range(0, 8)] == [0, 1, 1, 2, 2, 2, 4, None]
    assert log.first_index_of_term(2, 1, 5) == 3
    assert log.last_index_with_term_at_most(3) == 5
    assert log.last_index_with_term_at_most(0) == 0
    log.check_invariants()


def test_a_truncated_config_entry_reverts_the_configuration():
    """append reports a CONFIG entry; truncating it reports that and the config reverts."""
    log = log_with_terms(1, 1)
    assert log.append([config_entry(3, 1, GROWN)]) is True
    assert log.current_config() == (3, GROWN) and log.config_at(2) == (0, BOOT)
    assert log.truncate(4) is False
    assert log.truncate(3) is True
    assert log.current_config() == (0, BOOT)
    log.check_invariants()


def test_unstable_suffix_and_truncation_are_handed_out_once():
    """take_unstable returns new entries once; a truncation of persisted entries is told."""
    log = log_with_terms(1, 1, 1)
    truncate_from, entries = log.take_unstable()
    assert truncate_from is None and [e.index for e in entries] == [1, 2, 3]
    assert not log.has_unstable and log.take_unstable() == (None, [])
    log.truncate(2)
    log.append([Entry(2, 2, ENTRY_NORMAL, (b"x",))])
    truncate_from, entries = log.take_unstable()
    assert truncate_from == 2 and [(e.index, e.term) for e in entries] == [(2, 2)]
    log.check_invariants()


@pytest.mark.parametrize("term, kept", [(1, [5, 6]), (9, [])])
def test_install_keeps_the_suffix_only_when_the_term_matches(term, kept):
    """A snapshot at 4 keeps 5..6 when our entry 4 has its term, else drops the log."""
    log = log_with_terms(1, 1, 1, 1, 1, 1)
    log.append([config_entry(7, 1, GROWN)])
    log.take_unstable()
    log.install(4, term, BOOT)
    assert [e.index for e in log.entries if e.index < 7] == kept
    assert log.snapshot == SnapshotMeta(4, term, BOOT) and log.offset == 4
    assert log.current_config() == ((7, GROWN) if kept else (4, BOOT))
    assert log.take_unstable()[0] == (None if kept else 5)
    log.check_invariants()


def test_compaction_keeps_the_configuration_in_force():
    """compact drops the prefix and remembers the configuration set inside it."""
    log = log_with_terms(1)
    log.append([config_entry(2, 1, GROWN), Entry(3, 1, ENTRY_NORMAL, (b"y",))])
    log.compact(2, 1)
    assert log.offset == 2 and [e.index for e in log.entries] == [3]
    assert log.snapshot == SnapshotMeta(2, 1, GROWN) and log.current_config() == (2, GROWN)
    log.check_invariants()


def test_durable_prefix_moves_when_the_ready_is_persisted_and_shrinks_with_truncation():
    """durable_upto follows persisted(): what the last take_unstable handed out, less what
    a truncation removed meanwhile; entries appended after the hand-out do not count."""
    log = log_with_terms(1, 1, 1)
    assert log.durable_upto == 0
    log.take_unstable()
    log.append([Entry(4, 1, ENTRY_NORMAL, (b"4",))])  # after the Ready was handed out
    log.persisted()
    assert log.durable_upto == 3
    log.take_unstable()
    log.truncate(3)                                   # before that Ready is persisted
    log.append([Entry(3, 2, ENTRY_NORMAL, (b"x",))])
    log.persisted()
    assert log.durable_upto == 2                      # 3 is a new entry, not durable yet
    log.take_unstable()
    log.persisted()
    assert log.durable_upto == 3
    log.check_invariants()


def test_a_restored_log_is_durable():
    """Everything storage handed back at restart is durable."""
    log = RaftLog(BOOT)
    log.restore([Entry(i, 1, ENTRY_NORMAL, (b"%d" % i,)) for i in (1, 2)], None)
    assert log.durable_upto == 2
    log.check_invariants()
