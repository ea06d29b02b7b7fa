"""`adaptercar demo --check` starts the crm SOAP fixture with the others and calls it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.harness import ROOT, env_with_root


def test_demo_check_calls_the_soap_service(tmp_path: Path) -> None:
    res = subprocess.run([sys.executable, "-m", "adaptercar.cli", "demo", "--check"],
                         capture_output=True, text=True, cwd=ROOT, timeout=90,
                         env={**env_with_root(), "ADAPTERCAR_DEMO_LOGS": str(tmp_path)})
    assert res.returncode == 0, res.stdout + res.stderr
    lines = res.stdout.splitlines()
    soap = [line for line in lines if "SOAP" in line]
    assert len(soap) == 4 and all(line.startswith("ok") for line in soap), soap
    assert "crm on :" in lines[0]
    assert lines[-1] == "all demo calls answered correctly"
    assert (tmp_path / "crm.log").exists()
