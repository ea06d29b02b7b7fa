"""Entry point for ``python -m legacy_fixtures.ledger``."""

from legacy_fixtures.ledger.server import main

raise SystemExit(main())
