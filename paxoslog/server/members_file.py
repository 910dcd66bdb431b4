"""``<data_dir>/members.json``: the cluster's bootstrap voters, the address book (node id
-> peer and API addresses) and the removal mark, kept so that a node that restarts can dial
its peers before it has replayed its log, and a removed node never serves again.

``origin`` (data format 2) names the cluster's *log origin* when its log does not start from
the bootstrap voters at index 0: a cluster built by ``paxoslog snapshot restore`` or
``paxoslog recover`` starts from a snapshot.  Peers exchange the origin with the bootstrap
voters at the handshake, so a node of the old cluster can never vote in the new one.

Written by atomic replace.  A node that joined a running cluster (``serve --join``) gets
it before its data directory is created: its log then starts from the same initial
configuration as everybody else's.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from paxoslog.config import Address, parse_address
from paxoslog.storage.durable import DATA_DIR_MODE, DATA_FILE_MODE, atomic_write, make_dirs

__all__ = ["NodeAddresses", "MembersFile", "MEMBERS_FILE", "RemovedNode"]

MEMBERS_FILE = "members.json"
_FORMAT = 1


@dataclass(frozen=True)
class NodeAddresses:
    peer: Address
    api: Address | None

    def to_json(self) -> dict:
        return {"peer": str(self.peer), "api": str(self.api) if self.api else None}

    @classmethod
    def from_json(cls, data: dict) -> "NodeAddresses":
        api = data.get("api")
        return cls(parse_address(data["peer"]), parse_address(api) if api else None)


class MembersFile:
    """``<data_dir>/members.json``: bootstrap voters, address book, removal mark."""

    def __init__(self, data_dir: str) -> None:
        self.path = os.path.join(data_dir, MEMBERS_FILE)
        self.data_dir = data_dir

    def exists(self) -> bool:
        return os.path.exists(self.path)

    def read(self) -> dict | None:
        try:
            with open(self.path, "rb") as f:
                data = json.loads(f.read())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise ValueError(f"{self.path}: unreadable membership file: {exc}") from None
        try:
            if data.get("format") != _FORMAT:
                raise ValueError(f"format {data.get('format')!r}, expected {_FORMAT}")
            voters = frozenset(int(n) for n in data["bootstrap_voters"])
            if not voters:
                raise ValueError("no bootstrap voters")
            book = {int(n): NodeAddresses.from_json(a) for n, a in data["nodes"].items()}
            removed_at = data.get("removed_at")
            if removed_at is not None and type(removed_at) is not int:
                raise ValueError("removed_at must be an integer")
            origin = data.get("origin")
            if origin is not None and (not isinstance(origin, str) or not origin):
                raise ValueError("origin must be a non-empty string")
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"{self.path}: damaged membership file: {exc}") from None
        return {"cluster": data.get("cluster"), "bootstrap_voters": voters, "nodes": book,
                "removed_at": removed_at, "origin": origin}

    def write(self, cluster: str, bootstrap: frozenset[int], book: dict[int, NodeAddresses],
              removed_at: int | None = None, origin: str | None = None) -> None:
        make_dirs(self.data_dir, DATA_DIR_MODE)
        data = {"format": _FORMAT, "cluster": cluster, "bootstrap_voters": sorted(bootstrap),
                "nodes": {str(n): a.to_json() for n, a in sorted(book.items())},
                "removed_at": removed_at}
        if origin is not None:
            data["origin"] = origin
        atomic_write(self.path, json.dumps(data, indent=1, sort_keys=True).encode() + b"\n",
                     mode=DATA_FILE_MODE)


class RemovedNode(Exception):
    """This node's data directory belongs to a node removed from its cluster."""
