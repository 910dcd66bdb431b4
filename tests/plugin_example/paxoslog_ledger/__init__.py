"""``ledger``: account balances that never go negative (an example paxoslog plug-in).

Writes (through the replicated log)::

    {"op": "deposit",  "account": a, "amount": n}   -> {"account", "balance"}
    {"op": "withdraw", "account": a, "amount": n}   -> {"account", "balance"}

A withdrawal beyond the balance raises ``InsufficientFunds`` inside ``apply``: paxoslog turns
it into an error result for the client (the same on every replica) and keeps applying.
Read: ``{"account": a}`` -> ``{"account", "balance"}``.

It has no ``validate`` method on purpose (it is optional): paxoslog then only checks that
``op`` is one of ``ops`` before the command enters the log, and bad fields are refused by
``apply`` (``BadCommand``: a 400 for the client, nothing changed).
"""

from __future__ import annotations

import cbor2

try:  # the node always has it; importing it is optional for a plug-in
    from statemachines.base import BadCommand
except ImportError:  # pragma: no cover
    class BadCommand(ValueError):
        pass

__all__ = ["Ledger", "InsufficientFunds"]


class InsufficientFunds(Exception):
    pass


class Ledger:
    name = "ledger"
    ops = ("deposit", "withdraw")

    def __init__(self) -> None:
        self.balances: dict[str, int] = {}

    @staticmethod
    def _fields(command: dict) -> tuple[str, int]:
        account, amount = command.get("account"), command.get("amount")
        if not isinstance(account, str) or not account:
            raise BadCommand('"account" must be a non-empty string')
        if type(amount) is not int or amount <= 0:
            raise BadCommand('"amount" must be a positive integer')
        return account, amount

    def apply(self, index: int, command: dict) -> dict:
        account, amount = self._fields(command)
        balance = self.balances.get(account, 0)
        if command["op"] == "deposit":
            balance += amount
        elif amount > balance:
            raise InsufficientFunds(f"{account} has {balance}, cannot withdraw {amount}")
        else:
            balance -= amount
        self.balances[account] = balance
        return {"account": account, "balance": balance}

    def query(self, request: dict) -> dict:
        account = request.get("account") if isinstance(request, dict) else None
        if not isinstance(account, str) or not account:
            raise BadCommand('a ledger read is {"account": name}')
        return {"account": account, "balance": self.balances.get(account, 0)}

    def snapshot(self) -> bytes:
        return cbor2.dumps(sorted(self.balances.items()))

    def restore(self, data: bytes) -> None:
        self.balances = dict(cbor2.loads(data)) if data else {}
