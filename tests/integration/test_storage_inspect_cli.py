"""The inspection commands as an operator runs them: a separate process
(the real ``paxoslog log ...`` and ``paxoslog snapshot inspect`` commands) pointed at
the data directory of a node that is still running in this process, then at a damaged copy.
Exit codes are the contract: 0 healthy, 1 corrupt, 2 bad arguments."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

from paxoslog.core.log import ENTRY_NORMAL, Entry, HardState, SnapshotMeta
from paxoslog.core.quorum import Config
from paxoslog.core.ready import Ready
from paxoslog.storage import DiskStorage, StorageOptions
from paxoslog.storage.walscan import list_segments

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def inspect(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "paxoslog.cli", *args], cwd=ROOT,
                          env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True, text=True,
                          timeout=60)


def test_inspection_processes_on_a_live_and_on_a_damaged_data_dir(tmp_path):
    """verify/dump/inspect run beside a live writer (exit 0) and fail on damage (exit 1)."""
    data_dir = str(tmp_path / "n1")
    storage = DiskStorage(data_dir, "it", 1, "raft", StorageOptions(segment_bytes=4096))
    storage.load()
    for i in range(1, 120):
        storage.save(Ready(hard_state=HardState(2, 1, i - 1),
                           entries=[Entry(i, 2, ENTRY_NORMAL, (b"set k%d" % i,))]))
    snap = storage.save_snapshot(SnapshotMeta(100, 2, Config(frozenset({1, 2, 3}))),
                                 [("kv", [b"x" * 5000])], {"sessions": []})

    verify = inspect("log", "verify", "--data-dir", data_dir, "--json")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert json.loads(verify.stdout)["last_index"] == 119
    dump = inspect("log", "dump", "--data-dir", data_dir, "--from", "117", "--json")
    assert dump.returncode == 0
    assert [json.loads(line)["index"] for line in dump.stdout.splitlines()] == [117, 118, 119]
    shown = inspect("snapshot", "inspect", snap.path)
    assert shown.returncode == 0 and "kv: 5000 bytes" in shown.stdout

    damaged = str(tmp_path / "damaged")
    shutil.copytree(data_dir, damaged)
    storage.save(Ready(entries=[Entry(120, 2, ENTRY_NORMAL, (b"still writable",))]))
    storage.close()
    _, first = list_segments(os.path.join(damaged, "wal"))[0]
    with open(first, "r+b") as f:
        f.seek(100)
        byte = f.read(1)[0]
        f.seek(100)
        f.write(bytes((byte ^ 0x10,)))
    verify = inspect("log", "verify", "--data-dir", damaged)
    assert verify.returncode == 1 and first in verify.stdout
    assert inspect("log", "verify", "--data-dir", str(tmp_path / "absent")).returncode == 2
