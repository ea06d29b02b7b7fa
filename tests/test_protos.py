"""compile_protos: real protoc runs, real descriptor pools, no mocks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from google.api import http_pb2
from google.protobuf import descriptor_pb2, json_format

from adaptercar.protos import ProtoError, ProtoSet, compile_protos, empty_protoset

HERE = Path(__file__).parent
TEST_PROTOS = HERE / "protos"
BOOKSTORE = TEST_PROTOS / "bookstore" / "v1" / "bookstore.proto"
LEDGER = HERE.parent / "protos" / "ledger" / "v1" / "ledger.proto"


@pytest.fixture(scope="module")
def ps() -> ProtoSet:
    return compile_protos([TEST_PROTOS])


def test_services_are_the_users_only(ps: ProtoSet) -> None:
    assert set(ps.services()) == {"bookstore.v1.Bookstore", "probe.v1.Probe"}
    assert ps.user_files == {"bookstore/v1/bookstore.proto", "probe/v1/probe.proto"}
    names = {f.name for f in ps.files}
    # imports are in the set (for reflection), but never offered as services
    assert {"google/api/annotations.proto", "google/api/http.proto"} <= names
    assert "google/protobuf/descriptor.proto" in names


def test_method_lookup(ps: ProtoSet) -> None:
    m = ps.method("bookstore.v1.Bookstore", "GetBook")
    assert m.full_name == "bookstore.v1.Bookstore.GetBook"
    assert m.input_type.full_name == "bookstore.v1.GetBookRequest"
    with pytest.raises(KeyError, match="no method 'Nope'.*GetBook"):
        ps.method("bookstore.v1.Bookstore", "Nope")
    with pytest.raises(KeyError, match="'x.Y' is not defined"):
        ps.method("x.Y", "GetBook")


def test_message_class_is_cached_and_works(ps: ProtoSet) -> None:
    desc = ps.pool.FindMessageTypeByName("bookstore.v1.Book")
    cls = ps.message_class(desc)
    assert ps.message_class(desc) is cls
    book = json_format.ParseDict({"pageCount": "12", "tags": ["a"], "genre": "POETRY"}, cls())
    assert json_format.MessageToDict(book) == {"pageCount": "12", "tags": ["a"], "genre": "POETRY"}
    again = cls.FromString(book.SerializeToString())
    assert again == book


def test_http_rules_are_read_from_options(ps: ProtoSet) -> None:
    rule = ps.http_rule(ps.method("bookstore.v1.Bookstore", "UpdateBook"))
    assert isinstance(rule, http_pb2.HttpRule)
    assert rule.patch == "/v1/{book.name=shelves/*/books/*}"
    assert rule.body == "book"
    listing = ps.http_rule(ps.method("bookstore.v1.Bookstore", "ListBooks"))
    assert listing is not None
    assert [b.get for b in listing.additional_bindings] == ["/v1/books"]
    archive = ps.http_rule(ps.method("bookstore.v1.Bookstore", "ArchiveShelf"))
    assert archive is not None and archive.response_body == "shelf"
    head = ps.http_rule(ps.method("bookstore.v1.Bookstore", "GetFile"))
    assert head is not None and head.additional_bindings[0].custom.kind == "HEAD"
    assert ps.http_rule(ps.method("bookstore.v1.Bookstore", "Ping")) is None


def test_descriptor_set_bytes_round_trip(ps: ProtoSet) -> None:
    fds = descriptor_pb2.FileDescriptorSet.FromString(ps.descriptor_set_bytes)
    assert [f.name for f in fds.file] == [f.name for f in ps.files]


def test_broken_proto_reports_protoc_position(tmp_path: Path) -> None:
    bad = tmp_path / "broken.proto"
    bad.write_text(
        'syntax = "proto3";\npackage x;\n\nmessage M {\n  strin name = 1;\n}\n', encoding="utf-8"
    )
    with pytest.raises(ProtoError) as info:
        compile_protos([tmp_path])
    text = str(info.value)
    assert f"{bad}:5:3:" in text
    assert '"strin" is not defined' in text
    assert "Traceback" not in text


def test_missing_import_is_protocs_message(tmp_path: Path) -> None:
    (tmp_path / "a.proto").write_text(
        'syntax = "proto3";\nimport "nowhere/b.proto";\n', encoding="utf-8"
    )
    with pytest.raises(ProtoError, match=r"nowhere/b\.proto"):
        compile_protos([tmp_path / "a.proto"])


def test_missing_path_and_wrong_suffix(tmp_path: Path) -> None:
    with pytest.raises(ProtoError, match="no such file or directory"):
        compile_protos([tmp_path / "absent"])
    txt = tmp_path / "notes.txt"
    txt.write_text("hi", encoding="utf-8")
    with pytest.raises(ProtoError, match="not a .proto file"):
        compile_protos([txt])


def test_empty_directory_is_an_empty_set(tmp_path: Path) -> None:
    ps = compile_protos([tmp_path])
    assert ps.services() == {}
    assert ps.files == []
    assert empty_protoset().services() == {}


def test_file_and_its_directory_together(tmp_path: Path) -> None:
    """A file given directly and through its directory is compiled once."""
    d = tmp_path / "pkg"
    d.mkdir()
    f = d / "s.proto"
    f.write_text(
        'syntax = "proto3";\npackage s;\nmessage R {}\nservice S { rpc M(R) returns (R); }\n',
        encoding="utf-8",
    )
    ps = compile_protos([tmp_path, f])
    assert set(ps.services()) == {"s.S"}
    assert ps.user_files == {"pkg/s.proto"}


def test_reload_builds_an_independent_pool(tmp_path: Path) -> None:
    """A changed message in a reload must not collide with the set still serving."""
    f = tmp_path / "r.proto"
    f.write_text('syntax = "proto3";\npackage r;\nmessage M { string a = 1; }\n', encoding="utf-8")
    first = compile_protos([tmp_path])
    f.write_text('syntax = "proto3";\npackage r;\nmessage M { int64 a = 1; }\n', encoding="utf-8")
    second = compile_protos([tmp_path])
    old: Any = first.message_class(first.pool.FindMessageTypeByName("r.M"))
    new: Any = second.message_class(second.pool.FindMessageTypeByName("r.M"))
    assert old is not new
    assert json_format.MessageToDict(old(a="x")) == {"a": "x"}
    assert json_format.MessageToDict(new(a=5)) == {"a": "5"}


def test_googleapis_import_resolves_without_vendoring(tmp_path: Path) -> None:
    (tmp_path / "g.proto").write_text(
        'syntax = "proto3";\npackage g;\nimport "google/api/annotations.proto";\n'
        'import "google/protobuf/timestamp.proto";\n'
        "message R { google.protobuf.Timestamp at = 1; }\n"
        'service G { rpc M(R) returns (R) { option (google.api.http) = {get: "/m"}; } }\n',
        encoding="utf-8",
    )
    ps = compile_protos([tmp_path])
    rule = ps.http_rule(ps.method("g.G", "M"))
    assert rule is not None and rule.get == "/m"


@pytest.mark.skipif(not LEDGER.exists(), reason="protos/ledger/v1/ledger.proto not written yet")
def test_project_ledger_proto_compiles() -> None:
    ps = compile_protos([LEDGER.parents[2]])
    assert "ledger.v1.Ledger" in ps.services()
    for m in ps.services()["ledger.v1.Ledger"].methods:
        assert ps.message_class(m.input_type) is not None
