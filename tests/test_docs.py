"""The user documentation, executed.

Users copy what the README and docs/ show, so every example there is run here: included files
must equal the files they claim to be, every YAML snippet must load (and compile, when it is a
mapping), every example config must pass `adaptercar check`, key and metric tables must match
the schema and the exported metrics, and the console transcripts must produce the output they
show — against a real demo (ledger + sidecar), and against real memcached and redis-server when
those are installed, and against real `bc` and `factor` children, and against the crm SOAP
fixture. Markers in the markdown (HTML comments) say what each block is:

    <!-- include: PATH -->        the next fenced block is the file at PATH (then <!-- end include -->)
    <!-- run: demo|check|memcached|redis|bc|soap|crm -->   a console transcript: `$ command` lines and output
    <!-- start: soap|crm -->      a `sh` block of the commands that start what the next transcripts call
    <!-- generated: PATH -->      the next fenced block is the file import-wsdl wrote at PATH
    <!-- keys: NAME -->           a `| key | default | ... |` table of one config/mapping model
    <!-- templates: MESSAGE -->   a `| template | renders |` table
    <!-- xsd-types -->            import-wsdl's `| XML Schema | proto |` table
    <!-- metrics -->, <!-- http-status -->, <!-- access-log: demo [ID] -->, <!-- json-shape: demo PATH -->
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import pytest
import yaml
from pydantic import BaseModel, TypeAdapter

from tests.harness import ROOT, env_with_root, free_port, start_ledger

DOCS = [ROOT / "README.md", ROOT / "docs" / "configuration.md", ROOT / "docs" / "mapping.md",
        ROOT / "docs" / "process.md", ROOT / "docs" / "soap.md", ROOT / "docs" / "operations.md",
        ROOT / "docs" / "performance.md"]
EXAMPLES = ROOT / "docs" / "examples"
CHECKED_CONFIGS = [ROOT / "examples" / "demo" / "adaptercar.yaml",
                   *sorted(p for p in EXAMPLES.glob("*/adaptercar.yaml") if p.parent.name != "broken")]
DEMO_ENV = {"LEDGER_USER": "demo", "LEDGER_PASS": "demo"}
LEDGER_METHODS = {"GetBalance", "Transfer", "ListTransactions", "PutNote", "GetStatement", "Ping"}
#: Programs an example config runs: `adaptercar check` looks its `command` up on PATH.
PROGRAMS = {"bc": ("bc", "factor")}


def missing_programs(example: str) -> list[str]:
    return [p for p in PROGRAMS.get(example, ()) if shutil.which(p) is None]


# --- reading the markdown -------------------------------------------------------------------

@dataclass(frozen=True)
class Block:
    doc: Path
    line: int  # of the opening fence
    lang: str
    text: str
    marker: str  # the HTML comment right before the fence, without <!-- -->, or ""

    @property
    def where(self) -> str:
        return f"{self.doc.relative_to(ROOT)}:{self.line}"


_FENCE = re.compile(r"^```(\S*)\s*$")
_MARKER = re.compile(r"^<!--\s*(.*?)\s*-->$")


def _read(doc: Path) -> list[str]:
    return doc.read_text(encoding="utf-8").splitlines()


def blocks(doc: Path) -> list[Block]:
    lines = _read(doc)
    out: list[Block] = []
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if m is None or not m.group(1):
            i += 1
            continue
        start = i
        j = i + 1
        while j < len(lines) and lines[j] != "```":
            j += 1
        assert j < len(lines), f"{doc}:{start + 1}: unclosed code fence"
        marker = _MARKER.match(lines[start - 1]) if start else None
        out.append(Block(doc, start + 1, m.group(1), "\n".join(lines[start + 1:j]) + "\n",
                         marker.group(1) if marker else ""))
        i = j + 1
    return out


ALL_BLOCKS = [b for doc in DOCS for b in blocks(doc)]


def marked(prefix: str, among: list[Block] = ALL_BLOCKS) -> list[Block]:
    return [b for b in among if b.marker.split(":")[0].strip() == prefix]


def table_rows(lines: list[str], n: int) -> list[list[str]]:
    """Cells of the markdown table whose marker is line n (its header and |---| skipped)."""
    rows = []
    for row in lines[n + 3:]:
        if not row.startswith("|"):
            break
        cells = re.split(r"(?<!\\)\|", row.strip())[1:-1]
        rows.append([c.strip().replace("\\|", "|") for c in cells])
    return rows


def tables(prefix: str) -> list[tuple[str, str, list[list[str]]]]:
    """(where, marker argument, rows) of every markdown table right after `<!-- prefix... -->`."""
    found = []
    for doc in DOCS:
        lines = _read(doc)
        for n, line in enumerate(lines):
            m = _MARKER.match(line)
            if m is None or m.group(1).split(":")[0].strip() != prefix:
                continue
            arg = m.group(1).partition(":")[2].strip()
            found.append((f"{doc.relative_to(ROOT)}:{n + 1}", arg, table_rows(lines, n)))
    return found


def code(cell: str) -> str:
    """The text of a table cell written as one `code span` (or '' for an empty cell)."""
    assert cell == "" or (cell.startswith("`") and cell.endswith("`")), cell
    return cell[1:-1]


# --- structure: includes, links, markers ----------------------------------------------------

def included_files(among: list[Block]) -> set[Path]:
    """The files `<!-- include: path -->` blocks show, each checked equal to its block."""
    included: set[Path] = set()
    for block in marked("include", among):
        path = ROOT / block.marker.partition(":")[2].strip()
        assert path.is_file(), f"{block.where}: included file {path} does not exist"
        assert block.text == path.read_text(encoding="utf-8"), \
            f"{block.where}: the block differs from {path.relative_to(ROOT)}"
        end = _read(block.doc)[block.line + block.text.count("\n") + 1]
        assert end == "<!-- end include -->", f"{block.where}: no <!-- end include --> after it"
        included.add(path)
    return included


def test_included_blocks_equal_their_files() -> None:
    included = included_files(ALL_BLOCKS)
    for path in sorted(EXAMPLES.rglob("*.yaml")):
        if path.parent.name != "broken":
            assert path in included, f"{path.relative_to(ROOT)} is not shown by any doc"
    assert ROOT / "mappings" / "ledger.yaml" in included


def _slug(heading: str) -> str:
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(doc: Path) -> set[str]:
    return {_slug(line.lstrip("#")) for line in _read(doc) if line.startswith("#")}


def test_links_and_anchors_resolve() -> None:
    for doc in DOCS:
        text = re.sub(r"```.*?```", "", doc.read_text(encoding="utf-8"), flags=re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if target.startswith(("http://", "https://")):
                continue
            path_part, _, anchor = target.partition("#")
            path = (doc.parent / path_part).resolve() if path_part else doc
            assert path.exists(), f"{doc.relative_to(ROOT)}: link to missing {target}"
            if anchor:
                assert anchor in _anchors(path), f"{doc.relative_to(ROOT)}: no anchor {target}"


def test_every_console_block_is_run() -> None:
    for block in ALL_BLOCKS:
        if block.lang == "console":
            kind = block.marker.partition(":")[2].strip()
            assert block.marker.startswith("run:") and kind in RUNNERS, \
                f"{block.where}: a console block needs <!-- run: {'|'.join(RUNNERS)} -->"


# --- YAML and JSON snippets -----------------------------------------------------------------

def _compile_ledger_mapping(mapping: dict[str, Any], tmp: Path) -> Any:
    """Compile a mapping of ledger.v1.Ledger against the repo's proto, running its examples."""
    from adaptercar.compile import load_all

    (tmp / "mapping.yaml").write_text(yaml.safe_dump(mapping, allow_unicode=True))
    config = {
        "protos": [str(ROOT / "protos")], "mappings": [str(tmp / "mapping.yaml")],
        "backends": {"ledger": {"line": {"address": "127.0.0.1:7000", "encoding": "latin-1",
                                         "framing": {"delimiter": "\r\n"}}}},
    }
    (tmp / "adaptercar.yaml").write_text(yaml.safe_dump(config))
    return load_all(tmp / "adaptercar.yaml", environ={}, run_examples=True)


def _check_yaml_fragment(data: Any, tmp: Path) -> None:
    from adaptercar.config.load import load_config, load_mapping
    from adaptercar.config.mapping_schema import MethodMapping
    from adaptercar.config.schema import Config, LineBackend, ProcessBackend, SoapBackend

    assert isinstance(data, dict) and data, "expected a non-empty mapping"
    keys = set(data)
    if {"service", "methods"} <= keys or keys <= LEDGER_METHODS:
        mapping = data if "service" in data else {
            "service": "ledger.v1.Ledger", "backend": "ledger", "methods": data}
        if mapping["service"] != "ledger.v1.Ledger":
            (tmp / "m.yaml").write_text(yaml.safe_dump(mapping))
            assert load_mapping(tmp / "m.yaml").ok
            return
        loaded = _compile_ledger_mapping(mapping, tmp)
        errors = [p.format() for p in loaded.errors]
        assert not errors, "\n".join(errors)
        assert {f"/ledger.v1.Ledger/{m}" for m in mapping["methods"]} <= set(loaded.ops)
    elif keys <= set(MethodMapping.model_fields):
        MethodMapping.model_validate(data)
    elif keys <= set(Config.model_fields):
        (tmp / "adaptercar.yaml").write_text(yaml.safe_dump(data))
        result = load_config(tmp / "adaptercar.yaml", environ={})
        assert result.ok, [p.format() for p in result.problems]
    elif keys <= set(LineBackend.model_fields):
        LineBackend.model_validate({"address": "127.0.0.1:7000", "framing": {"delimiter": "\n"},
                                    **data})
    elif keys <= set(ProcessBackend.model_fields):
        ProcessBackend.model_validate({"command": ["cat"], **data})
    elif "wsdl" in keys and keys <= set(SoapBackend.model_fields):
        SoapBackend.model_validate(data)
    else:
        raise AssertionError(f"cannot tell what this YAML is (keys: {sorted(keys)})")


@pytest.mark.parametrize("block", [b for b in ALL_BLOCKS if b.lang == "yaml" and not b.marker],
                         ids=lambda b: b.where)
def test_yaml_snippet_loads_and_validates(block: Block, tmp_path: Path) -> None:
    data = yaml.safe_load(block.text)
    try:
        _check_yaml_fragment(data, tmp_path)
    except Exception as exc:
        raise AssertionError(f"{block.where}: {exc}") from exc


def test_json_blocks_parse() -> None:
    for block in ALL_BLOCKS:
        if block.lang == "json":
            json.loads(block.text)


@pytest.mark.parametrize("config", CHECKED_CONFIGS, ids=lambda p: str(p.relative_to(ROOT)))
def test_example_config_passes_check(config: Path, monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    from adaptercar.cli import main

    missing = missing_programs(config.parent.name)
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed: check looks programs up on PATH")
    for name, value in DEMO_ENV.items():
        monkeypatch.setenv(name, value)
    status = main(["check", "-c", str(config)])
    out = capsys.readouterr()
    assert status == 0, out.err
    assert "OK" in out.out


# --- tables against the code ----------------------------------------------------------------

def _models() -> dict[str, tuple[type[BaseModel], set[str]]]:
    """Table name → (model, keys the docs may call required although the model allows None:
    the line-protocol loader requires them)."""
    from adaptercar.config import mapping_schema as ms
    from adaptercar.config import schema as s

    return {
        "grpc": (s.Grpc, set()), "http": (s.Http, set()), "admin": (s.Admin, set()),
        "log": (s.Log, set()), "line": (s.LineBackend, set()), "framing": (s.Framing, set()),
        "on_connect": (s.Exchange, set()), "pool": (s.Pool, set()), "probe": (s.Probe, set()),
        "process": (s.ProcessBackend, set()), "restart": (s.RestartBackoff, set()),
        "shutdown": (s.Shutdown, set()), "workers": (s.Workers, set()),
        "soap": (s.SoapBackend, set()), "wsse": (s.Wsse, set()),
        "server_tls": (s.ServerTls, set()), "client_tls": (s.ClientTls, set()),
        "basic_auth": (s.BasicAuth, set()),
        "mapping": (ms.MappingFile, set()), "method": (ms.MethodMapping, {"request", "response"}),
        "fault": (ms.Fault, set()), "fault_match": (ms.FaultMatch, set()),
        "rule": (ms.Rule, {"match"}), "each": (ms.Each, {"into"}), "example": (ms.Example, set()),
    }


def _documented_default(model: type[BaseModel], key: str, cell: str, loader_required: set[str]) -> None:
    field = model.model_fields[key]
    where = f"{model.__name__}.{key}"
    if cell == "required":
        assert field.is_required() or (key in loader_required and field.default is None), where
        return
    assert not field.is_required(), f"{where} is required, the docs give a default"
    default = field.get_default(call_default_factory=True)
    if cell == "section":
        assert isinstance(default, BaseModel), where
    elif cell == "none":
        assert default is None, f"{where}: default is {default!r}, the docs say none"
    else:
        annotation: Any = (Annotated[(field.annotation, *field.metadata)] if field.metadata
                           else field.annotation)
        adapter: TypeAdapter[Any] = TypeAdapter(annotation)
        value = adapter.validate_python(yaml.safe_load(code(cell)))
        assert value == default, f"{where}: default is {default!r}, the docs say {cell}"


def test_key_tables_match_the_schema() -> None:
    models = _models()
    seen = set()
    for where, name, rows in tables("keys"):
        model, loader_required = models[name]
        keys: set[str] = set()
        for row in rows:
            for key in (code(k.strip()) for k in row[0].split(",")):
                keys.add(key)
                try:
                    _documented_default(model, key, row[1], loader_required)
                except (AssertionError, KeyError) as exc:
                    raise AssertionError(f"{where}: {exc}") from exc
        fields = {f.alias or n for n, f in model.model_fields.items()}
        assert keys == fields, f"{where}: documented {sorted(keys)}, the model has {sorted(fields)}"
        seen.add(name)
    assert seen == set(models)


def test_template_table_renders_as_documented() -> None:
    from google.protobuf import json_format

    from adaptercar.mapping.template import RenderContext, Scope, compile_template
    from adaptercar.protos import compile_protos

    [(where, message, rows)] = tables("templates")
    protoset = compile_protos([EXAMPLES / "templates"])
    descriptor = protoset.pool.FindMessageTypeByName(message)
    request = json_format.Parse((EXAMPLES / "templates" / "request.json").read_text(),
                                protoset.message_class(descriptor)())
    scope = Scope(request=descriptor, env={"REGION": "eu-1"}, encoding="utf-8")
    ctx = RenderContext(request, {}, {"x-tenant": "acme"}, {})
    assert len(rows) > 10
    for row in rows:
        template, expected = code(row[0]), code(row[1])
        assert compile_template(template, scope).render(ctx) == expected, f"{where}: {template}"


def test_metric_table_matches_the_exported_metrics() -> None:
    from prometheus_client.metrics import MetricWrapperBase

    from adaptercar import metrics

    exported = {}
    for item in vars(metrics).values():
        if isinstance(item, MetricWrapperBase):
            name = item._name + ("_total" if item._type == "counter" else "")
            exported[name] = (item._type, set(item._labelnames))
    [(where, _, rows)] = tables("metrics")
    documented = {code(r[0]): (r[1], {code(x.strip()) for x in r[2].split(",")}) for r in rows}
    assert documented == exported, where


def test_http_status_table_matches_the_error_table() -> None:
    from adaptercar.mapping.errors import HTTP_STATUS, Code

    [(where, _, rows)] = tables("http-status")
    documented = {}
    for row in rows:
        for name, status in ((row[0], row[1]), (row[2], row[3])):
            if name:
                documented[Code[name]] = int(status)
    assert documented == HTTP_STATUS, where


# --- transcripts ----------------------------------------------------------------------------

@dataclass
class Target:
    """A running sidecar the transcripts talk to."""

    ports: dict[str, int]
    log: Path
    paths: dict[str, str] = field(default_factory=dict)
    """Documented path → the real one (a test's tmp folder), replaced back in the output."""

    def substitute(self, command: str) -> str:
        for role, default in (("http", 8080), ("grpc", 50051), ("admin", 9901)):
            if role in self.ports:
                command = command.replace(f"localhost:{default}", f"127.0.0.1:{self.ports[role]}")
        for documented, real in self.paths.items():
            command = command.replace(documented, real)
        return command

    def restore(self, output: str) -> str:
        for documented, real in self.paths.items():
            output = output.replace(real, documented)
        return output

    def access_records(self) -> list[dict[str, Any]]:
        records = []
        for line in self.log.read_text(errors="replace").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record.get("event") == "access":
                records.append(record)
        return records


def _curl_emulated(argv: list[str]) -> str:
    """The few curl options the docs use, for machines without curl."""
    method, data, headers, url, write_out, discard = None, None, {}, "", "", False
    args = iter(argv[1:])
    for arg in args:
        if arg == "-s":
            continue
        if arg == "-X":
            method = next(args)
        elif arg == "-d":
            data = next(args).encode()
        elif arg == "-H":
            key, _, value = next(args).partition(":")
            headers[key.strip()] = value.strip()
        elif arg == "-w":
            write_out = next(args).replace("\\n", "\n")
        elif arg == "-o":
            assert next(args) == "/dev/null"
            discard = True
        else:
            assert not arg.startswith("-"), f"curl option {arg} is not emulated"
            url = arg if "://" in arg else "http://" + arg
    request = urllib.request.Request(url, data=data, method=method or ("POST" if data else "GET"),
                                     headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            status, body = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read()
    text = "" if discard else body.decode()
    return text + write_out.replace("%{http_code}", str(status))


def run_curl(command: str) -> str:
    if shutil.which("curl"):
        done = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=30)
        return done.stdout + done.stderr
    pipeline = [shlex.split(part) for part in command.split(" | ")]
    text = _curl_emulated(pipeline[0])
    for stage in pipeline[1:]:
        assert stage[0] == "grep" and len(stage) == 2, f"cannot emulate {stage}"
        pattern = re.compile(stage[1])
        text = "".join(line + "\n" for line in text.splitlines() if pattern.search(line))
    return text


def _grpc_code_name(code: Any) -> str:
    """grpcurl prints Go's names of status codes: NotFound, InvalidArgument, Canceled, ..."""
    if code.name == "CANCELLED":
        return "Canceled"
    return "".join(part.capitalize() for part in code.name.split("_")) if code.name != "OK" else "OK"


def run_grpcurl(command: str) -> str:
    """grpcurl when installed, else the same calls through server reflection (as grpcurl does)."""
    if shutil.which("grpcurl"):
        done = subprocess.run(shlex.split(command), capture_output=True, text=True, timeout=30)
        return done.stdout + done.stderr
    import grpc
    from google.protobuf import json_format, message_factory
    from google.protobuf.descriptor_pool import DescriptorPool
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
        ProtoReflectionDescriptorDatabase,
    )

    args, data, positional = shlex.split(command)[1:], "{}", []
    it = iter(args)
    for arg in it:
        if arg == "-plaintext":
            continue
        if arg == "-d":
            data = next(it)
        else:
            assert not arg.startswith("-"), f"grpcurl option {arg} is not emulated"
            positional.append(arg)
    target, verb = positional[0], positional[1]
    with grpc.insecure_channel(target) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        if verb == "list":
            return "".join(name + "\n" for name in sorted(database.get_services()))
        service, _, name = verb.partition("/")
        method = DescriptorPool(database).FindServiceByName(service).methods_by_name[name]
        request_class = message_factory.GetMessageClass(method.input_type)
        reply_class = message_factory.GetMessageClass(method.output_type)
        stub = channel.unary_unary(f"/{verb}", request_serializer=request_class.SerializeToString,
                                   response_deserializer=reply_class.FromString)
        try:
            reply = stub(json_format.Parse(data, request_class()), timeout=10)
        except grpc.RpcError as exc:
            return f"ERROR:\n  Code: {_grpc_code_name(exc.code())}\n  Message: {exc.details()}\n"
        return json_format.MessageToJson(reply, indent=2) + "\n"


def run_adaptercar(command: str) -> str:
    argv = shlex.split(command)
    assert argv[0] == ".venv/bin/adaptercar"
    done = subprocess.run([sys.executable, "-m", "adaptercar.cli", *argv[1:]], capture_output=True,
                          text=True, timeout=60, cwd=ROOT, env=env_with_root())
    assert done.returncode == (1 if "problem(s) found" in done.stderr else 0), done.stderr
    return done.stdout + done.stderr


def _same(expected: str, actual: str) -> bool:
    if expected == actual:
        return True
    try:
        return bool(json.loads(expected) == json.loads(actual))
    except ValueError:
        return False


def assert_output(expected: str, actual: str, where: str) -> None:
    wanted, got = expected.splitlines(), actual.splitlines()
    message = f"{where}: expected\n{expected}\ngot\n{actual}"
    if "..." in wanted:  # these lines, in any order, among others
        for line in wanted:
            assert line == "..." or line in got, message
    elif not _same(expected, actual):
        assert len(wanted) == len(got) and all(map(_same, wanted, got)), message


def run_transcript(block: Block, target: Target | None) -> None:
    commands: list[tuple[str, list[str]]] = []
    for line in block.text.splitlines():
        if line.startswith("$ "):
            commands.append((line[2:], []))
        else:
            assert commands, f"{block.where}: output before the first command"
            commands[-1][1].append(line)
    for command, output in commands:
        actual_command = target.substitute(command) if target else command
        chosen = {"curl": run_curl, "grpcurl": run_grpcurl}.get(command.split()[0], run_adaptercar)

        def runner(command: str, chosen: Any = chosen) -> str:
            output = chosen(command)
            return target.restore(output) if target else output

        expected = "".join(line + "\n" for line in output)
        where = f"{block.where}: $ {command}"
        if "/metrics" in command:  # workers write their counters twice a second
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                try:
                    assert_output(expected, runner(actual_command), where)
                    break
                except AssertionError:
                    time.sleep(0.25)
        assert_output(expected, runner(actual_command), where)


RUNNERS = ("demo", "check", "memcached", "redis", "bc", "soap", "crm")


def _wait_ready(proc: subprocess.Popen[bytes], admin_port: int, log: Path) -> None:
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"sidecar exited {proc.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/readyz", timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    raise RuntimeError(f"sidecar not ready:\n{log.read_text()}")


@dataclass
class Started:
    procs: list[subprocess.Popen[bytes]]

    def stop(self) -> None:
        """SIGTERM, then SIGKILL to the process group after a short grace: the transcripts do
        not test shutdown, and waiting the full drain would cost seconds per sidecar."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def start_sidecar(config: Path, tmp: Path, env: dict[str, str], single_process: bool) -> tuple[Target, Started]:
    ports = {role: free_port() for role in ("grpc", "http", "admin")}
    env = {**env, "GRPC_PORT": str(ports["grpc"]), "HTTP_PORT": str(ports["http"]),
           "ADMIN_PORT": str(ports["admin"])}
    log = tmp / "sidecar.log"
    shown = config.relative_to(ROOT) if config.is_relative_to(ROOT) else config
    argv = [sys.executable, "-m", "adaptercar.cli", "run", "-c", str(shown)]
    proc = subprocess.Popen(argv + (["--single-process"] if single_process else []), cwd=ROOT,
                            env=env_with_root(env), stdout=log.open("wb"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    started = Started([proc])
    try:
        _wait_ready(proc, ports["admin"], log)
    except Exception:
        started.stop()
        raise
    return Target(ports, log), started


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    """The demo as `make demo` runs it: the ledger fixture and `adaptercar run` (supervisor and
    workers) on examples/demo/adaptercar.yaml."""
    from tests.test_soap_fixture import start_crm

    tmp = tmp_path_factory.mktemp("demo")
    (tmp / "values").mkdir()  # the demo's second values folder (in DEMO_DIR)
    ledger = start_ledger(tmp, journal=False)
    crm = start_crm()
    try:
        target, started = start_sidecar(ROOT / "examples" / "demo" / "adaptercar.yaml", tmp,
                                        {**DEMO_ENV, "LEDGER_ADDR": ledger.address,
                                         "CRM_URL": crm.url, "FX_PORT": str(free_port()),
                                         "DEMO_DIR": str(tmp)}, False)
    except Exception:
        ledger.stop()
        crm.stop()
        raise
    yield target
    started.stop()
    ledger.stop()
    crm.stop()


def _check_access_logs(target: Target) -> None:
    records = target.access_records()
    for block in marked("access-log"):
        example = json.loads(block.text)
        wanted_id = block.marker.split()[2] if len(block.marker.split()) > 2 else None
        keys = ("front", "method", "http_method", "code")
        matches = [r for r in records if all(r.get(k) == example.get(k) for k in keys)
                   and (wanted_id is None or r["request_id"] == wanted_id)]
        assert matches, f"{block.where}: no such access line in {records}"
        real = matches[0]
        assert set(real) == set(example), f"{block.where}: real access line {real}"
        stable = ("event", "level", "front", "method", "http_method", "code", "backend", "attempts",
                  "service", "env", "role", "error") + (("request_id",) if wanted_id else ())
        for key in stable:
            assert real.get(key) == example.get(key), f"{block.where}: {key} is {real.get(key)!r}"


def _shape(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _shape(v) for k, v in value.items()}
    return type(value).__name__ if value is not None else "null"


def _check_json_shapes(target: Target) -> None:
    for block in marked("json-shape"):
        path = block.marker.split()[2]
        with urllib.request.urlopen(f"http://127.0.0.1:{target.ports['admin']}{path}") as r:
            real = json.loads(r.read())
        documented = json.loads(block.text)
        assert _shape(real) == _shape(documented), f"{block.where}: real answer {real}"


def test_demo_transcripts(demo: Target) -> None:
    """README's tour and the operations page, in document order, on one demo."""
    transcripts = [b for b in ALL_BLOCKS if b.marker == "run: demo"]
    assert len(transcripts) >= 5
    for block in transcripts:
        run_transcript(block, demo)
    _check_access_logs(demo)
    _check_json_shapes(demo)


def test_curl_emulation_agrees_with_curl(demo: Target) -> None:
    """The fallback for machines without curl must answer as curl does."""
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed: the transcripts already ran through the emulation")
    for command in ("curl -s -w ' %{http_code}\\n' localhost:8080/v1/accounts/9999/balance",
                    "curl -s -o /dev/null -w '%{http_code}\\n' localhost:9901/readyz"):
        command = demo.substitute(command)
        assert _curl_emulated(shlex.split(command)) == run_curl(command)


def test_check_transcripts() -> None:
    transcripts = [b for b in ALL_BLOCKS if b.marker == "run: check"]
    assert transcripts
    for block in transcripts:
        run_transcript(block, None)


def _wait_port(port: int, proc: subprocess.Popen[bytes]) -> None:
    import socket

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the server exited"
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def _server_argv(kind: str, port: int) -> list[str]:
    if kind == "memcached":
        user = ["-u", "root"] if os.geteuid() == 0 else []
        return ["memcached", "-p", str(port), "-U", "0", "-l", "127.0.0.1", *user]
    return ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no"]


SERVERS: dict[str, tuple[str, str]] = {
    "memcached": ("memcached", "MEMCACHED_ADDR"), "redis": ("redis-server", "REDIS_ADDR")}


@pytest.mark.parametrize("kind", sorted(SERVERS))
def test_real_server_transcripts(kind: str, tmp_path: Path) -> None:
    binary, variable = SERVERS[kind]
    if shutil.which(binary) is None:
        pytest.skip(f"{binary} is not installed; the mapping's examples are checked offline")
    port = free_port()
    server = subprocess.Popen(_server_argv(kind, port), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    sidecar: Started | None = None
    try:
        _wait_port(port, server)
        target, sidecar = start_sidecar(EXAMPLES / kind / "adaptercar.yaml", tmp_path,
                                        {variable: f"127.0.0.1:{port}"}, True)
        transcripts = [b for b in ALL_BLOCKS if b.marker == f"run: {kind}"]
        assert transcripts
        for block in transcripts:
            run_transcript(block, target)
    finally:
        if sidecar is not None:
            sidecar.stop()
        Started([server]).stop()


def test_bc_transcripts(tmp_path: Path) -> None:
    """docs/process.md's worked example: bc pooled and factor per call, as children of the
    sidecar in its default process model (the transcripts talk to the JSON worker)."""
    missing = missing_programs("bc")
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed; the mapping's examples are checked offline")
    target, sidecar = start_sidecar(EXAMPLES / "bc" / "adaptercar.yaml", tmp_path, {}, False)
    try:
        transcripts = [b for b in ALL_BLOCKS if b.marker == "run: bc"]
        assert transcripts
        for block in transcripts:
            run_transcript(block, target)
    finally:
        sidecar.stop()


def _start_commands(block: Block) -> list[list[str]]:
    """The argv of each command of a `<!-- start: ... -->` block (`&` and comments dropped)."""
    commands = []
    for line in block.text.splitlines():
        argv = [arg for arg in shlex.split(line, comments=True) if arg != "&"]
        if argv:
            commands.append(argv)
    return commands


def test_soap_transcripts(tmp_path: Path) -> None:
    """docs/soap.md in document order against the real crm fixture: import-wsdl into tmp_path
    (standing in for /tmp/crm), check, the generated files as shown, then the imported config
    and the hand-written example each run by `adaptercar run` and called."""
    from tests.test_soap_fixture import start_crm

    crm = start_crm()
    paths = {"/tmp/crm": str(tmp_path / "crm")}
    offline = Target({}, tmp_path / "no.log", paths)
    env = {"CUSTOMER_SERVICE_URL": crm.url, "CRM_URL": crm.url}
    targets: dict[str, Target] = {}
    started: list[Started] = []
    try:
        for block in (b for b in ALL_BLOCKS if b.doc.name == "soap.md" and b.marker):
            kind, _, arg = (part.strip() for part in block.marker.partition(":"))
            if kind == "run":
                assert arg in ("soap", "crm"), f"{block.where}: run: {arg} in soap.md"
                run_transcript(block, targets.get(arg, offline))
            elif kind == "start":
                for argv in _start_commands(block):
                    if argv == [".venv/bin/python", "-m", "legacy_fixtures.crm"]:
                        continue  # started above, on a free port
                    assert argv[:3] == [".venv/bin/adaptercar", "run", "-c"] and len(argv) == 4, \
                        f"{block.where}: cannot run {argv}"
                    config = Path(offline.substitute(argv[3]))
                    (tmp_path / f"sidecar-{arg}").mkdir()
                    target, sidecar = start_sidecar(config if config.is_absolute() else ROOT / config,
                                                    tmp_path / f"sidecar-{arg}", env, False)
                    started.append(sidecar)
                    targets[arg] = Target(target.ports, target.log, paths)
            elif kind == "generated":
                written = Path(offline.substitute(arg))
                assert block.text == written.read_text(encoding="utf-8"), \
                    f"{block.where}: not what import-wsdl wrote:\n{written.read_text()}"
    finally:
        for sidecar in started:
            sidecar.stop()
        crm.stop()
    assert set(targets) == {"soap", "crm"}


def test_xsd_type_table_matches_import_wsdl() -> None:
    from zeep.xsd.types import builtins

    from adaptercar.wsdl_import import _scalar

    [(where, _, rows)] = tables("xsd-types")
    documented = 0
    for row in rows:
        for cell in (c.strip() for c in row[0].split(",")):
            if cell.startswith("`"):
                qname = f"{{http://www.w3.org/2001/XMLSchema}}{code(cell)}"
                [xsd_type] = [v for k, v in builtins.default_types.items() if k.text == qname]
                assert _scalar(xsd_type) == code(row[1]), f"{where}: {cell}"
                documented += 1
    assert documented >= 15


# --- claims that must change when the code does -----------------------------------------------

def test_log_event_list_matches_the_code() -> None:
    emitted: set[str] = set()
    for path in (ROOT / "adaptercar").rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        emitted |= set(re.findall(r"log\.(?:debug|info|warning|error)\(\s*\"([a-z_]+)\"", text))
    [operations] = [d for d in DOCS if d.name == "operations.md"]
    text = operations.read_text(encoding="utf-8")
    paragraph = text.split("<!-- log-events -->\n", 1)[1].split("\n\n", 1)[0]
    fields = {"reason", "child_pid", "status", "stderr_tail"}  # named in passing, not events
    documented = {name for name in re.findall(r"`([a-z_]+)`", paragraph) if name not in fields}
    assert documented == emitted
