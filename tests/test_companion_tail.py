"""companion.logs: the sans-IO line splitter, and following real files across rotations."""

from __future__ import annotations

import io
import json
import os
import re
import threading
import time
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from adaptercar.companion.tail import FileFollower, Line, LineSplitter, LogEmitter
from adaptercar.logs import log

# --- the splitter --------------------------------------------------------------------------------


def _reference(data: bytes, max_bytes: int) -> tuple[list[Line], bytes]:
    """Lines as a simple whole-buffer reading defines them, and the partial rest."""
    *whole, rest = data.split(b"\n")
    lines: list[Line] = []
    for ln in whole:
        lines.append((ln[:max_bytes], len(ln) > max_bytes))
    if len(rest) > max_bytes:
        lines.append((rest[:max_bytes], True))
        rest = b""
    return lines, rest


def _split_all(data: bytes, cuts: list[int], max_bytes: int) -> tuple[list[Line], int]:
    sp = LineSplitter(max_bytes)
    out: list[Line] = []
    prev = 0
    for c in sorted(set(cuts)) + [len(data)]:
        out += sp.feed(data[prev:c])
        prev = c
    return out, sp.pending


_bytes = st.lists(st.sampled_from([b"a", b"bc", b"\n", b"\xc3\xa9", b"xyz12", b"\r\n"]), max_size=60).map(b"".join)


@settings(max_examples=300, deadline=None)
@given(data=_bytes, cuts=st.lists(st.integers(0, 400), max_size=20), max_bytes=st.integers(1, 12))
def test_any_chunking_gives_the_same_lines(data: bytes, cuts: list[int], max_bytes: int) -> None:
    cuts = [c for c in cuts if c <= len(data)]
    got, pending = _split_all(data, cuts, max_bytes)
    want, rest = _reference(data, max_bytes)
    assert got == want
    assert pending == len(rest)


@given(data=_bytes, max_bytes=st.integers(1, 12))
def test_byte_by_byte_is_the_same_as_at_once(data: bytes, max_bytes: int) -> None:
    assert _split_all(data, list(range(len(data))), max_bytes) == _split_all(data, [], max_bytes)


def test_partial_line_waits_for_its_newline() -> None:
    sp = LineSplitter(100)
    assert sp.feed(b"hello wor") == []
    assert sp.pending == 9
    assert sp.feed(b"ld\nnext") == [(b"hello world", False)]
    assert sp.feed(b"\n") == [(b"next", False)]


def test_overlong_line_is_cut_flagged_and_its_rest_dropped() -> None:
    sp = LineSplitter(4)
    assert sp.feed(b"abcdefgh") == [(b"abcd", True)]
    assert sp.pending == 0  # memory stays bounded while the rest streams by
    assert sp.feed(b"ijk\nok\n") == [(b"ok", False)]
    assert sp.feed(b"1234\n") == [(b"1234", False)]  # exactly max_line_bytes is not cut


# --- following real files --------------------------------------------------------------------------


def _texts(lines: list[Line]) -> list[str]:
    return [raw.decode() for raw, _ in lines]


def test_starts_at_the_end_by_default_and_from_start_on_request(tmp_path: Path) -> None:
    p = tmp_path / "app.log"
    p.write_bytes(b"old 1\nold 2\n")
    f = FileFollower(str(p), 1000)
    s = FileFollower(str(p), 1000, from_start=True)
    assert f.poll() == []
    assert _texts(s.poll()) == ["old 1", "old 2"]
    with p.open("ab") as w:
        w.write(b"new 1\nnew ")
    assert _texts(f.poll()) == ["new 1"]
    with p.open("ab") as w:
        w.write(b"2\n")
    assert _texts(f.poll()) == ["new 2"]
    f.close()
    s.close()


def test_a_file_that_appears_later_is_read_from_its_start(tmp_path: Path) -> None:
    p = tmp_path / "later.log"
    f = FileFollower(str(p), 1000)
    assert f.poll() == []
    p.write_bytes(b"first\n")
    assert _texts(f.poll()) == ["first"]
    f.close()


def test_rotation_by_rename_reads_the_old_file_to_its_end_then_the_new(tmp_path: Path) -> None:
    p = tmp_path / "app.log"
    p.write_bytes(b"")
    f = FileFollower(str(p), 1000)
    w = p.open("ab", buffering=0)
    w.write(b"a\nb\n")
    assert _texts(f.poll()) == ["a", "b"]
    w.write(b"c\nlast without newline")
    os.rename(p, tmp_path / "app.log.1")
    w.write(b" done\n")  # the app writes on into the renamed file before it reopens
    w.close()
    p.write_bytes(b"new 1\n")
    got = []
    for _ in range(4):
        got += _texts(f.poll())
    assert got == ["c", "last without newline done", "new 1"]
    f.close()


def test_rotation_by_truncation_restarts_at_zero(tmp_path: Path) -> None:
    p = tmp_path / "app.log"
    p.write_bytes(b"")
    f = FileFollower(str(p), 1000)
    with p.open("ab") as w:
        w.write(b"one\ntwo\n")
    assert _texts(f.poll()) == ["one", "two"]
    os.truncate(p, 0)
    with p.open("ab") as w:
        w.write(b"three\n")
    assert _texts(f.poll()) == ["three"]
    f.close()


def test_ten_thousand_lines_across_a_rename_and_a_truncation_come_out_once_in_order(tmp_path: Path) -> None:
    """A writer thread appends while it rotates; the tailer polls concurrently. Before the
    copytruncate the writer waits until the tailer has read everything (as logrotate's copy
    step does: what it copied is what a tailer could have missed), then until it noticed."""
    p = tmp_path / "app.log"
    p.write_bytes(b"")
    f = FileFollower(str(p), 1000)
    total = 10_000
    caught_up = threading.Event()
    reset_seen = threading.Event()
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            w = p.open("ab", buffering=0)
            for i in range(total):
                if i == 3000:  # rotation by rename
                    os.rename(p, tmp_path / "app.log.1")
                    w.close()
                    w = p.open("ab", buffering=0)
                if i == 6500:  # rotation by truncation
                    w.flush()
                    assert caught_up.wait(10)
                    os.truncate(p, 0)
                    assert reset_seen.wait(10)
                # a line in two writes now and then: the tailer must wait for the newline
                line = f"line {i:05d} " + "x" * (i % 37)
                if i % 97 == 0:
                    w.write(line[:5].encode())
                    w.write((line[5:] + "\n").encode())
                else:
                    w.write((line + "\n").encode())
            w.close()
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            errors.append(e)

    t = threading.Thread(target=writer)
    t.start()
    got: list[str] = []
    deadline = time.monotonic() + 15
    while len(got) < total and time.monotonic() < deadline and not errors:
        before = f.offset
        got += _texts(f.poll())
        if len(got) >= 6500 and not caught_up.is_set():
            try:
                if f.fd is not None and os.fstat(f.fd).st_size == f.offset and f.splitter.pending == 0:
                    caught_up.set()
            except OSError:
                pass
        if caught_up.is_set() and not reset_seen.is_set() and f.offset < before:
            reset_seen.set()
        time.sleep(0.002)
    t.join(10)
    assert not errors
    want = [f"line {i:05d} " + "x" * (i % 37) for i in range(total)]
    assert got == want
    f.close()


# --- emitting -------------------------------------------------------------------------------------


def test_lines_become_json_with_fields_parsed_groups_and_cut_flag() -> None:
    out = io.StringIO()
    log.configure("info", {"cluster": "eu"})
    try:
        em = LogEmitter("legacy-app", re.compile(r"^(?P<ts>\S+ \S+) (?P<level>[A-Z]+) (?P<msg>.*)$"),
                        {"source": "legacy-app"}, stream=out)
        em.emit([(b"2026-01-01 10:00:00 ERROR disk full", False), (b"free text", False),
                 (b"\xffbroken", True)])
    finally:
        log.configure("info")
    recs = [json.loads(x) for x in out.getvalue().splitlines()]
    assert [r["event"] for r in recs] == ["legacy_log"] * 3
    assert all(r["source"] == "legacy-app" and r["cluster"] == "eu" and "hostname" in r for r in recs)
    assert recs[0]["level"] == "ERROR" and recs[0]["msg"] == "disk full"
    assert recs[0]["legacy_ts"] == "2026-01-01 10:00:00"
    assert recs[1]["msg"] == "free text" and "cut" not in recs[1]
    assert recs[2]["cut"] is True and recs[2]["msg"] == "\ufffdbroken"
    from prometheus_client import REGISTRY

    def count(outcome: str) -> float | None:
        return REGISTRY.get_sample_value("adaptercar_companion_log_lines_total",
                                         {"source": "legacy-app", "outcome": outcome})

    assert count("parsed") == 1 and count("unparsed") == 2 and count("cut") == 1
