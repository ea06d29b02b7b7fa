"""A process backend's stderr goes the way of the legacy app's log files: `legacy_log` lines.

One format for the platform's log collector: each stderr line of each child is one JSON object
with `event: "legacy_log"`, `source` = the backend, `log.fields`, hostname and `child_pid`,
counted in `adaptercar_companion_log_lines_total{source, outcome}`; the same lines still feed
the `stderr` rules of the call in progress.
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.harness import ROOT, Sidecar, until

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX children")

MAPPING = """\
service: ratequote.v1.RateQuote
backend: ratequote
methods:
  Quote:
    idempotent: true
    request: "{product:<10}{quantity:08d}{region:<4}"
    response:
      - stderr: 'fatal: (?P<why>.*)'
        error: {code: FAILED_PRECONDITION, message: "{why}"}
      - match: '^OK (?P<unit>\\d{12})(?P<total>\\d{14})(?P<currency>[A-Z]{3})(?P<region>\\S+)\\s*$'
        fields: {unit_price_cents: "{unit}", total_cents: "{total}", currency: "{currency}", region: "{region}"}
"""




def _config(tmp: Path) -> dict[str, Any]:
    (tmp / "noisy.yaml").write_text(MAPPING)
    return {
        "grpc": {}, "http": {}, "admin": {},
        "protos": [str(ROOT / "protos")],
        "mappings": [str(tmp / "noisy.yaml")],
        "log": {"level": "info", "fields": {"service": "test", "env": "ci"}},
        "backends": {"ratequote": {"process": {
            "command": [sys.executable, "-m", "legacy_fixtures.ratequote", "--stderr-noise", "--crash-on", "BOOM"],
            "cwd": str(ROOT), "framing": {"delimiter": "\n"}, "pool": {"size": 1}, "timeout": "5s",
            "env": {"PYTHONPATH": str(ROOT)},
        }}},
        "shutdown": {"drain_timeout": "2s"},
    }


def _stderr_lines(sc: Sidecar) -> list[dict[str, Any]]:
    return [r for r in sc.log_records() if r.get("event") == "legacy_log" and r.get("source") == "ratequote"]


@pytest.mark.parametrize("single_process", [True, False], ids=["single", "supervised"])
def test_stderr_lines_are_legacy_log_lines_and_still_feed_stderr_rules(
        sidecars: Any, tmp_path: Path, single_process: bool) -> None:
    sc: Sidecar = sidecars(_config(tmp_path), single_process=single_process)
    client = sc.grpc_client()
    for product in ("WIDGET", "GADGET", "SPROCKET"):
        assert client.call("ratequote.v1.RateQuote.Quote", product=product, quantity=1, region="EU").currency == "EUR"
    # a stderr line that fits the call's rule ends it, and is logged like the others
    with pytest.raises(grpc.RpcError) as err:
        client.call("ratequote.v1.RateQuote.Quote", product="BOOM", quantity=1, region="EU")
    assert (err.value.code(), err.value.details()) == (grpc.StatusCode.FAILED_PRECONDITION,
                                                        "rate table corrupt at BOOM")
    lines = until(lambda: (r := _stderr_lines(sc)) and len(r) >= 5 and r, what="stderr lines logged")
    assert [r["msg"] for r in lines[:5]] == ["ratequote: rating WIDGET", "ratequote: rating GADGET",
                                             "ratequote: rating SPROCKET", "ratequote: rating BOOM",
                                             "ratequote: fatal: rate table corrupt at BOOM"]
    for r in lines:
        assert r["level"] == "info" and r["backend"] == "ratequote" and r["stream"] == "stderr"
        assert (r["service"], r["env"], r["hostname"]) == ("test", "ci", socket.gethostname())
        assert isinstance(r["child_pid"], int) and r["child_pid"] != r["pid"]
    assert not [r for r in sc.log_records() if r.get("event") == "legacy_stderr"]
    until(lambda: sc.metric_value("adaptercar_companion_log_lines_total", source="ratequote",
                                   outcome="raw") >= 5, what="lines counted")
