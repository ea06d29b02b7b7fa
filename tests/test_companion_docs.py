"""docs/companion.md, executed: its included files, key tables, the example JSON line and the tour.

The tour's cast is the page's own `start: companion` block (values, the ledger with `--log`,
confwatch, the sidecar), run with documented ports and `/tmp/legacy` swapped for free ports and
a temporary folder in each command, and swapped back in the output. A command with expected
output is retried for a few seconds: stats, tails and renders happen on their own schedule.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import ROOT, env_with_root, free_port
from tests.test_docs import (
    _anchors,
    _documented_default,
    _read,
    assert_output,
    blocks,
    code,
    included_files,
    marked,
    table_rows,
)

DOC = ROOT / "docs" / "companion.md"
EXAMPLES = ROOT / "docs" / "companion-examples"
BLOCKS = blocks(DOC)
PORTS = ("7000", "8080", "9901")
DIR = "/tmp/legacy"






# --- static checks ----------------------------------------------------------------------------

def test_included_blocks_equal_their_files_and_every_example_is_shown() -> None:
    assert included_files(BLOCKS) == {p for p in EXAMPLES.rglob("*") if p.is_file()}


def test_every_console_block_is_run_and_links_resolve() -> None:
    for block in BLOCKS:
        if block.lang == "console":
            assert block.marker == "run: companion", block.where
    text = re.sub(r"```.*?```", "", DOC.read_text(encoding="utf-8"), flags=re.S)
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        path_part, _, anchor = target.partition("#")
        path = (DOC.parent / path_part).resolve() if path_part else DOC
        assert path.exists(), f"link to missing {target}"
        assert not anchor or anchor in _anchors(path), f"no anchor {target}"


def test_key_tables_match_the_schema() -> None:
    from adaptercar.config import schema as s

    models = {"companion_log": s.CompanionLog, "companion_stats": s.CompanionStats,
              "companion_config": s.CompanionConfig, "on_change": s.OnChange}
    seen = set()
    for n, line in enumerate(_read(DOC)):
        m = re.fullmatch(r"<!-- keys: (\w+) -->", line)
        if m is None:
            continue
        model = models[m.group(1)]
        names = {f.alias or k: k for k, f in model.model_fields.items()}  # `from` is `from_`
        documented = set()
        for row in table_rows(_read(DOC), n):
            key = code(row[0])
            documented.add(key)
            try:
                _documented_default(model, names[key], row[1], set())
            except (AssertionError, KeyError) as exc:
                raise AssertionError(f"{DOC.name}:{n + 1}: {exc}") from exc
        assert documented == set(names), f"{DOC.name}:{n + 1}"
        seen.add(m.group(1))
    assert seen == set(models)


def test_the_example_config_passes_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from adaptercar.cli import main

    assert main(["check", "-c", str(EXAMPLES / "adaptercar.yaml")]) == 0, capsys.readouterr().err


# --- the tour -----------------------------------------------------------------------------------

class Swap:
    def __init__(self, ports: dict[str, int], folder: Path) -> None:
        self.ports = ports
        self.folder = str(folder)

    def substitute(self, text: str) -> str:
        text = re.sub(r"(localhost:|127\.0\.0\.1:|--port )(\d+)(?!\d)",
                      lambda m: m.group(1) + str(self.ports.get(m.group(2), m.group(2))), text)
        return text.replace(DIR, self.folder)

    def restore(self, text: str) -> str:
        back = {str(v): k for k, v in self.ports.items()}
        text = re.sub(r"(?<=127\.0\.0\.1:)(\d+)(?!\d)", lambda m: back.get(m.group(1), m.group(1)), text)
        return text.replace(self.folder, DIR)


def _ready(admin: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    end = time.monotonic() + 30
    while time.monotonic() < end:
        assert proc.poll() is None, log.read_text()
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{admin}/readyz", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"the tour's sidecar is not ready:\n{log.read_text()}")


@pytest.fixture
def cast(tmp_path: Path) -> Iterator[Swap]:
    swap = Swap({p: free_port() for p in PORTS}, tmp_path)
    [block] = marked("start", BLOCKS)
    procs: list[subprocess.Popen[bytes]] = []
    env = env_with_root({"LEGACY_DIR": str(tmp_path), "HTTP_PORT": str(swap.ports["8080"]),
                         "ADMIN_PORT": str(swap.ports["9901"]),
                         "LEDGER_ADDR": f"127.0.0.1:{swap.ports['7000']}"})
    try:
        for line in block.text.splitlines():
            line = swap.substitute(line)
            if not line.endswith("&"):
                subprocess.run(["bash", "-c", line], check=True, cwd=ROOT)
                continue
            argv = shlex.split(line[:-1])
            out: Any = subprocess.PIPE
            if ">" in argv:
                out = open(argv[argv.index(">") + 1], "wb")  # noqa: SIM115 - the child's stdout
                argv = argv[:argv.index(">")]
            if argv[0] == ".venv/bin/python":
                argv = [sys.executable, *argv[1:]]
            elif argv[0] == ".venv/bin/adaptercar":
                argv = [sys.executable, "-m", "adaptercar.cli", *argv[1:]]
            proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out, start_new_session=True)
            procs.append(proc)
            if out is subprocess.PIPE:  # a fixture: its first line says it is up
                assert proc.stdout is not None and proc.stdout.readline()
            else:
                _ready(swap.ports["9901"], proc, Path(out.name))
        yield swap
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in reversed(procs):
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _run(command: str, swap: Swap) -> str:
    done = subprocess.run(["bash", "-c", swap.substitute(command)], capture_output=True, text=True,
                          timeout=30, cwd=ROOT, env=env_with_root())
    out = swap.restore(done.stdout + done.stderr)
    if "/metrics" in command:  # no set order of samples
        out = "".join(line + "\n" for line in sorted(out.splitlines()))
    return out


def test_the_tour(cast: Swap) -> None:
    transcripts = marked("run", BLOCKS)
    assert len(transcripts) == 4
    for block in transcripts:
        commands: list[tuple[str, list[str]]] = []
        for line in block.text.splitlines():
            if line.startswith("$ "):
                commands.append((line[2:], []))
            else:
                commands[-1][1].append(line)
        for command, output in commands:
            expected = "".join(line + "\n" for line in output)
            if "/metrics" in command:
                expected = "".join(line + "\n" for line in sorted(output))
            where = f"{block.where}: $ {command}"
            end = time.monotonic() + (8 if expected else 0)  # never repeat a command with effects
            while True:
                actual = _run(command, cast)
                try:
                    assert_output(expected, actual, where)
                    break
                except AssertionError:
                    if time.monotonic() > end:
                        raise
                    time.sleep(0.25)
    # the documented line is a real one: same keys, same stable values
    [example_block] = marked("legacy-log", BLOCKS)
    example = json.loads(example_block.text)
    log = Path(cast.folder) / "sidecar.log"
    real = [r for r in map(json.loads, log.read_text().splitlines())
            if r.get("event") == "legacy_log" and r.get("msg") == example["msg"]]
    assert real, f"no such line in {log}"
    assert list(real[0]) == list(example), real[0]
    for key in ("level", "event", "service", "role", "source", "msg"):
        assert real[0][key] == example[key], key
