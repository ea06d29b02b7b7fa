"""Entry point for ``python -m legacy_fixtures.crm``."""

from legacy_fixtures.crm.server import main

raise SystemExit(main())
