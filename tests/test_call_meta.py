"""Call metadata read one key at a time (`get` before anything built the dict) gives exactly
what the whole dict gives: names compared lower-case, gRPC's last text value, HTTP's first."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.web.http_headers import Headers

from adaptercar.fronts.grpc_front import GrpcMeta
from adaptercar.fronts.http_front import HeaderMeta

names = st.sampled_from(["x-request-id", "X-Request-Id", "traceparent", "Authorization",
                         "authorization", "x-h", "X-H", "ü-h", "a b", "☃"])
values = st.one_of(st.text(max_size=5), st.binary(max_size=3))


@given(st.lists(st.tuples(names, values), max_size=8), names)
def test_grpc_get_one_key_equals_the_dict(md: list[tuple[str, object]], key: str) -> None:
    assert GrpcMeta(md).get(key, "-") == dict(GrpcMeta(md)).get(key, "-")


@given(st.lists(st.tuples(names.filter(lambda n: n.isascii() and " " not in n), st.text("abc ", max_size=5)),
                max_size=8), names)
def test_http_get_one_key_equals_the_dict(pairs: list[tuple[str, str]], key: str) -> None:
    headers = Headers()
    for name, value in pairs:
        headers.addRawHeader(name.encode(), value.encode())
    assert HeaderMeta(headers).get(key, "-") == dict(HeaderMeta(headers)).get(key, "-")
