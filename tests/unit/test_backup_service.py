"""``BackupService`` (GET /api/v1/snapshot) on a task.Clock with fake collaborators: it
waits for the barrier read, then for this node to apply the read point, captures once,
encodes on the "snapshot thread", streams a verified file and deletes it afterwards; one
backup at a time; a node that stays behind answers 503; a state that would not restore is
refused; stale staging files are removed at start."""

from __future__ import annotations

import os

import pytest
from twisted.internet import defer, task

from paxoslog.core.log import SnapshotMeta
from paxoslog.core.quorum import Config
from paxoslog.node.instructions import TakeSnapshot
from paxoslog.server.backup import BackupService
from paxoslog.server.errors import ApiError
from paxoslog.server.http import FileBody
from paxoslog.server.local_snapshots import SnapshotRefused
from paxoslog.storage.snapshot import verify_snapshot


class SyncWriter:
    """The snapshot thread, run inline."""

    def in_snapshot_thread(self, fn, *args):
        return defer.maybeDeferred(fn, *args)


class Node:
    def __init__(self) -> None:
        self.applied = 5
        self.barriers: list[defer.Deferred] = []
        self.captures = 0

    def barrier(self) -> defer.Deferred:
        d = defer.Deferred()
        self.barriers.append(d)
        return d

    def capture(self) -> TakeSnapshot:
        self.captures += 1
        meta = SnapshotMeta(self.applied, 2, Config(frozenset({1, 2, 3})))
        data = f"state at {self.applied}".encode()
        return TakeSnapshot(meta, [("kv", lambda: [data])], lambda: {"clock": 0, "sessions": []})


@pytest.fixture
def setup(tmp_path):
    clock = task.Clock()
    node = Node()
    refused: list = []

    def verify(states, sessions):
        if refused:
            raise SnapshotRefused(refused[0])
        return states
    service = BackupService(barrier=node.barrier, applied_index=lambda: node.applied,
                            capture=node.capture, writer=SyncWriter(),
                            directory=str(tmp_path / "outgoing"), verify=verify,
                            provenance=lambda: {"cluster": "c", "node": 2}, reactor=clock,
                            timeout_s=3.0)
    service.start()
    return service, node, clock, refused, tmp_path / "outgoing"


def _result(d: defer.Deferred):
    out = []
    d.addBoth(out.append)
    assert out, "the request has not finished"
    return out[0]


def test_backup_waits_for_the_read_point_then_captures_once(setup):
    """Nothing is captured before this node applied the barrier's index; then one cut at
    its applied index, streamed from a verified file that is deleted once sent."""
    service, node, clock, _, staging = setup
    d = service.request()
    node.barriers[0].callback({"index": 9})
    assert node.captures == 0 and not d.called
    node.applied = 8
    service.applied(8)
    assert node.captures == 0
    node.applied = 10
    service.applied(10)
    status, body, ctype, headers = _result(d)
    assert status == 200 and isinstance(body, FileBody) and node.captures == 1
    assert dict(headers)[b"X-Paxoslog-Index"] == b"10"
    assert dict(headers)[b"X-Paxoslog-Read-Index"] == b"9"
    info = verify_snapshot(body.path)
    assert info.meta.index == 10 and info.backup["read_index"] == 9
    assert info.backup["cluster"] == "c" and body.length == os.path.getsize(body.path)
    assert service.busy
    body.discard()                                    # sent (or abandoned)
    assert not os.listdir(staging) and not service.busy


def test_a_second_backup_meanwhile_is_refused_busy(setup):
    """One backup at a time per node: 503 busy while one is being taken."""
    service, node, _, _, _ = setup
    service.request()
    failure = _result(service.request())
    assert failure.check(ApiError) and failure.value.status == 503
    assert failure.value.code == "busy"


def test_a_node_that_stays_behind_answers_503_and_frees_the_slot(setup):
    """The read point is not applied within the timeout: 503 naming the index."""
    service, node, clock, _, _ = setup
    d = service.request()
    node.barriers[0].callback({"index": 50})
    clock.advance(3.1)
    failure = _result(d)
    assert failure.check(ApiError) and failure.value.status == 503
    assert "has not applied index 50" in failure.value.message
    assert not service.busy and not service._waiters


def test_a_state_that_would_not_restore_is_refused(setup):
    """The restore check fails: 500 snapshot_refused, no file left, the slot is free."""
    service, node, _, refused, staging = setup
    refused.append("kv would not restore")
    d = service.request()
    node.barriers[0].callback({"index": 1})
    failure = _result(d)
    assert failure.check(ApiError) and failure.value.code == "snapshot_refused"
    assert not os.listdir(staging) and not service.busy


def test_stale_staging_files_are_removed_at_start(tmp_path):
    """A crash mid-backup leaves a temporary file; the next start deletes it."""
    staging = tmp_path / "outgoing"
    staging.mkdir()
    (staging / "00000000000000000007-abcd.backup.tmp").write_bytes(b"x")
    service = BackupService(barrier=None, applied_index=lambda: 0, capture=None, writer=None,
                            directory=str(staging), verify=None, provenance=dict,
                            reactor=task.Clock(), timeout_s=1)
    service.start()
    assert not os.listdir(staging)
