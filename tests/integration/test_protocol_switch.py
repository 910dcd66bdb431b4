"""The protocol is fixed when a data directory is created: a node refuses, with a clear
message, to start on data written by the other protocol."""

import subprocess
import sys

from paxoslog_integration import ROOT, ClusterHarness, wait_for


def test_node_refuses_data_written_by_the_other_protocol(tmp_path):
    """A raft conf on a multipaxos data directory exits non-zero naming META and both values."""
    paxos = ClusterHarness(tmp_path, "multipaxos", size=1)
    try:
        paxos.start_all()
        paxos.wait_leader()
        assert paxos.put(1, "k", "v").status == 200
    finally:
        paxos.close()
    conf = open(paxos.conf_path).read().replace('protocol = "multipaxos"', 'protocol = "raft"')
    raft_conf = tmp_path / "raft.toml"
    raft_conf.write_text(conf)
    result = subprocess.run(
        [sys.executable, "-m", "paxoslog.cli", "serve", "--config", str(raft_conf),
         "--node", "1"], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode != 0
    message = result.stdout + result.stderr
    assert "META" in message and "raft" in message and "multipaxos" in message, message
    # The data is untouched: a multipaxos node on the same data directory (new ports, same
    # cluster name and data_dir) starts again and still has its write.
    again = ClusterHarness(tmp_path, "multipaxos", size=1)
    try:
        again.start_all()
        again.wait_leader()
        wait_for(lambda: again.get(1, "k").status == 200, what="the old write")
        assert again.get(1, "k").body["value"] == "v"
    finally:
        again.close()
