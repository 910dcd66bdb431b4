"""The API's access control (server/access.py) on made-up requests, a synchronous or
held verifier and a fake clock: who is anonymous, 401 vs 403, the verification cache and
its bound, reloading the tokens file, client id binding, Origin and Host checks."""

from __future__ import annotations

import os

import pytest
from twisted.internet import defer

from paxoslog.config import Address, AuthConf
from paxoslog.server.access import ANONYMOUS, ANONYMOUS_ADMIN, VERIFICATIONS_MAX, \
    AccessControl, TokenStore, bearer_subprotocol, without_credentials
from paxoslog.server.errors import ApiError
from paxoslog.tokens import (ClientIdRule, Role, TokensFile, check_token, new_token,
                             write_tokens)


class Req:
    def __init__(self, headers: dict | None = None, upgrade: bool = False) -> None:
        self.headers = {k.lower().encode(): v.encode() for k, v in (headers or {}).items()}
        self.upgrade = upgrade


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def setup(tmp_path):
    """A tokens file with admin/read tokens and a write token bound to "app-*"."""
    path = str(tmp_path / "tokens.json")
    tokens, records = {}, TokensFile()
    for role, name, rule in ((Role.ADMIN, "ops", None), (Role.READ, "reader", None),
                             (Role.WRITE, "app", ClientIdRule.parse("app-*"))):
        tokens[name], record = new_token(records, role, name, rule)
        records = TokensFile(records.tokens + (record,))
    write_tokens(path, records)
    store = TokenStore(path)
    store.load()
    calls = []

    def verify(record, token):
        calls.append(record.name)
        return check_token(record, token)
    clock = Clock()

    def make(required=True, **auth):
        conf = AuthConf(tokens_file=path, required=required, **auth)
        return AccessControl(conf, (Address("127.0.0.1", 8101),), lambda: 8101,
                             store=store, verify=verify, now=clock)
    return make, tokens, calls, clock, path


def bearer(token: str) -> Req:
    return Req({"Authorization": f"Bearer {token}"})


def principal_of(access, request):
    result = access.authenticate(request)
    if isinstance(result, defer.Deferred):
        out = []
        result.addBoth(out.append)
        assert out, "verification still pending"
        if isinstance(out[0], BaseException) or hasattr(out[0], "value"):
            raise getattr(out[0], "value", out[0])
        return out[0]
    return result


def test_anonymous_is_none_when_required_and_admin_when_not(setup):
    """No Authorization header: the anonymous principal, role none (required) or admin."""
    make, *_ = setup
    assert principal_of(make(True), Req()) is ANONYMOUS
    assert principal_of(make(False), Req()) is ANONYMOUS_ADMIN


def test_401_for_anonymous_and_403_naming_the_role_for_a_low_token(setup):
    """authorize: anonymous -> 401 with WWW-Authenticate Bearer; reader on an admin route
    -> 403 whose message names the role needed and the token."""
    make, tokens, *_ = setup
    access = make()
    with pytest.raises(ApiError) as error:
        access.authorize(ANONYMOUS, Role.READ, "GET /x")
    assert error.value.status == 401 and error.value.code == "unauthenticated"
    assert dict(error.value.headers)[b"WWW-Authenticate"].startswith(b"Bearer")
    reader = principal_of(access, bearer(tokens["reader"]))
    with pytest.raises(ApiError) as error:
        access.authorize(reader, Role.ADMIN, "GET /api/v1/log/entries")
    assert error.value.status == 403 and "admin role" in error.value.message
    assert "'reader'" in error.value.message
    access.authorize(reader, Role.READ, "GET /x")


def test_an_upgrade_may_carry_its_token_as_a_subprotocol(setup):
    """A WebSocket upgrade offering paxoslog.bearer.<base64url(token)> is that token's
    principal, as with the header; a plain request's subprotocol header is no credential;
    a bad encoding, two bearer subprotocols, or header and subprotocol both are 401."""
    make, tokens, *_ = setup
    access = make(True)

    def offering(*protocols, upgrade=True, **headers):
        return Req({"Sec-WebSocket-Protocol": ", ".join(protocols), **headers}, upgrade)
    ops = bearer_subprotocol(tokens["ops"])
    assert ops.startswith("paxoslog.bearer.") and "=" not in ops
    assert principal_of(access, offering("paxoslog.v1.json", ops)).name == "ops"
    assert principal_of(access, offering(bearer_subprotocol(tokens["reader"]),
                                         "paxoslog.v1.cbor")).role == Role.READ
    assert principal_of(access, offering("paxoslog.v1.json", ops, upgrade=False)) is ANONYMOUS
    for request in (offering("paxoslog.v1.json", "paxoslog.bearer.not*base64"),
                    offering(ops, bearer_subprotocol(tokens["reader"])),
                    offering(ops, Authorization=f"Bearer {tokens['ops']}"),
                    offering(bearer_subprotocol(tokens["ops"] + "x"))):
        with pytest.raises(ApiError) as refused:
            principal_of(access, request)
        assert refused.value.status == 401
        assert tokens["ops"] not in refused.value.body()["message"]


def test_the_upgrade_request_loses_its_credentials_before_the_websocket_sees_it():
    """without_credentials drops Authorization and every bearer subprotocol (folded
    lines too), keeps the real subprotocols, the other headers and what follows the head."""
    ops = bearer_subprotocol("pxl_0123_secret")
    head = (b"GET /api/v1/ws HTTP/1.1\r\nHost: 127.0.0.1:1\r\nUpgrade: websocket\r\n"
            b"Authorization: Bearer pxl_0123_secret\r\n"
            b"Sec-WebSocket-Protocol: paxoslog.v1.json,\r\n " + ops.encode() +
            b"\r\nSec-WebSocket-Key: abc\r\n\r\n")
    frame = b"\x81\x05\nhello\r\n"
    scrubbed = without_credentials(head + frame)
    assert b"secret" not in scrubbed and b"bearer" not in scrubbed.lower()
    assert scrubbed.endswith(b"\r\n\r\n" + frame)
    assert scrubbed.startswith(b"GET /api/v1/ws HTTP/1.1\r\nHost: 127.0.0.1:1\r\n")
    assert b"Sec-WebSocket-Protocol: paxoslog.v1.json\r\n" in scrubbed
    assert b"Sec-WebSocket-Key: abc\r\n" in scrubbed
    only = without_credentials(b"\r\nGET / HTTP/1.1\nSec-WebSocket-Protocol: " +
                               ops.upper().encode() + b"\n\n")
    assert only == b"GET / HTTP/1.1\r\n\r\n"


def test_a_token_is_verified_once_then_served_from_memory(setup):
    """The KDF runs at the first use only; the principal carries role and binding."""
    make, tokens, calls, *_ = setup
    access = make()
    for _ in range(3):
        p = principal_of(access, bearer(tokens["app"]))
    assert calls == ["app"]
    assert p.role is Role.WRITE and str(p.client_id) == "app-*" and p.kind == "token"


def test_unknown_and_wrong_tokens_are_401_and_unknown_ids_cost_no_kdf(setup):
    """A token with an id no record has is refused without verification; a wrong secret
    for a known id is verified once and then refused from memory; bad headers are 401."""
    make, tokens, calls, *_ = setup
    access = make()
    unknown = "pxl_000000000000_" + "A" * 43
    wrong = tokens["ops"][:-2] + ("AA" if not tokens["ops"].endswith("AA") else "BB")
    for request in (bearer(unknown), bearer("garbage"), Req({"Authorization": "Basic x"}),
                    Req({"Authorization": "Bearer "})):
        with pytest.raises(ApiError) as error:
            principal_of(access, request)
        assert error.value.status == 401
    assert calls == []
    for _ in range(2):
        with pytest.raises(ApiError):
            principal_of(access, bearer(wrong))
    assert calls == ["ops"]


def test_first_uses_share_a_verification_and_are_bounded(setup):
    """Concurrent first uses of one token share one verification; beyond
    VERIFICATIONS_MAX different token ids in verification a request gets 503 busy."""
    make, tokens, calls, clock, path = setup
    pending = []

    def held(record, token):
        d = defer.Deferred()
        pending.append((d, record, token))
        return d
    access = make()
    records = access.store.tokens
    others = []
    for n in range(VERIFICATIONS_MAX):
        token, record = new_token(records, Role.READ, f"extra-{n}")
        records = TokensFile(records.tokens + (record,))
        others.append(token)
    write_tokens(path, records)
    access.store.load()
    access._verify = held
    first = access.authenticate(bearer(tokens["ops"]))
    second = access.authenticate(bearer(tokens["ops"]))
    assert len(pending) == 1
    # Other token ids: a verification each (one id holds one at most: test_token_backoff).
    for token in others[:VERIFICATIONS_MAX - 1]:
        access.authenticate(bearer(token))
    assert len(pending) == VERIFICATIONS_MAX
    with pytest.raises(ApiError) as error:
        access.authenticate(bearer(tokens["app"]))
    assert error.value.status == 503 and error.value.code == "busy"
    d, record, token = pending[0]
    d.callback(check_token(record, token))
    got = []
    first.addCallback(got.append)
    second.addCallback(got.append)
    assert [p.name for p in got] == ["ops", "ops"]


def test_revoked_and_added_tokens_are_seen_after_the_file_changes(setup):
    """Removing a record from the file refuses its token (even though it was cached) once
    the store rechecks the file; a token added later is accepted."""
    make, tokens, calls, clock, path = setup
    access = make()
    principal_of(access, bearer(tokens["reader"]))
    store = access.store
    kept = TokensFile(tuple(t for t in store.tokens.tokens if t.name != "reader"))
    late, record = new_token(kept, Role.READ, "late")
    write_tokens(path, TokensFile(kept.tokens + (record,)))
    os.utime(path, ns=(1, 1))                     # a different stamp whatever the clock
    clock.now += 2
    with pytest.raises(ApiError) as error:
        principal_of(access, bearer(tokens["reader"]))
    assert error.value.status == 401
    assert principal_of(access, bearer(late)).name == "late"


def test_an_unreadable_file_keeps_the_last_good_tokens(setup):
    """A tokens file that became invalid is logged and the tokens read before still work."""
    make, tokens, calls, clock, path = setup
    access = make()
    with open(path, "w") as f:
        f.write("{broken")
    clock.now += 2
    assert principal_of(access, bearer(tokens["ops"])).name == "ops"


def test_client_ids_bound_to_a_token_belong_to_it(setup):
    """A bound token writes only matching ids; nobody else (admin included, anonymous
    where auth is optional) may use an id a bound token claims; other ids are free."""
    make, tokens, *_ = setup
    access = make()
    app = principal_of(access, bearer(tokens["app"]))
    admin = principal_of(access, bearer(tokens["ops"]))
    access.check_client_id(app, "app-1")
    access.check_client_id(admin, "mine-1")
    for principal, client_id in ((app, "other-1"), (admin, "app-1"),
                                 (make(False).anonymous, "app-2")):
        with pytest.raises(ApiError) as error:
            access.check_client_id(principal, client_id)
        assert error.value.status == 403 and error.value.code == "forbidden"


def test_origin_outside_the_allow_list_is_refused_whatever_the_auth(setup):
    """Origin not allowed: 403 (required or not); allowed: served with CORS headers;
    no Origin: not a browser check."""
    make, *_ = setup
    for required in (True, False):
        access = make(required, allowed_origins=("https://ui.example",))
        refused = access.check_browser(Req({"Origin": "https://evil.example",
                                            "Host": "127.0.0.1:8101"}))
        assert refused is not None and refused.status == 403
        ok = Req({"Origin": "https://ui.example", "Host": "127.0.0.1:8101"})
        assert access.check_browser(ok) is None
        assert (b"Access-Control-Allow-Origin", b"https://ui.example") in \
            access.cors_headers(ok)
        assert access.check_browser(Req({"Host": "127.0.0.1:8101"})) is None
        for own in ("http://127.0.0.1:8101", "http://localhost:8101"):     # its own pages
            assert access.check_browser(Req({"Origin": own, "Host": "localhost:8101"})) is None, own
        for other in ("http://127.0.0.1:8102", "http://evil.example:8101", "null",
                      "http://127.0.0.1:8101/x"):
            assert access.check_browser(Req({"Origin": other})) is not None, other


def test_host_must_name_the_node_while_anonymous_requests_are_served(setup):
    """Auth not required: Host must be one of the node's addresses (loopback aliases,
    allowed_hosts); with tokens required any Host is fine (a token is needed anyway)."""
    make, *_ = setup
    open_node = make(False, allowed_hosts=("paxos.internal",))
    for host in ("127.0.0.1:8101", "localhost:8101", "[::1]:8101", "LOCALHOST:8101",
                 "localhost", "paxos.internal", "paxos.internal:8101"):
        assert open_node.check_browser(Req({"Host": host})) is None, host
    for host in ("evil.example:8101", "127.0.0.1:9999", "localhost.evil:8101",
                 "paxos.internal.evil"):
        refused = open_node.check_browser(Req({"Host": host}))
        assert refused is not None and refused.status == 403, host
    assert make(True).check_browser(Req({"Host": "evil.example"})) is None


def test_a_host_without_a_port_means_the_default_port_of_the_api_scheme():
    """A node whose API listens on a non-loopback address and port 443 accepts a bare Host
    (and its https origin without a port) when the API speaks HTTPS, not when it speaks
    HTTP (where a bare Host means port 80); port 80 is the reverse."""
    conf = AuthConf(tokens_file=None, required=False)
    for port, https, bare_ok in ((443, True, True), (443, False, False),
                                 (80, False, True), (80, True, False)):
        access = AccessControl(conf, (Address("10.0.0.5", port),), lambda: port, store=None,
                               verify=None, now=lambda: 0.0, https=https)
        refused = access.check_browser(Req({"Host": "10.0.0.5"}))
        assert (refused is None) == bare_ok, (port, https)
        assert access.check_browser(Req({"Host": f"10.0.0.5:{port}"})) is None
    tls_node = AccessControl(conf, (Address("10.0.0.5", 443),), lambda: 443, store=None,
                             verify=None, now=lambda: 0.0, https=True)
    assert tls_node.check_browser(Req({"Origin": "https://10.0.0.5",
                                       "Host": "10.0.0.5"})) is None


def test_is_loopback_takes_bracketed_addresses_like_the_conf():
    """The Host check's loopback test is the conf's, with IPv6 brackets allowed."""
    from paxoslog.server.access import is_loopback
    for host in ("localhost", "LOCALHOST", "127.0.0.1", "127.9.9.9", "::1", "[::1]"):
        assert is_loopback(host), host
    for host in ("10.0.0.1", "localhost.evil", "[::2]", ""):
        assert not is_loopback(host), host
