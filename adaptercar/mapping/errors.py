"""The error vocabulary shared by every front and backend.

gRPC status codes are the lingua franca: backends raise `CallError` with a code, the gRPC
front passes it through, the JSON front maps it to an HTTP status with the google.rpc table
(the same one grpc-gateway uses) so callers of either front see the same failure.
This module imports neither grpc nor twisted so the mapping core stays sans-IO.
"""

from __future__ import annotations

import enum


class Code(enum.IntEnum):
    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


HTTP_STATUS: dict[Code, int] = {
    Code.OK: 200,
    Code.CANCELLED: 499,
    Code.UNKNOWN: 500,
    Code.INVALID_ARGUMENT: 400,
    Code.DEADLINE_EXCEEDED: 504,
    Code.NOT_FOUND: 404,
    Code.ALREADY_EXISTS: 409,
    Code.PERMISSION_DENIED: 403,
    Code.RESOURCE_EXHAUSTED: 429,
    Code.FAILED_PRECONDITION: 400,
    Code.ABORTED: 409,
    Code.OUT_OF_RANGE: 400,
    Code.UNIMPLEMENTED: 501,
    Code.INTERNAL: 500,
    Code.UNAVAILABLE: 503,
    Code.DATA_LOSS: 500,
    Code.UNAUTHENTICATED: 401,
}

#: Legacy replies can be huge or binary; error messages quote them, but bounded.
MAX_QUOTED = 200


def quote_raw(text: str | bytes, limit: int = MAX_QUOTED) -> str:
    """Quote raw legacy output for an error message, truncated so one bad reply cannot
    blow up a log line or a response."""
    r = repr(text)
    if len(r) > limit:
        return r[:limit] + f"... ({len(text)} chars)"
    return r


class CallError(Exception):
    """A call failed with a gRPC status; raised anywhere between front and backend.

    `reusable` is False when the failure leaves the backend connection in an unknown state
    (unmatched reply, bound exceeded, framing error): the shell must close it so a late or
    extra reply can never reach the next caller.
    """

    def __init__(self, code: Code, message: str, *, reusable: bool = True) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.reusable = reusable

    @property
    def http_status(self) -> int:
        return HTTP_STATUS[self.code]

    def __repr__(self) -> str:
        return f"CallError({self.code.name}, {self.message!r})"
