"""`adaptercar demo --check` shows and checks the companion duties: the ledger's STATS as
gauges on /metrics, the ledger's own log file as `legacy_log` lines, and confwatch's config
rendered from examples/demo/values/ and reloaded by the fixture on SIGHUP."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.harness import ROOT, env_with_root


def test_demo_check_covers_the_companion_duties(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "adaptercar.cli", "demo", "--check"], capture_output=True,
                       text=True, timeout=120, cwd=ROOT, env=env_with_root({"ADAPTERCAR_DEMO_LOGS": str(tmp_path)}))
    assert r.returncode == 0, r.stdout + r.stderr
    companion = [line for line in r.stdout.splitlines() if "companion" in line]
    assert len(companion) == 3 and all(line.startswith("ok") for line in companion), companion
    status = json.loads((tmp_path / "confwatch.status.json").read_text())
    assert status["hups"] == 1 and status["generation"] == 1, status  # one render, one SIGHUP
    assert (tmp_path / "confwatch.conf").read_text().count("greeting = hello") == 1
    assert "INFO STATS -> accounts=3" in (tmp_path / "ledger-app.log").read_text()
