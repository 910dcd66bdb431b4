"""docs/operating.md tells the truth about the HTTP API: its endpoint table is the server's
route table, and every error it documents is one the code can produce."""

from __future__ import annotations

import os
import re

from paxoslog.config import LimitsConf
from paxoslog.server.api import Api

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _section(title: str) -> str:
    with open(os.path.join(ROOT, "docs", "operating.md")) as f:
        text = f.read()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end >= 0 else None]


def documented_routes() -> set[tuple[str, str]]:
    """(method, path) of every row of the API table."""
    rows = re.findall(r"^\| `(GET|POST|PUT|DELETE) (/[^`]*)` \|", _section("HTTP API"), re.M)
    return set(rows)


def test_the_api_table_lists_exactly_the_routes_the_server_serves():
    """Every route of Api.routes() has a row, and every row is a route."""
    api = Api(1, LimitsConf(), 1 << 20)
    served = {(method, path) for path, methods in api.routes().items() for method in methods}
    assert documented_routes() == served


def test_every_documented_error_exists_in_the_code():
    """Each status and code of the error table is produced somewhere in paxoslog/."""
    rows = re.findall(r"^\| (\d{3}) \| ([^|]+) \|", _section("HTTP API"), re.M)
    assert {int(status) for status, _ in rows} >= {400, 404, 405, 408, 409, 410, 413, 431, 503,
                                                   504}
    source = ""
    for folder, _, names in os.walk(os.path.join(ROOT, "paxoslog")):
        for name in names:
            if name.endswith(".py"):
                with open(os.path.join(folder, name)) as f:
                    source += f.read()
    for status, codes in rows:
        for code in re.findall(r"`([a-z_]+)`", codes):
            assert f'"{code}"' in source, f"documented error {code} ({status}) is never produced"
        assert re.search(rf"\b{status}\b", source), status
