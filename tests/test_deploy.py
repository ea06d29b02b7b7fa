"""Deployment packaging, checked without Docker or a cluster (neither runs here).

The Dockerfile, the Kubernetes manifests and the compose file are only text until someone
deploys them, so these tests hold them to what can be verified offline: the manifests against
the Kubernetes OpenAPI schema (kubernetes-validate, strict: unknown fields fail), the configs
they carry through `adaptercar check`, the probe one-liners against a real HTTP server, and
every file, port, name and command they reference against the repository.
"""

from __future__ import annotations

import copy
import http.server
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from adaptercar.config.schema import Admin
from tests.harness import Sidecar, start_ledger

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "kubernetes"
COMPOSE = ROOT / "deploy" / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
VENV_BIN = Path(sys.executable).parent
ENTRYPOINT = ["adaptercar", "run", "-c", "/etc/adaptercar/adaptercar.yaml"]
# native sidecars (init containers with restartPolicy: Always) are on by default from 1.29
K8S_VERSIONS = ["1.29.0", kubernetes_validate.latest_version()]
URL = re.compile(r"http://([0-9.]+):(\d+)(/[a-z]+)")


# ---------------------------------------------------------------------------------- helpers


def manifests() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for f in sorted(K8S.glob("*.yaml")):
        docs.extend(d for d in yaml.safe_load_all(f.read_text()) if d)
    return docs


def by_kind(kind: str) -> dict[str, Any]:
    found = [d for d in manifests() if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind} in deploy/kubernetes, found {len(found)}"
    return found[0]


def sidecar(deployment: dict[str, Any]) -> dict[str, Any]:
    spec = deployment["spec"]["template"]["spec"]
    named = [c for c in spec.get("initContainers", []) if c["name"] == "adaptercar"]
    assert len(named) == 1, "adaptercar must be one init container (a native sidecar)"
    return named[0]


def adaptercar_check(config: Path, container_env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`adaptercar check` with the environment the container would give it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LEDGER_", "ENVIRONMENT"))}
    env.update(container_env, PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    return subprocess.run(
        [str(VENV_BIN / "adaptercar"), "check", "-c", str(config)],
        capture_output=True, text=True, timeout=60, env=env, cwd=config.parent,
    )


def port_of(listen: str) -> int:
    return int(listen.rsplit(":", 1)[1])


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        word, _, rest = full.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def instruction(name: str) -> list[str]:
    return [rest for word, rest in dockerfile_instructions() if word == name]


# ------------------------------------------------------------------- probe one-liners, live


class _Status(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self.send_response(self.server.status)  # type: ignore[attr-defined]
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def status_server() -> Iterator[http.server.ThreadingHTTPServer]:
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Status)
    srv.status = 200  # type: ignore[attr-defined]
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def probe_commands() -> dict[str, list[str]]:
    """Every health command we ship, by where it comes from."""
    hc = instruction("HEALTHCHECK")
    assert len(hc) == 1, "the Dockerfile needs exactly one HEALTHCHECK"
    cmd = json.loads(hc[0].split("CMD", 1)[1])
    side = sidecar(by_kind("Deployment"))
    return {
        "Dockerfile HEALTHCHECK": cmd,
        "livenessProbe": side["livenessProbe"]["exec"]["command"],
        "readinessProbe": side["readinessProbe"]["exec"]["command"],
    }


def test_probe_commands_pass_on_200_and_fail_on_503_or_refused(
    status_server: http.server.ThreadingHTTPServer,
) -> None:
    port = status_server.server_address[1]
    for where, cmd in probe_commands().items():
        assert cmd[0] == "python", f"{where}: the slim image has python, not curl"
        local = [sys.executable] + [URL.sub(rf"http://\1:{port}\3", a) for a in cmd[1:]]
        status_server.status = 200  # type: ignore[attr-defined]
        ok = subprocess.run(local, capture_output=True, timeout=30)
        assert ok.returncode == 0, (where, ok.stderr)
        status_server.status = 503  # type: ignore[attr-defined]
        bad = subprocess.run(local, capture_output=True, timeout=30)
        assert bad.returncode != 0, f"{where} passes on a 503"
    refused = [sys.executable, *[URL.sub(r"http://\1:1\3", a) for a in cmd[1:]]]
    assert subprocess.run(refused, capture_output=True, timeout=30).returncode != 0


def test_probes_hit_the_admin_endpoints_they_mean() -> None:
    cmds = probe_commands()
    admin = yaml.safe_load(by_kind("ConfigMap")["data"]["adaptercar.yaml"])["admin"]["listen"]
    default = Admin().listen
    expect = {
        "Dockerfile HEALTHCHECK": (default, "/healthz"),
        "livenessProbe": (admin, "/healthz"),
        "readinessProbe": (admin, "/readyz"),
    }
    for where, cmd in cmds.items():
        urls = [m for a in cmd for m in URL.findall(a)]
        assert len(urls) == 1, f"{where}: expected one admin URL in {cmd}"
        host, port, path = urls[0]
        listen, want_path = expect[where]
        assert f"{host}:{port}" == listen.replace("0.0.0.0", "127.0.0.1"), where
        assert path == want_path, where


# -------------------------------------------------------------------------------- Dockerfile


def test_dockerfile_is_multistage_slim_python_311() -> None:
    froms = instruction("FROM")
    assert len(froms) >= 2, "build the wheel in one stage, install it in another"
    for f in froms:
        assert f.split()[0] == "python:3.11-slim", f
    assert any(" AS " in f.upper() for f in froms[:-1])
    # the final stage copies only built artefacts from an earlier stage, not sources
    final = dockerfile_instructions()
    last_from = max(i for i, (w, _) in enumerate(final) if w == "FROM")
    final_copies = [rest for w, rest in final[last_from:] if w == "COPY"]
    assert final_copies and all(c.startswith("--from=") for c in final_copies), final_copies


def test_dockerfile_copy_sources_exist_and_are_not_dockerignored() -> None:
    allowed = [
        line[1:].rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    ]
    sources = []
    for rest in instruction("COPY"):
        args = shlex.split(rest)
        if any(a.startswith("--from=") for a in args):
            continue
        sources += [a for a in args[:-1] if not a.startswith("--")]
    assert sources
    for src in sources:
        assert (ROOT / src).exists(), f"COPY {src}: no such file in the build context"
        assert src.rstrip("/") in allowed, f"COPY {src}: excluded by .dockerignore"
    # pyproject's readme must be in the context or building the wheel fails
    readme = _pyproject()["project"]["readme"]
    assert readme in sources


def _pyproject() -> dict[str, Any]:
    import tomllib

    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_dockerfile_entrypoint_is_the_console_script_with_a_mounted_config() -> None:
    (entry,) = instruction("ENTRYPOINT")
    assert json.loads(entry) == ENTRYPOINT
    assert ENTRYPOINT[0] in _pyproject()["project"]["scripts"]
    helped = subprocess.run(
        [str(VENV_BIN / "adaptercar"), "run", "--help"], capture_output=True, text=True,
        timeout=30,
    )
    assert helped.returncode == 0 and "-c" in helped.stdout


def test_dockerfile_runs_as_a_numeric_non_root_user_matching_the_pod() -> None:
    users = instruction("USER")
    assert users, "the image must not run as root"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0") and user.isdigit(), users[-1]
    pod = by_kind("Deployment")["spec"]["template"]["spec"]["securityContext"]
    assert pod["runAsNonRoot"] is True and str(pod["runAsUser"]) == user


def test_dockerfile_exposes_the_default_ports() -> None:
    exposed = {int(p) for rest in instruction("EXPOSE") for p in rest.split()}
    assert exposed == {50051, 8080, port_of(Admin().listen)}


# ------------------------------------------------------------------------------- Kubernetes


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_manifest_is_valid_kubernetes(version: str) -> None:
    docs = manifests()
    assert {d["kind"] for d in docs} >= {"Deployment", "Service", "ConfigMap"}
    for d in docs:
        kubernetes_validate.validate(d, version, strict=True)


def test_the_validator_rejects_a_broken_manifest() -> None:
    """So a pass above means something."""
    bad = copy.deepcopy(by_kind("Deployment"))
    sidecar(bad)["restartPolicyy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSIONS[-1], strict=True)


def test_deployment_runs_adaptercar_as_a_native_sidecar_beside_the_legacy_app() -> None:
    dep = by_kind("Deployment")
    spec = dep["spec"]["template"]["spec"]
    side = sidecar(dep)
    assert side["restartPolicy"] == "Always"
    assert "command" not in side and "args" not in side, "use the image's ENTRYPOINT"
    (legacy,) = spec["containers"]
    assert legacy["command"][:3] == ["python", "-m", "legacy_fixtures.ledger"]
    assert (ROOT / "legacy_fixtures" / "ledger" / "__main__.py").exists()
    port = legacy["command"][legacy["command"].index("--port") + 1]
    env = {e["name"]: e for e in side["env"]}
    assert env["LEDGER_ADDR"]["value"] == f"127.0.0.1:{port}"
    # the legacy app's preStop pause, then adaptercar's drain (default 10 s) + the supervisor's
    # 5 s, must all fit in the pod's one grace period
    pause = int(legacy["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert spec["terminationGracePeriodSeconds"] > pause + 10 + 5
    assert dep["spec"]["selector"]["matchLabels"].items() <= (
        dep["spec"]["template"]["metadata"]["labels"].items()
    )


def test_deployment_service_configmap_and_secret_agree() -> None:
    dep, svc, cm = by_kind("Deployment"), by_kind("Service"), by_kind("ConfigMap")
    side = sidecar(dep)
    conf = yaml.safe_load(cm["data"]["adaptercar.yaml"])
    ports = {p["name"]: p["containerPort"] for p in side["ports"]}
    assert ports["grpc"] == port_of(conf["grpc"]["listen"])
    assert ports["http"] == port_of(conf["http"]["listen"])
    for front in ("grpc", "http"):
        assert conf[front]["listen"].startswith("0.0.0.0:"), "the Service must reach the fronts"
    assert {p["targetPort"] for p in svc["spec"]["ports"]} == {"grpc", "http"}
    assert svc["spec"]["selector"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()
    volumes = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in side["volumeMounts"]}
    config_vol = volumes[mounts["/etc/adaptercar"]]["configMap"]
    assert config_vol["name"] == cm["metadata"]["name"]
    assert {i["key"] for i in config_vol["items"]} == set(cm["data"])
    secrets = {d["metadata"]["name"]: d for d in manifests() if d["kind"] == "Secret"}
    for e in side["env"]:
        ref = e.get("valueFrom", {}).get("secretKeyRef")
        if ref:
            assert ref["key"] in secrets[ref["name"]]["stringData"], ref


def _kubelet_layout(tmp_path: Path) -> Path:
    """The ConfigMap volume as the kubelet writes it: files in a timestamped folder, `..data`
    a symlink to it, each top-level entry a symlink through `..data` (an update swaps
    `..data`)."""
    dep, cm = by_kind("Deployment"), by_kind("ConfigMap")
    vol = next(v for v in dep["spec"]["template"]["spec"]["volumes"] if "configMap" in v)
    mount = tmp_path / "etc-adaptercar"
    stamp = mount / "..2026_12_04_10_00_00.000000001"
    for item in vol["configMap"]["items"]:
        target = stamp / item["path"]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(cm["data"][item["key"]])
    (mount / "..data").symlink_to(stamp.name)
    for top in stamp.iterdir():
        (mount / top.name).symlink_to(Path("..data") / top.name)
    return mount / "adaptercar.yaml"


def _pod_env() -> dict[str, str]:
    secrets = {d["metadata"]["name"]: d for d in manifests() if d["kind"] == "Secret"}
    env = {}
    for e in sidecar(by_kind("Deployment"))["env"]:
        ref = e.get("valueFrom", {}).get("secretKeyRef")
        env[e["name"]] = secrets[ref["name"]]["stringData"][ref["key"]] if ref else e["value"]
    return env


def test_configmap_config_passes_adaptercar_check(tmp_path: Path) -> None:
    result = adaptercar_check(_kubelet_layout(tmp_path), _pod_env())
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK (" in result.stdout and "0 methods" not in result.stdout, result.stdout


def test_adaptercar_check_fails_on_a_broken_configmap(tmp_path: Path) -> None:
    """So a pass above means something: a proto missing from the volume is reported."""
    config = _kubelet_layout(tmp_path)
    shutil.rmtree(config.parent / "..data" / "protos")
    assert adaptercar_check(config, _pod_env()).returncode == 1


def _swap_configmap(mount: Path, change: dict[str, str]) -> None:
    """What the kubelet does on a ConfigMap update: write a new timestamped folder, point
    `..data` at it with one atomic rename, delete the old folder."""
    old = mount / os.readlink(mount / "..data")
    new = mount / "..2026_12_04_10_05_00.000000002"
    shutil.copytree(old, new)
    for rel, text in change.items():
        (new / rel).write_text(text)
    (mount / "..data_tmp").symlink_to(new.name)
    os.replace(mount / "..data_tmp", mount / "..data")
    shutil.rmtree(old)


def test_pod_config_serves_and_reloads_after_a_configmap_swap(tmp_path: Path) -> None:
    """The ConfigMap volume, run for real (fronts and admin moved to free loopback ports), then
    updated the kubelet's way and reloaded with POST /reload: the new mapping answers."""
    config = _kubelet_layout(tmp_path)
    conf = yaml.safe_load(config.read_text())
    for role in ("grpc", "http", "admin"):
        conf[role].pop("listen")
    ledger = start_ledger(tmp_path, journal=False)
    side = Sidecar(config.parent, conf, extra_env={**_pod_env(), "LEDGER_ADDR": ledger.address})
    try:
        side.start(timeout=60)
        status, body, _ = side.http("GET", "/v1/accounts/1001/balance")
        assert (status, body["currency"]) == (200, "EUR"), body
        mapping = yaml.safe_load((config.parent / "mappings" / "ledger.yaml").read_text())
        get_balance = mapping["methods"]["GetBalance"]
        get_balance["response"][0]["fields"]["currency"] = "X{currency}"
        get_balance["examples"][0]["expect"]["currency"] = "XEUR"
        _swap_configmap(config.parent, {"mappings/ledger.yaml": yaml.safe_dump(mapping)})
        status, reply = side.admin("/reload", method="POST")
        assert (status, reply) == (200, {"ok": True, "errors": []}), reply
        status, body, _ = side.http("GET", "/v1/accounts/1001/balance")
        assert (status, body["currency"]) == (200, "XEUR"), body
    finally:
        try:
            side.stop()
        finally:
            ledger.stop()


# ----------------------------------------------------------------------------------- compose


def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict) and data.get("services"), "compose file has no services"
    return data


def test_compose_builds_from_the_dockerfile_and_mounts_what_exists() -> None:
    data = compose()
    assert set(data["services"]) >= {"ledger", "adaptercar"}
    for name, svc in data["services"].items():
        build = svc["build"]
        context = (COMPOSE.parent / build["context"]).resolve()
        assert context == ROOT, name
        assert (context / build.get("dockerfile", "Dockerfile")).is_file(), name
        for vol in svc.get("volumes", []):
            src = vol.split(":")[0]
            if src.startswith((".", "/")):
                assert (COMPOSE.parent / src).exists(), f"{name}: volume source {src} missing"
        for cfg in svc.get("configs", []):
            assert cfg["source"] in data["configs"], cfg
    ledger = data["services"]["ledger"]["entrypoint"]
    assert ledger[:3] == ["python", "-m", "legacy_fixtures.ledger"]
    assert ledger[ledger.index("--host") + 1] == "0.0.0.0", "other containers must reach it"


def _compose_config(tmp_path: Path) -> Path:
    """The adaptercar container's /etc/adaptercar, built from the compose file."""
    data = compose()
    svc = data["services"]["adaptercar"]
    etc = tmp_path / "etc-adaptercar"
    etc.mkdir()
    for cfg in svc["configs"]:
        rel = Path(cfg["target"]).relative_to("/etc/adaptercar")
        # compose interpolates $VAR in the whole file: $$ is a literal $
        (etc / rel).write_text(data["configs"][cfg["source"]]["content"].replace("$$", "$"))
    for vol in svc["volumes"]:
        src, dst = vol.split(":")[:2]
        (etc / Path(dst).relative_to("/etc/adaptercar")).symlink_to((COMPOSE.parent / src).resolve())
    return etc / "adaptercar.yaml"


def test_compose_config_passes_adaptercar_check(tmp_path: Path) -> None:
    env = compose()["services"]["adaptercar"]["environment"]
    result = adaptercar_check(_compose_config(tmp_path), {k: str(v) for k, v in env.items()})
    assert result.returncode == 0, result.stdout + result.stderr
    conf = yaml.safe_load((tmp_path / "etc-adaptercar" / "adaptercar.yaml").read_text())
    assert set(conf["backends"]) == {"ledger", "ratequote"}


def test_compose_ports_and_addresses_match_its_config(tmp_path: Path) -> None:
    data = compose()
    svc = data["services"]["adaptercar"]
    conf = yaml.safe_load(_compose_config(tmp_path).read_text())
    published = {int(p.rsplit(":", 1)[1]) for p in svc["ports"]}
    assert published == {port_of(conf[k]["listen"]) for k in ("grpc", "http", "admin")}
    admin_pub = next(p for p in svc["ports"] if p.endswith(f":{port_of(conf['admin']['listen'])}"))
    assert admin_pub.startswith("127.0.0.1:"), "the admin port must not be published to all"
    host, port = svc["environment"]["LEDGER_ADDR"].split(":")
    assert host in data["services"]
    entry = data["services"][host]["entrypoint"]
    assert entry[entry.index("--port") + 1] == port
