"""`adaptercar check`, run as users run it: a subprocess on a project folder, its exact
`FILE:LINE: path: message` lines, its exit status, and never a traceback."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CASES = Path(__file__).resolve().parent / "check_cases"
DEMO = "examples/demo/adaptercar.yaml"  # run from ROOT: shown as given


@dataclass
class Result:
    code: int
    out: list[str]
    err: list[str]
    text: str


def check(config: str | Path, cwd: Path, **env: str) -> Result:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("LEDGER_")}
    environ["PYTHONPATH"] = str(ROOT)
    environ.update(env)
    done = subprocess.run(
        [sys.executable, "-m", "adaptercar.cli", "check", "-c", str(config)],
        cwd=cwd, env=environ, capture_output=True, text=True, timeout=60, check=False,
    )
    text = done.stdout + done.stderr
    assert "Traceback" not in text, text
    return Result(done.returncode, done.stdout.splitlines(), done.stderr.splitlines(), text)


def run_case(name: str) -> Result:
    return check("adaptercar.yaml", CASES / name)


def note(method: str) -> str:
    return (f"adaptercar.yaml:1: protos: note: shop.v1.Shop.{method} is not mapped by any "
            "mapping file, so it is not served")


# --- passing configs -------------------------------------------------------------------------

def test_the_demo_config_passes(tmp_path: Path) -> None:
    (tmp_path / "values").mkdir()  # `adaptercar demo` makes its DEMO_DIR so; else two notes
    r = check(DEMO, ROOT, LEDGER_USER="demo", LEDGER_PASS="demo", DEMO_DIR=str(tmp_path))
    assert r.code == 0, r.text
    assert r.err == []
    assert r.out == ["examples/demo/adaptercar.yaml: OK (10 methods mapped, 3 backends)"]


def test_the_demo_config_needs_its_login_variables() -> None:
    r = check(DEMO, ROOT)
    assert r.code == 1
    assert r.err == [
        "examples/demo/adaptercar.yaml:21: backends.ledger.line.on_connect[0].send: "
        "{env.LEDGER_USER}: environment variable LEDGER_USER is not set",
        "1 problem(s) found in examples/demo/adaptercar.yaml",
    ]


def test_unmapped_methods_are_notes_on_stdout_and_do_not_fail() -> None:
    r = run_case("ok_unmapped")
    assert r.code == 0, r.text
    assert r.err == []
    assert r.out == [note("WatchItem"), "adaptercar.yaml: OK (2 methods mapped, 1 backends)"]


def test_a_config_path_from_another_folder_names_files_from_there(tmp_path: Path) -> None:
    project = tmp_path / "project"
    shutil.copytree(CASES / "unknown_method", project)
    shutil.copytree(CASES / "protos", tmp_path / "protos")
    r = check(project / "adaptercar.yaml", tmp_path)
    assert r.code == 1
    assert r.err[0].startswith("project/mappings/shop.yaml:15: methods.GetPrice: ")


# --- broken projects -------------------------------------------------------------------------

CASES_EXPECTED: dict[str, tuple[list[str], list[str]]] = {
    "unknown_method": ([
        "mappings/shop.yaml:15: methods.GetPrice: shop.v1.Shop has no method 'GetPrice' "
        "(methods: GetItem, ListItems, WatchItem)",
    ], ["ListItems", "WatchItem"]),
    "unknown_reply_field": ([
        "mappings/shop.yaml:8: methods.GetItem.response[0].fields.cost: reply field 'cost': "
        "shop.v1.Item has no field 'cost' (fields: id, name, price_cents)",
    ], ["ListItems", "WatchItem"]),
    "unknown_template_field": ([
        "mappings/shop.yaml:5: methods.GetItem.request: template 'ITEM {item_id}': {item_id}: "
        "shop.v1.GetItemRequest has no field 'item_id' (fields: id)",
    ], ["ListItems", "WatchItem"]),
    "bad_regex": ([
        "mappings/shop.yaml:9: methods.GetItem.response[1].match: regular expression "
        "'^ERR 404 (?P<msg.*)$' does not compile: missing >, unterminated name at position 13",
    ], ["ListItems", "WatchItem"]),
    "unknown_backend": ([
        "mappings/shop.yaml:2: backend: unknown backend 'shpo' (did you mean 'shop'?)",
    ], ["ListItems", "WatchItem"]),
    "streaming": ([
        "mappings/shop.yaml:15: methods.WatchItem: shop.v1.Shop.WatchItem is a streaming rpc; "
        "only unary rpcs can be mapped",
    ], ["ListItems"]),
    "failing_example": ([
        "mappings/shop.yaml:15: methods.GetItem.examples[1]: example failed: "
        "price_cents: expected 100, got 99",
        "mappings/shop.yaml:21: methods.GetItem.examples[3]: example failed: "
        "expected a reply, got NOT_FOUND: no such item D4",
    ], ["ListItems", "WatchItem"]),
    "unknown_config_key": ([
        "adaptercar.yaml:9: backends.shop.line.timout: unknown key 'timout' "
        "(did you mean 'timeout'?)",
    ], []),
    "wrong_type": ([
        "adaptercar.yaml:10: backends.shop.line.pool.size: expected an integer, got 'many'",
    ], []),
    "several_config": ([
        "adaptercar.yaml:3: grpc.reflection: expected true or false, got 'sometimes'",
        "adaptercar.yaml:9: backends.shop.line.encodng: unknown key 'encodng' "
        "(did you mean 'encoding'?)",
        "adaptercar.yaml:10: backends.shop.line.timeout: expected a duration like 250ms, 2s "
        "or 1m, got 'soon'",
        "adaptercar.yaml:11: backends.shop.line.pool.size: expected a number > 0, got 0",
    ], []),
    "several": ([
        "adaptercar.yaml:9: backends.shop.line.probe.expect: regular expression '^(PONG' does "
        "not compile: missing ), unterminated subpattern at position 1",
        "mappings/shop.yaml:5: methods.GetItem.request: template 'ITEM {id|trim}': {id|trim}: "
        "unknown filter 'trim' (expected one of: len, upper, lower)",
        "mappings/shop.yaml:7: methods.GetItem.response[0].match: regular expression "
        "'^OK (?P<price>\\d+$' does not compile: missing ), unterminated subpattern at position 4",
        "mappings/shop.yaml:10: methods.GetItem.response[1].error.message: template '{message}': "
        "{message}: shop.v1.GetItemRequest has no field 'message' (fields: id)",
        "mappings/shop.yaml:15: methods.ListItems.response.each.into: shop.v1.ItemList has no "
        "field 'item' (fields: items)",
        "mappings/shop.yaml:16: methods.GetPrice: shop.v1.Shop has no method 'GetPrice' "
        "(methods: GetItem, ListItems, WatchItem)",
        "mappings/watch.yaml:5: methods.WatchItem.idempotent: expected true or false, got 'maybe'",
        "mappings/watch.yaml:7: methods.WatchItem.response[0]: a rule sets either 'fields' or "
        "'error', not both",
    ], ["WatchItem"]),
}


@pytest.mark.parametrize("name", sorted(CASES_EXPECTED))
def test_broken_projects_print_every_problem_and_exit_1(name: str) -> None:
    expected, unmapped = CASES_EXPECTED[name]
    r = run_case(name)
    assert r.code == 1, r.text
    assert r.err == [*expected, f"{len(expected)} problem(s) found in adaptercar.yaml"], r.text
    assert r.out == [note(m) for m in unmapped], r.text


def test_a_proto_syntax_error_shows_protocs_message() -> None:
    r = run_case("proto_syntax")
    assert r.code == 1
    assert r.err == [
        "adaptercar.yaml:1: protos: protos do not compile:",
        'protos/shop/v1/shop.proto:11:1: Expected ";".',
        "1 problem(s) found in adaptercar.yaml",
    ], r.text


def test_unreadable_configs_are_problems_not_crashes(tmp_path: Path) -> None:
    r = check("missing.yaml", tmp_path)
    assert r.code == 1 and r.err[0] == "missing.yaml:1: cannot read: No such file or directory"
    (tmp_path / "bad.yaml").write_text("grpc: [\n")
    r = check("bad.yaml", tmp_path)
    assert r.code == 1 and r.err[0].startswith("bad.yaml:2: invalid YAML: ")
    (tmp_path / "bin.yaml").write_bytes(bytes(range(256)))
    r = check("bin.yaml", tmp_path)
    assert r.code == 1 and "not UTF-8 text" in r.err[0]


def test_examples_that_cannot_run_are_reported_at_their_key(tmp_path: Path) -> None:
    shutil.copytree(CASES / "ok_unmapped", tmp_path / "p")
    shutil.copytree(CASES / "protos", tmp_path / "protos")
    mapping = tmp_path / "p" / "mappings" / "shop.yaml"
    mapping.write_text(mapping.read_text().replace(
        "        expect: {id: A1, price_cents: 250, name: Widget}\n",
        "        expect: {id: A1, price_cents: 250, name: Widget}\n"
        "      - {request: {nope: 1}, reply: OK, expect: {}}\n"
        "      - {request: {id: x}, reply: 'ERR 404 gone', expect: {error: NOT_FOUND, message: '(['}}\n"
        "      - {request: {id: x}, reply: 'ERR 404 gone', expect: {error: INTERNAL}}\n"
        '      - {request: {id: "a\\r\\nb"}, reply: "OK 1 x", expect: {price_cents: 1}}\n'
        '      - {request: {id: x}, reply: "OK 1 x\\r\\nOK 2 y", expect: {id: x}}\n'
    ))
    r = check("adaptercar.yaml", tmp_path / "p")
    assert r.code == 1
    assert r.err[:-1] == [
        "mappings/shop.yaml:15: methods.GetItem.examples[1].request: example request does not "
        'fit shop.v1.GetItemRequest: Message type "shop.v1.GetItemRequest" has no field named '
        '"nope" at "GetItemRequest". Available Fields(except extensions): "[\'id\']"',
        "mappings/shop.yaml:16: methods.GetItem.examples[2].expect.message: regular expression "
        "'([' does not compile: unterminated character set at position 1",
        "mappings/shop.yaml:17: methods.GetItem.examples[3]: example failed: expected error "
        "INTERNAL, got NOT_FOUND: gone",
        "mappings/shop.yaml:18: methods.GetItem.examples[4]: example failed: expected a reply, "
        "got INVALID_ARGUMENT: request frame 'ITEM a\\r\\nb' cannot be sent: a value contains a "
        "line break (CR or LF), which a line protocol may read as the end of the command "
        "(line-protocol injection is refused)",
        "mappings/shop.yaml:19: methods.GetItem.examples[5]: example failed: expected a reply, "
        "got INTERNAL: the mapping left 8 byte(s) of the example reply unread (a live "
        "connection would be closed as out of step); does 'until' or 'body' miss part of the "
        "reply?",
    ], r.text


def test_request_templates_that_could_break_the_framing_are_refused(tmp_path: Path) -> None:
    shutil.copytree(CASES / "ok_unmapped", tmp_path / "p")
    shutil.copytree(CASES / "protos", tmp_path / "protos")
    mapping = tmp_path / "p" / "mappings" / "shop.yaml"
    text = mapping.read_text()
    mapping.write_text(text.replace('request: "ITEM {id}"', 'request: "ITEM\\n{id}"')
                       .replace('request: "LIST {limit:03d}"', "request: []"))
    r = check("adaptercar.yaml", tmp_path / "p")
    assert r.code == 1
    assert r.err[:-1] == [
        "mappings/shop.yaml:5: methods.GetItem.request: the template's literal text contains "
        "the framing delimiter or a line break; use a list of frames instead",
        "mappings/shop.yaml:16: methods.ListItems.request: needs at least one frame (a request "
        "that sends nothing would only wait for its timeout)",
    ], r.text
