"""Client tokens (paxoslog/tokens.py): randomness and format, the salted scrypt hash, the
tokens file (atomic, owner-only, validated with errors that name the file), roles and
client id rules."""

from __future__ import annotations

import json
import os
import stat

import pytest

from paxoslog.tokens import (ClientIdRule, Role, TokensFile, TokensFileError, check_token,
                             new_token, parse_token, read_tokens, write_tokens)


def test_tokens_are_random_well_formed_and_carry_256_bits():
    """Two tokens differ; each parses to its record's id; the secret is 32 bytes."""
    a, ra = new_token(TokensFile(), Role.READ)
    b, rb = new_token(TokensFile(), Role.READ)
    assert a != b and ra.id != rb.id
    assert parse_token(a) == ra.id and parse_token(b) == rb.id
    secret = a.split("_", 2)[2]
    assert len(secret) == 43                      # base64url of 32 bytes, no padding
    for bad in ("", "pxl_", a + "x", a.replace("pxl_", "pxx_"), "pxl_ZZ" + a[6:]):
        assert parse_token(bad) is None, bad


def test_the_file_keeps_only_a_salted_slow_hash():
    """The record has a 16-byte salt and a scrypt hash; the token is nowhere in it; the
    same token with another salt hashes differently; a one-character change fails."""
    token, record = new_token(TokensFile(), Role.ADMIN, "ops")
    text = json.dumps(TokensFile((record,)).to_json())
    assert token not in text and token.split("_", 2)[2] not in text
    assert len(record.salt) == 16 and record.kdf == (1 << 14, 8, 1)
    assert check_token(record, token)
    assert not check_token(record, token[:-1] + ("A" if token[-1] != "A" else "B"))
    _, other = new_token(TokensFile(), Role.ADMIN)
    assert other.salt != record.salt


def test_roles_are_ordered_and_parsed():
    """admin > write > read > none; unknown role names are refused."""
    assert Role.ADMIN > Role.WRITE > Role.READ > Role.NONE
    assert Role.parse("write") is Role.WRITE
    with pytest.raises(ValueError):
        Role.parse("root")


def test_names_and_client_ids_are_unique_across_tokens():
    """A taken name and a client id rule that overlaps another token's are refused."""
    _, first = new_token(TokensFile(), Role.WRITE, "app", ClientIdRule.parse("app-*"))
    tokens = TokensFile((first,))
    with pytest.raises(ValueError, match="already exists"):
        new_token(tokens, Role.READ, "app")
    for rule in ("app-1", "app-*", "ap*", "app-x-*"):
        with pytest.raises(ValueError, match="overlaps"):
            new_token(tokens, Role.WRITE, None, ClientIdRule.parse(rule))
    new_token(tokens, Role.WRITE, None, ClientIdRule.parse("other-*"))


def test_client_id_rules():
    """Exact ids match only themselves, prefixes their extensions; '*' only at the end;
    the servers' node<N>- ids cannot be claimed."""
    exact, prefix = ClientIdRule.parse("c1"), ClientIdRule.parse("app-*")
    assert exact.allows("c1") and not exact.allows("c10")
    assert prefix.allows("app-") and prefix.allows("app-7") and not prefix.allows("ap")
    assert str(prefix) == "app-*" and str(exact) == "c1"
    for bad in ("", "*", "a*b", "a**", "node1-x", "x" * 200):
        with pytest.raises(ValueError):
            ClientIdRule.parse(bad)


def test_write_is_atomic_owner_only_and_round_trips(tmp_path):
    """write_tokens leaves a 0600 file and no temporary file; read_tokens gives the same
    records back."""
    path = str(tmp_path / "tokens.json")
    _, r1 = new_token(TokensFile(), Role.ADMIN, "a")
    _, r2 = new_token(TokensFile((r1,)), Role.WRITE, "b", ClientIdRule.parse("b-*"))
    write_tokens(path, TokensFile((r1, r2)))
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert os.listdir(tmp_path) == ["tokens.json"]
    assert read_tokens(path) == TokensFile((r1, r2))


@pytest.mark.parametrize("content, words", [
    (None, "no such file"),
    ("{", "not valid JSON"),
    ('{"format": "x"}', "not a paxoslog tokens file"),
    ('{"format": "paxoslog-tokens", "version": 9, "tokens": []}', "unsupported version"),
    ('{"format": "paxoslog-tokens", "version": 1, "tokens": {}}', "must be a list"),
    ('{"format": "paxoslog-tokens", "version": 1, "tokens": [{"name": "a"}]}',
     "tokens[0]: missing field"),
])
def test_unusable_files_are_refused_naming_the_file(tmp_path, content, words):
    """Every problem with the tokens file raises TokensFileError with the path in it."""
    path = tmp_path / "tokens.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(TokensFileError) as error:
        read_tokens(str(path))
    assert str(path) in str(error.value) and words in str(error.value)


def test_a_file_with_a_duplicate_name_is_refused(tmp_path):
    """Two records with one name (a hand edit) are refused."""
    _, r = new_token(TokensFile(), Role.READ, "dup")
    path = str(tmp_path / "t.json")
    obj = TokensFile((r,)).to_json()
    obj["tokens"].append(dict(obj["tokens"][0], id="0" * 12))
    with open(path, "w") as f:
        json.dump(obj, f)
    with pytest.raises(TokensFileError, match="two tokens with the name"):
        read_tokens(path)
