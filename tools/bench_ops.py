"""Operations benchmark: backup, restore and SQL export of a loaded cluster.

For each protocol mode: starts a 3-node cluster as real processes (ports reserved on
127.0.0.1, data in a temporary directory), loads ``--keys`` keys of ``--value-bytes`` bytes
through the HTTP API (pipelined keep-alive connections), then times, through the real
``paxoslog`` command:

* ``snapshot save`` from a follower (barrier read, snapshot, stream, verify, rename);
* ``snapshot restore`` into the data directories of a new 3-node cluster, then the time
  until the restored cluster has a leader and its kv digest equals the old one;
* ``log export --sqlite`` of a follower's data directory (beside the live node).

Numbers are for the whole machine (the nodes and the tool share its cores).

    python tools/bench_ops.py [--modes multipaxos,raft] [--keys 100000] [--value-bytes 100]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from paxoslog.chaos.cluster import allocate_ports  # noqa: E402


class Cluster:
    def __init__(self, workdir: str, protocol: str) -> None:
        self.workdir = workdir
        ports = allocate_ports(6)
        self.api = dict(zip((1, 2, 3), ports[3:]))
        nodes = "".join(f'\n[[nodes]]\nid = {i}\npeer = "127.0.0.1:{ports[i - 1]}"\n'
                        f'api = "127.0.0.1:{self.api[i]}"\n' for i in (1, 2, 3))
        self.conf = os.path.join(workdir, "cluster.toml")
        with open(self.conf, "w") as f:
            f.write(f'cluster = "bench-ops"\nprotocol = "{protocol}"\n'
                    f'data_dir = "{workdir}/data/{{node}}"\nsecret = "bench-ops-secret"\n'
                    f'[timing]\ntick_ms = 20\nheartbeat_ticks = 3\nelection_ticks = 25\n'
                    f'[state_machines]\nenabled = ["kv", "counter"]\n{nodes}')
        self.procs: dict[int, subprocess.Popen] = {}

    def start_all(self) -> None:
        for node in (1, 2, 3):
            log = open(os.path.join(self.workdir, f"n{node}.log"), "ab")
            self.procs[node] = subprocess.Popen(
                [sys.executable, "-m", "paxoslog.cli", "serve", "--config", self.conf,
                 "--node", str(node)], stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                env=dict(os.environ, PYTHONPATH=ROOT))

    def stop_all(self) -> None:
        for proc in self.procs.values():
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        self.procs.clear()

    def get(self, node: int, path: str, timeout: float = 5.0) -> dict | None:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", self.api[node], timeout=timeout)
            conn.request("GET", path)
            response = conn.getresponse()
            body = json.loads(response.read())
            conn.close()
            return body if response.status == 200 else None
        except (OSError, ValueError, http.client.HTTPException):
            return None

    def leader(self, timeout: float = 60.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for node in (1, 2, 3):
                status = self.get(node, "/api/v1/cluster/status", 1.0)
                if status and status["role"] == "leader":
                    return node
            time.sleep(0.05)
        raise RuntimeError("no leader")

    def kv_hash(self, node: int) -> tuple[int, str] | None:
        status = self.get(node, "/api/v1/cluster/status?hashes=1", 30.0)
        return (status["applied_index"], status["state_hashes"]["kv"]) if status else None


def load(cluster: Cluster, node: int, keys: int, value_bytes: int, connections: int = 8,
         depth: int = 64) -> float:
    """Write ``keys`` keys with pipelined requests on ``connections`` connections."""
    value = "v" * value_bytes
    started = time.monotonic()
    chunks = [range(i, keys, connections) for i in range(connections)]

    def worker(indexes) -> None:
        sock = socket.create_connection(("127.0.0.1", cluster.api[node]))
        reader = sock.makefile("rb")
        # The node's own address: it refuses a Host that does not name it (DNS rebinding).
        host = b"127.0.0.1:%d" % cluster.api[node]
        indexes = list(indexes)
        for start in range(0, len(indexes), depth):
            batch = indexes[start:start + depth]
            payload = b"".join(
                b"POST /api/v1/consensus/propose HTTP/1.1\r\nHost: " + host
                + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
                for body in (json.dumps({"key": f"key{i:07d}", "value": value}).encode()
                             for i in batch))
            sock.sendall(payload)
            for _ in batch:
                status = reader.readline()
                length = 0
                while (line := reader.readline()) not in (b"\r\n", b""):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                body = reader.read(length)
                if b" 200 " not in status:
                    raise RuntimeError(f"write failed: {status!r} {body[:300]!r}")
        sock.close()
    threads = [threading.Thread(target=worker, args=(chunk,)) for chunk in chunks]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.monotonic() - started


def paxoslog(*args: str) -> tuple[float, subprocess.CompletedProcess]:
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "paxoslog.cli", *args], capture_output=True,
                          text=True, cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT))
    if done.returncode != 0:
        raise RuntimeError(f"paxoslog {' '.join(args)} failed: {done.stderr}")
    return time.monotonic() - started, done


def cli_overhead() -> float:
    """Seconds of a bare ``paxoslog --help`` (interpreter start and imports), included in
    every timed command below."""
    seconds, _ = paxoslog("--help")
    return seconds


def bench(protocol: str, keys: int, value_bytes: int) -> dict:
    work = tempfile.mkdtemp(prefix=f"bench-ops-{protocol}-")
    os.makedirs(os.path.join(work, "old"))
    old = Cluster(os.path.join(work, "old"), protocol)
    new = None
    try:
        old.start_all()
        leader = old.leader()
        load_s = load(old, leader, keys, value_bytes)
        follower = next(n for n in (1, 2, 3) if n != leader)
        backup = os.path.join(work, "backup.snap.zst")
        save_s, saved = paxoslog("snapshot", "save", "--endpoints",
                                 f"http://127.0.0.1:{old.api[follower]}", backup, "--json",
                                 "--quiet")
        summary = json.loads(saved.stdout)
        os.makedirs(os.path.join(work, "new"))
        new = Cluster(os.path.join(work, "new"), protocol)
        restore_s, _ = paxoslog("snapshot", "restore", backup, "--config", new.conf,
                                "--quiet")
        started = time.monotonic()
        new.start_all()
        new_leader = new.leader()
        last_key = f"/api/v1/consensus/query?key=key{keys - 1:07d}"
        while new.get(new_leader, last_key, 2.0) is None:
            time.sleep(0.05)
        serving_s = time.monotonic() - started
        if new.kv_hash(new_leader)[1] != old.kv_hash(follower)[1]:   # not timed
            raise RuntimeError("the restored cluster's kv digest differs")
        out_db = os.path.join(work, "export.db")
        export_s, exported = paxoslog("log", "export", "--sqlite", out_db, "--data-dir",
                                      os.path.join(old.workdir, "data", str(follower)),
                                      "--json", "--quiet")
        export = json.loads(exported.stdout)
        return {"protocol": protocol, "keys": keys, "value_bytes": value_bytes,
                "load_s": round(load_s, 2), "load_writes_per_s": round(keys / load_s),
                "backup_index": summary["index"], "backup_bytes": summary["bytes"],
                "save_s": round(save_s, 2), "restore_s": round(restore_s, 2),
                "restored_cluster_serving_s": round(serving_s, 2),
                "export_s": round(export_s, 2), "export_rows_log": export["log_entries"],
                "cli_start_s": round(cli_overhead(), 2),
                "export_keys": export["keys"], "export_db_bytes": os.path.getsize(out_db)}
    finally:
        old.stop_all()
        if new is not None:
            new.stop_all()
        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--modes", default="multipaxos,raft")
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--value-bytes", type=int, default=100)
    args = parser.parse_args()
    results = [bench(mode, args.keys, args.value_bytes) for mode in args.modes.split(",")]
    columns = ("protocol", "keys", "load_writes_per_s", "backup_bytes", "save_s", "restore_s",
               "restored_cluster_serving_s", "export_s", "export_keys", "cli_start_s")
    print("  ".join(f"{c:>14}" for c in columns))
    for row in results:
        print("  ".join(f"{row[c]!s:>14}" for c in columns))
    os.makedirs(os.path.join(ROOT, "reports"), exist_ok=True)
    with open(os.path.join(ROOT, "reports", "bench_ops.json"), "w") as f:
        json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
