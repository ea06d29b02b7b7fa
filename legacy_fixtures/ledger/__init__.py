"""A 1990s-style TCP line-protocol account server (see README.md in this folder).

Run it with ``python -m legacy_fixtures.ledger --port 7000``.
"""

from legacy_fixtures.ledger.server import main

__all__ = ["main"]
