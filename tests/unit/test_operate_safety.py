"""The operator commands' safety on real files and real processes (found by a review):

* ``NewDataDir`` (recover, restore) is crash-safe at every step: a process SIGKILLed before
  the swap, right after the exchange, or after the old data got its name, and the next run
  never deletes the original data (it used to rmtree every ``<target>.building-*``, which
  after the exchange IS the old data); two swaps in one second both keep their old data;
* a data directory that is a mount point is refused before anything is written;
* ``snapshot restore`` refuses a correctly framed backup a node could not load (garbage
  kv state, damaged session table, negative index or term), writing nothing;
* clear errors instead of tracebacks: ``--timeout`` inf / 1e300 / nan, a full disk during
  ``snapshot save``, a dry-run ``recover`` on a read-only data directory (which must create
  nothing);
* ``snapshot save`` and ``log export`` remove their temporary file on SIGTERM and SIGINT,
  create it owner-only, and remove the ones dead processes left.

Mount points come from ``unshare --mount`` (a private mount namespace; skipped where it is
not permitted).  No test sleeps to synchronise: they poll with a deadline.
"""

from __future__ import annotations

import base64
import http.server
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time

import pytest

from paxoslog.core.log import Entry, ENTRY_NORMAL, HardState, SnapshotMeta
from paxoslog.core.quorum import Config
from paxoslog.core.ready import Ready
from paxoslog.node.commands import encode_command
from paxoslog.operate.newdir import MARKER, NewDataDir
from paxoslog.storage import DiskStorage
from paxoslog.storage.snapshot import encode_snapshot_bytes
from statemachines.kv import KVStateMachine

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENV = dict(os.environ, PYTHONPATH=ROOT)


def _cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "paxoslog.cli", *args], capture_output=True,
                          text=True, cwd=ROOT, env=ENV, timeout=timeout)


def _python(code: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          cwd=ROOT, env=ENV, timeout=timeout)


def _wait_for(condition, timeout: float = 20.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)


def _dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def _conf(tmp_path, protocol: str = "raft") -> str:
    nodes = "".join(f'\n[[nodes]]\nid = {i}\npeer = "127.0.0.1:{7100 + i}"\n'
                    f'api = "127.0.0.1:{7200 + i}"\n' for i in (1, 2, 3))
    path = tmp_path / "cluster.toml"
    path.write_text(f'cluster = "safety-{protocol}"\nprotocol = "{protocol}"\n'
                    f'data_dir = "{tmp_path}/data/{{node}}"\n{nodes}')
    return str(path)


def _crafted_data_dir(tmp_path, protocol: str = "raft") -> str:
    """Node 1's data directory of ``_conf``'s cluster with five kv puts (three committed)."""
    data_dir = str(tmp_path / "data" / "1")
    entries = [Entry(i, 2, ENTRY_NORMAL, (encode_command(
        "kv", {"op": "put", "key": f"k{i}", "value": i}, "crafted", i,
        1_700_000_000_000 + i),)) for i in range(1, 6)]
    storage = DiskStorage(data_dir, f"safety-{protocol}", 1, protocol)
    storage.load()
    storage.save(Ready(hard_state=HardState(2, 0, 3), entries=entries))
    storage.close()
    return data_dir


def _tree(path) -> dict:
    """{relative path: bytes} of every file under ``path``."""
    out = {}
    for root, _dirs, files in os.walk(path):
        for name in files:
            full = os.path.join(root, name)
            out[os.path.relpath(full, path)] = open(full, "rb").read()
    return out


def _unshare_ok() -> bool:
    if shutil.which("unshare") is None:
        return False
    try:
        return subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                               "mount -t tmpfs tmpfs /mnt"], capture_output=True,
                              timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


needs_mounts = pytest.mark.skipif(not _unshare_ok(),
                                  reason="needs `unshare --mount` (a private mount namespace)")


def _in_namespace(script: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """``script`` (sh -e) in a private mount namespace: its mounts vanish with it."""
    return subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-ec",
                           script], capture_output=True, text=True, cwd=ROOT, env=ENV,
                          timeout=timeout)


PAXOSLOG = f"{sys.executable} -m paxoslog.cli"


# ---------------------------------------------------------------------- 1. NewDataDir

CRASHING_RUN = r"""
import os, signal, sys
from paxoslog.operate import newdir
target, step, content = sys.argv[1:4]

def die():
    os.kill(os.getpid(), signal.SIGKILL)

if step == "exchanged":                  # right after renameat2(EXCHANGE)
    real = newdir.exchange_paths
    def exchange(a, b):
        done = real(a, b)
        if done:
            die()
        return done
    newdir.exchange_paths = exchange
elif step == "aside":                    # the old data is renamed, the marker not dropped
    newdir.NewDataDir._drop_marker = lambda self: die()
with newdir.NewDataDir(target) as new:
    open(os.path.join(new.path, "META"), "w").write(content)
    if step == "building":
        die()
    new.commit("recover")
"""


@pytest.mark.parametrize("step", ["building", "exchanged", "aside"])
def test_a_swap_killed_at_any_step_never_loses_the_original_data(tmp_path, step):
    """A recover-like swap SIGKILLed before the exchange, right after it (the old data is
    at the ``.building-`` name then), or after the old data got its name; then another
    run: the original data still exists, once, under a ``.before-recover-`` name, the
    target holds the newest data, and no half-built directory or marker is left.  Before
    the fix the second run deleted every ``.building-*`` directory: after a crash right
    after the exchange that was the original data."""
    target = tmp_path / "1"
    (target / "wal").mkdir(parents=True)
    (target / "META").write_text("original")
    (target / "wal" / "0001.wal").write_bytes(b"precious entries")
    original = _tree(target)
    crashed = _python(CRASHING_RUN, str(target), step, "first")
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    leftovers = sorted(p for p in os.listdir(tmp_path) if p != "1")
    assert leftovers and all(".building-" in p or ".before-" in p for p in leftovers)

    with NewDataDir(str(target), "recover") as new:
        open(os.path.join(new.path, "META"), "w").write("second")
        kept = new.commit()
    assert new.leftovers == []
    assert (target / "META").read_text() == "second"
    names = sorted(os.listdir(tmp_path))
    assert not [n for n in names if ".building-" in n], names
    befores = [n for n in names if n.startswith("1.before-recover-")]
    trees = [_tree(tmp_path / n) for n in befores]
    assert trees.count(original) == 1, (names, trees)
    assert os.path.join(str(tmp_path), os.path.basename(kept)) == kept
    if step == "building":
        assert befores == [os.path.basename(kept)]       # the first run changed nothing
    else:
        assert len(befores) == 2 and {"META": b"first"} in trees
    if step == "exchanged":
        assert new.finished is not None and new.finished[1] in [
            str(tmp_path / n) for n in befores]
    for directory in [target] + [tmp_path / n for n in befores]:
        assert MARKER not in _tree(directory), directory


def test_two_swaps_in_one_second_keep_both_old_directories(tmp_path):
    """The old data's name carries the pid and nanoseconds: a second swap right after the
    first no longer fails after its exchange ("Directory not empty")."""
    target = tmp_path / "1"
    target.mkdir()
    (target / "META").write_text("v0")
    kept = []
    for version in ("v1", "v2"):
        with NewDataDir(str(target), "recover") as new:
            open(os.path.join(new.path, "META"), "w").write(version)
            kept.append(new.commit())
    assert kept[0] != kept[1]
    assert [open(os.path.join(k, "META")).read() for k in kept] == ["v0", "v1"]
    assert (target / "META").read_text() == "v2"
    assert sorted(os.listdir(tmp_path)) == sorted(["1"] + [os.path.basename(k) for k in kept])


HOLDING_RUN = r"""
import sys
from paxoslog.operate.newdir import NewDataDir
with NewDataDir(sys.argv[1]) as new:
    print(new.path, flush=True)
    sys.stdin.read()
"""


def test_only_half_built_directories_of_dead_runs_are_deleted(tmp_path):
    """A live run's directory (its marker is locked) is left alone until it dies; a
    directory without a marker that holds files (old data, or a run of an older release)
    is never deleted but listed; an empty one (killed before its marker) is removed; a
    directory with somebody else's marker is kept too."""
    target = tmp_path / "1"
    live = subprocess.Popen([sys.executable, "-c", HOLDING_RUN, str(target)], cwd=ROOT,
                            env=ENV, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        live_path = live.stdout.readline().strip()
        assert os.path.exists(os.path.join(live_path, MARKER))
        unmarked = tmp_path / "1.building-4242"
        (unmarked / "wal").mkdir(parents=True)
        (unmarked / "META").write_text("maybe the only copy")
        empty = tmp_path / "1.building-4343"
        empty.mkdir()
        foreign = tmp_path / "1.building-4444-000000001"
        foreign.mkdir()
        (foreign / "META").write_text("data")
        (foreign / MARKER).write_text(json.dumps({"path": str(tmp_path / "elsewhere")}))
        with NewDataDir(str(target)) as new:
            assert os.path.isdir(live_path)
            assert sorted(new.leftovers) == sorted([str(foreign), str(unmarked)])
        assert not empty.exists() and (unmarked / "META").exists() and foreign.exists()
    finally:
        live.kill()
        live.wait()
    assert os.path.isdir(live_path)                   # killed: its marker is unlocked now
    with NewDataDir(str(target)) as new:
        pass
    assert not os.path.exists(live_path)
    assert (unmarked / "META").read_text() == "maybe the only copy"


# ---------------------------------------------------------------------- 2. mount points

@needs_mounts
def test_recover_refuses_a_mounted_data_dir_before_changing_anything(tmp_path):
    """A data directory that is a mount point (a Kubernetes volume): recover printed
    RECOVERING, then died with an EBUSY traceback.  It refuses up front now, says why
    and what to do, and the data is untouched (the dry run still works)."""
    conf = _conf(tmp_path)
    source = _crafted_data_dir(tmp_path)
    os.rename(source, source + ".src")
    os.mkdir(source)
    script = (f"mount -t tmpfs tmpfs {source}\ncp -a {source}.src/. {source}/\n"
              f"{PAXOSLOG} recover --config {conf} --node 1 > {tmp_path}/dry.out 2>&1\n"
              f"set +e\n{PAXOSLOG} recover --config {conf} --node 1 --force-new-cluster\n"
              f"echo rc=$?\n"
              f"diff -r {source}.src {source} >&2 && echo SAME\n")
    done = _in_namespace(script)
    assert "rc=1" in done.stdout, (done.stdout, done.stderr)
    assert f"{source} is a mount point" in done.stderr and "not supported" in done.stderr
    assert "nothing was changed" in done.stderr and "inside the volume" in done.stderr
    assert "Traceback" not in done.stderr and "RECOVERING" not in done.stdout
    assert "SAME" in done.stdout, done.stderr
    assert "MAY HAVE BEEN LOST" in (tmp_path / "dry.out").read_text()
    assert sorted(os.listdir(tmp_path / "data")) == ["1", "1.src"]


def _backup(path, index: int = 9, term: int = 2, kv_state: bytes | None = None,
            sessions=None, extra_states=()) -> str:
    kv = KVStateMachine()
    kv.apply(index, {"op": "put", "key": "hits", "value": 7})
    states = [("kv", [kv.snapshot() if kv_state is None else kv_state]), *extra_states]
    meta = SnapshotMeta(index, term, Config(frozenset({1, 2, 3})))
    with open(path, "wb") as f:
        f.write(encode_snapshot_bytes(meta, states, sessions))
    return str(path)


@needs_mounts
def test_restore_refuses_a_mounted_target_writing_nothing(tmp_path):
    """Node 2's (empty) data directory is a mount point: the restore used to build node 1,
    then fail on node 2 with EBUSY.  Refused before any node is written now."""
    conf = _conf(tmp_path)
    backup = _backup(tmp_path / "b.snap.zst")
    mounted = tmp_path / "data" / "2"
    mounted.mkdir(parents=True)
    done = _in_namespace(f"mount -t tmpfs tmpfs {mounted}\nset +e\n"
                         f"{PAXOSLOG} snapshot restore {backup} --config {conf}\necho rc=$?\n"
                         f"ls -A {mounted}\n")
    assert "rc=1" in done.stdout, (done.stdout, done.stderr)
    assert "mount point" in done.stderr and f"node 2: {mounted}" in done.stderr
    assert "nothing was written" in done.stderr and "Traceback" not in done.stderr
    assert done.stdout.strip().endswith("rc=1")        # the mount stayed empty
    assert sorted(os.listdir(tmp_path / "data")) == ["2"] and not os.listdir(mounted)


# ---------------------------------------------------------------------- 3. restore checks

@pytest.mark.parametrize("case", ["garbage kv", "sessions clock", "sessions rows",
                                  "negative index", "negative term", "huge index"])
def test_restore_refuses_a_framed_backup_a_node_could_not_load(tmp_path, case):
    """Each file is one valid zstd frame with a matching trailer (``snapshot inspect``
    reads it) but a node could not start from it: restore used to write it (exit 0).  It
    restores every state and the session table into throwaway instances first now and
    checks the index and term: refused, naming the file; nothing written."""
    kwargs = {"garbage kv": {"kv_state": b"\x00 not a kv state \xff"},
              "sessions clock": {"sessions": {"clock": "yesterday", "sessions": []}},
              "sessions rows": {"sessions": {"clock": 5, "swept_at": 0, "sessions": [[1]]}},
              "negative index": {"index": -5},
              "negative term": {"term": -1},
              "huge index": {"index": 1 << 70}}[case]
    backup = _backup(tmp_path / "damaged.snap.zst", **kwargs)
    conf = _conf(tmp_path)
    inspect = _cli("snapshot", "inspect", backup)
    assert inspect.returncode == 0, inspect.stderr           # the frame itself is fine
    out = _cli("snapshot", "restore", backup, "--config", conf)
    assert out.returncode == 1, (out.stdout, out.stderr)
    assert f"refusing to restore: {backup}" in out.stderr and "Traceback" not in out.stderr
    assert "nothing was written" in out.stderr
    assert not (tmp_path / "data").exists()
    good = _backup(tmp_path / "good.snap.zst")
    assert _cli("snapshot", "restore", good, "--config", conf).returncode == 0


# ---------------------------------------------------------------------- 4. clear errors

@pytest.mark.parametrize("value", ["inf", "1e300", "nan", "0", "-3", "soon"])
def test_save_timeout_must_be_a_finite_positive_number(tmp_path, value):
    """--timeout inf or 1e300 died with an OverflowError in the socket layer, nan looped
    for ever: argument errors (exit 2) now, before anything is tried."""
    out = _cli("snapshot", "save", "--endpoints", "http://127.0.0.1:9",
               str(tmp_path / "b.snap.zst"), "--timeout", value, timeout=30)
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert "argument --timeout" in out.stderr and "Traceback" not in out.stderr
    assert os.listdir(tmp_path) == []


class _BackupServer:
    """GET /api/v1/snapshot on 127.0.0.1 (an ephemeral port): the whole ``data``, or with
    ``stall`` its first 64 KiB, then nothing until the test ends."""

    def __init__(self, data: bytes, stall: bool = False) -> None:
        self.release = threading.Event()
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if stall:
                    self.wfile.write(data[:65536])
                    self.wfile.flush()
                    owner.release.wait(120)
                else:
                    self.wfile.write(data)

            def log_message(self, *args):
                pass
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def _big_backup(path, kib: int = 512) -> bytes:
    """A valid backup of about ``kib`` KiB that does not compress (random values)."""
    kv = KVStateMachine()
    for i in range(kib // 16):
        kv.apply(i + 1, {"op": "put", "key": f"k{i}",
                         "value": base64.b64encode(os.urandom(12 * 1024)).decode()})
    data = encode_snapshot_bytes(SnapshotMeta(kib, 1, Config(frozenset({1}))),
                                 [("kv", [kv.snapshot()])])
    with open(path, "wb") as f:
        f.write(data)
    return data


@needs_mounts
def test_save_on_a_full_disk_says_so_and_leaves_nothing(tmp_path):
    """The output directory is a 64 KiB tmpfs and the backup is ~512 KiB: ENOSPC used to be
    a traceback.  A clear error (exit 1), and no partial file."""
    data = _big_backup(tmp_path / "src.snap.zst")
    assert len(data) > 256 * 1024
    server = _BackupServer(data)
    out_dir = tmp_path / "small"
    out_dir.mkdir()
    try:
        done = _in_namespace(f"mount -t tmpfs -o size=64k tmpfs {out_dir}\nset +e\n"
                             f"{PAXOSLOG} snapshot save --endpoints {server.url} --quiet "
                             f"{out_dir}/b.snap.zst\necho rc=$?\nls -A {out_dir}\n")
    finally:
        server.close()
    assert done.stdout.strip() == "rc=1", (done.stdout, done.stderr)
    assert "No space left on device" in done.stderr and "nothing was saved" in done.stderr
    assert f"{out_dir}/b.snap.zst" in done.stderr and "Traceback" not in done.stderr


def test_recover_dry_run_creates_nothing_and_open_errors_name_the_file(tmp_path):
    """The dry run opened LOCK with O_CREAT: it created the file (and died with a
    traceback on a read-only data directory).  Without a LOCK it creates none now; a LOCK
    that cannot be opened is a clear error naming it."""
    conf = _conf(tmp_path)
    data_dir = _crafted_data_dir(tmp_path)
    lock = os.path.join(data_dir, "LOCK")
    os.unlink(lock)
    before = sorted(os.listdir(data_dir))
    dry = _cli("recover", "--config", conf, "--node", "1")
    assert dry.returncode == 0, dry.stderr
    assert "MAY HAVE BEEN LOST" in dry.stdout and "dry run: nothing was changed" in dry.stdout
    assert sorted(os.listdir(data_dir)) == before and not os.path.exists(lock)
    os.mkdir(lock)                                     # a LOCK that cannot be opened
    forced = _cli("recover", "--config", conf, "--node", "1", "--force-new-cluster")
    assert forced.returncode == 1, forced.stderr
    assert f"cannot open {lock}: Is a directory" in forced.stderr
    assert "nothing was changed" in forced.stderr and "Traceback" not in forced.stderr


@needs_mounts
def test_recover_dry_run_works_on_a_read_only_data_dir(tmp_path):
    """A read-only (bind-mounted) data directory: the report, exit 0, no traceback."""
    conf = _conf(tmp_path)
    data_dir = _crafted_data_dir(tmp_path)
    done = _in_namespace(f"mount --bind {data_dir} {data_dir}\n"
                         f"mount -o remount,bind,ro {data_dir}\n"
                         f"! touch {data_dir}/probe 2>/dev/null\nset +e\n"
                         f"{PAXOSLOG} recover --config {conf} --node 1\necho rc=$?\n")
    assert done.stdout.strip().endswith("rc=0"), (done.stdout, done.stderr)
    assert "MAY HAVE BEEN LOST" in done.stdout and "Traceback" not in done.stderr


# ---------------------------------------------------------------------- 5. temporary files

def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_save_killed_mid_download_removes_its_owner_only_temporary_file(tmp_path, signum):
    """A real ``paxoslog snapshot save`` against a server that stalls mid-backup: its
    ``.FILE.part-<pid>`` is 0600 (the backup holds every key); SIGTERM (or SIGINT) removes
    it and exits 128 + N with a message.  SIGTERM used to leave it behind."""
    data = _big_backup(tmp_path / "src.snap.zst", kib=256)
    server = _BackupServer(data, stall=True)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    try:
        # SIGINT as a terminal gives it: a shell that runs the suite in the background
        # hands its children SIGINT ignored, and an ignored signal stays ignored.
        save = subprocess.Popen([sys.executable, "-m", "paxoslog.cli", "snapshot", "save",
                                 "--endpoints", server.url, "--quiet",
                                 str(out_dir / "b.snap.zst")], cwd=ROOT, env=ENV,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                preexec_fn=_default_sigint)
        part = out_dir / f".b.snap.zst.part-{save.pid}"
        _wait_for(part.exists, 30, what="the download to begin")
        assert stat.S_IMODE(part.stat().st_mode) == 0o600
        save.send_signal(signum)
        _, stderr = save.communicate(timeout=30)
    finally:
        server.close()
    assert save.returncode == 128 + signum, stderr
    assert f"interrupted by {signal.Signals(signum).name}" in stderr
    assert "nothing was saved" in stderr and "Traceback" not in stderr
    assert os.listdir(out_dir) == []


def test_save_removes_temporary_files_of_dead_runs_and_writes_the_backup_0600(tmp_path):
    """A ``.FILE.part-<pid>`` of a dead process (killed with SIGKILL) is removed at start;
    one of a live process is not; the backup itself is owner-only."""
    data = _big_backup(tmp_path / "src.snap.zst", kib=32)
    dead = tmp_path / f".b.snap.zst.part-{_dead_pid()}"
    live = tmp_path / f".b.snap.zst.part-{os.getpid()}"
    other = tmp_path / f".other.snap.zst.part-{_dead_pid()}"
    for path in (dead, live, other):
        path.write_bytes(b"partial")
    server = _BackupServer(data)
    try:
        out = _cli("snapshot", "save", "--endpoints", server.url, "--quiet",
                   str(tmp_path / "b.snap.zst"))
    finally:
        server.close()
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "b.snap.zst").read_bytes() == data
    assert stat.S_IMODE((tmp_path / "b.snap.zst").stat().st_mode) == 0o600
    assert not dead.exists() and live.exists() and other.exists()


STALLED_EXPORT = r"""
import os, signal, sys
from paxoslog.cli import main
from paxoslog.operate import sqlexport

def fill(db, *args):
    db.execute("CREATE TABLE marker (x)")
    db.commit()
    open(sys.argv[1], "w").close()           # the temporary database exists now
    while True:
        signal.pause()                       # a very large export
sqlexport._fill = fill
sys.exit(main(sys.argv[2:]))
"""


def test_export_killed_mid_write_removes_its_temporary_database(tmp_path):
    """``log export`` writing its ``OUT.db.tmp-<pid>`` (0600) gets SIGTERM: the file is
    removed, exit 143 with a message (it used to be left behind)."""
    _conf(tmp_path)
    data_dir = _crafted_data_dir(tmp_path)
    ready = tmp_path / "ready"
    out_db = tmp_path / "out" / "node1.db"
    out_db.parent.mkdir()
    export = subprocess.Popen([sys.executable, "-c", STALLED_EXPORT, str(ready), "log",
                               "export", "--sqlite", str(out_db), "--data-dir", data_dir,
                               "--quiet"], cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    tmp = out_db.parent / f"node1.db.tmp-{export.pid}"
    try:
        _wait_for(ready.exists, 30, what="the export to write its temporary database")
        assert tmp.exists() and stat.S_IMODE(tmp.stat().st_mode) == 0o600
        export.send_signal(signal.SIGTERM)
        _, stderr = export.communicate(timeout=30)
    finally:
        if export.poll() is None:
            export.kill()
            export.wait()
    assert export.returncode == 143, stderr
    assert "interrupted by SIGTERM" in stderr and "Traceback" not in stderr
    assert os.listdir(out_db.parent) == []


def test_export_removes_temporary_databases_of_dead_runs_and_writes_0600(tmp_path):
    """A ``OUT.db.tmp-<pid>`` of a dead process is removed at start, a live one is not; the
    export is owner-only (it holds every key)."""
    data_dir = _crafted_data_dir(tmp_path)
    out_db = tmp_path / "node1.db"
    dead = tmp_path / f"node1.db.tmp-{_dead_pid()}"
    live = tmp_path / f"node1.db.tmp-{os.getpid()}"
    for path in (dead, live):
        path.write_bytes(b"partial")
    out = _cli("log", "export", "--sqlite", str(out_db), "--data-dir", data_dir, "--quiet")
    assert out.returncode == 0, out.stderr
    assert stat.S_IMODE(out_db.stat().st_mode) == 0o600
    assert not dead.exists() and live.exists()
