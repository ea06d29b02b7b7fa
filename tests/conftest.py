from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import Ledger, Sidecar, start_ledger


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    fx = start_ledger(tmp_path)
    yield fx
    fx.stop()


@pytest.fixture
def sidecars(tmp_path: Path) -> Iterator[Any]:
    """Factory: `sidecars(config_dict, single_process=False)`; all are stopped at teardown."""
    started: list[Sidecar] = []

    def make(config: dict[str, Any], single_process: bool = False, wait_ready: bool = True,
             env: dict[str, str] | None = None) -> Sidecar:
        d = tmp_path / f"sc{len(started)}"
        d.mkdir()
        sc = Sidecar(d, config, single_process=single_process, extra_env=env or {})
        started.append(sc)
        return sc.start(wait_ready=wait_ready)

    yield make
    for sc in started:
        try:
            sc.stop()
        except Exception:  # noqa: BLE001
            pass
