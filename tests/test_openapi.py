"""The OpenAPI document of the JSON front: structure, schemas, parameters."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from google.api import http_pb2

from adaptercar.fronts.http_routes import RouteError, RouteTarget, route_targets
from adaptercar.fronts.openapi import ERROR_SCHEMA_NAME, openapi_document
from adaptercar.protos import ProtoSet, compile_protos

HERE = Path(__file__).parent
LEDGER = HERE.parent / "protos" / "ledger" / "v1" / "ledger.proto"
SVC = "bookstore.v1.Bookstore"


@pytest.fixture(scope="module")
def ps() -> ProtoSet:
    return compile_protos([HERE / "protos"])


@pytest.fixture(scope="module")
def doc(ps: ProtoSet) -> dict[str, Any]:
    return openapi_document(ps, route_targets(ps, [SVC]), "Bookstore", version="2.1")


def _schemas(doc: dict[str, Any]) -> dict[str, Any]:
    return doc["components"]["schemas"]


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        out = [node["$ref"]] if "$ref" in node else []
        for v in node.values():
            out += _refs(v)
        return out
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def _check_structure(doc: dict[str, Any]) -> None:
    """What openapi-spec-validator would check that matters here."""
    assert doc["openapi"] == "3.0.3"
    assert doc["info"]["title"] and doc["info"]["version"]
    json.dumps(doc)  # plain JSON data only
    schemas = _schemas(doc)
    for ref in _refs(doc):
        assert ref.startswith("#/components/schemas/"), ref
        assert ref.removeprefix("#/components/schemas/") in schemas, ref
    for name in schemas:
        assert re.fullmatch(r"[A-Za-z0-9.\-_]+", name), name
    op_ids: list[str] = []
    for path, item in doc["paths"].items():
        assert path.startswith("/")
        templated = set(re.findall(r"\{([^}]+)\}", path))
        for verb, op in item.items():
            assert verb in {"get", "put", "post", "delete", "options", "head", "patch", "trace"}
            op_ids.append(op["operationId"])
            params = op.get("parameters", [])
            in_path = {p["name"] for p in params if p["in"] == "path"}
            assert in_path == templated, (path, verb)
            assert all(p["required"] for p in params if p["in"] == "path")
            names = [(p["name"], p["in"]) for p in params]
            assert len(names) == len(set(names)), (path, verb)
            assert all("schema" in p for p in params)
            assert set(op["responses"]) == {"200", "default"}
            for resp in op["responses"].values():
                assert resp["description"]
                assert "schema" in resp["content"]["application/json"]
            if "requestBody" in op:
                assert "schema" in op["requestBody"]["content"]["application/json"]
    assert len(op_ids) == len(set(op_ids)), "operationIds must be unique"


def test_document_structure(doc: dict[str, Any]) -> None:
    _check_structure(doc)
    assert doc["info"] == {"title": "Bookstore", "version": "2.1"}
    assert doc["tags"] == [{"name": SVC, "description": "Shelves and the books on them."}]


def test_validates_with_openapi_spec_validator_when_installed(doc: dict[str, Any]) -> None:
    validator = pytest.importorskip("openapi_spec_validator")
    validator.validate(doc)


def test_paths_and_verbs(doc: dict[str, Any]) -> None:
    paths = doc["paths"]
    expected = {
        f"/{SVC}/ListBooks": {"post"},
        "/v1/shelves/{shelf}/books": {"get"},
        "/v1/books": {"get"},
        "/v1/shelves/{shelf}/books/{book}": {"get", "patch"},
        "/v1/shelves": {"post"},
        "/v1/shelves/{shelf_id}": {"put"},
        "/v1/shelves/{shelf}": {"delete"},
        "/v1/shelves/{shelf}:archive": {"post"},
        "/v1/files/{path}": {"get", "head"},
        f"/{SVC}/Ping": {"post"},
    }
    for path, verbs in expected.items():
        assert set(paths[path]) == verbs, path
    assert not any("WatchShelf" in p for p in paths)
    assert paths[f"/{SVC}/Ping"]["post"]["operationId"] == "bookstore_v1_Bookstore_Ping"
    assert paths["/v1/books"]["get"]["operationId"] == "bookstore_v1_Bookstore_ListBooks_http2"


def test_path_parameters(doc: dict[str, Any]) -> None:
    # a variable of several segments becomes one parameter per `*`: generated clients
    # percent-encode '/' inside a parameter, and `shelves%2F1` would not match the route
    op = doc["paths"]["/v1/shelves/{shelf}/books/{book}"]["get"]
    params = [p for p in op["parameters"] if p["in"] == "path"]
    assert [p["name"] for p in params] == ["shelf", "book"]
    assert all(p["schema"] == {"type": "string"} for p in params)
    assert "Part of `name`, which is `shelves/*/books/*`" in params[0]["description"]
    patch = doc["paths"]["/v1/shelves/{shelf}/books/{book}"]["patch"]
    assert "book.name" in patch["parameters"][0]["description"]
    files = doc["paths"]["/v1/files/{path}"]["get"]["parameters"]
    assert files[0]["name"] == "path" and "unescaped" in files[0]["description"]
    put = doc["paths"]["/v1/shelves/{shelf_id}"]["put"]
    assert put["parameters"] == [
        {"name": "shelf_id", "in": "path", "required": True, "schema": {"type": "string"}}
    ]


def test_query_parameters_for_get(doc: dict[str, Any]) -> None:
    op = doc["paths"]["/v1/shelves/{shelf}/books"]["get"]
    query = {p["name"]: p for p in op["parameters"] if p["in"] == "query"}
    assert "parent" not in query  # bound by the path
    assert "labels" not in query  # maps have no query form
    assert {"pageSize", "pageToken", "genres", "filter.author", "filter.years.min"} <= set(query)
    assert query["genres"]["schema"] == {
        "type": "array",
        "items": {"$ref": "#/components/schemas/bookstore.v1.Genre"},
    }
    assert query["genres"]["explode"] is True
    assert query["minPages"]["schema"] == {"type": "string", "format": "int64"}
    assert query["publishedAfter"]["schema"]["format"] == "date-time"
    assert "requestBody" not in op
    assert "parent" in {p["name"] for p in doc["paths"]["/v1/books"]["get"]["parameters"]}


def test_request_bodies(doc: dict[str, Any]) -> None:
    ref = "#/components/schemas/"
    create = doc["paths"]["/v1/shelves"]["post"]
    assert create["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": ref + "bookstore.v1.CreateShelfRequest"
    }
    assert "parameters" not in create  # body "*": no query parameters
    patch = doc["paths"]["/v1/shelves/{shelf}/books/{book}"]["patch"]
    assert patch["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": ref + "bookstore.v1.Book"
    }
    query = {p["name"] for p in patch["parameters"] if p["in"] == "query"}
    assert query == {"updateMask"}  # `book` is the body


def test_response_body_and_errors(doc: dict[str, Any]) -> None:
    op = doc["paths"]["/v1/shelves/{shelf}:archive"]["post"]
    ok = op["responses"]["200"]["content"]["application/json"]["schema"]
    assert ok == {"$ref": "#/components/schemas/bookstore.v1.Shelf"}
    rpc = doc["paths"][f"/{SVC}/ArchiveShelf"]["post"]
    assert rpc["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/bookstore.v1.ArchiveShelfResponse"
    }
    err = op["responses"]["default"]["content"]["application/json"]["schema"]
    assert err == {"$ref": f"#/components/schemas/{ERROR_SCHEMA_NAME}"}
    status = _schemas(doc)[ERROR_SCHEMA_NAME]
    assert status["properties"]["code"]["type"] == "integer"
    assert status["properties"]["message"]["type"] == "string"
    assert status["properties"]["details"]["type"] == "array"


def test_message_schemas(doc: dict[str, Any]) -> None:
    schemas = _schemas(doc)
    book = schemas["bookstore.v1.Book"]
    assert book["type"] == "object"
    props = book["properties"]
    assert props["name"] == {"type": "string", "description": "shelves/{shelf}/books/{book}"}
    assert props["pageCount"] == {"type": "string", "format": "int64"}
    assert props["copiesSold"] == {"type": "string", "format": "uint64"}
    assert props["genre"] == {"$ref": "#/components/schemas/bookstore.v1.Genre"}
    assert props["tags"] == {"type": "array", "items": {"type": "string"}}
    assert props["author"] == {"$ref": "#/components/schemas/bookstore.v1.Author"}
    assert props["labels"] == {"type": "object", "additionalProperties": {"type": "string"}}
    assert props["coauthors"] == {
        "type": "object",
        "additionalProperties": {"$ref": "#/components/schemas/bookstore.v1.Author"},
    }
    assert props["editors"]["items"] == {"$ref": "#/components/schemas/bookstore.v1.Author"}
    assert props["rating"] == {"type": "number", "format": "double"}
    assert props["available"] == {"type": "boolean"}
    assert props["cover"] == {"type": "string", "format": "byte"}
    assert props["published"] == {"type": "string", "format": "date-time"}
    assert props["isbn"] == {"type": "string", "format": "int64", "nullable": True}
    assert props["priceCents"] == {"type": "integer", "format": "int32"}
    assert "priceCents, free" in book["description"]  # the oneof is documented
    assert schemas["bookstore.v1.Author"]["properties"]["bornYear"]["type"] == "integer"
    assert schemas["bookstore.v1.Genre"] == {
        "type": "string",
        "enum": ["GENRE_UNSPECIFIED", "FICTION", "POETRY"],
    }
    # recursion is a $ref to itself, not an infinite schema
    assert schemas["bookstore.v1.File"]["properties"]["children"]["items"] == {
        "$ref": "#/components/schemas/bookstore.v1.File"
    }
    # well-known types are inlined, never components
    assert not any(n.startswith("google.protobuf.") for n in schemas)
    update = schemas["bookstore.v1.UpdateBookRequest"]["properties"]
    assert update["updateMask"]["type"] == "string"
    assert doc["paths"][f"/{SVC}/Ping"]["post"]["responses"]["200"]["content"]["application/json"][
        "schema"
    ] == {"type": "object"}


def test_comments_become_docs(doc: dict[str, Any]) -> None:
    op = doc["paths"]["/v1/shelves/{shelf}:archive"]["post"]
    assert op["summary"] == "A custom method: the `:archive` verb suffix."
    assert doc["paths"][f"/{SVC}/GetBook"]["post"]["summary"] == "GetBook"


def test_bad_rule_is_a_route_error(ps: ProtoSet) -> None:
    method = ps.method("probe.v1.Probe", "Call")
    target = RouteTarget("probe.v1.Probe", method, http_pb2.HttpRule(get="/x/{nope}"))
    with pytest.raises(RouteError, match="nope"):
        openapi_document(ps, [target], "t")


def test_custom_verbs_openapi_cannot_name_are_left_out(ps: ProtoSet) -> None:
    method = ps.method("probe.v1.Probe", "Call")
    rule = http_pb2.HttpRule(custom=http_pb2.CustomHttpPattern(kind="REPORT", path="/r"))
    doc = openapi_document(ps, [RouteTarget("probe.v1.Probe", method, rule)], "t")
    _check_structure(doc)
    assert set(doc["paths"]) == {"/probe.v1.Probe/Call"}


@pytest.mark.skipif(not LEDGER.exists(), reason="protos/ledger/v1/ledger.proto not written yet")
def test_project_ledger_document() -> None:
    ps = compile_protos([LEDGER.parents[2]])
    doc = openapi_document(ps, route_targets(ps), "Ledger")
    _check_structure(doc)
    assert any(p.startswith("/ledger.v1.Ledger/") for p in doc["paths"])


@pytest.mark.parametrize(
    ("template", "path", "names"),
    [
        ("/v1/{a=shelves/*}", "/v1/shelves/{shelf}", ["shelf"]),
        ("/v1/{a=categories/*/boxes/*}", "/v1/categories/{category}/boxes/{box}", None),
        ("/v1/{a=*/x/*}", "/v1/{a}/x/{x}", ["a", "x"]),
        ("/v1/{a=*/*}", "/v1/{a}/{a_2}", ["a", "a_2"]),
        ("/v1/{a=items/*}/{b=items/*}", "/v1/items/{item}/items/{item_2}", None),
        ("/v1/{inner.a=status/*}:go", "/v1/status/{status}:go", None),
    ],
)
def test_multi_segment_parameter_names(
    ps: ProtoSet, template: str, path: str, names: list[str] | None
) -> None:
    method = ps.method("probe.v1.Probe", "Call")
    doc = openapi_document(
        ps, [RouteTarget("probe.v1.Probe", method, http_pb2.HttpRule(get=template))], "t"
    )
    _check_structure(doc)
    assert path in doc["paths"]
    if names is not None:
        got = [p["name"] for p in doc["paths"][path]["get"]["parameters"] if p["in"] == "path"]
        assert got == names


def test_every_documented_path_is_served(ps: ProtoSet, doc: dict[str, Any]) -> None:
    """Fill each path as a generated client would (values percent-encoded) and route it."""
    from urllib.parse import quote

    from adaptercar.fronts.http_routes import Match, Router

    router = Router.build(route_targets(ps, [SVC]))
    for path, item in doc["paths"].items():
        for verb, op in item.items():
            filled = re.sub(r"\{[^}]+\}", lambda _: quote("v a:1", safe=""), path)
            res = router.match(verb.upper(), filled)
            assert isinstance(res, Match), (verb, path, filled)
            rpc = op["operationId"].split("_")[3]
            assert res.route.method.name == rpc
