"""Which endpoint gets the next try (RFC 2782 priority groups, weighted random).

Kept free of I/O and of breaker objects: the caller says which endpoints are open, so the
rule "never pick an open endpoint while a closed one exists" can be checked exhaustively.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Endpoint:
    host: str
    port: int
    priority: int = 0
    weight: int = 1
    name: str = field(default="", compare=False)
    """The name it was found under (SRV target, `dns:` host, static host), for `host_header`."""
    key: str = field(init=False, repr=False, compare=False)
    """Identity across refreshes (a changed weight keeps the endpoint's breaker); built once,
    as selection, breakers and the upstream client read it on every try."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", f"{self.host}:{self.port}")

    @property
    def authority(self) -> bytes:
        """`Host` for `host_header: upstream`: name and port (the port omitted when 80)."""
        name = self.name or self.host
        if ":" in name:
            name = f"[{name}]"
        return (name if self.port == 80 else f"{name}:{self.port}").encode("ascii", "replace")


def choose(
    endpoints: Sequence[Endpoint],
    is_open: Callable[[Endpoint], bool],
    rng: random.Random,
    tried: Collection[str] = (),
) -> Endpoint | None:
    """Pick one endpoint, or None when every endpoint is open (or there are none).

    Open endpoints are skipped first, then endpoints already tried in this call are avoided
    when another closed one exists in any group (a retry goes elsewhere, even to a lower
    priority), then the lowest priority among what remains wins. Inside that group the choice
    is proportional to weight; weight-0 endpoints are picked only when the group has nothing
    else (RFC 2782 gives them "a very small chance"; we make it none while others exist).
    """
    closed = [e for e in endpoints if not is_open(e)]
    if not closed:
        return None
    if tried:
        fresh = [e for e in closed if e.key not in tried]
        if fresh:
            closed = fresh
    best = min(e.priority for e in closed)
    group = [e for e in closed if e.priority == best]
    weighted = [e for e in group if e.weight > 0]
    if not weighted:
        return group[rng.randrange(len(group))]
    total = sum(e.weight for e in weighted)
    pick = rng.random() * total
    for e in weighted:
        pick -= e.weight
        if pick < 0:
            return e
    return weighted[-1]  # float rounding at the very top of the range
