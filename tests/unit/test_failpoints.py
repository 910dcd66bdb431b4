"""Failpoints: parsing of PAXOSLOG_FAILPOINTS, the four actions, and kill -9 at every persist
step of a real process.

The crash matrix runs a small storage workload in a child process (python -c) that prints an
"ack" line, unbuffered, after every operation returns (what a node would acknowledge), and
dies with os._exit(1) at the chosen failpoint.  The parent then restarts from the data
directory and checks that the node starts, that everything acknowledged is there, that
``log verify`` passes, and that the node can keep writing.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from argparse import Namespace

import pytest

from paxoslog.core.log import ENTRY_NORMAL, Entry, HardState
from paxoslog.core.ready import Ready
from paxoslog.storage import DiskStorage, StorageOptions, failpoints
from paxoslog.storage.failpoints import Action, FailpointPanic, parse
from paxoslog.storage.inspect import main_log_verify

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OPTIONS = StorageOptions(segment_bytes=4096, snapshot_keep=2)

WORKLOAD = r'''
import os, sys
from paxoslog.core.log import Entry, HardState, SnapshotMeta
from paxoslog.core.quorum import Config
from paxoslog.core.ready import Ready
from paxoslog.storage import DiskStorage, StorageOptions, encode_snapshot_bytes, failpoints

data_dir, point = sys.argv[1], sys.argv[2]
config = Config(frozenset({1, 2, 3}))
def ack(*parts):
    os.write(1, (" ".join(map(str, parts)) + "\n").encode())
storage = DiskStorage(data_dir, "crash", 1, "raft", StorageOptions(segment_bytes=4096, snapshot_keep=2))
storage.load()
def save(i):
    storage.save(Ready(hard_state=HardState(1, 1, i - 1), entries=[Entry(i, 1, 0, (b"%d." % i * 20,))]))
    ack("entry", i)
for i in range(1, 41):
    save(i)
if point != "none":
    failpoints.enable(point, "exit")
i = 41
for _ in range(3):
    for _ in range(40):
        save(i)
        i += 1
    storage.save_snapshot(SnapshotMeta(i - 1, 1, config), [("kv", [b"state-%d" % (i - 1)])])
    ack("snapshot", i - 1)
    storage.compact(i - 1)
    ack("compact", i - 1)
meta = SnapshotMeta(i + 100, 2, config)
path = os.path.join(storage.transfer_dir, "received.snap.zst")
with open(path, "wb") as f:
    f.write(encode_snapshot_bytes(meta, [("kv", [b"installed"])]))
storage.install_snapshot(meta, path)
ack("install", i + 100)
storage.save(Ready(hard_state=HardState(2, 1, i + 100), entries=[Entry(i + 101, 2, 0, (b"after",))]))
ack("entry", i + 101)
storage.close()
ack("closed")
'''

CRASH_POINTS = [
    "wal.before_append", "wal.after_append", "wal.before_fsync", "wal.after_fsync",
    "wal.before_create_segment", "wal.after_create_segment",
    "hardstate.before_rename", "hardstate.after_rename",
    "snapshot.before_write", "snapshot.before_fsync", "snapshot.before_rename",
    "snapshot.after_rename", "snapshot.before_prune",
    "compact.before_delete", "compact.after_delete",
    "install.before_rename", "install.after_rename", "install.after_marker",
]


def run_child(script: str, *args: str, env_points: str = "") -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=ROOT, PAXOSLOG_FAILPOINTS=env_points)
    return subprocess.run([sys.executable, "-c", script, *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def verify_exit(data_dir: str) -> int:
    return main_log_verify(Namespace(data_dir=data_dir, json=True, skip_snapshots=False))


@pytest.fixture(autouse=True)
def no_failpoints():
    failpoints.clear()
    yield
    failpoints.clear()


# ---------------------------------------------------------------------- parsing and actions

def test_spec_parsing_accepts_every_action():
    """name=action pairs, comma separated, with sleep in milliseconds and off ignored."""
    assert parse("wal.after_fsync=exit, snapshot.before_rename=sleep(250),"
                 "compact.before_delete=panic,hardstate.before_rename=error,"
                 "wal.before_append=off") == {
        "wal.after_fsync": Action("exit", 0.0), "snapshot.before_rename": Action("sleep", 0.25),
        "compact.before_delete": Action("panic", 0.0),
        "hardstate.before_rename": Action("error", 0.0)}
    assert parse("") == {}


def test_spec_parsing_accepts_nth_and_probability_options():
    """``:nth=N`` and ``:p=P`` follow the action; the old syntax means every hit."""
    assert parse("wal.before_fsync=exit:nth=3, wal.after_append=sleep(20):p=0.05,"
                 "compact.before_delete=error:p=1") == {
        "wal.before_fsync": Action("exit", 0.0, nth=3),
        "wal.after_append": Action("sleep", 0.02, p=0.05),
        "compact.before_delete": Action("error", 0.0, p=1.0)}
    assert parse("wal.after_fsync=exit")["wal.after_fsync"] == Action("exit", 0.0, None, None)


@pytest.mark.parametrize("spec, message", [
    ("wal.after_fsnyc=exit", "unknown failpoint"),
    ("wal.after_fsync", "unknown failpoint"),
    ("wal.after_fsync=crash", "bad action"),
    ("wal.after_fsync=sleep(x)", "bad action"),
    ("wal.after_fsync=exit:nth=0", "bad option"),
    ("wal.after_fsync=exit:nth=-2", "bad option"),
    ("wal.after_fsync=exit:n=2", "bad option"),
    ("wal.after_fsync=exit:p=0", "not in"),
    ("wal.after_fsync=exit:p=1.5", "not in"),
    ("wal.after_fsync=exit:p=half", "bad option"),
    ("wal.after_fsync=exit:nth=2:p=0.5", "at most one option"),
    ("wal.after_fsync=exit:", "bad option"),
])
def test_bad_specs_are_refused_loudly(spec, message):
    """A typo must not silently disable a crash test."""
    with pytest.raises(ValueError, match=message):
        parse(spec)


def test_panic_error_and_sleep_actions():
    """panic raises FailpointPanic, error raises OSError(EIO), sleep blocks that long."""
    failpoints.enable("wal.before_append", "panic")
    with pytest.raises(FailpointPanic):
        failpoints.hit("wal.before_append")
    failpoints.enable("wal.before_append", "error")
    with pytest.raises(OSError) as caught:
        failpoints.hit("wal.before_append")
    assert caught.value.errno == 5
    failpoints.enable("wal.before_append", "sleep(30)")
    start = time.monotonic()
    failpoints.hit("wal.before_append")
    assert time.monotonic() - start >= 0.03
    failpoints.disable("wal.before_append")
    failpoints.hit("wal.before_append")
    assert failpoints.ACTIVE == {}


def _fire_pattern(name: str, hits: int) -> list[bool]:
    """Hit ``name`` (enabled with ``error``) ``hits`` times: which hits raised."""
    fired = []
    for _ in range(hits):
        try:
            failpoints.hit(name)
        except OSError:
            fired.append(True)
        else:
            fired.append(False)
    return fired


def test_nth_fires_on_that_hit_only_and_counts_from_enabling():
    """error:nth=3 passes hits 1, 2 and 4+, raises on hit 3 naming the hit; re-enabling
    starts the count again."""
    failpoints.enable("wal.before_fsync", "error:nth=3")
    assert _fire_pattern("wal.before_fsync", 6) == [False, False, True, False, False, False]
    assert failpoints.hits("wal.before_fsync") == 6
    failpoints.enable("wal.before_fsync", "error:nth=1")
    with pytest.raises(OSError, match=r"failpoint wal.before_fsync \(hit 1, seed"):
        failpoints.hit("wal.before_fsync")
    failpoints.hit("wal.before_fsync")
    failpoints.hit("wal.after_fsync")           # not enabled: not counted
    assert failpoints.hits("wal.after_fsync") == 0


def test_probability_is_seeded_per_point_and_replays():
    """p=0.3 fires on about 30 % of hits; the same seed gives the same hits, whatever
    other points were hit in between; another seed gives other hits."""
    spec = "wal.before_append=error:p=0.3,wal.after_append=error:p=0.5"
    failpoints.configure(spec, 1234)
    first = _fire_pattern("wal.before_append", 2000)
    assert 0.26 < sum(first) / 2000 < 0.34
    failpoints.configure(spec, 1234)
    again = []
    for _ in range(2000):                       # interleave the other point's hits
        again += _fire_pattern("wal.before_append", 1)
        _fire_pattern("wal.after_append", 1)
    assert again == first
    failpoints.configure(spec, 1235)
    assert _fire_pattern("wal.before_append", 2000) != first
    assert failpoints.seed() == 1235
    failpoints.configure("wal.before_append=error:p=1", 7)
    assert all(_fire_pattern("wal.before_append", 50))


def test_seed_from_the_environment_replays_in_another_process():
    """PAXOSLOG_FAILPOINTS_SEED fixes the draws: a child process fires on the same hits
    as this process configured with the same seed."""
    script = ("from paxoslog.storage import failpoints\n"
              "out = []\n"
              "for _ in range(64):\n"
              "    try:\n"
              "        failpoints.hit('wal.after_append')\n"
              "        out.append('.')\n"
              "    except OSError:\n"
              "        out.append('x')\n"
              "print(failpoints.seed(), ''.join(out))\n")
    env = dict(os.environ, PYTHONPATH=ROOT, PAXOSLOG_FAILPOINTS="wal.after_append=error:p=0.4",
               PAXOSLOG_FAILPOINTS_SEED="99")
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    failpoints.configure("wal.after_append=error:p=0.4", 99)
    expected = "".join("x" if f else "." for f in _fire_pattern("wal.after_append", 64))
    assert result.stdout.split() == ["99", expected]
    assert "x" in expected and "." in expected
    env["PAXOSLOG_FAILPOINTS_SEED"] = "ninety-nine"
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "PAXOSLOG_FAILPOINTS_SEED: expected an integer" in \
        result.stderr


def test_exit_on_the_third_fsync_of_a_real_store(tmp_path):
    """wal.before_fsync=exit:nth=3: two saves are fsynced and acknowledged, the process dies
    inside the third (saying which hit), and a restart finds exactly the two saves."""
    script = ("import sys\n"
              "from paxoslog.core.log import Entry, HardState\n"
              "from paxoslog.core.ready import Ready\n"
              "from paxoslog.storage import DiskStorage\n"
              "s = DiskStorage(sys.argv[1], 'c', 1, 'raft'); s.load()\n"
              "for i in range(1, 6):\n"
              "    s.save(Ready(hard_state=HardState(1, 1, i - 1),\n"
              "                 entries=[Entry(i, 1, 0, (b'x%d' % i,))]))\n"
              "    print('acked', i, flush=True)\n")
    data_dir = str(tmp_path / "n1")
    result = run_child(script, data_dir, env_points="wal.before_fsync=exit:nth=3")
    assert result.returncode == 1
    assert result.stdout.split("\n")[:2] == ["acked 1", "acked 2"]
    assert "acked 3" not in result.stdout
    assert "failpoint wal.before_fsync (hit 3, seed" in result.stderr
    storage = DiskStorage(data_dir, "c", 1, "raft")
    restored, _ = storage.load()
    assert [e.index for e in restored.entries][:2] == [1, 2]
    storage.close()


def test_nothing_is_active_without_the_environment_variable():
    """With PAXOSLOG_FAILPOINTS unset the registry is empty: every call site is one `if`."""
    result = run_child("from paxoslog.storage import failpoints; print(failpoints.ACTIVE)")
    assert result.returncode == 0 and result.stdout.strip() == "{}"


def test_a_bad_environment_variable_stops_the_process():
    """A misspelt failpoint in the environment fails at import with the known names."""
    result = run_child("import paxoslog.storage", env_points="wal.afterfsync=exit")
    assert result.returncode != 0
    assert "unknown failpoint 'wal.afterfsync'" in result.stderr


def test_environment_variable_crash_after_fsync_keeps_the_unacknowledged_batch(tmp_path):
    """wal.after_fsync=exit from the env: the process dies before acking, the data is durable."""
    script = ("import sys\n"
              "from paxoslog.core.log import Entry, HardState\n"
              "from paxoslog.core.ready import Ready\n"
              "from paxoslog.storage import DiskStorage\n"
              "s = DiskStorage(sys.argv[1], 'c', 1, 'raft'); s.load()\n"
              "s.save(Ready(hard_state=HardState(3, 2, 0), entries=[Entry(1, 3, 0, (b'x',))]))\n"
              "print('acked')\n")
    data_dir = str(tmp_path / "n1")
    result = run_child(script, data_dir, env_points="wal.after_fsync=exit")
    assert result.returncode == 1 and "acked" not in result.stdout
    storage = DiskStorage(data_dir, "c", 1, "raft")
    restored, _ = storage.load()
    assert restored.hard_state == HardState(3, 2, 0)
    assert restored.entries == [Entry(1, 3, ENTRY_NORMAL, (b"x",))]


def test_crash_while_writing_meta_on_first_start(tmp_path):
    """Dying around META's creation leaves a directory that starts cleanly next time."""
    for point in ("meta.before_rename", "meta.after_rename"):
        data_dir = str(tmp_path / point)
        result = run_child("import sys\nfrom paxoslog.storage import DiskStorage\n"
                           "DiskStorage(sys.argv[1], 'c', 1, 'raft')\n", data_dir,
                           env_points=f"{point}=exit")
        assert result.returncode == 1
        storage = DiskStorage(data_dir, "c", 1, "raft")
        storage.load()
        storage.close()


# ---------------------------------------------------------------------- crash matrix

def test_workload_runs_to_completion_without_failpoints(tmp_path):
    """The matrix's workload itself is sound: it finishes and verifies clean."""
    data_dir = str(tmp_path / "n1")
    result = run_child(WORKLOAD, data_dir, "none")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "closed"
    assert verify_exit(data_dir) == 0


@pytest.mark.parametrize("point", CRASH_POINTS)
def test_kill_at_failpoint_loses_nothing_acknowledged(tmp_path, point, capsys):
    """kill -9 at this persist step: the node restarts with every acknowledged write."""
    data_dir = str(tmp_path / "n1")
    result = run_child(WORKLOAD, data_dir, point)
    assert result.returncode == 1, (point, result.stderr)
    acks = [line.split() for line in result.stdout.splitlines()]
    assert acks and acks[-1] != ["closed"]

    assert verify_exit(data_dir) == 0, capsys.readouterr().out
    storage = DiskStorage(data_dir, "crash", 1, "raft", OPTIONS)
    restored, reader = storage.load()
    present = {e.index: e for e in restored.entries}
    snap_index = restored.snapshot.index if restored.snapshot else 0
    for kind, value in acks:
        value = int(value)
        if kind == "entry":
            assert value <= snap_index or value in present, (point, value)
        elif kind in ("snapshot", "install"):
            assert snap_index >= value, (point, kind, value)
    acked_entries = [int(v) for k, v in acks if k == "entry"]
    assert restored.hard_state.commit >= acked_entries[-1] - 1
    if reader is not None:
        assert set(reader.read_all()) == {"kv"}
    # The restarted node keeps working.
    last = max([snap_index] + list(present))
    storage.save(Ready(hard_state=HardState(9, 1, last), entries=[
        Entry(last + 1, 9, ENTRY_NORMAL, (b"post-crash",))]))
    storage.close()
    storage = DiskStorage(data_dir, "crash", 1, "raft", OPTIONS)
    restored, _ = storage.load()
    assert restored.entries[-1].payload == (b"post-crash",)
    storage.close()


def test_kill_during_snapshot_transfer_resumes(tmp_path):
    """A follower killed mid-transfer resumes from its partial file and installs."""
    script = r'''
import os, sys
from paxoslog.core.log import SnapshotMeta
from paxoslog.core.quorum import Config
from paxoslog.storage import SnapshotReceiver, SnapshotSender, encode_snapshot_bytes, failpoints
leader_file, incoming = sys.argv[1], sys.argv[2]
meta = SnapshotMeta(77, 3, Config(frozenset({1, 2, 3})))
with open(leader_file, "wb") as f:
    f.write(encode_snapshot_bytes(meta, [("kv", [os.urandom(3000) for _ in range(20)])]))
sender = SnapshotSender(leader_file, meta, chunk_bytes=4096)
receiver = SnapshotReceiver(incoming, sender.offer)
for n, chunk in enumerate(sender.chunks()):
    if n == 7:
        failpoints.enable("transfer.before_write", "exit")
    receiver.accept(chunk)
'''
    leader_file, incoming = str(tmp_path / "leader.snap.zst"), str(tmp_path / "n2" / "incoming")
    result = run_child(script, leader_file, incoming)
    assert result.returncode == 1, result.stderr
    from paxoslog.core.log import SnapshotMeta
    from paxoslog.core.quorum import Config
    from paxoslog.storage import SnapshotReceiver, SnapshotSender
    meta = SnapshotMeta(77, 3, Config(frozenset({1, 2, 3})))
    sender = SnapshotSender(leader_file, meta, chunk_bytes=4096)
    receiver = SnapshotReceiver(incoming, sender.offer)
    assert receiver.next_offset == 7 * 4096
    for chunk in sender.chunks(receiver.next_offset):
        receiver.accept(chunk)
    path = receiver.finish()
    storage = DiskStorage(str(tmp_path / "n2"), "c", 2, "raft")
    storage.load()
    storage.install_snapshot(meta, path)
    storage.close()
    storage = DiskStorage(str(tmp_path / "n2"), "c", 2, "raft")
    restored, reader = storage.load()
    assert restored.snapshot == meta and len(reader.read_all()["kv"]) == 60_000


CONFLICTING_INSTALL = r'''
import random, sys
from paxoslog.core.log import Entry, HardState
from paxoslog.core.messages import InstallSnapshot
from paxoslog.core.quorum import Config
from paxoslog.core.raft import RaftReplica
from paxoslog.core.ready import Ready
from paxoslog.core.types import ReplicaOptions
from paxoslog.storage import DiskStorage, encode_snapshot_bytes
config = Config(frozenset({1, 2, 3}))
storage = DiskStorage(sys.argv[1], "c", 2, "raft")
restored, _ = storage.load()
replica = RaftReplica(2, config, ReplicaOptions(), random.Random(1), restored)
replica.step(InstallSnapshot(3, 2, 3, 4, 2, config, b"token"))
ready = replica.ready()
assert ready.snapshot is not None and ready.truncate_from == 5, ready
storage.save(Ready(hard_state=ready.hard_state, truncate_from=ready.truncate_from,
                   entries=ready.entries, snapshot=ready.snapshot,
                   snapshot_data=encode_snapshot_bytes(ready.snapshot, [("kv", [b"state"])])))
print("saved")
'''


@pytest.mark.parametrize("point", ["install.after_truncate", "install.before_rename",
                                   "install.after_rename", "install.after_marker", "none"])
def test_a_crash_installing_a_snapshot_over_a_conflicting_suffix_leaves_a_log_that_starts(
        tmp_path, point):
    """A Raft follower with entries 1-5 of term 1 receives a snapshot at (4, term 2): its
    entry 5 conflicts.  The snapshot used to go in place before the truncation of entry 5,
    so a crash in between left the snapshot's term 2 below entry 5's term 1, and the node
    refused to start for good (found by a review).  The truncation is durable first now:
    killed at any step, the log restores into a replica."""
    import random
    from paxoslog.core.quorum import Config
    from paxoslog.core.raft import RaftReplica
    from paxoslog.core.types import ReplicaOptions
    data_dir = str(tmp_path / "n2")
    storage = DiskStorage(data_dir, "c", 2, "raft")
    storage.load()
    storage.save(Ready(hard_state=HardState(1, 1, 2),
                       entries=[Entry(i, 1, ENTRY_NORMAL, (b"x%d" % i,)) for i in range(1, 6)]))
    storage.close()
    result = run_child(CONFLICTING_INSTALL, data_dir,
                       env_points="" if point == "none" else f"{point}=exit")
    assert (result.returncode, "saved" in result.stdout) == \
        ((0, True) if point == "none" else (1, False)), result.stderr
    storage = DiskStorage(data_dir, "c", 2, "raft")
    restored, _ = storage.load()
    storage.close()
    RaftReplica(2, Config(frozenset({1, 2, 3})), ReplicaOptions(), random.Random(1), restored)
    assert all(e.index <= 4 for e in restored.entries)
