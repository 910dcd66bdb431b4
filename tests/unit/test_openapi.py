"""The OpenAPI document (server/openapi.py) cannot drift from the code: it is the
checked-in docs/openapi.json, it describes exactly the routes of Api's table with the roles
the table gives them, and every operation documents its errors with the Error schema."""

from __future__ import annotations

import json
import os

from paxoslog.server.api import ROUTES, Api
from paxoslog.server.openapi import document, document_bytes
from paxoslog.tokens import Role

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_the_checked_in_document_is_the_generated_one():
    """docs/openapi.json is byte for byte what the server serves."""
    with open(os.path.join(ROOT, "docs", "openapi.json"), "rb") as f:
        assert f.read() == document_bytes(), ("docs/openapi.json is stale: run python -m "
                                              "paxoslog.server.openapi > docs/openapi.json")


def test_every_route_of_the_table_is_documented_and_nothing_else():
    """(path, method) pairs of Api's routing table == those of the document."""
    api = Api(1, None, 1 << 20)
    served = {(path, method) for path, methods in api._routes.items() for method in methods}
    served |= {(route.path, method) for table in api._prefix_routes.values()
               for method, route in table.items()}
    documented = {(path, method.upper()) for path, ops in document()["paths"].items()
                  for method in ops}
    assert served == documented == {(r.path, r.method) for r in ROUTES}


def test_roles_in_the_document_are_the_table_s():
    """x-paxoslog-role is the least role a request needs; parameter escalations too."""
    for route in ROUTES:
        op = document()["paths"][route.path][route.method.lower()]
        want = route.entry_role.label if route.entry_role > Role.NONE else "none"
        assert op["x-paxoslog-role"] == want, route
        for name, _, role in route.param_roles:
            assert op[f"x-paxoslog-role-{name}"] == role.label
        if route.entry_role > Role.NONE:
            assert "401" in op["responses"] and "security" not in op
        else:
            assert "401" not in op["responses"] and {} in op["security"]


def test_every_error_uses_the_error_schema_and_503_carries_retry_after():
    """Each 4xx/5xx answer is {"error","message"} (the Error schema); 503s require
    Retry-After; 401s require WWW-Authenticate."""
    doc = json.loads(document_bytes())
    error = doc["components"]["schemas"]["Error"]
    assert error["required"] == ["error", "message"]
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            for status, answer in op["responses"].items():
                if int(status) < 400:
                    continue
                schema = answer["content"]["application/json"]["schema"]
                refs = [schema] + schema.get("oneOf", [])
                assert {"$ref": "#/components/schemas/Error"} in refs, (path, status)
                if status == "503":
                    assert answer["headers"]["Retry-After"]["required"] is True
                if status == "401":
                    assert answer["headers"]["WWW-Authenticate"]["required"] is True
