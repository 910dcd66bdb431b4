"""One token id cannot hog the token verifications (server/access.py): at most one
verification in flight per id (the same secret shares it, another is refused 503 busy),
a first failed verification costs nothing more (a mistyped token, then the right one), and
after a second failure in a row the id's unverified secrets are refused without hashing
for a back-off that doubles from BACKOFF_FIRST_S to BACKOFF_MAX_S.  A fake clock drives time and
the verifier is injected (held or counting), so nothing sleeps."""

from __future__ import annotations

import math
import secrets

import pytest
from twisted.internet import defer

from paxoslog.config import Address, AuthConf
from paxoslog.server.access import BACKOFF_FIRST_S, BACKOFF_MAX_S, VERIFICATIONS_MAX, \
    AccessControl, TokenStore
from paxoslog.server.errors import ApiError
from paxoslog.tokens import Role, TokensFile, check_token, new_token, write_tokens


class Req:
    def __init__(self, headers: dict) -> None:
        self.headers = {k.lower().encode(): v.encode() for k, v in headers.items()}
        self.upgrade = False


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def bearer(token: str) -> Req:
    return Req({"Authorization": f"Bearer {token}"})


def fresh_secret(token: str) -> str:
    """A token with the same id as ``token`` and a new random secret."""
    prefix, tid, _ = token.split("_", 2)
    return f"{prefix}_{tid}_{secrets.token_urlsafe(32)}"


class Env:
    """A tokens file (ops: admin; reader and extra-N: read), its store, a fake clock, and
    an AccessControl whose verifier is ``self.verify`` (swappable)."""

    def __init__(self, tmp_path) -> None:
        self.path = str(tmp_path / "tokens.json")
        records = TokensFile()
        self.tokens = {}
        for role, name in [(Role.ADMIN, "ops"), (Role.READ, "reader")] + \
                [(Role.READ, f"extra-{n}") for n in range(VERIFICATIONS_MAX)]:
            self.tokens[name], record = new_token(records, role, name)
            records = TokensFile(records.tokens + (record,))
        write_tokens(self.path, records)
        self.store = TokenStore(self.path)
        self.store.load()
        self.clock = Clock()
        self.calls: list[str] = []            # record names, one per verification started
        self.pending: list[tuple[defer.Deferred, object, str]] = []
        self.mode = "fake"
        self.access = AccessControl(AuthConf(tokens_file=self.path, required=True),
                                    (Address("127.0.0.1", 8101),), lambda: 8101,
                                    store=self.store, verify=self._verify, now=self.clock)

    def _verify(self, record, token):
        self.calls.append(record.name)
        if self.mode == "held":                # finishes when the test says so
            d = defer.Deferred()
            self.pending.append((d, record, token))
            return d
        if self.mode == "scrypt":
            return check_token(record, token)
        return token == self.tokens[record.name]     # "fake": fast and exact

    def finish_all(self) -> None:
        while self.pending:
            d, record, token = self.pending.pop(0)
            d.callback(token == self.tokens[record.name])

    def principal(self, token: str):
        """The principal (a Deferred must have fired), or raise its ApiError."""
        result = self.access.authenticate(bearer(token))
        if isinstance(result, defer.Deferred):
            out = []
            result.addBoth(out.append)
            assert out, "verification still pending"
            if hasattr(out[0], "value"):
                raise out[0].value
            return out[0]
        return result

    def refused(self, token: str) -> ApiError:
        with pytest.raises(ApiError) as error:
            self.principal(token)
        return error.value


@pytest.fixture
def env(tmp_path):
    return Env(tmp_path)


def _busy(error: ApiError, token: str) -> None:
    assert error.status == 503 and error.code == "busy", error.body()
    assert error.retry_after is not None and error.retry_after >= 1
    secret = token.split("_", 2)[2]            # secrets may hold "_" themselves
    assert secret not in error.message and token not in str(error.body())


def test_one_id_flooding_fresh_wrong_secrets_leaves_other_tokens_their_slots(env):
    """The review's flood: one read token's holder sends its own id with fresh secrets
    from 8 threads.  It holds at most one verification at a time, is refused at once
    otherwise, hashes a handful of times over 10 s (twice, then in back-off), and meanwhile
    every other token's first use gets a verification slot."""
    env.mode = "held"
    reader = env.tokens["reader"]
    started_at = []
    for step in range(40):                      # 40 steps of 0.25 s: 10 s of flooding
        for _ in range(8):
            before = len(env.calls)
            attempt = fresh_secret(reader)
            try:
                result = env.access.authenticate(bearer(attempt))
            except ApiError as error:
                _busy(error, attempt)
            else:
                assert isinstance(result, defer.Deferred)
                result.addErrback(lambda f: f.trap(ApiError))
                assert len(env.calls) == before + 1
                started_at.append(env.clock.now)
            assert len(env.pending) <= 1, "one id took a second verification slot"
        if step == 15:                          # t = 3.75 s: one of its verifications
            # While the flood's verification is in flight, other tokens' first uses get
            # the remaining slots (without the fix: 503 busy, the flood held all four).
            assert len(env.pending) == 1
            others = ["ops"] + [f"extra-{n}" for n in range(VERIFICATIONS_MAX - 2)]
            firsts = [env.access.authenticate(bearer(env.tokens[n])) for n in others]
            assert len(env.pending) == VERIFICATIONS_MAX
            got = []
            for d in firsts:
                d.addCallback(got.append)
        env.finish_all()
        env.clock.now += 0.25
    assert sorted(p.name for p in got) == sorted(others)
    # Verifications of the flood at t=0 (a first failure: no back-off), 0.25 (the next
    # step), then 0.75, 1.75, 3.75, 7.75 (back-off 0.5, 1, 2, 4, 8).
    assert [t - started_at[0] for t in started_at] == [0, 0.25, 0.75, 1.75, 3.75, 7.75]
    assert env.calls.count("reader") == 6


def test_a_mistyped_secret_then_the_right_one_verifies_and_two_wrong_start_a_back_off(env):
    """With the real scrypt check wrapped to count its calls: a wrong secret costs one
    verification (401) and the right secret sent right after verifies (a user who mistyped
    once is not refused).  Two wrong secrets in a row put the id in back-off: another
    secret of that id, the right one included, is 503 busy with Retry-After and no hashing
    until it has passed; then the right secret verifies and is cached; a repeated
    known-wrong secret stays a plain 401."""
    env.mode = "scrypt"
    ops = env.tokens["ops"]
    assert env.refused(fresh_secret(ops)).status == 401
    assert env.calls == ["ops"]
    assert env.principal(ops).name == "ops"            # right after: verified, not 503
    assert env.calls == ["ops", "ops"]

    reader = env.tokens["reader"]
    wrong = fresh_secret(reader)
    assert env.refused(wrong).status == 401
    assert env.refused(fresh_secret(reader)).status == 401     # second failure: hashed
    assert env.calls.count("reader") == 2
    for attempt in (fresh_secret(reader), reader):
        error = env.refused(attempt)
        _busy(error, attempt)
        assert error.retry_after == math.ceil(BACKOFF_FIRST_S)
    assert env.refused(wrong).status == 401          # known wrong: 401 as before
    env.clock.now += BACKOFF_FIRST_S - 0.01
    _busy(env.refused(reader), reader)
    assert env.calls.count("reader") == 2, "hashed during the back-off"
    env.clock.now += 0.01
    assert env.principal(reader).name == "reader"
    assert env.calls.count("reader") == 3
    # Cached now: served during a new back-off of its id, without hashing.
    assert env.refused(fresh_secret(reader)).status == 401
    assert env.refused(fresh_secret(reader)).status == 401
    assert env.access.authenticate(bearer(reader)).name == "reader"
    _busy(env.refused(fresh_secret(reader)), reader)
    assert env.calls.count("reader") == 5


def test_the_back_off_doubles_up_to_its_cap_and_a_success_resets_it(env):
    """The second failure in a row starts the back-off and each failure after it ran out
    doubles it (0.5, 1, 2, ... capped at BACKOFF_MAX_S, Retry-After its ceiling), and
    nothing is hashed before it ends; other ids are not affected; after a success the
    next failure is a first again (no back-off) and the one after starts it again from
    BACKOFF_FIRST_S."""
    reader = env.tokens["reader"]
    assert env.refused(fresh_secret(reader)).status == 401
    assert env.refused(fresh_secret(reader)).status == 401      # second: hashed at once
    assert env.calls.count("reader") == 2
    steps = [min(BACKOFF_FIRST_S * 2 ** n, BACKOFF_MAX_S) for n in range(9)]
    assert steps[-1] == BACKOFF_MAX_S
    for step in steps:
        failed_at, hashed = env.clock.now, env.calls.count("reader")
        error = env.refused(fresh_secret(reader))
        _busy(error, reader)
        assert error.retry_after == math.ceil(step)
        assert env.principal(env.tokens["extra-0"]).name == "extra-0"   # another id: fine
        env.clock.now = failed_at + step - 0.01
        _busy(env.refused(fresh_secret(reader)), reader)
        assert env.calls.count("reader") == hashed           # no hashing in the back-off
        env.clock.now = failed_at + step
        assert env.refused(fresh_secret(reader)).status == 401     # verified, wrong
        assert env.calls[-1] == "reader"
    env.clock.now += BACKOFF_MAX_S
    assert env.principal(reader).name == "reader"               # success: reset
    hashed = env.calls.count("reader")
    assert env.refused(fresh_secret(reader)).status == 401      # a first failure again
    assert env.refused(fresh_secret(reader)).status == 401      # verified again at once
    error = env.refused(fresh_secret(reader))
    _busy(error, reader)
    assert error.retry_after == math.ceil(BACKOFF_FIRST_S)
    assert env.calls.count("reader") == hashed + 2


def test_quiet_forgets_an_ids_failures(env):
    """A lone failure followed by BACKOFF_MAX_S of quiet is forgotten: the next failure is
    a first one again (no back-off).  A back-off is forgotten too once BACKOFF_MAX_S has
    passed since it ran out."""
    reader = env.tokens["reader"]
    for n in range(3):                            # a mistake now and then: never refused
        env.clock.now += BACKOFF_MAX_S if n else 0
        assert env.refused(fresh_secret(reader)).status == 401
    assert env.calls.count("reader") == 3
    assert env.refused(fresh_secret(reader)).status == 401      # second in a row
    _busy(env.refused(fresh_secret(reader)), reader)
    env.clock.now += BACKOFF_FIRST_S + BACKOFF_MAX_S            # ran out 30 s ago
    assert env.refused(fresh_secret(reader)).status == 401      # a first failure again
    assert env.principal(reader).name == "reader"               # so the right one verifies
    assert env.calls.count("reader") == 6


def test_the_same_secret_shares_a_verification_and_another_is_refused_meanwhile(env):
    """Two concurrent first uses of the right secret share one verification; a third
    request of that id with another secret is refused at once (503 busy) without a
    verification of its own; the two then get the principal."""
    env.mode = "held"
    ops = env.tokens["ops"]
    first = env.access.authenticate(bearer(ops))
    second = env.access.authenticate(bearer(ops))
    assert env.calls == ["ops"]
    intruder = fresh_secret(ops)
    _busy(env.refused(intruder), intruder)
    assert env.calls == ["ops"] and len(env.pending) == 1
    d, record, token = env.pending.pop()
    d.callback(check_token(record, token))
    got = []
    first.addCallback(got.append)
    second.addCallback(got.append)
    assert [p.name for p in got] == ["ops", "ops"]
    assert env.access.authenticate(bearer(ops)).name == "ops"      # cached, synchronous


def test_a_cached_token_is_served_while_its_id_is_flooded(env):
    """A holder whose right secret was verified earlier is unaffected by a flood of its
    own id: while a made-up secret is being verified and during the back-off after it."""
    reader = env.tokens["reader"]
    assert env.principal(reader).name == "reader"
    env.mode = "held"
    for _ in range(2):                              # two failures: the back-off starts
        env.access.authenticate(bearer(fresh_secret(reader))).addErrback(lambda f: None)
        assert env.access.authenticate(bearer(reader)).name == "reader"
        env.finish_all()
    _busy(env.refused(fresh_secret(reader)), reader)
    assert env.access.authenticate(bearer(reader)).name == "reader"


def test_per_id_state_is_kept_only_for_ids_in_the_tokens_file(env):
    """Unknown ids are refused 401 with no verification and leave no state; the failure
    count of a revoked token's id is dropped; a failing verifier counts as a failure."""
    for _ in range(200):
        assert env.refused(f"pxl_{secrets.token_hex(6)}_{secrets.token_urlsafe(32)}") \
            .status == 401
    assert env.calls == [] and not env.access._in_flight and not env.access._backoff
    assert env.refused(fresh_secret(env.tokens["reader"])).status == 401
    assert len(env.access._backoff) == 1
    kept = TokensFile(tuple(t for t in env.store.tokens.tokens if t.name != "reader"))
    write_tokens(env.path, kept)
    env.store.load()

    def broken(record, token):
        env.calls.append(record.name)
        raise RuntimeError("the thread pool is gone")
    env.access._verify = broken
    for _ in range(2):
        assert env.refused(fresh_secret(env.tokens["ops"])).status == 401
    assert set(env.access._backoff) == {env.store.tokens.by_name("ops").id}
    _busy(env.refused(env.tokens["ops"]), env.tokens["ops"])
    assert env.calls.count("ops") == 2
