"""Who is asking, and may they: client authentication, roles and browser defences for the
HTTP API (docs/security.md, "Client authentication").

``AccessControl`` answers four questions for ``Api`` (api.py), whose route table says which
role each request needs:

* **browser checks** (``check_browser``): a request whose ``Origin`` header is not in
  ``[auth] allowed_origins`` is refused 403 whatever its method (a page on another site
  must not drive the API; simple cross-site requests are sent without CORS preflight).
  While anonymous requests are served (no auth, or ``required = false``), the ``Host``
  header must name one of this node's API addresses (or ``allowed_hosts``): a page that
  rebinds its own DNS name to 127.0.0.1 sends its own name as Host and is refused.
* **authentication** (``authenticate``): ``Authorization: Bearer <token>`` -> the
  ``Principal``.  A WebSocket upgrade may carry the token as a subprotocol instead
  (``paxoslog.bearer.<base64url(token)>``, as Kubernetes does: a browser cannot set headers
  on a WebSocket); it counts exactly as the header.  ``without_credentials`` strips both
  from the upgrade request before the WebSocket protocol (autobahn) sees it, so it can
  neither log the token nor select or echo that subprotocol.  A token's first use on this
  node costs one scrypt verification, run on a thread (at most ``VERIFICATIONS_MAX`` at
  once, concurrent uses of one token share it); afterwards its SHA-256 maps to the
  principal in memory, so the write path pays one hash.
  A token with an unknown id is refused without any KDF work.  A token id (ids are not
  secret) holds at most one verification at a time: another secret for it meanwhile is
  refused 503 ``busy``.  A first failed verification costs nothing more (a mistyped
  token, then the right one, must work); after a second one in a row the id is in
  back-off (``BACKOFF_FIRST_S``, doubling to ``BACKOFF_MAX_S``, reset by a success or
  forgotten after ``BACKOFF_MAX_S`` of quiet): its secrets not already verified are
  refused 503 ``busy`` with Retry-After, without hashing, so one holder flooding its own
  id with made-up secrets neither fills the node's verification slots nor burns its CPU.
  That state exists only for ids of the tokens file.  No token: the anonymous principal,
  with role ``admin`` where auth is not required and ``none`` where it is.
* **authorization** (``authorize``): 401 ``unauthenticated`` (with ``WWW-Authenticate:
  Bearer``) for an anonymous request that needs a role, 403 ``forbidden`` naming the role
  needed for a principal whose role is lower.
* **client ids** (``check_client_id``): a write's ``client_id`` must match its token's
  binding (``ClientIdRule``); a principal without a binding may not use an id that a bound
  token claims.

The tokens file is re-read when it changes (checked at most once per ``RELOAD_CHECK_S``),
so ``paxoslog auth revoke`` takes effect on a running node within about a second; a file
that became unreadable keeps the last good set (and is logged).  Tokens and their hashes
are never logged.

The principal is the seam for client certificates (the TLS work): a verified certificate's
subject can become a ``Principal(kind="certificate")`` with a role from the conf, and
nothing after ``authenticate`` changes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import math
import os
from dataclasses import dataclass
from typing import Callable

from twisted.internet import defer
from twisted.logger import Logger

from paxoslog.config import is_loopback_host
from paxoslog.tokens import (ClientIdRule, Role, TokenRecord, TokensFile, TokensFileError,
                             parse_token, read_tokens)

from .errors import ApiError, unavailable

__all__ = ["Principal", "TokenStore", "AccessControl", "ANONYMOUS_ADMIN", "ANONYMOUS",
           "VERIFICATIONS_MAX", "BACKOFF_FIRST_S", "BACKOFF_MAX_S", "RELOAD_CHECK_S",
           "is_loopback", "BEARER_SUBPROTOCOL",
           "bearer_subprotocol", "without_credentials"]

log = Logger(namespace="paxoslog.access")

VERIFICATIONS_MAX = 4            # scrypt verifications in flight per node (one per token id)
BACKOFF_FIRST_S = 0.5            # a token id's back-off after its 2nd failure in a row,
BACKOFF_MAX_S = 30.0             # doubled by each further failure up to this
RELOAD_CHECK_S = 1.0             # the tokens file is stat()ed at most this often
_BAD_REMEMBERED_MAX = 1024       # wrong tokens (of a known id) not verified twice
_CHALLENGE = ((b"WWW-Authenticate", b'Bearer realm="paxoslog"'),)
_INVALID = ((b"WWW-Authenticate", b'Bearer realm="paxoslog", error="invalid_token"'),)
# A WebSocket upgrade's token as a subprotocol: "paxoslog.bearer." + base64url(token), no
# padding ("=" is not allowed in a subprotocol name).
BEARER_SUBPROTOCOL = "paxoslog.bearer."
_BEARER_PREFIX = BEARER_SUBPROTOCOL.encode()
_TOKEN_CHARS_MAX = 512


def bearer_subprotocol(token: str) -> str:
    """The subprotocol that carries ``token`` on a WebSocket upgrade."""
    encoded = base64.urlsafe_b64encode(token.encode()).rstrip(b"=").decode("ascii")
    return BEARER_SUBPROTOCOL + encoded


def _subprotocol_token(request) -> str | None:
    """The token an upgrade request offers as a subprotocol (None: it offers none)."""
    if not request.upgrade:
        return None
    header = request.headers.get(b"sec-websocket-protocol")
    if header is None or _BEARER_PREFIX not in header.lower():
        return None
    carried = [p.strip()[len(_BEARER_PREFIX):] for p in header.split(b",") if _is_bearer(p)]
    if len(carried) != 1:
        raise ApiError(401, "unauthenticated", f"offer one {BEARER_SUBPROTOCOL}<token> "
                       "subprotocol, not several", headers=_INVALID)
    encoded = carried[0]
    try:
        if len(encoded) > _TOKEN_CHARS_MAX:
            raise ValueError("too long")
        raw = base64.b64decode(encoded + b"=" * (-len(encoded) % 4), altchars=b"-_",
                               validate=True)
        return raw.decode("ascii")
    except (ValueError, binascii.Error):
        raise ApiError(401, "unauthenticated", f"the {BEARER_SUBPROTOCOL}<token> subprotocol "
                       "must carry the token in unpadded base64url", headers=_INVALID) from None


def _is_bearer(protocol: bytes) -> bool:
    """A token subprotocol (the prefix in any case: whatever might be one is treated so)."""
    return protocol.strip()[:len(_BEARER_PREFIX)].lower() == _BEARER_PREFIX


def without_credentials(data: bytes) -> bytes:
    """An upgrade request's bytes without its credentials: no ``Authorization`` header, no
    bearer subprotocol (a ``Sec-WebSocket-Protocol`` header left with nothing else goes);
    what follows the head passes unchanged.  The WebSocket protocol is handed this, so
    nothing it logs, selects or echoes can hold the token."""
    lines = data.lstrip(b"\r\n").split(b"\n")
    out = [lines[0].rstrip(b"\r")]
    fields: list[list[bytes]] = []
    for number, line in enumerate(lines[1:], 1):
        line = line.rstrip(b"\r")
        if not line:
            break
        if line[:1] in (b" ", b"\t") and fields:          # obs-fold: the value goes on
            fields[-1][1] += b" " + line.strip()
        else:
            name, _, value = line.partition(b":")
            fields.append([name, value.strip()])
    else:
        number = len(lines)
    for name, value in fields:
        lower = name.strip().lower()
        if lower == b"authorization":
            continue
        if lower == b"sec-websocket-protocol":
            kept = [p.strip() for p in value.split(b",") if p.strip() and not _is_bearer(p)]
            if not kept:
                continue
            value = b", ".join(kept)
        out.append(name + b": " + value)
    return b"\r\n".join(out) + b"\r\n\r\n" + b"\n".join(lines[number + 1:])


@dataclass(frozen=True)
class Principal:
    """Who made a request: ``kind`` "token", "anonymous" (later "certificate")."""

    name: str
    role: Role
    client_id: ClientIdRule | None = None
    kind: str = "token"
    token_id: str | None = None       # the tokens file record it was authenticated by

    def describe(self) -> str:
        return "an anonymous request" if self.kind == "anonymous" else \
            f"{self.kind} {self.name!r} (role {self.role.label})"


ANONYMOUS_ADMIN = Principal("anonymous", Role.ADMIN, None, "anonymous")   # auth not required
ANONYMOUS = Principal("anonymous", Role.NONE, None, "anonymous")          # auth required


def _principal(record: TokenRecord) -> Principal:
    return Principal(record.name, record.role, record.client_id, "token", record.id)


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class TokenStore:
    """The tokens file as a node sees it.  ``load()`` at start raises ``TokensFileError``;
    later changes are picked up by ``maybe_reload(now)``."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.tokens = TokensFile()
        self._stamp = None
        self._checked_at = float("-inf")
        self._verified: dict[bytes, TokenRecord] = {}    # sha256(token) -> its record
        self._bad: dict[bytes, None] = {}                # sha256 of wrong tokens (bounded)
        self._by_id: dict[str, TokenRecord] = {}
        self._bound: tuple[TokenRecord, ...] = ()

    def _file_stamp(self):
        st = os.stat(self.path)
        return (st.st_mtime_ns, st.st_size, st.st_ino, st.st_ctime_ns)

    def load(self) -> None:
        try:
            stamp = self._file_stamp()
        except FileNotFoundError:
            stamp = None
        except OSError as exc:
            raise TokensFileError(f"{self.path}: cannot read: {exc.strerror}") from None
        self._adopt(read_tokens(self.path), stamp)

    def _adopt(self, tokens: TokensFile, stamp) -> None:
        self.tokens = tokens
        self._stamp = stamp
        self._by_id = {t.id: t for t in tokens.tokens}
        self._bound = tuple(t for t in tokens.tokens if t.client_id is not None)
        # Keep what was verified against a record that is still there, unchanged.
        self._verified = {d: r for d, r in self._verified.items() if self._by_id.get(r.id) == r}
        self._bad.clear()

    def maybe_reload(self, now: float) -> None:
        if now - self._checked_at < RELOAD_CHECK_S:
            return
        self._checked_at = now
        try:
            stamp = self._file_stamp()
            if stamp == self._stamp:
                return
            tokens = read_tokens(self.path)
        except (OSError, TokensFileError) as exc:
            message = exc.strerror if isinstance(exc, OSError) else str(exc)
            if self._stamp != "failed":
                log.error("tokens file {path} cannot be reloaded ({error}); keeping the "
                          "{count} token(s) read before", path=self.path, error=message,
                          count=len(self.tokens.tokens))
            self._stamp = "failed"
            return
        before = {t.id for t in self.tokens.tokens}
        self._adopt(tokens, stamp)
        after = {t.id for t in tokens.tokens}
        log.info("tokens file reloaded: {count} token(s), {added} added, {removed} revoked",
                 count=len(after), added=len(after - before), removed=len(before - after))

    # ------------------------------------------------------------------ lookups

    def known(self, token: str) -> tuple[bytes, TokenRecord | None, bool]:
        """(digest, record, verified): ``verified`` when this token string was checked
        before; ``record`` None for a token no record can match."""
        digest = _digest(token)
        record = self._verified.get(digest)
        if record is not None:
            return digest, record, True
        if digest in self._bad:
            return digest, None, False
        tid = parse_token(token)
        return digest, (self._by_id.get(tid) if tid else None), False

    def verified(self, digest: bytes, record: TokenRecord, ok: bool) -> TokenRecord | None:
        """Remember a verification's result; the record if it still stands."""
        if self._by_id.get(record.id) != record:
            return None                               # revoked or replaced meanwhile
        if ok:
            self._verified[digest] = record
            return record
        if len(self._bad) >= _BAD_REMEMBERED_MAX:
            self._bad.pop(next(iter(self._bad)))
        self._bad[digest] = None
        return None

    def record(self, token_id: str) -> TokenRecord | None:
        return self._by_id.get(token_id)

    def claimed_by(self, client_id: str) -> TokenRecord | None:
        """The bound token whose client id rule matches ``client_id``, if any."""
        for record in self._bound:
            if record.client_id.allows(client_id):
                return record
        return None


def is_loopback(host: str) -> bool:
    """``localhost`` or a loopback address (127.0.0.0/8, ::1; brackets allowed): the
    conf's rule (``config.is_loopback_host``), for Host header values too."""
    return is_loopback_host(host.strip("[]"))


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _request_token(request) -> str | None:
    """The bearer token of a request (the header, or an upgrade's subprotocol), None for
    none; ApiError 401 when it is malformed or given twice."""
    header = request.headers.get(b"authorization")
    offered = _subprotocol_token(request)
    if header is None:
        return offered
    if offered is not None:
        raise ApiError(401, "unauthenticated", "give the token once: in the Authorization "
                       f"header or as a {BEARER_SUBPROTOCOL}<token> subprotocol",
                       headers=_INVALID)
    scheme, _, token = header.decode("latin-1").strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise ApiError(401, "unauthenticated", "the Authorization header must be "
                       "\"Bearer <token>\"", headers=_INVALID)
    return token


class AccessControl:
    """The API's gate.  ``auth``: the conf's ``AuthConf``; ``addresses``: this node's API
    addresses (``Address``: the advertised one and the bind); ``port()``: the port the API
    listens on (for a conf with port 0); ``store``: a loaded ``TokenStore`` (None: no
    tokens file); ``verify``: runs ``check_token(record, token)`` off the event loop and
    returns a Deferred (tests pass a synchronous one); ``now()``: seconds; ``https``: the
    API speaks TLS (a Host header without a port then means 443, not 80)."""

    def __init__(self, auth, addresses, port: Callable[[], int | None], *,
                 store: TokenStore | None, verify: Callable, now: Callable[[], float],
                 https: bool = False) -> None:
        self.auth = auth
        self.store = store
        self.required = bool(auth.required and store is not None)
        self.anonymous = ANONYMOUS if self.required else ANONYMOUS_ADMIN
        self._addresses = tuple(addresses)
        self._port = port
        self._verify = verify
        self._now = now
        self._default_port = 443 if https else 80
        self._origins = frozenset(o.lower() for o in auth.allowed_origins)
        self._hosts: frozenset[str] | None = None
        # Per token id, and only for ids of the tokens file (a record was found for them):
        # the verification in flight (the digest of its token, the requests waiting for it)
        # and the back-off after failed ones (until when, its length; length 0: one
        # failure, no back-off yet).
        self._in_flight: dict[str, tuple[bytes, list[defer.Deferred]]] = {}
        self._backoff: dict[str, tuple[float, float]] = {}

    # ------------------------------------------------------------------ browsers

    def allowed_hosts(self) -> frozenset[str]:
        """Host header values that name this node (lower case)."""
        if self._hosts is None:
            hosts = set()
            for address in self._addresses:
                port = address.port or self._port()
                if not port:
                    continue
                host = address.host.lower().strip("[]")
                names = {host}
                if host in ("0.0.0.0", "::", "") or is_loopback(host):
                    names |= {"localhost", "127.0.0.1", "::1"}
                for name in names - {"0.0.0.0", "::", ""}:
                    hosts.add(_host_port(name, port))
                    # Without a port (HTTP/1.1 tools on this machine): a page on another
                    # site can only send its own name, never a loopback one.
                    if port == self._default_port or is_loopback(name):
                        hosts.add(f"[{name}]" if ":" in name else name)
            self._hosts = frozenset(hosts)
        return self._hosts

    def _host_ok(self, raw: bytes) -> bool:
        host = raw.decode("latin-1").strip().lower()
        if host in self.allowed_hosts():
            return True
        for extra in self.auth.allowed_hosts:
            if host == extra or (":" not in extra.strip("[]") and
                                 host.rpartition(":")[0] == extra):
                return True
        return False

    def _origin_ok(self, origin: str) -> bool:
        """An allowed origin, or this node's own (its pages, e.g. the dashboard)."""
        if origin in self._origins:
            return True
        scheme, sep, host = origin.partition("://")
        if not sep or scheme not in ("http", "https") or not host or "/" in host:
            return False
        if ":" not in host.rpartition("]")[2]:
            host += ":443" if scheme == "https" else ":80"
        return host in self.allowed_hosts()

    def check_browser(self, request) -> ApiError | None:
        """The Origin and Host checks (module docstring); None when the request passes."""
        headers = request.headers
        origin = headers.get(b"origin")
        if origin is not None and not self._origin_ok(origin.decode("latin-1").lower()):
            return ApiError(403, "forbidden", f"requests from the web origin "
                            f"{origin[:100].decode('latin-1')!r} are refused (not in [auth] "
                            f"allowed_origins)")
        if not self.required:
            host = headers.get(b"host")
            if host is not None and not self._host_ok(host):
                return ApiError(403, "forbidden", f"Host {host[:100].decode('latin-1')!r} does "
                                "not name this node; while the API serves anonymous requests "
                                "only its own addresses are accepted (see [auth] "
                                "allowed_hosts)")
        return None

    def cors_headers(self, request) -> tuple:
        """Headers for a response to an allowed cross-origin request (else none)."""
        origin = request.headers.get(b"origin")
        if origin is None:
            return ()
        return ((b"Access-Control-Allow-Origin", origin), (b"Vary", b"Origin"),
                (b"Access-Control-Expose-Headers", b"Retry-After, WWW-Authenticate"))

    def preflight(self, request) -> tuple:
        """Answer a CORS preflight (OPTIONS) from an allowed origin."""
        return (204, b"", b"text/plain", self.cors_headers(request) + (
            (b"Access-Control-Allow-Methods", b"GET, HEAD, POST"),
            (b"Access-Control-Allow-Headers", b"Authorization, Content-Type"),
            (b"Access-Control-Max-Age", b"600")))

    # ------------------------------------------------------------------ tokens

    def authenticate(self, request):
        """The request's ``Principal``, or a Deferred firing with it (a token's first use
        here); raises ``ApiError`` 401 for a bad token, 503 ``busy`` when its id has a
        verification of another secret in flight or is in back-off after failed ones, or
        when too many first uses are being verified at once."""
        store = self.store
        if store is None:
            return self.anonymous
        token = _request_token(request)
        if token is None:
            return self.anonymous
        now = self._now()
        store.maybe_reload(now)
        digest, record, verified = store.known(token)
        if record is None:
            raise self._bad_token()
        if verified:
            return _principal(record)
        tid = record.id
        flight = self._in_flight.get(tid)
        if flight is not None:
            if flight[0] == digest:             # this token is being verified already
                result = defer.Deferred()
                flight[1].append(result)
                return result
            # One verification per id: another secret (made up, most likely) waits its turn.
            raise ApiError(503, "busy", "another secret for this token id is being verified; "
                           "retry", retry_after=1)
        backoff = self._backoff.get(tid)
        if backoff is not None and now < backoff[0]:
            wait = max(1, math.ceil(backoff[0] - now))
            raise ApiError(503, "busy", "wrong secrets were sent for this token id lately; "
                           f"its secrets are not checked again for {wait}s (retry then)",
                           retry_after=wait)
        if len(self._in_flight) >= VERIFICATIONS_MAX:
            raise unavailable("too many new tokens being verified at once; retry",
                              code="busy")
        result = defer.Deferred()
        self._in_flight[tid] = (digest, [result])
        d = defer.maybeDeferred(self._verify, record, token)
        d.addBoth(self._verified, digest, record)
        return result

    def _verified(self, ok, digest: bytes, record: TokenRecord) -> None:
        _, waiters = self._in_flight.pop(record.id)
        if not isinstance(ok, bool):        # the verification itself failed (a Failure)
            log.failure("token verification failed", ok)
            ok = False
        if ok:
            self._backoff.pop(record.id, None)
        else:
            self._back_off(record.id)
        record = self.store.verified(digest, record, ok)
        for waiter in waiters:
            if record is not None:
                waiter.callback(_principal(record))
            else:
                waiter.errback(self._bad_token())

    def _back_off(self, tid: str) -> None:
        """Count a failed verification of ``tid``: the first (since a success, or since
        the state ran out more than ``BACKOFF_MAX_S`` ago) is only noted, with no back-off,
        so a mistyped token followed by the right one is not refused; the second starts
        the back-off at ``BACKOFF_FIRST_S`` and each further one doubles it.  Only ids
        still in the tokens file are kept, so the table is bounded by it."""
        now = self._now()
        before = self._backoff.get(tid)
        delay = 0.0
        if before is not None and now < before[0] + BACKOFF_MAX_S:
            delay = min(before[1] * 2, BACKOFF_MAX_S) if before[1] else BACKOFF_FIRST_S
        for gone in [t for t in self._backoff if self.store.record(t) is None]:
            del self._backoff[gone]
        if self.store.record(tid) is not None:
            self._backoff[tid] = (now + delay, delay)

    def revoked(self, principal: Principal | None) -> bool:
        """Whether ``principal`` was authenticated by a token that has since been revoked
        or changed (a WebSocket connection keeps the principal of its upgrade request)."""
        if principal is None or principal.token_id is None or self.store is None:
            return False
        self.store.maybe_reload(self._now())
        record = self.store.record(principal.token_id)
        return record is None or _principal(record) != principal

    @staticmethod
    def _bad_token() -> ApiError:
        return ApiError(401, "unauthenticated", "the bearer token is not valid (unknown, "
                        "revoked or mistyped)", headers=_INVALID)

    # ------------------------------------------------------------------ roles

    def authorize(self, principal: Principal, needed: Role, what: str) -> None:
        """Raise 401/403 unless ``principal`` has the ``needed`` role for ``what``."""
        if principal.role >= needed:
            return
        if principal.kind == "anonymous":
            raise ApiError(401, "unauthenticated", f"{what} needs a bearer token with the "
                           f"{needed.label} role", headers=_CHALLENGE)
        raise ApiError(403, "forbidden", f"{what} needs the {needed.label} role; "
                       f"{principal.describe()} does not have it")

    def check_client_id(self, principal: Principal, client_id: str) -> None:
        """Raise 403 when ``principal`` may not write as ``client_id``."""
        rule = principal.client_id
        if rule is not None:
            if not rule.allows(client_id):
                raise ApiError(403, "forbidden", f"{principal.describe()} may only write with "
                               f"client_id {str(rule)!r}, not {client_id[:140]!r}")
            return
        if self.store is None:
            return
        owner = self.store.claimed_by(client_id)
        if owner is not None:
            raise ApiError(403, "forbidden", f"client_id {client_id[:140]!r} is bound to "
                           "another token; use an id of your own (or none)")
