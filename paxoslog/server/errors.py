"""``ApiError``: a client-visible failure with its HTTP status and JSON error code.

Codes: 400 ``bad_request`` (and ``stale_sequence``), 401 ``unauthenticated`` (no or a bad
bearer token; with ``WWW-Authenticate``), 403 ``forbidden`` (the token's role is too low, a
client id that is not the token's, a refused Origin or Host), 404 ``not_found``, 405
``method_not_allowed``, 409 ``conflict`` (a membership request that contradicts the
membership), 410 ``removed`` (this node was removed from the cluster), 413 ``too_large``,
431 ``headers_too_large``, 503 ``unavailable``/``not_leader``/``busy`` (safe to retry; carries
Retry-After), 504 ``outcome_unknown`` (a write may still commit: retry with the same
client_id and sequence).
"""

from __future__ import annotations

__all__ = ["ApiError", "bad_request", "unavailable"]


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, *, retry_after: int | None = None,
                 extra: dict | None = None, headers: tuple = ()) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after
        self.extra = extra or {}
        self.headers = headers          # extra response headers: ((name, value), ...)

    def body(self) -> dict:
        body = {"error": self.code, "message": self.message}
        body.update(self.extra)
        return body

    @classmethod
    def from_body(cls, status: int, body: object) -> "ApiError":
        """Rebuild an error relayed from another node (a forwarded request)."""
        if not isinstance(body, dict):
            return cls(status, "error", f"status {status}")
        extra = {k: v for k, v in body.items() if k not in ("error", "message")}
        return cls(status, str(body.get("error", "error")), str(body.get("message", "")),
                   retry_after=1 if status == 503 else None, extra=extra)


def bad_request(message: str) -> ApiError:
    return ApiError(400, "bad_request", message)


def unavailable(message: str, code: str = "unavailable", **extra) -> ApiError:
    return ApiError(503, code, message, retry_after=1, extra=extra)
