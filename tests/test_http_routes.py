"""Routing of JSON/HTTP calls by google.api.http rules, and request building. Sans-IO."""

from __future__ import annotations

import string
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from google.api import http_pb2
from google.protobuf import json_format
from hypothesis import given, settings
from hypothesis import strategies as st

from adaptercar.fronts.http_routes import (
    Match,
    MethodNotAllowed,
    NotFound,
    RequestError,
    RouteError,
    Router,
    RouteTarget,
    build_request,
    parse_message,
    parse_template,
    route_targets,
)
from adaptercar.protos import ProtoSet, compile_protos

TEST_PROTOS = Path(__file__).parent / "protos"
SVC = "bookstore.v1.Bookstore"


@pytest.fixture(scope="module")
def ps() -> ProtoSet:
    return compile_protos([TEST_PROTOS])


@pytest.fixture(scope="module")
def router(ps: ProtoSet) -> Router:
    return Router.build(route_targets(ps, [SVC]))


def _match(router: Router, method: str, path: str) -> Match:
    m = router.match(method, path)
    assert isinstance(m, Match), m
    return m


# --------------------------------------------------------------------------- routing table


@pytest.mark.parametrize(
    ("method", "path", "rpc", "params"),
    [
        ("GET", "/v1/shelves/s1/books", "ListBooks", {"parent": "shelves/s1"}),
        ("GET", "/v1/books", "ListBooks", {}),
        ("GET", "/v1/shelves/s1/books/b2", "GetBook", {"name": "shelves/s1/books/b2"}),
        ("PATCH", "/v1/shelves/s1/books/b2", "UpdateBook", {"book.name": "shelves/s1/books/b2"}),
        ("POST", "/v1/shelves", "CreateShelf", {}),
        ("PUT", "/v1/shelves/s9", "CreateShelf", {"shelf_id": "s9"}),
        ("DELETE", "/v1/shelves/s1", "DeleteShelf", {"name": "shelves/s1"}),
        ("POST", "/v1/shelves/s1:archive", "ArchiveShelf", {"name": "shelves/s1"}),
        ("GET", "/v1/files/a/b/c.txt", "GetFile", {"path": "a/b/c.txt"}),
        ("GET", "/v1/files/", "GetFile", {"path": ""}),
        ("HEAD", "/v1/files/x", "GetFile", {"path": "x"}),
        ("POST", f"/{SVC}/GetBook", "GetBook", {}),
        ("POST", f"/{SVC}/Ping", "Ping", {}),
        # a query string left on the path is ignored by matching
        ("GET", "/v1/shelves/s1/books?pageSize=3", "ListBooks", {"parent": "shelves/s1"}),
        # no verb on DELETE's template: the colon belongs to the value
        ("DELETE", "/v1/shelves/s1:archive", "DeleteShelf", {"name": "shelves/s1:archive"}),
    ],
)
def test_routes(router: Router, method: str, path: str, rpc: str, params: dict[str, str]) -> None:
    m = _match(router, method, path)
    assert m.route.method.name == rpc
    assert m.route.service == SVC
    assert m.route.grpc_path == f"/{SVC}/{rpc}"
    assert m.params == params


def test_streaming_methods_are_not_routed(router: Router) -> None:
    assert all(r.method.name != "WatchShelf" for r in router.routes)
    assert not isinstance(router.match("GET", "/v1/shelves/s1:watch"), Match)


@pytest.mark.parametrize(
    "path", ["/v1/nope", "/", "", "v1/books", "/v1/shelves/s1/books/b2/extra", "/v1/books/"]
)
def test_not_found(router: Router, path: str) -> None:
    assert isinstance(router.match("GET", path), NotFound)


def test_method_not_allowed_lists_the_allowed(router: Router) -> None:
    res = router.match("GET", "/v1/shelves/s1")
    assert isinstance(res, MethodNotAllowed)
    assert res.allowed == ("DELETE", "PUT")
    res = router.match("GET", f"/{SVC}/GetBook")
    assert isinstance(res, MethodNotAllowed) and res.allowed == ("POST",)
    res = router.match("POST", "/v1/shelves/s1/books/b2")
    assert isinstance(res, MethodNotAllowed) and res.allowed == ("GET", "PATCH")


def test_empty_segment_does_not_match_star(router: Router) -> None:
    assert isinstance(router.match("GET", "/v1/shelves//books"), NotFound)


def test_percent_decoding(router: Router) -> None:
    # one-segment variable: everything decoded, %2F included
    assert _match(router, "PUT", "/v1/shelves/a%2Fb%20c").params == {"shelf_id": "a/b c"}
    assert _match(router, "PUT", "/v1/shelves/caf%C3%A9").params == {"shelf_id": "café"}
    # several segments: %2F stays encoded so the value keeps its segment structure
    m = _match(router, "GET", "/v1/shelves/a%2fb%C3%A9/books")
    assert m.params == {"parent": "shelves/a%2fbé"}
    m = _match(router, "GET", "/v1/files/d%2Fe/f%20g")
    assert m.params == {"path": "d%2Fe/f g"}


def test_undecodable_path_value_is_a_request_error(router: Router) -> None:
    m = _match(router, "PUT", "/v1/shelves/%FF")
    with pytest.raises(RequestError, match="shelf_id.*UTF-8"):
        _ = m.params
    with pytest.raises(RequestError, match="UTF-8"):
        build_request(m, {}, b"{}")


# --------------------------------------------------------------------------- requests


def test_body_star_with_path_overlay(router: Router, ps: ProtoSet) -> None:
    m = _match(router, "PUT", "/v1/shelves/s9")
    body = b'{"shelf_id": "ignored", "shelf": {"theme": "sea"}}'
    d = build_request(m, {}, body)
    assert d == {"shelfId": "s9", "shelf": {"theme": "sea"}}
    msg = parse_message(d, ps.message_class(m.route.method.input_type))
    assert json_format.MessageToDict(msg) == {"shelfId": "s9", "shelf": {"theme": "sea"}}


def test_body_star_empty_body_is_empty_message(router: Router) -> None:
    assert build_request(_match(router, "POST", "/v1/shelves"), {}, None) == {}
    assert build_request(_match(router, "POST", f"/{SVC}/Ping"), {}, b"  ") == {}


def test_rpc_form_takes_whole_body(router: Router) -> None:
    m = _match(router, "POST", f"/{SVC}/GetBook")
    assert build_request(m, {}, b'{"name": "n", "includeReviews": true}') == {
        "name": "n",
        "includeReviews": True,
    }


def test_body_field_with_nested_path_value(router: Router, ps: ProtoSet) -> None:
    m = _match(router, "PATCH", "/v1/shelves/s1/books/b2")
    d = build_request(
        m, {"updateMask": ["title,pageCount"]}, b'{"name": "wrong", "title": "T", "page_count": 7}'
    )
    assert d == {
        "book": {"name": "shelves/s1/books/b2", "title": "T", "page_count": 7},
        "updateMask": "title,pageCount",
    }
    msg: Any = parse_message(d, ps.message_class(m.route.method.input_type))
    assert msg.book.name == "shelves/s1/books/b2"
    assert msg.book.page_count == 7
    assert list(msg.update_mask.paths) == ["title", "page_count"]


def test_body_field_errors(router: Router) -> None:
    m = _match(router, "PATCH", "/v1/shelves/s1/books/b2")
    with pytest.raises(RequestError, match="field 'book'.*expected a JSON object, got an array"):
        build_request(m, {}, b"[1, 2]")
    with pytest.raises(RequestError, match="'book' is the request body"):
        build_request(m, {"book.title": ["x"]}, b"{}")
    # the path value still lands when there is no body at all
    assert build_request(m, {}, None) == {"book": {"name": "shelves/s1/books/b2"}}


def test_response_body_is_exposed(router: Router) -> None:
    route = _match(router, "POST", "/v1/shelves/s1:archive").route
    assert route.response_body == "shelf"
    assert route.response_field is not None
    assert route.response_field.message_type is not None
    assert route.response_field.message_type.full_name == "bookstore.v1.Shelf"
    assert _match(router, "POST", f"/{SVC}/ArchiveShelf").route.response_body == ""


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"shelf": ', "malformed JSON body: Expecting value: line 1 column 11"),
        (b"[1]", r"must be a JSON object \(bookstore.v1.CreateShelfRequest\), got an array"),
        (b'"x"', "got a string"),
        (b"null", "got null"),
        (b"\xff\xfe\xfa", "not valid UTF-8|malformed JSON"),
        (b"[" * 100000, "nested too deeply|malformed JSON"),
    ],
)
def test_bad_bodies(router: Router, body: bytes, message: str) -> None:
    with pytest.raises(RequestError, match=message):
        build_request(_match(router, "POST", "/v1/shelves"), {}, body)


def test_query_parameters(router: Router, ps: ProtoSet) -> None:
    m = _match(router, "GET", "/v1/shelves/s1/books")
    query = {
        "pageSize": ["10"],
        "page_token": ["abc"],
        "genres": ["FICTION", "2"],
        "filter.author": ["Ann"],
        "filter.years.min": ["1990"],
        "include_archived": ["true"],
        "onlyAvailable": ["0"],
        "publishedAfter": ["2020-01-02T03:04:05Z"],
        "minPages": ["9007199254740993"],
    }
    d = build_request(m, query, None)
    assert d == {
        "parent": "shelves/s1",
        "pageSize": "10",
        "pageToken": "abc",
        "genres": ["FICTION", "2"],
        "filter": {"author": "Ann", "years": {"min": "1990"}},
        "includeArchived": True,
        "onlyAvailable": False,
        "publishedAfter": "2020-01-02T03:04:05Z",
        "minPages": "9007199254740993",
    }
    msg: Any = parse_message(d, ps.message_class(m.route.method.input_type))
    assert msg.page_size == 10
    assert list(msg.genres) == [1, 2]
    assert msg.filter.years.min == 1990
    assert msg.HasField("only_available") and msg.only_available.value is False
    assert msg.min_pages == 9007199254740993


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ({"nope": ["1"]}, "'nope'.*ListBooksRequest has no field 'nope'"),
        ({"filter.nope": ["1"]}, "bookstore.v1.Filter has no field 'nope'"),
        ({"pageSize": ["1", "2"]}, "not repeated, got 2 values"),
        ({"pageSize": ["1"], "page_size": ["2"]}, "set twice|given twice"),
        ({"includeArchived": ["maybe"]}, "'maybe' is not a bool"),
        ({"labels": ["x"]}, "map field 'labels'"),
        ({"filter": ["x"]}, r"is a message \(bookstore.v1.Filter\); set its fields as filter"),
        ({"pageSize.x": ["1"]}, "'page_size' has no sub-fields"),
        ({"parent": ["shelves/x"]}, "already bound by the path"),
        ({"publishedAfter.seconds": ["1"]}, "has no sub-fields"),
    ],
)
def test_query_errors(router: Router, query: dict[str, list[str]], message: str) -> None:
    with pytest.raises(RequestError, match=message):
        build_request(_match(router, "GET", "/v1/shelves/s1/books"), query, None)


def test_query_not_accepted_with_body_star(router: Router) -> None:
    with pytest.raises(RequestError, match=r"query parameters are not accepted here \(x\)"):
        build_request(_match(router, "POST", "/v1/shelves"), {"x": ["1"]}, b"{}")


def test_body_on_a_route_without_body(router: Router) -> None:
    m = _match(router, "DELETE", "/v1/shelves/s1")
    with pytest.raises(RequestError, match="takes no request body"):
        build_request(m, {}, b'{"force": true}')
    assert build_request(m, {"force": ["true"]}, b"") == {"name": "shelves/s1", "force": True}


def test_parse_message_errors_are_request_errors(router: Router, ps: ProtoSet) -> None:
    m = _match(router, "GET", "/v1/shelves/s1/books")
    cls = ps.message_class(m.route.method.input_type)
    with pytest.raises(RequestError, match="page_size|pageSize"):
        parse_message(build_request(m, {"pageSize": ["ten"]}, None), cls)
    with pytest.raises(RequestError, match="Genre|genres"):
        parse_message(build_request(m, {"genres": ["SCIFI"]}, None), cls)
    with pytest.raises(RequestError):
        parse_message({"onlyAvailable": {"value": 1}}, cls)


# --------------------------------------------------------------------------- building


def _probe_target(ps: ProtoSet, rule: http_pb2.HttpRule | None) -> RouteTarget:
    return RouteTarget("probe.v1.Probe", ps.method("probe.v1.Probe", "Call"), rule)


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        (http_pb2.HttpRule(get="/v1/{nope}"), "probe.v1.ProbeRequest has no field 'nope'"),
        (http_pb2.HttpRule(get="/v1/{tags}"), "'tags' is repeated"),
        (http_pb2.HttpRule(get="/v1/{inner}"), "names a message field"),
        (http_pb2.HttpRule(get="/v1/{a.b}"), "'a' is not a message"),
        (http_pb2.HttpRule(get="v1/x"), "must start with '/'"),
        (http_pb2.HttpRule(get="/v1/{a"), "never closed"),
        (http_pb2.HttpRule(get="/v1/**/x"), "'\\*\\*' may only be the last"),
        (http_pb2.HttpRule(get="/v1/{a=**}/{b}"), "'\\*\\*' may only be the last"),
        (http_pb2.HttpRule(get="/v1/{a}/{a}"), "bound twice"),
        (http_pb2.HttpRule(get="/v1/x:"), "expected a literal"),
        (http_pb2.HttpRule(get="/v1/x:a/b"), "must end the template"),
        (http_pb2.HttpRule(get="/v1//x"), "expected a literal"),
        (http_pb2.HttpRule(get="/v1/{a=x/{b}}"), "cannot nest|bad segment"),
        (http_pb2.HttpRule(get="/v1/{1a}"), "not a field path"),
        (http_pb2.HttpRule(post="/v1/x", body="nope"), "body 'nope' is not a field"),
        (http_pb2.HttpRule(get="/v1/x", response_body="nope"), "response_body 'nope'"),
        (http_pb2.HttpRule(body="*"), "sets no HTTP method/path"),
        (
            http_pb2.HttpRule(custom=http_pb2.CustomHttpPattern(kind="BAD KIND", path="/x")),
            "not a token",
        ),
    ],
)
def test_bad_rules_raise_route_error(ps: ProtoSet, rule: http_pb2.HttpRule, message: str) -> None:
    with pytest.raises(RouteError, match=message) as info:
        Router.build([_probe_target(ps, rule)])
    assert "probe.v1.Probe.Call" in str(info.value)


def test_conflicting_routes(ps: ProtoSet) -> None:
    rule = http_pb2.HttpRule(get="/v1/{a}")
    rule.additional_bindings.add(get="/v1/{b}")
    with pytest.raises(RouteError, match=r"GET /v1/\{b\} conflicts with GET /v1/\{a\}"):
        Router.build([_probe_target(ps, rule)])


def test_priority_literal_before_variable_and_verb_first(ps: ProtoSet) -> None:
    rule = http_pb2.HttpRule(get="/v1/{a}")
    rule.additional_bindings.add(get="/v1/special")
    rule.additional_bindings.add(get="/v1/{b}/y")
    rule.additional_bindings.add(get="/v1/x/{c}")
    rule.additional_bindings.add(get="/v1/{d=**}:go")
    r = Router.build([_probe_target(ps, rule)])
    assert _match(r, "GET", "/v1/special").route.template == "/v1/special"
    assert _match(r, "GET", "/v1/other").params == {"a": "other"}
    # both `{b}/y` and `x/{c}` fit, with as many literals: declaration order decides
    assert _match(r, "GET", "/v1/x/y").params == {"b": "x"}
    assert _match(r, "GET", "/v1/x/z").params == {"c": "z"}
    assert _match(r, "GET", "/v1/x/y:go").params == {"d": "x/y"}
    assert _match(r, "GET", "/v1/other:stop").params == {"a": "other:stop"}


def test_custom_method_and_nested_additional_bindings(ps: ProtoSet) -> None:
    rule = http_pb2.HttpRule(custom=http_pb2.CustomHttpPattern(kind="report", path="/r/{a}"))
    rule.additional_bindings.add(get="/g/{b}", response_body="a")
    r = Router.build([_probe_target(ps, rule)])
    m = _match(r, "REPORT", "/r/1")
    assert m.params == {"a": "1"} and m.route.binding == 0 and not m.route.rpc_form
    g = _match(r, "GET", "/g/2")
    assert g.route.binding == 1 and g.route.response_body == "a"


def test_path_value_types(ps: ProtoSet) -> None:
    rule = http_pb2.HttpRule(get="/c/{count}/{flag}/{inner.inner.a}")
    r = Router.build([_probe_target(ps, rule)])
    d = build_request(_match(r, "GET", "/c/42/true/deep"), {}, None)
    assert d == {"count": "42", "flag": True, "inner": {"inner": {"a": "deep"}}}
    with pytest.raises(RequestError, match="'nah' is not a bool"):
        build_request(_match(r, "GET", "/c/42/nah/deep"), {}, None)


def test_query_names_both_spellings_and_repeated(ps: ProtoSet) -> None:
    r = Router.build([_probe_target(ps, http_pb2.HttpRule(get="/q"))])
    m = _match(r, "GET", "/q")
    d = build_request(m, {"snakeName": ["s"], "tags": ["x", "y"], "inner.inner.b": ["z"]}, None)
    assert d == {"snakeName": "s", "tags": ["x", "y"], "inner": {"inner": {"b": "z"}}}
    assert build_request(m, {"snake_name": ["s"]}, None) == {"snakeName": "s"}
    with pytest.raises(RequestError, match="repeated message"):
        build_request(m, {"inners.a": ["1"]}, None)


# --------------------------------------------------------------------------- properties

_LIT = st.text(alphabet=string.ascii_lowercase + string.digits + "-_.~", min_size=1, max_size=6)
_FIELDS = ["a", "b", "c", "d", "inner.a", "inner.b", "inner.inner.a"]
# values may hold anything, '/' and ':' and '%' and non-ASCII included: the client encodes them
_VALUE = st.text(alphabet=st.characters(codec="utf-8"), min_size=1, max_size=8)


@st.composite
def _template_and_values(draw: Any) -> tuple[str, str, dict[str, str]]:
    """A template, a path built from it with encoded values, and the values expected back."""
    n = draw(st.integers(1, 5))
    used = list(draw(st.permutations(_FIELDS)))  # no field is a prefix of another
    t_parts: list[str] = []
    p_parts: list[str] = []
    expected: dict[str, str] = {}
    for _ in range(n):
        kind = draw(st.sampled_from(["lit", "star", "var", "multi"]))
        if kind in ("var", "multi") and not used:
            kind = "lit"
        if kind == "lit":
            lit = draw(_LIT)
            t_parts.append(lit)
            p_parts.append(lit)
        elif kind == "star":
            t_parts.append("*")
            p_parts.append(quote(draw(_VALUE), safe=""))
        elif kind == "var":
            name = used.pop(0)
            value = draw(_VALUE)
            t_parts.append("{" + name + "}")
            p_parts.append(quote(value, safe=""))
            expected[name] = value
        else:
            name = used.pop(0)
            lit = draw(_LIT)
            segs = draw(st.lists(_VALUE, min_size=1, max_size=3))
            t_parts.append("{" + name + "=" + lit + "/" + "/".join("*" for _ in segs) + "}")
            p_parts.append(lit + "/" + "/".join(quote(s, safe="") for s in segs))
            # multi-segment values keep an encoded '/' as %2F
            expected[name] = lit + "/" + "/".join(s.replace("/", "%2F") for s in segs)
    if used and draw(st.booleans()):
        name = used.pop(0)
        segs = draw(st.lists(_VALUE, min_size=0, max_size=3))
        t_parts.append("{" + name + "=**}")
        p_parts.append("/".join(quote(s, safe="") for s in segs))
        expected[name] = "/".join(s.replace("/", "%2F") for s in segs)
    verb = draw(st.one_of(st.just(""), _LIT))
    suffix = f":{verb}" if verb else ""
    return "/" + "/".join(t_parts) + suffix, "/" + "/".join(p_parts) + suffix, expected


@settings(max_examples=300, deadline=None)
@given(_template_and_values())
def test_template_round_trip(ps: ProtoSet, case: tuple[str, str, dict[str, str]]) -> None:
    template, path, expected = case
    parsed = parse_template(template)
    assert parsed.regex.fullmatch(path) is not None
    r = Router.build([_probe_target(ps, http_pb2.HttpRule(get=template))])
    m = r.match("GET", path)
    assert isinstance(m, Match), (template, path)
    assert m.route.template == template
    assert m.params == expected
    d = build_request(m, {}, None)
    for name, value in expected.items():
        node: Any = d
        for part in name.split("."):
            node = node[part]
        assert node == value


@settings(max_examples=200, deadline=None)
@given(
    method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "BREW"]),
    path=st.text(alphabet="/v1shelvbok:%2Fx*{}?é", max_size=40),
    query=st.dictionaries(
        st.sampled_from(["pageSize", "filter.years.min", "x", "", "genres", "filter", "a.b.c"]),
        st.lists(st.text(max_size=5), max_size=3),
        max_size=3,
    ),
    body=st.one_of(st.none(), st.binary(max_size=30), st.just(b'{"book": {"title": 1}}')),
)
def test_arbitrary_requests_never_crash(
    router: Router, method: str, path: str, query: dict[str, list[str]], body: bytes | None
) -> None:
    """Whatever arrives: a Match, 404 or 405, and building only ever raises RequestError."""
    res = router.match(method, path)
    assert isinstance(res, Match | NotFound | MethodNotAllowed)
    if isinstance(res, Match):
        try:
            build_request(res, query, body)
        except RequestError as exc:
            assert str(exc)


def test_matching_is_fast(router: Router) -> None:
    """No per-request compilation: 20k matches of a regex route well under a second."""
    import time

    t0 = time.perf_counter()
    for _ in range(20_000):
        router.match("GET", "/v1/shelves/s1/books/b2")
    assert time.perf_counter() - t0 < 1.0
