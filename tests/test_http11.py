"""The sans-IO HTTP/1.1 client messages: any split of a reply reads the same, chunked and
Content-Length bodies read the same, bounds hold, and what cannot be read is an HttpError."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from adaptercar.mapping.http11 import (
    MAX_HEAD,
    HttpError,
    Reply,
    ReplyParser,
    ReplyTooLarge,
    request_bytes,
    request_prefix,
)

bodies = st.binary(max_size=3000)
reasons = st.sampled_from(["OK", "Internal Server Error", "", "Fine Thanks"])
statuses = st.sampled_from([200, 201, 400, 404, 500, 502, 503])
extra_headers = st.lists(st.tuples(st.sampled_from(["Content-Type", "X-A", "Server", "Date"]),
                                   st.text("abcdefgh ;=/", max_size=20).map(str.strip)),
                         max_size=4)


def length_reply(status: int, reason: str, headers: list[tuple[str, str]], body: bytes) -> bytes:
    head = "".join(f"{k}: {v}\r\n" for k, v in headers)
    return (f"HTTP/1.1 {status} {reason}\r\n{head}Content-Length: {len(body)}\r\n\r\n".encode()
            + body)


def chunked_reply(status: int, reason: str, headers: list[tuple[str, str]], chunks: list[bytes],
                  trailers: str = "") -> bytes:
    head = "".join(f"{k}: {v}\r\n" for k, v in headers)
    out = f"HTTP/1.1 {status} {reason}\r\n{head}Transfer-Encoding: chunked\r\n\r\n".encode()
    for c in chunks:
        if c:
            out += b"%x;ext=1\r\n" % len(c) + c + b"\r\n"
    return out + f"0\r\n{trailers}\r\n".encode()


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    parts, last = [], 0
    for p in points:
        parts.append(data[last:p])
        last = p
    parts.append(data[last:])
    return parts


def read(data: bytes, cuts: list[int], limit: int = 1 << 20, close: bool = False) -> Reply:
    parser = ReplyParser(limit)
    got = None
    for part in split(data, cuts):
        r = parser.feed(part)
        if r is not None:
            assert got is None
            got = r
    if got is None and close:
        got = parser.closed()
    assert got is not None, "the reply was not complete"
    return got


@given(statuses, reasons, extra_headers, bodies, st.lists(st.integers(0, 10_000), max_size=8))
def test_any_split_of_a_content_length_reply_reads_the_same(
        status: int, reason: str, headers: list[tuple[str, str]], body: bytes,
        cuts: list[int]) -> None:
    data = length_reply(status, reason, headers, body)
    whole = read(data, [])
    assert (whole.status, whole.reason, whole.body, whole.keep_alive) == (status, reason, body, True)
    assert whole.header("content-length") == str(len(body))
    again = read(data, cuts)
    assert again == whole


@given(statuses, extra_headers, st.lists(st.binary(max_size=400), max_size=8),
       st.sampled_from(["", "X-Checksum: abc\r\n"]), st.lists(st.integers(0, 10_000), max_size=8))
def test_chunked_equals_content_length_in_any_split(
        status: int, headers: list[tuple[str, str]], chunks: list[bytes], trailers: str,
        cuts: list[int]) -> None:
    body = b"".join(chunks)
    by_length = read(length_reply(status, "OK", headers, body), [])
    by_chunks = read(chunked_reply(status, "OK", headers, chunks, trailers), cuts)
    assert (by_chunks.status, by_chunks.body, by_chunks.keep_alive) == \
        (by_length.status, by_length.body, True)


@given(bodies, st.lists(st.integers(0, 10_000), max_size=8))
def test_a_close_delimited_body_ends_with_the_connection(body: bytes, cuts: list[int]) -> None:
    data = b"HTTP/1.1 200 OK\r\nContent-Type: text/xml\r\n\r\n" + body
    parser = ReplyParser(1 << 20)
    for part in split(data, cuts):
        assert parser.feed(part) is None
    reply = parser.closed()
    assert reply.body == body and reply.keep_alive is False


@given(st.integers(0, 2000), st.integers(0, 2000), st.booleans(),
       st.lists(st.integers(0, 10_000), max_size=6))
def test_the_body_bound_holds_in_every_framing(size: int, limit: int, chunked: bool,
                                               cuts: list[int]) -> None:
    body = b"x" * size
    data = chunked_reply(200, "OK", [], [body[:size // 2], body[size // 2:]]) if chunked \
        else length_reply(200, "OK", [], body)
    if size <= limit:
        assert read(data, cuts, limit).body == body
    else:
        with pytest.raises(ReplyTooLarge):
            read(data, cuts, limit)


def test_a_declared_length_over_the_bound_fails_before_the_body_arrives() -> None:
    parser = ReplyParser(100)
    with pytest.raises(ReplyTooLarge):
        parser.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 101\r\n\r\n")


def test_close_delimited_body_bound() -> None:
    parser = ReplyParser(10)
    parser.feed(b"HTTP/1.0 200 OK\r\n\r\n12345")
    with pytest.raises(ReplyTooLarge):
        parser.feed(b"678901")


def test_an_endless_head_is_bounded() -> None:
    parser = ReplyParser(100)
    parser.feed(b"HTTP/1.1 200 OK\r\n")
    with pytest.raises(ReplyTooLarge):
        for _ in range(MAX_HEAD // 1000 + 2):
            parser.feed(b"X-Pad: " + b"a" * 1000 + b"\r\n")


def test_an_endless_chunk_size_line_is_refused() -> None:
    parser = ReplyParser(100)
    parser.feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    with pytest.raises(HttpError):
        parser.feed(b"1" + b" " * 2000)


@pytest.mark.parametrize("head, keep", [
    (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", True),
    (b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n", False),
    (b"HTTP/1.1 200 OK\r\nConnection: Keep-Alive, Close\r\nContent-Length: 0\r\n\r\n", False),
    (b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", False),
    (b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n", True),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n", False),
    (b"HTTP/1.1 204 No Content\r\n\r\n", True),
])
def test_keep_alive(head: bytes, keep: bool) -> None:
    reply = ReplyParser(100).feed(head)
    assert reply is not None and reply.keep_alive is keep and reply.body == b""


def test_interim_replies_are_skipped_and_leftover_bytes_are_kept() -> None:
    parser = ReplyParser(100)
    reply = parser.feed(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n"
                        b"\r\nhiHTTP/1.1")
    assert reply is not None and (reply.status, reply.body) == (200, b"hi")
    assert parser.leftover == b"HTTP/1.1"
    assert parser.feed(b" 200") is None and parser.leftover == b"HTTP/1.1 200"


@pytest.mark.parametrize("data", [
    b"HTTP/2 200 OK\r\n\r\n",
    b"SSH-2.0-OpenSSH\r\n\r\n",
    b"HTTP/1.1 2000 OK\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nNo colon here\r\n\r\n",
    b"HTTP/1.1 200 OK\r\n folded: x\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabXY",
    b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
])
def test_unreadable_replies_are_http_errors(data: bytes) -> None:
    with pytest.raises(HttpError):
        ReplyParser(100).feed(data)


def test_a_cut_reply_is_an_error_and_started_tells_whether_any_byte_came() -> None:
    parser = ReplyParser(100)
    with pytest.raises(HttpError, match="before a reply"):
        parser.closed()
    assert parser.started is False
    parser.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
    assert parser.started is True
    with pytest.raises(HttpError, match="middle"):
        parser.closed()


def test_request_bytes() -> None:
    prefix = request_prefix("POST", "/crm?x=1", "svc.internal:8080")
    data = request_bytes(prefix, [("Content-Type", "text/xml"), ("X-Request-Id", "r1")], b"<e/>")
    assert data == (b"POST /crm?x=1 HTTP/1.1\r\nHost: svc.internal:8080\r\n"
                    b"Content-Type: text/xml\r\nX-Request-Id: r1\r\nContent-Length: 4\r\n\r\n<e/>")


@pytest.mark.parametrize("name, value", [("X-Request-Id", "a\r\nEvil: 1"), ("X\nY", "v"),
                                         ("traceparent", "00\0")])
def test_a_header_cannot_break_the_head(name: str, value: str) -> None:
    with pytest.raises(ValueError, match="line break or NUL"):
        request_bytes(request_prefix("POST", "/", "h"), [(name, value)], b"")
