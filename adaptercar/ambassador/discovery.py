"""What a route currently believes its endpoints are, and when to ask again.

Sans-IO: the resolver shell feeds answers and failures in with the clock reading; this model
decides the live set (stale-if-error, empty answers kept out for one more TTL) and the next
refresh time (TTL clamped to [min_ttl, max_ttl]).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from .selection import Endpoint


def clamp_ttl(ttl: float, min_ttl: float, max_ttl: float) -> float:
    return max(min_ttl, min(max_ttl, ttl))


@dataclass
class Discovery:
    min_ttl: float = 1.0
    max_ttl: float = 60.0
    endpoints: tuple[Endpoint, ...] = ()
    last_refresh: float | None = None
    """Wall/monotonic reading of the last successful (non-empty) answer."""
    last_outcome: str = "pending"
    _empty_since: float | None = field(default=None, repr=False)
    _ttl: float = 0.0
    _good_ttl: float = 0.0
    """The clamped TTL of the last good answer: how long an empty answer is held back."""

    @classmethod
    def static(cls, endpoints: Sequence[Endpoint]) -> Discovery:
        return cls(endpoints=tuple(endpoints), last_outcome="static")

    def answer(self, endpoints: Sequence[Endpoint], ttl: float, now: float) -> str:
        """Take a resolver answer; returns the outcome label for metrics. Next delay: `ttl_next`.

        An empty answer (or NXDOMAIN) after a good one is held back for one more TTL of the
        good answer, so a DNS glitch during a redeploy does not black-hole the route at once.
        Meanwhile the name is asked again every (clamped) TTL of the empty answer.
        """
        self._ttl = clamp_ttl(ttl, self.min_ttl, self.max_ttl)
        if endpoints:
            self._good_ttl = self._ttl
            self.endpoints = tuple(endpoints)
            self.last_refresh = now
            self._empty_since = None
            self.last_outcome = "ok"
            return "ok"
        if not self.endpoints:
            self.last_outcome = "empty"
            return "empty"
        if self._empty_since is None:
            self._empty_since = now
        if now - self._empty_since >= self._good_ttl:
            self.endpoints = ()
            self._empty_since = None
            self.last_outcome = "empty"
            return "empty"
        self.last_outcome = "empty-held"
        return "empty-held"

    def failure(self, now: float) -> str:
        """The resolver failed: keep the last good set (stale-if-error), retry after min_ttl."""
        self._ttl = self.min_ttl
        self.last_outcome = "error"
        return "error"

    @property
    def ttl_next(self) -> float:
        return self._ttl if self._ttl > 0 else self.min_ttl
