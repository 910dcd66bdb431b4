"""Client bearer tokens: roles, the tokens file, hashing and verification.

A token is ``pxl_<id>_<secret>``: ``id`` is 12 hex digits (public: it names the token in
``paxoslog auth list`` and lets a server find the record without trying every hash), the
secret 32 random bytes from ``secrets`` (256 bits) in URL-safe base64.  A token is shown
once, when it is made; the file keeps only a salted scrypt hash of the whole token string
(n=2**14, r=8, p=1: about 0.1 s of CPU per verification, so a stolen tokens file does not
give the tokens back cheaply; servers verify a token once and then remember its SHA-256 in
memory, see paxoslog/server/access.py).

Roles are ordered: ``admin`` implies ``write`` implies ``read``.

A token may be bound to a client id (``client_id = "billing-1"``) or a prefix
(``client_id = "billing-*"``): writes made with it must carry such a client id (or none,
and the server picks one), and no other token may use a client id it claims, so one client
cannot pre-empt another's exactly-once sequences.

The tokens file (JSON, written atomically with mode 0600 under an advisory lock)::

    {"format": "paxoslog-tokens", "version": 1,
     "tokens": [{"name": "ops", "id": "3f9a0c1b2d4e", "role": "admin",
                 "client_id": null, "created_ms": 1700000000000,
                 "kdf": {"name": "scrypt", "n": 16384, "r": 8, "p": 1},
                 "salt": "<base64>", "hash": "<base64>"}]}

Everything here is pure (files aside): no Twisted, no clocks but the creation time.
"""

from __future__ import annotations

import base64
import enum
import fcntl
import hashlib
import hmac
import json
import os
import re
import secrets
import time
from contextlib import contextmanager
from dataclasses import dataclass

from paxoslog.storage.durable import atomic_write

__all__ = ["Role", "ClientIdRule", "TokenRecord", "TokensFile", "TokensFileError",
           "new_token", "parse_token", "hash_token", "check_token", "read_tokens",
           "write_tokens", "locked_tokens", "TOKEN_PREFIX", "NAME_RE"]

TOKEN_PREFIX = "pxl"
TOKEN_SECRET_BYTES = 32                # >= 128 bits, as the security model asks
_ID_HEX = 12
_TOKEN_RE = re.compile(r"^pxl_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
FORMAT = "paxoslog-tokens"
VERSION = 1
# scrypt cost: 16 MiB of memory and ~0.1 s per hash on a small machine.
KDF = {"name": "scrypt", "n": 1 << 14, "r": 8, "p": 1}
_SALT_BYTES = 16
_HASH_BYTES = 32
_KDF_MAXMEM = 64 << 20
CLIENT_ID_CHARS_MAX = 128             # as paxoslog.node.commands


class Role(enum.IntEnum):
    """What a principal may do; a higher role includes the lower ones."""

    NONE = 0          # anonymous on a cluster that requires tokens: /health, the API doc
    READ = 1
    WRITE = 2
    ADMIN = 3

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, text: str) -> "Role":
        role = {"read": cls.READ, "write": cls.WRITE, "admin": cls.ADMIN}.get(text)
        if role is None:
            raise ValueError(f"role must be read, write or admin, not {text!r:.40}")
        return role


class TokensFileError(Exception):
    """The tokens file cannot be used: the message names the file and what is wrong."""


@dataclass(frozen=True)
class ClientIdRule:
    """The client ids a token may write with: exactly ``value``, or (``prefix``) any id
    that starts with it.  Written ``"name"`` or ``"name-*"``."""

    value: str
    prefix: bool

    @classmethod
    def parse(cls, text: str) -> "ClientIdRule":
        if not isinstance(text, str) or not text:
            raise ValueError("a client id must be a non-empty string")
        prefix = text.endswith("*")
        value = text[:-1] if prefix else text
        if not value or "*" in value:
            raise ValueError(f"client id {text!r:.60}: '*' may only end a prefix (\"app-*\")")
        if len(value) > CLIENT_ID_CHARS_MAX - (1 if prefix else 0):
            raise ValueError(f"client id {text[:40]!r}...: at most {CLIENT_ID_CHARS_MAX} "
                             "characters")
        if value.startswith("node") and value[4:5].isdigit():
            raise ValueError('client ids "node<N>-..." are reserved for the servers')
        return cls(value, prefix)

    def __str__(self) -> str:
        return self.value + ("*" if self.prefix else "")

    def allows(self, client_id: str) -> bool:
        return client_id.startswith(self.value) if self.prefix else client_id == self.value

    def overlaps(self, other: "ClientIdRule") -> bool:
        """Could one client id match both rules?"""
        if self.prefix and other.prefix:
            return self.value.startswith(other.value) or other.value.startswith(self.value)
        if self.prefix:
            return other.value.startswith(self.value)
        if other.prefix:
            return self.value.startswith(other.value)
        return self.value == other.value


@dataclass(frozen=True)
class TokenRecord:
    """One token of the file, as stored: never the token itself."""

    name: str
    id: str
    role: Role
    client_id: ClientIdRule | None
    created_ms: int
    salt: bytes
    hash: bytes
    kdf: tuple[int, int, int]          # scrypt (n, r, p)

    def to_json(self) -> dict:
        n, r, p = self.kdf
        return {"name": self.name, "id": self.id, "role": self.role.label,
                "client_id": None if self.client_id is None else str(self.client_id),
                "created_ms": self.created_ms,
                "kdf": {"name": "scrypt", "n": n, "r": r, "p": p},
                "salt": base64.b64encode(self.salt).decode(),
                "hash": base64.b64encode(self.hash).decode()}

    @classmethod
    def from_json(cls, obj: object, where: str) -> "TokenRecord":
        if not isinstance(obj, dict):
            raise TokensFileError(f"{where}: expected an object")
        try:
            name, tid = obj["name"], obj["id"]
            if not isinstance(name, str) or not NAME_RE.match(name):
                raise ValueError(f"bad name {name!r:.40}")
            if not isinstance(tid, str) or not re.fullmatch(r"[0-9a-f]{12}", tid):
                raise ValueError(f"bad id {tid!r:.40}")
            role = Role.parse(obj["role"])
            rule = obj.get("client_id")
            client_id = None if rule is None else ClientIdRule.parse(rule)
            kdf = obj["kdf"]
            if not isinstance(kdf, dict) or kdf.get("name") != "scrypt":
                raise ValueError("kdf must be scrypt")
            n, r, p = (kdf[k] for k in ("n", "r", "p"))
            if not all(type(v) is int and v > 0 for v in (n, r, p)) or n & (n - 1):
                raise ValueError("bad scrypt parameters")
            if n * r * 128 * 2 > _KDF_MAXMEM:
                raise ValueError("scrypt parameters need too much memory")
            salt = base64.b64decode(obj["salt"], validate=True)
            digest = base64.b64decode(obj["hash"], validate=True)
            if len(salt) < 8 or len(digest) != _HASH_BYTES:
                raise ValueError("bad salt or hash length")
            created = obj.get("created_ms", 0)
            if type(created) is not int:
                raise ValueError("created_ms must be an integer")
        except (KeyError, TypeError, ValueError) as exc:
            detail = f"missing field {exc}" if isinstance(exc, KeyError) else str(exc)
            raise TokensFileError(f"{where}: {detail}") from None
        return cls(name, tid, role, client_id, created, salt, digest, (n, r, p))


@dataclass(frozen=True)
class TokensFile:
    tokens: tuple[TokenRecord, ...] = ()

    def by_name(self, name: str) -> TokenRecord | None:
        return next((t for t in self.tokens if t.name == name), None)

    def by_id(self, tid: str) -> TokenRecord | None:
        return next((t for t in self.tokens if t.id == tid), None)

    def to_json(self) -> dict:
        return {"format": FORMAT, "version": VERSION,
                "tokens": [t.to_json() for t in self.tokens]}

    @classmethod
    def from_json(cls, obj: object, path: str) -> "TokensFile":
        if not isinstance(obj, dict) or obj.get("format") != FORMAT:
            raise TokensFileError(f"{path}: not a paxoslog tokens file (no \"format\": "
                                  f"\"{FORMAT}\")")
        if obj.get("version") != VERSION:
            raise TokensFileError(f"{path}: unsupported version {obj.get('version')!r:.20} "
                                  f"(this paxoslog reads version {VERSION})")
        raw = obj.get("tokens")
        if not isinstance(raw, list):
            raise TokensFileError(f"{path}: \"tokens\" must be a list")
        records = tuple(TokenRecord.from_json(t, f"{path}: tokens[{i}]")
                        for i, t in enumerate(raw))
        for kind, key in (("name", lambda t: t.name), ("id", lambda t: t.id)):
            seen: set[str] = set()
            for t in records:
                if key(t) in seen:
                    raise TokensFileError(f"{path}: two tokens with the {kind} {key(t)!r}")
                seen.add(key(t))
        return cls(records)


# ---------------------------------------------------------------------- tokens

def parse_token(token: str) -> str | None:
    """The id of a well-formed token string, else None."""
    match = _TOKEN_RE.match(token)
    return match.group(1) if match else None


def hash_token(token: str, salt: bytes, kdf: tuple[int, int, int]) -> bytes:
    n, r, p = kdf
    return hashlib.scrypt(token.encode(), salt=salt, n=n, r=r, p=p, maxmem=_KDF_MAXMEM,
                          dklen=_HASH_BYTES)


def check_token(record: TokenRecord, token: str) -> bool:
    """Is ``token`` the one ``record`` was made from?  Slow (the KDF), constant-time
    comparison of the hashes."""
    return hmac.compare_digest(hash_token(token, record.salt, record.kdf), record.hash)


def new_token(existing: TokensFile, role: Role, name: str | None = None,
              client_id: ClientIdRule | None = None,
              now_ms: int | None = None) -> tuple[str, TokenRecord]:
    """A fresh token and its record (not yet saved).  ValueError for a taken name or a
    client id another token already claims."""
    while True:
        tid = secrets.token_hex(_ID_HEX // 2)
        if existing.by_id(tid) is None:
            break
    if name is None:
        name = f"{role.label}-{tid[:6]}"
    if not NAME_RE.match(name):
        raise ValueError(f"token name {name!r:.70}: 1-64 letters, digits, '.', '_' or '-'")
    if existing.by_name(name) is not None:
        raise ValueError(f"a token named {name!r} already exists (revoke it first)")
    if client_id is not None:
        for other in existing.tokens:
            if other.client_id is not None and other.client_id.overlaps(client_id):
                raise ValueError(f"client id {str(client_id)!r} overlaps token "
                                 f"{other.name!r}'s {str(other.client_id)!r}: a client id "
                                 "belongs to one token")
    token = f"{TOKEN_PREFIX}_{tid}_{secrets.token_urlsafe(TOKEN_SECRET_BYTES)}"
    assert parse_token(token) == tid
    kdf = (KDF["n"], KDF["r"], KDF["p"])
    salt = secrets.token_bytes(_SALT_BYTES)
    created = int(time.time() * 1000) if now_ms is None else now_ms
    record = TokenRecord(name, tid, role, client_id, created, salt,
                         hash_token(token, salt, kdf), kdf)
    return token, record


# ---------------------------------------------------------------------- the file

def read_tokens(path: str, missing_ok: bool = False) -> TokensFile:
    """Read and validate the tokens file; ``TokensFileError`` naming the file otherwise
    (``missing_ok``: an absent file is an empty one)."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        if missing_ok:
            return TokensFile()
        raise TokensFileError(f"{path}: no such file (create it with `paxoslog auth "
                              f"add-token --config CONF --role ROLE`)") from None
    except OSError as exc:
        raise TokensFileError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        obj = json.loads(raw)
    except ValueError as exc:
        raise TokensFileError(f"{path}: not valid JSON: {exc}") from None
    return TokensFile.from_json(obj, path)


def write_tokens(path: str, tokens: TokensFile) -> None:
    """Replace the file atomically (temporary file, fsync, rename, fsync of the folder),
    readable by its owner only."""
    data = (json.dumps(tokens.to_json(), indent=1) + "\n").encode()
    atomic_write(path, data, mode=0o600)


@contextmanager
def locked_tokens(path: str):
    """Hold the file's advisory lock (``<path>.lock``) for a read-modify-write, so two
    ``paxoslog auth`` commands at once cannot lose each other's change."""
    fd = os.open(path + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
