"""Each process imports only what its role and the configuration need: idle memory is
counted per process (issue 7: ≤ 120 MiB PSS for the supervisor and its workers), and lxml,
grpc, zeep or pyOpenSSL loaded where nothing uses them cost megabytes in every copy.

Two views, so a regression shows whichever way it comes in: the modules a worker has once
its service tree is built (pure-Python packages too), and the shared objects mapped into the
real processes of a running sidecar (/proc/<pid>/maps).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from .harness import ROOT, demo_like_config, env_with_root

KV_CONFIG = ROOT / "benchmarks" / "kv" / "adaptercar.yaml"

# What a config with one line backend, both fronts, no SOAP, no TLS, no auth, no ambassador
# and no companion must not load, in any role.
NEVER = ("lxml", "zeep", "OpenSSL", "jwt", "pybreaker", "dns")

# A worker as runtime/worker.py starts it, up to its built service tree (not started).
WORKER = """
import json, os, sys
from adaptercar.tls import forbid_openssl
forbid_openssl()
from adaptercar.runtime import app, reactor
loop = reactor.install()
rt = app.Runtime(sys.argv[1], [sys.argv[2]], loop)
rt.service_tree()
print(json.dumps(sorted({m.split('.')[0] for m, v in sys.modules.items() if v is not None})))
"""


def _modules(role: str) -> set[str]:
    p = subprocess.run([sys.executable, "-c", WORKER, str(KV_CONFIG), role], capture_output=True, timeout=60,
                       cwd=ROOT, env=env_with_root({"BENCH_MEMCACHED_PORT": "11211"}))
    assert p.returncode == 0, p.stderr.decode(errors="replace")[-2000:]
    return set(json.loads(p.stdout.decode().strip().splitlines()[-1]))


@pytest.mark.parametrize("role", ["http", "grpc"])
def test_a_worker_imports_only_what_its_role_and_config_need(role: str) -> None:
    mods = _modules(role)
    assert "twisted" in mods and "google" in mods  # the probe did import the worker
    assert not mods & set(NEVER), f"{role} worker imports {sorted(mods & set(NEVER))}"
    if role == "http":
        assert "grpc" not in mods, "the JSON worker imports grpc"
    else:
        assert "grpc" in mods


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        out += [int(x) for x in text]
    return out


def _shared_objects(pid: int) -> set[str]:
    return {line.rsplit("/", 1)[-1] for line in Path(f"/proc/{pid}/maps").read_text().splitlines() if ".so" in line}


def _role(pid: int) -> str:
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    return argv[argv.index(b"--role") + 1].decode() if b"--role" in argv else "?"


def test_running_processes_map_no_lxml_and_grpc_only_in_the_grpc_worker(ledger: Any, sidecars: Any) -> None:
    sc = sidecars(demo_like_config(ledger.address))
    assert sc.proc is not None
    status, _, _ = sc.http("GET", "/v1/accounts/ACC-1")
    assert status in (200, 404)
    procs = {"supervisor": sc.proc.pid, **{_role(c): c for c in _children(sc.proc.pid)}}
    assert {"grpc", "http"} <= set(procs), procs
    for role, pid in procs.items():
        sos = _shared_objects(pid)
        assert not any(s.startswith("etree.") for s in sos), f"{role} maps lxml"
        assert not any(s.startswith("_openssl.") for s in sos), f"{role} maps pyOpenSSL's binding"
        has_grpc = any(s.startswith("cygrpc.") for s in sos)
        assert has_grpc == (role == "grpc"), f"{role}: grpc mapped = {has_grpc}"
