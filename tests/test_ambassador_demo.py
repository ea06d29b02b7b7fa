"""`adaptercar demo --check` end to end, including the call through its ambassador route."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.harness import ROOT, env_with_root


def test_demo_check_calls_through_the_ambassador_route(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "adaptercar.cli", "demo", "--check"], cwd=ROOT,
                       env=env_with_root({"ADAPTERCAR_DEMO_LOGS": str(tmp_path)}),
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert 'ok    ambassador GET /rates/EUR (route fxrates -> fx-rates): [200, "fx-rates"]' in lines
    assert lines[-1] == "all demo calls answered correctly"
    assert not [line for line in lines if line.startswith("FAIL")]
