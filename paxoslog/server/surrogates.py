"""``lone_surrogate``: does a client's decoded JSON hold a string that is not Unicode text?

JSON may spell a character outside the Basic Multilingual Plane as a pair of escapes
(``"\\ud83d\\ude00"``), and Python's decoder joins a pair into one character; but it also
accepts half a pair (``"\\ud800"``) and gives a string holding a lone surrogate, which no
UTF-8 encoder takes.  Such a value went through validation and then failed where the node
encodes it (the command's CBOR, the answer's UTF-8): every such request was a 500 and a
traceback in the log.  The HTTP API and the WebSocket channel refuse it instead (400,
``bad_request``).

The check costs nothing on ordinary bodies: only a text with an escape of the surrogate
range (``\\uD800`` to ``\\uDFFF``, in any case) has its decoded value walked.
"""

from __future__ import annotations

import re

__all__ = ["lone_surrogate", "LONE_SURROGATE_MESSAGE"]

LONE_SURROGATE_MESSAGE = ("holds a lone UTF-16 surrogate (a \\uD800-\\uDFFF escape without "
                          "its pair): not Unicode text")

_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def lone_surrogate(text: str, value: object) -> bool:
    """True when ``value``, decoded from the JSON ``text``, holds a string (a key or a
    value, at any depth) with a lone surrogate.  Iterative: the caller bounds the depth."""
    if "\\u" not in text or _ESCAPE.search(text) is None:
        return False
    stack = [value]
    while stack:
        item = stack.pop()
        kind = type(item)
        if kind is str:
            if _SURROGATE.search(item) is not None:
                return True
        elif kind is dict:
            stack.extend(item.keys())
            stack.extend(item.values())
        elif kind is list:
            stack.extend(item)
    return False
