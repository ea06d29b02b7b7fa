"""docs/ambassador.md, executed: its included configs, tables and transcripts.

Kept apart from tests/test_docs.py because this page's transcripts need their own cast (two
HTTP upstreams and a sidecar with a route) and shell pipelines (`for`, `sort`, `uniq`) that the
shared runner does not run. Documented addresses (`localhost:15001`, `127.0.0.1:8001`, ...) are
swapped for free ports in each command and swapped back in the output, so the page shows the
ports a reader would use.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import ROOT, env_with_root, free_port
from tests.test_docs import (
    Block,
    Started,
    _anchors,
    _documented_default,
    _read,
    assert_output,
    blocks,
    code,
    included_files,
    marked,
    start_sidecar,
    table_rows,
)

DOC = ROOT / "docs" / "ambassador.md"
EXAMPLES = ROOT / "docs" / "ambassador-examples"
BLOCKS = blocks(DOC)
#: Documented ports: the route's listener, upstreams a and b, and the admin port.
PORTS = ("15001", "8001", "8002", "9901")




def _table(marker: str) -> list[list[str]]:
    """Rows of the table right after `<!-- marker -->`."""
    lines = _read(DOC)
    [n] = [i for i, line in enumerate(lines) if line == f"<!-- {marker} -->"]
    return table_rows(lines, n)


# --- static checks ----------------------------------------------------------------------------

def test_included_blocks_equal_their_files_and_every_example_is_shown() -> None:
    assert included_files(BLOCKS) == set(EXAMPLES.rglob("*.yaml"))


def test_every_console_block_is_run() -> None:
    for block in BLOCKS:
        if block.lang == "console":
            assert block.marker in ("run: ambassador", "run: check"), block.where


def test_links_and_anchors_resolve() -> None:
    text = re.sub(r"```.*?```", "", DOC.read_text(encoding="utf-8"), flags=re.S)
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        path_part, _, anchor = target.partition("#")
        path = (DOC.parent / path_part).resolve() if path_part else DOC
        assert path.exists(), f"link to missing {target}"
        assert not anchor or anchor in _anchors(path), f"no anchor {target}"


def _models() -> dict[str, Any]:
    from adaptercar.config import schema as s

    return {"route": s.Route, "upstream": s.Upstream, "resolver": s.Resolver, "retry": s.Retry,
            "backoff": s.Backoff, "budget": s.Budget, "circuit_breaker": s.CircuitBreaker}


def test_key_tables_match_the_schema() -> None:
    models = _models()
    lines = _read(DOC)
    seen = set()
    for n, line in enumerate(lines):
        m = re.fullmatch(r"<!-- keys: (\w+) -->", line)
        if m is None:
            continue
        name = m.group(1)
        model = models[name]
        documented = set()
        for row in _table(f"keys: {name}"):
            keys = [code(k.strip()) for k in row[0].split(",")]
            defaults = [d.strip() for d in row[1].split(",")] if len(keys) > 1 else [row[1]]
            assert len(defaults) == len(keys), f"{DOC.name}:{n + 1}: {row}"
            for key, default in zip(keys, defaults, strict=True):
                documented.add(key)
                try:
                    _documented_default(model, key, default, set())
                except (AssertionError, KeyError) as exc:
                    raise AssertionError(f"{DOC.name}:{n + 1}: {exc}") from exc
        fields = {f.alias or k for k, f in model.model_fields.items()}
        assert documented == fields, f"{DOC.name}:{n + 1}: documented {sorted(documented)}"
        seen.add(name)
    assert seen == set(models)


def test_metric_table_matches_the_exported_metrics() -> None:
    from adaptercar import metrics

    exported = {}
    for item in (metrics.ambassador_requests_total, metrics.ambassador_retries_total,
                 metrics.circuit_state, metrics.discovery_refreshes_total):
        name = item._name + ("_total" if item._type == "counter" else "")
        exported[name] = (item._type, set(item._labelnames))
    documented = {code(r[0]): (r[1], {code(x.strip()) for x in r[2].split(",")})
                  for r in _table("ambassador-metrics")}
    assert documented == exported


def test_failure_answers_match_the_proxy() -> None:
    """Every reason the HTTP proxy answers with is in the table, with its status, and back."""
    source = (ROOT / "adaptercar" / "ambassador" / "http_proxy.py").read_text(encoding="utf-8")
    in_code = set(re.findall(r"_fail\(request, (\d{3}), \"([a-z-]+)\"\)", source))
    in_code |= {("503", r) for r in re.findall(r"reason=\"([a-z-]+)\"", source)}
    in_code |= {("503", "upstream-unavailable"), ("503", "circuit-open"), ("503", "no-endpoints")}
    documented = {(code(r[0]), code(r[1])) for r in _table("failure-answers")}
    assert documented == in_code
    # the reasons route.pick gives, which reach `_fail` through a variable
    route_src = (ROOT / "adaptercar" / "ambassador" / "route.py").read_text(encoding="utf-8")
    assert '"no-endpoints"' in route_src and '"circuit-open"' in route_src


# --- transcripts ------------------------------------------------------------------------------

class Swap:
    """Documented `host:port` ↔ the real one; a port is never matched inside a longer one."""

    def __init__(self, real: dict[str, int]) -> None:
        self.real = real  # documented port → real port

    def substitute(self, command: str) -> str:
        return re.sub(r"(?<=localhost:|127\.0\.0\.1:)(\d+)(?!\d)",
                      lambda m: str(self.real.get(m.group(1), m.group(1))), command)

    def restore(self, output: str) -> str:
        back = {str(v): k for k, v in self.real.items()}
        return re.sub(r"(?<=127\.0\.0\.1:)(\d+)(?!\d)",
                      lambda m: back.get(m.group(1), m.group(1)), output)


def run_shell(command: str, swap: Swap | None) -> str:
    real = swap.substitute(command) if swap else command
    if real.startswith(".venv/bin/adaptercar "):  # the venv's entry point, through this python
        real = f"{shlex.quote(sys.executable)} -m adaptercar.cli " + real.split(" ", 1)[1]
    done = subprocess.run(["bash", "-c", real], capture_output=True, text=True, timeout=60,
                          cwd=ROOT, env=env_with_root())
    out = done.stdout + done.stderr
    return swap.restore(out) if swap else out


def _sorted_if_metrics(command: str, text: str) -> str:
    """Prometheus text has no set order of samples: metric transcripts compare as sets."""
    if "/metrics" not in command:
        return text
    return "".join(line + "\n" for line in sorted(text.splitlines()))


def run_transcript(block: Block, swap: Swap | None) -> None:
    commands: list[tuple[str, list[str]]] = []
    for line in block.text.splitlines():
        if line.startswith("$ "):
            commands.append((line[2:], []))
        else:
            assert commands, f"{block.where}: output before the first command"
            commands[-1][1].append(line)
    for command, output in commands:
        expected = _sorted_if_metrics(command, "".join(line + "\n" for line in output))
        where = f"{block.where}: $ {command}"
        if "localhost:9901" in command:  # the worker reports metrics and routes twice a second
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                try:
                    assert_output(expected, _sorted_if_metrics(command, run_shell(command, swap)), where)
                    break
                except AssertionError:
                    time.sleep(0.25)
        assert_output(expected, _sorted_if_metrics(command, run_shell(command, swap)), where)


def test_check_transcripts() -> None:
    transcripts = [b for b in BLOCKS if b.marker == "run: check"]
    assert transcripts
    for block in transcripts:
        run_transcript(block, None)


def test_example_configs_pass_check(capsys: pytest.CaptureFixture[str]) -> None:
    from adaptercar.cli import main

    for config in sorted(EXAMPLES.rglob("adaptercar.yaml")):
        assert main(["check", "-c", str(config)]) == 0, capsys.readouterr().err


@pytest.fixture
def cast(tmp_path: Path) -> Iterator[Swap]:
    """What the page's `start: ambassador` block starts: two upstreams and the sidecar."""
    [block] = marked("start", BLOCKS)
    commands = [[a for a in shlex.split(line) if a != "&"] for line in block.text.splitlines()]
    real = {port: free_port() for port in PORTS}
    procs: list[subprocess.Popen[bytes]] = []
    started: Started | None = None
    try:
        for argv in commands[:-1]:
            assert argv[:3] == [".venv/bin/python", "-m", "legacy_fixtures.upstreams.http_upstream"]
            port = argv[argv.index("--port") + 1]
            argv[argv.index("--port") + 1] = str(real[port])
            proc = subprocess.Popen([sys.executable, *argv[1:]], cwd=ROOT, env=env_with_root(),
                                    stdout=subprocess.PIPE, start_new_session=True)
            procs.append(proc)
            assert proc.stdout is not None
            assert proc.stdout.readline().decode().strip() == f"127.0.0.1:{real[port]}"
        argv = commands[-1]
        assert argv[:3] == [".venv/bin/adaptercar", "run", "-c"] and len(argv) == 4, argv
        env = {"PAYMENTS_PORT": str(real["15001"]), "PAYMENTS_A": f"127.0.0.1:{real['8001']}",
               "PAYMENTS_B": f"127.0.0.1:{real['8002']}"}
        target, started = start_sidecar(ROOT / argv[3], tmp_path, env, False)
        real["9901"] = target.ports["admin"]  # start_sidecar picks the admin port itself
        yield Swap(real)
    finally:
        if started is not None:
            started.stop()
        Started(procs).stop()


def test_ambassador_transcripts(cast: Swap) -> None:
    """The page's tour in document order: spread, retry on the other upstream, metrics,
    `/ambassador`, and the answers when everything fails."""
    transcripts = [b for b in BLOCKS if b.marker == "run: ambassador"]
    assert len(transcripts) >= 4
    for block in transcripts:
        run_transcript(block, cast)
