"""Configuration loading: typed objects from valid files, `FILE:LINE: path: message` for broken ones."""

from __future__ import annotations

import math
import os
import shutil
import signal
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from adaptercar.config import (
    Config,
    ExpansionError,
    Problem,
    expand_env,
    expand_mapping_paths,
    expand_string,
    load_all,
    load_config,
    load_mapping,
    parse_duration,
    parse_yaml,
    redacted_dict,
    render_path,
)
from adaptercar.config.load import validation_context
from adaptercar.config.mapping_schema import (
    BytesFrame,
    Each,
    ExpectError,
    ResponseUntil,
    Rule,
)
from adaptercar.config.yamlsource import MAX_NODES

CONFIGS = Path(__file__).parent / "configs"
ENV = {"CRM_USER": "alice", "CRM_PASS": "s3cret", "LEDGER_ADDR": "ledger.internal:7000"}


def lines(problems: list[Problem]) -> list[str]:
    return [p.format() for p in problems]


@pytest.fixture
def in_configs(monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run from tests/configs so problems name files as `x.yaml`, whatever pytest's cwd."""
    monkeypatch.chdir(CONFIGS)
    return CONFIGS


# --- a whole valid project ----------------------------------------------------------------

@pytest.fixture
def project(tmp_path: Path) -> Path:
    shutil.copy(CONFIGS / "valid.yaml", tmp_path / "adaptercar.yaml")
    (tmp_path / "protos").mkdir()
    (tmp_path / "mappings").mkdir()
    shutil.copy(CONFIGS / "valid_mapping.yaml", tmp_path / "mappings" / "billing.yaml")
    shutil.copy(CONFIGS / "valid_soap_mapping.yaml", tmp_path / "mappings" / "crm.yml")
    (tmp_path / "mappings" / "README.txt").write_text("not a mapping")
    (tmp_path / "legacy_fixtures" / "ratequote").mkdir(parents=True)
    (tmp_path / "legacy_fixtures" / "crm").mkdir()
    (tmp_path / "legacy_fixtures" / "crm" / "crm.wsdl").write_text("<definitions/>")
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "jwks.json").write_text("{}")
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "app.conf").write_text("port={port}\n")
    return tmp_path / "adaptercar.yaml"


def test_the_design_config_loads_whole(project: Path) -> None:
    loaded = load_all(project, ENV)
    # the design's companion folders are the deployed host's: here they are notes, not errors
    assert [p.path for p in loaded.problems] == ["companion.logs[0].path",
                                                 "companion.config[0].values[0]"]
    assert all(p.severity == "note" for p in loaded.problems)
    assert loaded.ok
    config = loaded.config.config
    assert config is not None
    base = project.parent
    assert config.grpc is not None and config.grpc.reflection is True
    assert config.grpc.max_message_bytes == 4194304
    assert config.http is not None and config.http.max_body_bytes == 4 * 1024 * 1024
    assert config.admin is not None and config.admin.listen == "127.0.0.1:9901"
    assert config.protos == (base / "protos",)
    assert config.log.fields == {"service": "billing-adapter", "env": "dev"}

    ledger = config.backends["ledger"]
    assert ledger.kind == "line" and ledger.line is not None
    assert ledger.line.address == "ledger.internal:7000"  # from the environment
    assert ledger.line.framing.delimiter == "\r\n"
    assert ledger.line.framing.delimiter_bytes("latin-1") == b"\r\n"
    assert ledger.line.encoding == "latin-1"
    assert ledger.line.timeout == 2.0 and ledger.line.connect_timeout == 1.0
    assert ledger.line.pool.size == 4 and ledger.line.pool.pipeline == 1
    assert ledger.line.probe is not None and ledger.line.probe.every == 10.0
    assert ledger.line.on_connect[0].send == "LOGIN {env.LEDGER_USER} {env.LEDGER_PASS}"
    assert ledger.line.max_reply_bytes == 1024 * 1024 and ledger.line.max_frames == 10000

    calc = config.backends["calc"].process
    assert calc is not None
    assert calc.command == ("python3", "ratequote.py")
    assert calc.cwd == base / "legacy_fixtures" / "ratequote"
    assert calc.timeout == 1.0 and calc.pool.size == 2

    crm = config.backends["crm"]
    assert crm.kind == "soap" and crm.soap is not None
    assert crm.soap.wsdl == base / "legacy_fixtures" / "crm" / "crm.wsdl"
    assert crm.soap.endpoint == "http://127.0.0.1:8081/crm"
    assert crm.soap.wsse is not None and crm.soap.wsse.password == "s3cret"

    memcached = config.backends["memcached"].line
    assert memcached is not None and memcached.mode == "per-call"
    assert memcached.address == "127.0.0.1:11211"
    assert memcached.framing.length_prefix == 4 and memcached.framing.ascii

    assert config.auth is not None and config.auth.jwt.keys == base / "keys" / "jwks.json"
    assert config.auth.jwt.leeway == 30.0

    payments, inventory = config.ambassador
    assert payments.retry.on == ("connect-failure", "reset", 502, 503, 504)  # `on:` stays a key
    assert payments.retry.backoff.base == 0.025
    assert payments.circuit_breaker.reset == 30.0
    assert inventory.upstream.static == ("10.0.0.1:9000", "10.0.0.2:9000")

    assert config.companion is not None
    stats = config.companion.stats[0]
    assert isinstance(stats.response, ResponseUntil) and stats.response.each is not None
    assert stats.response.each.into is None and stats.response.each.match is not None
    on_change = config.companion.config[0].on_change
    assert on_change is not None and on_change.signal == signal.SIGHUP
    assert config.workers.grpc == 2 and config.shutdown.drain_timeout == 15.0

    with pytest.raises(ValidationError):
        config.backends["ledger"].line.timeout = 5.0  # type: ignore[union-attr,misc]


def test_the_mappings_load_with_every_shape(project: Path) -> None:
    loaded = load_all(project, ENV)
    assert [m.file.name for m in loaded.mappings] == ["billing.yaml", "crm.yml"]
    billing, crm = (m.mapping for m in loaded.mappings)
    assert billing is not None and crm is not None
    methods = billing.methods
    get_balance = methods["GetBalance"].response
    assert isinstance(get_balance, tuple) and isinstance(get_balance[0], Rule)
    assert get_balance[1].error is not None and get_balance[1].error.code == "NOT_FOUND"
    assert isinstance(methods["GetBalance"].examples[1].expect, ExpectError)
    assert methods["GetBalance"].examples[0].expect == {"balance_cents": 1250}
    listing = methods["ListTransactions"].response
    assert isinstance(listing, ResponseUntil) and isinstance(listing.each, Each)
    assert listing.each.fixed == {"date": (0, 8), "amount_cents": (8, 20), "memo": (20, 60)}
    assert methods["ListTransactions"].timeout == 0.5
    assert methods["PutNote"].request == ("NOTE {account_id} {text|len}", BytesFrame(bytes="{text}"))
    # mapping files are never ${VAR}-expanded: a RESP `$` stays literal
    assert methods["Get"].request == ("*2", "$3", "GET", "${key|len}", "{key}")
    statement = methods["GetStatement"].response
    assert isinstance(statement, tuple) and statement[0].body is not None
    assert statement[0].body.bytes_ == "{n}" and statement[0].body.into == "text"
    assert crm.methods["GetCustomer"].request == {"customerId": "{id}"}
    assert crm.methods["GetCustomer"].response == {
        "id": "customerId", "name": "fullName", "email": "contact.email"}
    assert crm.methods["SearchCustomers"].request is None


def test_mapping_folder_expansion_is_sorted_and_deduplicated(project: Path) -> None:
    text = project.read_text().replace("mappings: [mappings/]",
                                       "mappings: [mappings/, mappings/billing.yaml]")
    project.write_text(text)
    config = load_config(project, ENV).config
    assert config is not None
    base = project.parent / "mappings"
    assert expand_mapping_paths(config) == [base / "billing.yaml", base / "crm.yml"]


def test_positions_stay_available_after_loading(project: Path) -> None:
    loaded = load_all(project, ENV)
    source = loaded.config.source
    assert source.line(("backends", "ledger", "line", "timeout")) == 17
    assert source.line(("backends", "ledger", "line", "on_connect", 0, "send")) == 15
    assert source.line(("ambassador", 1)) == 59
    # a path the file does not spell falls back to its nearest ancestor
    assert source.line(("backends", "ledger", "line", "pool", "max_age")) == 16
    mapping_source = loaded.mappings[0].source
    assert mapping_source.line(("methods", "PutNote", "request", 1, "bytes")) == 31
    problem = mapping_source.problem(("methods", "Transfer", "response", 0, "match"), "bad regex")
    assert problem.format().endswith("billing.yaml:29: methods.Transfer.response[0].match: "
                                     "bad regex")


# --- broken files: every problem, with its line -------------------------------------------

BROKEN_CONFIGS = {
    "unknown_keys.yaml": [
        "unknown_keys.yaml:3: grpc.reflecton: unknown key 'reflecton' (did you mean 'reflection'?)",
        "unknown_keys.yaml:4: backend: unknown key 'backend' (did you mean 'backends'?)",
        "unknown_keys.yaml:11: backends.ledger.line.timout: unknown key 'timout' "
        "(did you mean 'timeout'?)",
        "unknown_keys.yaml:12: backends.ledger.line.pool.pipelines: unknown key 'pipelines' "
        "(did you mean 'pipeline'?)",
        "unknown_keys.yaml:14: backends.calc.proces: unknown key 'proces' "
        "(did you mean 'process'?)",
    ],
    "wrong_types.yaml": [
        "wrong_types.yaml:1: grpc.listen: expected an address (host:port or unix:/path), got 50051",
        "wrong_types.yaml:1: grpc.reflection: expected true or false, got 'maybe'",
        "wrong_types.yaml:1: grpc.max_message_bytes: expected an integer, got '4MB'",
        "wrong_types.yaml:2: protos: expected a list, got 'protos/'",
        "wrong_types.yaml:9: backends.ledger.line.pool.size: expected an integer, got 'four'",
        "wrong_types.yaml:10: backends.ledger.line.pool.keepalive: expected true or false, "
        "got 'sometimes'",
        "wrong_types.yaml:12: backends.ledger.line.on_connect[0].expect: expected a string, got 5",
        "wrong_types.yaml:14: log.fields.env: expected a string, got false "
        "(quote the value in YAML to keep it a string)",
    ],
    "missing_keys.yaml": [
        "missing_keys.yaml:1: grpc: missing required key 'listen'",
        "missing_keys.yaml:4: backends.ledger.line: missing required key 'address'",
        "missing_keys.yaml:7: backends.ledger.line.on_connect[0]: missing required key 'send'",
        "missing_keys.yaml:9: ambassador[0]: missing required key 'listen'",
    ],
    "durations.yaml": [
        "durations.yaml:6: backends.ledger.line.timeout: expected a duration like 250ms, 2s "
        "or 1m, got 'fast'",
        "durations.yaml:7: backends.ledger.line.connect_timeout: expected a duration greater "
        "than 0, got '0s'",
        "durations.yaml:8: backends.ledger.line.pool.idle_timeout: expected a duration like "
        "250ms, 2s or 1m, got '10 parsecs'",
        "durations.yaml:9: backends.ledger.line.probe.every: expected a duration like 250ms, 2s "
        "or 1m, got '-5s'",
    ],
    "env.yaml": [
        "env.yaml:2: http.listen: environment variable HTTP_LISTEN not set (set it, or give a "
        "default: ${HTTP_LISTEN:-value})",
        "env.yaml:7: backends.crm.soap.wsse.username: environment variable CRM_USER not set "
        "(set it, or give a default: ${CRM_USER:-value})",
        "env.yaml:10: log.fields.bad: malformed variable reference '${1NVALID}' (expected "
        "${VAR} or ${VAR:-default}, VAR made of letters, digits and _)",
        "env.yaml:10: log.fields.open: unclosed '${' in '${OPEN' (expected ${VAR} or "
        "${VAR:-default}; write $${ for a literal ${)",
    ],
    "yaml_syntax.yaml": [
        "yaml_syntax.yaml:6: invalid YAML: expected <block end>, but found "
        "'<block mapping start>' (while parsing a block mapping on line 4)",
    ],
    "duplicates.yaml": [
        "duplicates.yaml:8: backends.ledger.line.timeout: duplicate key 'timeout' (first "
        "defined on line 7; YAML would silently keep only the last)",
        "duplicates.yaml:9: grpc: duplicate key 'grpc' (first defined on line 1; YAML would "
        "silently keep only the last)",
    ],
    "backend_shape.yaml": [
        "backend_shape.yaml:2: backends.nothing: a backend needs exactly one of 'line', "
        "'process', 'soap'",
        "backend_shape.yaml:3: backends.both: 'line' and 'process' are both set; a backend "
        "takes exactly one of 'line', 'process', 'soap'",
        "backend_shape.yaml:8: backends.framing.line.address: expected a socket path after "
        "'unix:', got 'unix:'",
        "backend_shape.yaml:9: backends.framing.line.framing: 'delimiter' and 'fixed' are both "
        "set; framing takes exactly one of 'delimiter', 'length_prefix', 'fixed', 'stx_etx'",
        "backend_shape.yaml:12: backends.prefix.line.address: expected an address "
        "(host:port or unix:/path), got '[::1]:70000'",
        "backend_shape.yaml:13: backends.prefix.line.framing: a binary length prefix has 1, 2 "
        "or 4 bytes, got 3 (add 'ascii: true' for decimal digits)",
        "backend_shape.yaml:14: backends.prefix.line.encoding: unknown encoding 'latin-9x' "
        "(any Python codec: utf-8, latin-1, cp037, ...)",
        "backend_shape.yaml:17: backends.nul.line.address: port 0 can only be used to listen, "
        "got '127.0.0.1:0'",
        "backend_shape.yaml:18: backends.nul.line.mode: expected 'pooled' or 'per-call', got "
        "'pool' (did you mean 'pooled'?)",
        "backend_shape.yaml:19: backends.nul.line.framing: framing needs exactly one of "
        "'delimiter', 'length_prefix', 'fixed', 'stx_etx'",
    ],
}


@pytest.mark.parametrize("name", sorted(BROKEN_CONFIGS))
def test_broken_config_reports_every_problem_at_its_line(in_configs: Path, name: str) -> None:
    result = load_config(name, {"CRM_PASS": "x"})
    assert result.config is None and not result.ok
    assert lines(result.problems) == BROKEN_CONFIGS[name]


def test_broken_mapping_reports_every_problem_at_its_line(in_configs: Path) -> None:
    result = load_mapping("mapping_broken.yaml")
    assert result.mapping is None and result.validated is None
    assert lines(result.problems) == [
        "mapping_broken.yaml:5: methods.GetBalance.auth: expected 'required', 'optional' or "
        "'none', got 'sometimes'",
        "mapping_broken.yaml:6: methods.GetBalance.request: expected a template string, a list "
        "of frames, or (SOAP) a mapping of part → template",
        "mapping_broken.yaml:8: methods.GetBalance.response[0]: a rule sets either 'fields' or "
        "'error', not both",
        "mapping_broken.yaml:11: methods.GetBalance.response[1]: a rule needs 'match' (or, for "
        "process backends, 'stderr' or 'exit_status')",
        "mapping_broken.yaml:13: methods.GetBalance.response[2].error.code: unknown gRPC code "
        "'NOT_FOUNDD' (did you mean 'NOT_FOUND'?)",
        "mapping_broken.yaml:15: methods.ListTransactions.request[1]: missing required key "
        "'bytes'",
        "mapping_broken.yaml:15: methods.ListTransactions.request[1].byte: unknown key 'byte' "
        "(did you mean 'bytes'?)",
        "mapping_broken.yaml:15: methods.ListTransactions.request[2]: expected a template "
        "string or {bytes: TEMPLATE}",
        "mapping_broken.yaml:16: methods.ListTransactions.respons: unknown key 'respons' "
        "(did you mean 'response'?)",
        "mapping_broken.yaml:21: methods.ListTransactions.response.each.fixed.memo: expected "
        "[start, end] with 0 ≤ start < end, got [20]",
        "mapping_broken.yaml:24: methods.Soap.response.name: expected a string, got 5",
        "mapping_broken.yaml:26: methods.Soap.examples[0].expect.error: unknown gRPC code "
        "'NOTFOUND' (did you mean 'NOT_FOUND'?)",
    ]


def test_problems_across_files_are_all_collected(in_configs: Path) -> None:
    project = load_all("crossfile/adaptercar.yaml", {})
    assert not project.ok
    assert lines(project.problems) == [
        "crossfile/adaptercar.yaml:2: http.listen: address '0.0.0.0:50051' is already used by "
        "grpc.listen (line 1)",
        "crossfile/adaptercar.yaml:4: mappings[1]: no such file or folder: crossfile/missing",
        "crossfile/adaptercar.yaml:9: backends.calc.process.cwd: no such folder: "
        "crossfile/no-such-folder",
        "crossfile/adaptercar.yaml:13: ambassador[0].listen: address '127.0.0.1:9901' is "
        "already used by admin.listen (line 3)",
        "crossfile/adaptercar.yaml:14: ambassador[1].name: route name 'p' is already used by "
        "ambassador[0]",
        "crossfile/mappings/a.yaml:2: backend: unknown backend 'ledgr' (did you mean 'ledger'?)",
        "crossfile/mappings/b.yaml:4: methods.GetBalance: billing.v1.Billing/GetBalance is "
        "already mapped in crossfile/mappings/a.yaml:4",
        "crossfile/mappings/b.yaml:11: methods.Quote.operation: 'operation' is only for SOAP "
        "backends; backend 'calc' is a process backend",
        "crossfile/mappings/b.yaml:14: methods.Stmt.response: a mapping of reply paths is only "
        "for SOAP backends; backend 'ledger' is a line backend (expected a list of rules or "
        "{until: ...}) (did you mean 'until'?)",
        "crossfile/mappings/b.yaml:17: methods.Wrong.request: a SOAP request is a mapping of "
        "part → template (or omitted to match proto fields to parts by name); backend 'crm' is "
        "a soap backend",
        "crossfile/mappings/b.yaml:18: methods.Wrong.response: a SOAP response is a mapping of "
        "field → reply path (or omitted to match by name); backend 'crm' is a soap backend",
        "crossfile/mappings/b.yaml:19: methods.Each: missing required key 'request' (a frame "
        "template; backend 'ledger' is a line backend)",
        "crossfile/mappings/b.yaml:20: methods.Each.response.each: missing required key 'into' "
        "(the repeated field that receives the elements)",
        "crossfile/mappings/c.yml:2: invalid YAML: expected ',' or ']', but got '<stream end>' "
        "(while parsing a flow sequence on line 1)",
    ]
    # the config itself validated: checks built on top can keep going
    assert project.config.validated is not None and project.config.config is None


def test_stderr_rules_are_only_for_process_backends(tmp_path: Path) -> None:
    (tmp_path / "adaptercar.yaml").write_text(
        'mappings: [m.yaml]\nbackends: {ledger: {line: {address: "h:1", '
        'framing: {delimiter: "\\n"}}}}\n')
    (tmp_path / "m.yaml").write_text(
        "service: s.v1.S\nbackend: ledger\nmethods:\n  M:\n    request: x\n"
        "    response: [{stderr: boom}, {match: x, exit_status: 1}]\n"
        "    faults: [{error: {code: internal}}]\n")
    messages = [f"{p.line}: {p.path}: {p.message}" for p in
                load_all(tmp_path / "adaptercar.yaml", {}).problems]
    assert messages == [
        "6: methods.M.response[0].stderr: 'stderr' rules are only for process backends; "
        "backend 'ledger' is a line backend",
        "6: methods.M.response[1].exit_status: 'exit_status' rules are only for process "
        "backends; backend 'ledger' is a line backend",
        "7: methods.M.faults: 'faults' are only for SOAP backends; backend 'ledger' is a line "
        "backend",
    ]


def test_a_file_that_is_not_there_or_not_text(tmp_path: Path) -> None:
    missing = load_config(tmp_path / "nope.yaml", {})
    assert [p.message for p in missing.problems] == ["cannot read: No such file or directory"]
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"grpc:\n  listen: x\n  \xff\xfe: 1\n")
    assert [(p.line, p.message) for p in load_config(binary, {}).problems] == [
        (3, "not UTF-8 text: byte 0xff cannot be decoded")]


def test_empty_config_is_valid_and_a_list_is_not(tmp_path: Path) -> None:
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing configured yet\n")
    config = load_config(empty, {}).config
    assert config is not None and config.grpc is None and config.backends == {}
    listed = tmp_path / "list.yaml"
    listed.write_text("- grpc\n")
    assert lines(load_config(listed, {}).problems) == [
        f"{listed}:1: expected a mapping of sections (grpc, http, admin, backends, ...)"]
    empty_mapping = load_mapping(empty)
    assert [p.message for p in empty_mapping.problems] == [
        "empty mapping file (expected service, backend and methods)"]


def test_a_mapping_file_that_is_not_a_mapping(tmp_path: Path) -> None:
    path = tmp_path / "m.yaml"
    path.write_text("- service\n")
    assert [p.format() for p in load_mapping(path, "m.yaml").problems] == [
        "m.yaml:1: expected a mapping, got a list"]


# --- YAML source map ----------------------------------------------------------------------

def test_merge_keys_and_yaml11_keys() -> None:
    doc = parse_yaml("base: &b {timeout: 2s, on: x}\nuse:\n  <<: *b\n  timeout: 3s\n", "f")
    assert doc.problems == []
    assert doc.data == {"base": {"timeout": "2s", "on": "x"},
                        "use": {"timeout": "3s", "on": "x"}}
    assert doc.source.line(("use", "timeout")) == 4


def test_recursive_aliases_and_alias_bombs_are_problems() -> None:
    recursive = parse_yaml("a: &x [1, *x]\n", "f")
    assert [p.message for p in recursive.problems] == ["recursive YAML alias"]
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n"
    for level in "bcdefgh":
        prev = chr(ord(level) - 1)
        bomb += f"{level}: &{level} [" + ", ".join([f"*{prev}"] * 9) + "]\n"
    result = parse_yaml(bomb, "bomb.yaml")
    assert result.data is None
    assert [p.message for p in result.problems] == [
        f"document too large: more than {MAX_NODES} nodes after aliases"]


def test_tags_on_collections_are_refused_not_ignored() -> None:
    doc = parse_yaml("a: !!python/object:os.system {}\nb: !!set {x}\nc: !!str 5\n", "f")
    assert doc.data == {"a": None, "b": None, "c": "5"}
    assert [p.format() for p in doc.problems] == [
        "f:1: a: unsupported YAML tag '!!python/object:os.system'",
        "f:2: b: unsupported YAML tag '!!set'",
    ]


def test_value_line_points_below_a_block_scalar_key() -> None:
    doc = parse_yaml("a:\n  b: |\n    text\n  c:\n    - 1\n    - 2\n", "f")
    assert doc.source.line(("a", "b")) == 2
    assert doc.source.value_line(("a", "b")) == 2
    assert doc.source.line(("a", "c", 1)) == 6
    assert doc.source.line(("nope",)) == 1


_KEYS = st.from_regex(r"[a-z][a-z_]{0,8}", fullmatch=True)
_TREES = st.recursive(
    st.integers(-5, 5) | st.text("abc xyz", max_size=5) | st.booleans(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_KEYS, inner, max_size=3),
    max_leaves=12,
)


@given(st.dictionaries(_KEYS, _TREES, min_size=1, max_size=4))
@settings(max_examples=60, deadline=None)
def test_every_key_maps_to_the_line_that_spells_it(data: dict[str, object]) -> None:
    text = yaml.safe_dump(data, default_flow_style=False, sort_keys=False)
    doc = parse_yaml(text, "gen.yaml")
    assert doc.problems == [] and doc.data == data
    source_lines = text.splitlines()

    def walk(node: object, path: tuple[str | int, ...]) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                line = source_lines[doc.source.line(path + (key,)) - 1]
                # safe_dump quotes keys YAML would read as something else ('no', 'on')
                assert f"{key}:" in line or f"'{key}':" in line
                walk(value, path + (key,))
        elif isinstance(node, list):
            for index, item in enumerate(node):
                assert "- " in source_lines[doc.source.line(path + (index,)) - 1]
                walk(item, path + (index,))

    walk(data, ())


# --- ${VAR} expansion ---------------------------------------------------------------------

def test_expansion_cases() -> None:
    env = {"PORT": "9000", "EMPTY": "", "HOST": "db"}
    assert expand_string("127.0.0.1:${PORT:-8080}", env) == "127.0.0.1:9000"
    assert expand_string("127.0.0.1:${NOPE:-8080}", env) == "127.0.0.1:8080"
    assert expand_string("${EMPTY:-fallback}", env) == "fallback"
    assert expand_string("[${EMPTY}]", env) == "[]"
    assert expand_string("${HOST}:${PORT}", env) == "db:9000"
    assert expand_string("$${HOST} costs $5 and $$", env) == "${HOST} costs $5 and $$"
    assert expand_string("${A:-x:-y}", env) == "x:-y"
    with pytest.raises(ExpansionError, match="variables A, B not set"):
        expand_string("${A}/${B}", env)
    with pytest.raises(ExpansionError, match="nested"):
        expand_string("${A:-${B}}", env)


def test_expansion_walks_values_not_keys() -> None:
    data = {"${K}": ["${V}", {"x": "${MISSING}"}], "n": 5}
    expanded, problems = expand_env(data, {"K": "k", "V": "v"})
    assert expanded == {"${K}": ["v", {"x": "${MISSING}"}], "n": 5}
    assert [path for path, _ in problems] == [("${K}", 1, "x")]


def test_config_values_expand_before_validation(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text('backends:\n  l:\n    line:\n      address: "${ADDR}"\n'
                    '      framing: {delimiter: "\\n"}\n      pool: {size: "${SIZE:-3}"}\n'
                    'log: {fields: {price: "$${NOT_A_VAR}"}}\n')
    config = load_config(path, {"ADDR": "10.1.1.1:99"}).config
    assert config is not None
    line = config.backends["l"].line
    assert line is not None and line.address == "10.1.1.1:99" and line.pool.size == 3
    assert config.log.fields["price"] == "${NOT_A_VAR}"
    # a missing variable is reported once, not again as an invalid address
    broken = load_config(path, {})
    assert [p.message for p in broken.problems] == [
        "environment variable ADDR not set (set it, or give a default: ${ADDR:-value})"]


_NAMES = st.from_regex(r"[A-Z_][A-Z0-9_]{0,6}", fullmatch=True)
_PLAIN = st.text(st.characters(exclude_characters="${}", exclude_categories=["Cs"]),
                 max_size=20)


@given(_PLAIN)
def test_text_without_dollar_is_unchanged(text: str) -> None:
    assert expand_string(text, {}) == text


@given(_NAMES, _PLAIN, _PLAIN, _PLAIN)
def test_expansion_properties(name: str, value: str, default: str, around: str) -> None:
    assert expand_string(f"{around}${{{name}}}{around}", {name: value}) == around + value + around
    expected = value if value else default
    assert expand_string(f"${{{name}:-{default}}}", {name: value}) == expected
    assert expand_string(f"${{{name}:-{default}}}", {}) == default
    assert expand_string(f"$${{{name}}}", {name: value}) == f"${{{name}}}"


# --- durations ----------------------------------------------------------------------------

_FACTORS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def test_duration_examples() -> None:
    assert parse_duration("250ms") == 0.25
    assert parse_duration("2s") == 2.0
    assert parse_duration("1m") == 60.0
    assert parse_duration("1.5s") == 1.5
    assert parse_duration("1m30s") == 90.0
    assert parse_duration(3) == 3.0 and parse_duration(0.5) == 0.5 and parse_duration("10") == 10
    for bad in ("fast", "-1s", "1 parsec", "", "s", "1e3s", True, None, float("nan"), [1]):
        with pytest.raises(ValueError, match="expected a duration like 250ms, 2s or 1m"):
            parse_duration(bad)


@given(st.lists(st.tuples(st.integers(0, 100_000), st.integers(0, 999),
                          st.sampled_from(sorted(_FACTORS))), min_size=1, max_size=4))
def test_duration_parsing_adds_up_parts(parts: list[tuple[int, int, str]]) -> None:
    text = "".join(f"{whole}.{frac:03d}{unit}" for whole, frac, unit in parts)
    expected = sum((whole + frac / 1000) * _FACTORS[unit] for whole, frac, unit in parts)
    assert math.isclose(parse_duration(text), expected, rel_tol=1e-9, abs_tol=1e-12)


@given(st.one_of(st.text(max_size=12), st.floats(), st.integers(), st.none()))
def test_duration_parsing_never_fails_any_other_way(value: object) -> None:
    try:
        seconds = parse_duration(value)
    except ValueError as exc:
        assert "expected a duration" in str(exc)
    else:
        assert seconds >= 0 and math.isfinite(seconds)


# --- never a traceback --------------------------------------------------------------------

_VOCAB = ["grpc", "http", "admin", "listen", "backends", "ledger", "line", "process", "soap",
          "address", "framing", "delimiter", "length_prefix", "pool", "size", "timeout",
          "ambassador", "upstream", "srv", "retry", "on", "companion", "stats", "methods",
          "mappings", "protos", "wsse", "password", "command", "cwd", "log", "level"]
_VALUES = st.sampled_from([None, True, 0, -1, 4, 1.5, "", "2s", "x", "h:1", "${X}", "$${Y}",
                           "unix:/s", "0.0.0.0:0", "\n", "latin-1"])
_SHAPES = st.recursive(
    _VALUES,
    lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(st.sampled_from(_VOCAB), inner, max_size=4),
    max_leaves=20,
)


@given(st.dictionaries(st.sampled_from(_VOCAB), _SHAPES, max_size=5))
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_any_config_shape_gives_problems_never_exceptions(data: dict[str, object]) -> None:
    text = yaml.safe_dump(data, default_flow_style=False)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "c.yaml"
        path.write_text(text)
        result = load_config(path, {})
    count = max(1, len(text.splitlines()))
    for problem in result.problems:
        assert 1 <= problem.line <= count
        assert problem.format().startswith(f"{path}:{problem.line}: ")
    assert (result.config is None) == (not result.ok)


# --- paths, redaction ---------------------------------------------------------------------

def test_render_path_quotes_ambiguous_keys() -> None:
    assert render_path(("backends", "ledger", "line", "pool", "size")) == \
        "backends.ledger.line.pool.size"
    assert render_path(("on_connect", 0, "send")) == "on_connect[0].send"
    assert render_path(("fields", "a.b", "c d")) == 'fields["a.b"]["c d"]'
    assert Problem("f.yaml", 3, "", "bad").format() == "f.yaml:3: bad"
    assert Problem("f.yaml", 3, "x", "unmapped", "note").format() == "f.yaml:3: x: note: unmapped"


def test_relative_paths_resolve_against_the_config_folder(tmp_path: Path) -> None:
    context = validation_context(tmp_path / "conf")
    config = Config.model_validate(
        {"protos": ["protos/", "/abs/p.proto", "../shared/x.proto"],
         "backends": {"b": {"process": {"command": ["bc"]}}}},
        context=context)
    assert config.protos == (tmp_path / "conf" / "protos", Path("/abs/p.proto"),
                             tmp_path / "shared" / "x.proto")
    process = config.backends["b"].process
    assert process is not None and process.cwd == tmp_path / "conf"


def test_secrets_are_redacted_for_the_admin_endpoint() -> None:
    config = Config.model_validate({
        "backends": {
            "crm": {"soap": {"wsdl": "https://crm.example/crm?wsdl",
                             "endpoint": "https://svc:hunter2@crm.example/crm",
                             "wsse": {"username": "alice", "password": "s3cret"}}},
            "calc": {"process": {"command": ["bc"], "env": {"API_KEY": "k3y", "PORT": 80}}},
        },
        "auth": {"jwt": {"secret": "hs256-secret", "algorithms": ["HS256"]}},
    }, context=validation_context(Path("/srv")))
    env = config.backends["calc"].process.env  # type: ignore[union-attr]
    assert env == {"API_KEY": "k3y", "PORT": "80"}  # a YAML number is its text
    shown = redacted_dict(config)
    soap = shown["backends"]["crm"]["soap"]
    assert soap["wsse"] == {"username": "alice", "password": "***", "digest": False}
    assert soap["endpoint"] == "https://svc:***@crm.example/crm"
    assert shown["backends"]["calc"]["process"]["env"] == {"API_KEY": "***", "PORT": "***"}
    assert shown["auth"]["jwt"]["secret"] == "***"
    assert shown["auth"]["jwt"]["keys"] is None
    assert "s3cret" not in repr(shown) and "k3y" not in repr(shown)
    # the config itself keeps the real values
    wsse = config.backends["crm"].soap.wsse  # type: ignore[union-attr]
    assert wsse is not None and wsse.password == "s3cret"


def test_environ_defaults_to_the_process_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ADAPTERCAR_TEST_PORT", "4321")
    path = tmp_path / "c.yaml"
    path.write_text('grpc: {listen: "127.0.0.1:${ADAPTERCAR_TEST_PORT}"}\n')
    config = load_config(os.fspath(path)).config
    assert config is not None and config.grpc is not None
    assert config.grpc.listen == "127.0.0.1:4321"
