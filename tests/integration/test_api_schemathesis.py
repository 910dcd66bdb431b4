"""The OpenAPI document against live clusters: the served document is the checked-in one,
and schemathesis (a bounded number of generated requests per operation, both protocol
modes, tokens and TLS on: the document is checked over HTTPS, the peers use mutual TLS)
finds no 5xx but the documented 503/504, no crash and no answer that breaks the
document."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

from paxoslog_integration import ROOT, started_cluster

DOC = os.path.join(ROOT, "docs", "openapi.json")
CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "schemathesis.toml")
CHECKS = ("not_a_server_error,status_code_conformance,content_type_conformance,"
          "response_headers_conformance,response_schema_conformance,negative_data_rejection")
EXAMPLES = int(os.environ.get("PAXOSLOG_SCHEMATHESIS_EXAMPLES", "60"))
SEED = os.environ.get("PAXOSLOG_SCHEMATHESIS_SEED", "12")
# Membership changes would really change the cluster under test (even "negative" cases:
# a valid body with a malformed header removed node 1 in a trial run), so with the admin
# token they are left out; the writer's run reaches them (403), and their validation has
# its own tests (test_server_membership.py).
MEMBERSHIP = "^/api/v1/cluster/(add|remove)-node$"


@pytest.fixture(scope="module", params=["multipaxos", "raft"])
def secured(request, tmp_path_factory):
    """A 3-node cluster that requires tokens, with kv and counter enabled, serving HTTPS
    (its peers use mutual TLS) in both modes: what runs in production."""
    extra = '\n[state_machines]\nenabled = ["kv", "counter"]\n'
    with started_cluster(tmp_path_factory, f"openapi-{request.param}", request.param,
                         auth=True, extra=extra, tls=True) as harness:
        harness.write("k", "v")
        yield harness


def test_served_document_is_the_checked_in_one(secured):
    """GET /api/v1/openapi.json (no token needed) on every node is docs/openapi.json."""
    with open(DOC, "rb") as f:
        checked_in = f.read()
    for node in secured.ids:
        served = secured.request(node, "GET", "/api/v1/openapi.json", token=None)
        assert served.status == 200
        assert served.body == json.loads(checked_in), "docs/openapi.json is stale: run " \
            "python -m paxoslog.server.openapi > docs/openapi.json"


def _schemathesis(c, tmp_path, name: str, token: str, *args: str) -> None:
    node = c.wait_leader()
    junit = tmp_path / f"{name}.xml"
    command = [sys.executable, "-m", "schemathesis.cli", "--config-file", CONFIG, "run",
               f"{c.url(node)}/api/v1/openapi.json",
               "--checks", CHECKS, "--max-examples", str(EXAMPLES), "--seed", SEED,
               "--workers", "2", "--request-timeout", "10", "--no-shrink",
               "--generation-database", "none", "--phases", "examples,coverage,fuzzing",
               "-H", f"Authorization: Bearer {token}", "--report", "junit",
               "--report-junit-path", str(junit), "--no-color", *args]
    if c.tls:
        command += ["--tls-verify", c.ca_file]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=600,
                          env=dict(os.environ, PYTHONPATH=ROOT))
    report = done.stdout[-12000:] + done.stderr[-3000:]
    assert done.returncode == 0, f"schemathesis ({name}) found problems:\n{report}"
    cases = ET.parse(junit).getroot().iter("testcase")
    assert sum(1 for _ in cases) >= 1, report
    assert c.leader() is not None or c.wait_leader(), "the cluster did not survive"


@pytest.mark.slow
def test_schemathesis_finds_no_server_error_or_schema_violation(secured, tmp_path):
    """Every operation but add/remove-node with an admin token, then every operation with a
    write token (admin operations answer 403): no undocumented status, no 5xx but 503/504,
    every answer matches the document, schema-violating input is refused."""
    c = secured
    _schemathesis(c, tmp_path, "admin", c.tokens["admin"], "--exclude-path-regex", MEMBERSHIP)
    _schemathesis(c, tmp_path, "writer", c.tokens["write"])
    for node in c.ids:                       # every node still answers, nothing crashed
        assert c.request(node, "GET", "/health").status == 200
