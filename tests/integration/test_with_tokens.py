"""A representative set of the integration tests, run again with client tokens required:
every harness request carries the admin token, the CLI gets it from $PAXOSLOG_TOKEN, a
node that joins gets it for --join.  The tests are the originals (imported); only the
cluster fixtures below differ, so nothing here can drift from what they check."""

from __future__ import annotations

import pytest

from paxoslog_integration import started_cluster
from test_cli import test_put_get_delete_cas_with_exit_codes, test_status_and_log_entries
from test_reads_modes import test_stale_reads_report_applied_index_and_time_since_leader
from test_security_findings import test_membership_table_is_not_writable_by_clients
from test_server import (test_bad_input_gets_documented_errors_and_the_cluster_keeps_working,
                         test_kill_leader_writes_resume_and_the_old_leader_catches_up)
from test_server_membership import (test_add_a_node_that_needs_a_snapshot,
                                    test_cli_membership_commands)
from test_server_sessions import (
    test_retries_apply_once_across_leader_change_restart_and_snapshot_install,
    test_state_hashes_agree_across_replicas_and_cover_the_session_table)

__all__ = [
    "test_put_get_delete_cas_with_exit_codes", "test_status_and_log_entries",
    "test_stale_reads_report_applied_index_and_time_since_leader",
    "test_membership_table_is_not_writable_by_clients",
    "test_bad_input_gets_documented_errors_and_the_cluster_keeps_working",
    "test_kill_leader_writes_resume_and_the_old_leader_catches_up",
    "test_add_a_node_that_needs_a_snapshot", "test_cli_membership_commands",
    "test_retries_apply_once_across_leader_change_restart_and_snapshot_install",
    "test_state_hashes_agree_across_replicas_and_cover_the_session_table",
]


@pytest.fixture
def make_cluster(make_cluster, monkeypatch):
    """The harness factory with auth=True; $PAXOSLOG_TOKEN is the admin token (the CLI)."""
    def make(protocol: str = "multipaxos", **options):
        options.setdefault("auth", True)
        harness = make_cluster(protocol, **options)
        monkeypatch.setenv("PAXOSLOG_TOKEN", harness.tokens["admin"])
        return harness
    return make


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """test_server's shared cluster, with tokens required."""
    mp = pytest.MonkeyPatch()
    with started_cluster(tmp_path_factory, "tokens-shared", "multipaxos", auth=True) as c:
        mp.setenv("PAXOSLOG_TOKEN", c.tokens["admin"])
        yield c
    mp.undo()


@pytest.fixture(scope="module")
def running(tmp_path_factory):
    """test_cli's cluster, with tokens required."""
    mp = pytest.MonkeyPatch()
    with started_cluster(tmp_path_factory, "tokens-cli", "multipaxos", auth=True) as c:
        mp.setenv("PAXOSLOG_TOKEN", c.tokens["admin"])
        yield c
    mp.undo()
