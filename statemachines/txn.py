"""Transactions of the kv state machine: validation and compare evaluation.

A transaction is one kv command, so one log entry, applied atomically on every replica::

    {"op": "txn",
     "compare": [{"key": k, "target": "value"|"version"|"create_index"|"mod_index"|"exists"
                                      |"lease",
                  "cmp": "=="|"!="|"<"|"<="|">"|">=",  (default "=="; "exists": == / != only)
                  "value": v}, ...],
     "success": [op, ...],        # applied in order when every compare holds
     "failure": [op, ...]}        # applied in order otherwise

    op: {"op": "put", "key", "value", "lease"?} | {"op": "delete", "key"}
        | {"op": "get", "key"} | {"op": "range", "prefix", "limit"?}

The result is ``{"op": "txn", "succeeded": bool, "results": [one per op of the branch
taken]}``.  The ops of a branch run in order and see each other's writes (a ``get`` after a
``put`` of the same key reads the new value).  An absent key has version, create_index,
mod_index and lease 0 and no value: a ``value`` compare on it is false whatever ``cmp``
says (use ``exists``).  ``==``/``!=`` of values is JSON equality (``json_equal``): the
types must agree at every depth (``true`` is not ``1``, ``false`` is not ``0``, ``"1"`` is
not ``1``), numbers compare by value (``1`` equals ``1.0``: JSON has one number type, and
a JavaScript client cannot tell them apart), arrays element by element, objects by their
keys and values (order aside).  Ordering compares of values hold only between two numbers
or two strings.  Bounds: ``txn_ops_max`` compares and ops per branch; the command's
encoded size at most ``txn_bytes_max`` (``CommandTooLarge``, HTTP 413); the results of
the gets and ranges of the whole command (every transaction of a batch) together at most
kv's ``TXN_RESULT_BYTES_MAX`` (4 MiB): the first read that does not fit, and every read
after it, is cut (a range answers ``more: true``, a get the key's metadata without
``value`` and ``truncated: true``).
"""

from __future__ import annotations

import operator

import cbor2

from .base import VALUE_DEPTH_MAX, BadCommand, CommandTooLarge, nesting_exceeds

__all__ = ["validate_txn", "compare_holds", "json_equal", "TARGETS", "CMPS"]

TARGETS = ("value", "version", "create_index", "mod_index", "exists", "lease")
CMPS = {"==": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le,
        ">": operator.gt, ">=": operator.ge}
OPS = ("put", "delete", "get", "range")
RANGE_LIMIT_MAX = 1000


def validate_txn(command: dict, check_key, check_lease, ops_max: int, bytes_max: int) -> dict:
    """The normalized txn command, or ``BadCommand`` / ``CommandTooLarge``.
    ``check_key(key) -> key`` and ``check_lease(value) -> int`` are kv's own checks."""
    unknown = set(command) - {"op", "compare", "success", "failure"}
    if unknown:
        raise BadCommand(f"unknown txn field(s): {', '.join(sorted(map(str, unknown)))[:200]}")
    compares = command.get("compare", [])
    if not isinstance(compares, list):
        raise BadCommand('"compare" must be an array')
    if len(compares) > ops_max:
        raise BadCommand(f'"compare" has {len(compares)} entries; at most {ops_max} '
                         '(limits.txn_ops_max)')
    out_compares = [_compare(c, check_key) for c in compares]
    out = {"op": "txn", "compare": out_compares}
    for branch in ("success", "failure"):
        ops = command.get(branch, [])
        if not isinstance(ops, list):
            raise BadCommand(f'"{branch}" must be an array')
        if len(ops) > ops_max:
            raise BadCommand(f'"{branch}" has {len(ops)} ops; at most {ops_max} '
                             '(limits.txn_ops_max)')
        out[branch] = [_op(op, check_key, check_lease) for op in ops]
    size = len(cbor2.dumps(out))
    if size > bytes_max:
        raise CommandTooLarge(f"the transaction is {size} bytes encoded; at most {bytes_max} "
                              "(limits.txn_bytes_max)")
    return out


def _compare(c: object, check_key) -> dict:
    if not isinstance(c, dict):
        raise BadCommand("every compare must be an object")
    unknown = set(c) - {"key", "target", "cmp", "value"}
    if unknown:
        raise BadCommand(f"unknown compare field(s): {', '.join(sorted(map(str, unknown)))[:200]}")
    target = c.get("target", "value")
    if target not in TARGETS:
        raise BadCommand(f'compare "target" must be one of {", ".join(TARGETS)}')
    cmp = c.get("cmp", "==")
    if cmp not in CMPS:
        raise BadCommand(f'compare "cmp" must be one of {", ".join(CMPS)}')
    if "value" not in c:
        raise BadCommand('every compare needs a "value"')
    value = c["value"]
    if target == "exists":
        if type(value) is not bool or cmp not in ("==", "!="):
            raise BadCommand('an "exists" compare takes a boolean "value" and "==" or "!="')
    elif target != "value":
        if type(value) is not int or value < 0:
            raise BadCommand(f'a "{target}" compare takes a non-negative integer "value"')
    elif value is None or nesting_exceeds(value, VALUE_DEPTH_MAX):
        raise BadCommand('a "value" compare takes a non-null value '
                         f'(nested at most {VALUE_DEPTH_MAX} levels)')
    return {"key": check_key(c.get("key")), "target": target, "cmp": cmp, "value": value}


def _op(op: object, check_key, check_lease) -> dict:
    if not isinstance(op, dict):
        raise BadCommand("every txn op must be an object")
    kind = op.get("op")
    if kind not in OPS:
        raise BadCommand(f'txn op "op" must be one of {", ".join(OPS)}, got {kind!r:.40}')
    allowed = {"put": {"op", "key", "value", "lease"}, "delete": {"op", "key"},
               "get": {"op", "key"}, "range": {"op", "prefix", "limit"}}[kind]
    unknown = set(op) - allowed
    if unknown:
        raise BadCommand(f"unknown field(s) in a txn {kind}: "
                         f"{', '.join(sorted(map(str, unknown)))[:200]}")
    if kind == "range":
        prefix = op.get("prefix")
        if not isinstance(prefix, str):
            raise BadCommand('a txn range needs a string "prefix"')
        limit = op.get("limit", 100)
        if type(limit) is not int or not 1 <= limit <= RANGE_LIMIT_MAX:
            raise BadCommand(f'a txn range "limit" must be an integer in 1..{RANGE_LIMIT_MAX}')
        return {"op": "range", "prefix": prefix, "limit": limit}
    out = {"op": kind, "key": check_key(op.get("key"))}
    if kind == "put":
        value = op.get("value")
        if value is None:
            raise BadCommand('a txn put needs a non-null "value"')
        if nesting_exceeds(value, VALUE_DEPTH_MAX):
            raise BadCommand(f'"value" nests deeper than {VALUE_DEPTH_MAX} levels')
        out["value"] = value
        if op.get("lease") is not None:
            out["lease"] = check_lease(op["lease"])
    return out


def compare_holds(compare: dict, record: tuple | None, lease: int) -> bool:
    """Does ``compare`` hold for a key whose kv record is ``record`` (value, create_index,
    mod_index, version; None when absent) and whose lease is ``lease`` (0: none)?"""
    target, cmp, want = compare["target"], CMPS[compare["cmp"]], compare["value"]
    if target == "exists":
        return cmp(record is not None, want)
    if target == "value":
        if record is None:
            return False
        have = record[0]
        if compare["cmp"] == "==":
            return json_equal(have, want)
        if compare["cmp"] == "!=":
            return not json_equal(have, want)
        numbers = (int, float)
        if (isinstance(have, numbers) and not isinstance(have, bool)
                and isinstance(want, numbers) and not isinstance(want, bool)):
            return cmp(have, want)
        if isinstance(have, str) and isinstance(want, str):
            return cmp(have, want)
        return False
    if target == "lease":
        return cmp(lease, want)
    if record is None:
        have = 0
    else:
        have = {"create_index": record[1], "mod_index": record[2], "version": record[3]}[target]
    return cmp(have, want)


def _kind(value: object) -> object:
    """The JSON type of ``value`` (bool is not a number); any other type is its own."""
    kind = type(value)
    if kind is int or kind is float:
        return int
    if kind is tuple:
        return list
    return kind


def json_equal(a: object, b: object) -> bool:
    """Equality of two JSON values (what ``cas`` ``expected`` and ``==`` compares use):
    the same JSON type at every depth, so ``True != 1`` and ``[False] != [0]`` (Python's
    ``==`` says equal); numbers by value, so ``1 == 1.0`` (and ``nan`` equals nothing);
    arrays of equal length element by element; objects with the same keys, each with an
    equal value.  Iterative: no recursion limit (values nest at most VALUE_DEPTH_MAX)."""
    stack = [(a, b)]
    while stack:
        x, y = stack.pop()
        kind = _kind(x)
        if kind is not _kind(y):
            return False
        if kind is list:
            if len(x) != len(y):
                return False
            stack.extend(zip(x, y))
        elif kind is dict:
            if len(x) != len(y):
                return False
            if not (all(type(k) is str for k in x) and all(type(k) is str for k in y)):
                x = {(_kind(k), k): v for k, v in x.items()}   # CBOR may give other keys:
                y = {(_kind(k), k): v for k, v in y.items()}   # 1 and True are two keys
                if len(x) != len(y):
                    return False
            for key, value in x.items():
                if key not in y:
                    return False
                stack.append((value, y[key]))
        elif x != y:
            return False
    return True
