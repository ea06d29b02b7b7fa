"""An Operation: one mapped rpc, compiled once per config load.

Fronts hand an Operation a request message and call context; the backend shell asks it for the
wire bytes of the request and a reply reader. The Operation itself does no I/O, so the whole
translation — render, frame, parse, convert — is testable without sockets and runs offline for
`examples:` in `adaptercar check`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import CallError, Code, quote_raw
from .framing import (
    Decoder,
    Delimited,
    Framing,
    FramingError,
    check_payload,
    encode_body,
    encode_frame,
)
from .reply import ReplyReader, ReplySpec
from .template import RenderContext, Template


@dataclass(frozen=True)
class RequestItem:
    """One frame of a request; `body` items are byte-counted and may contain the delimiter."""

    template: Template
    body: bool = False


@dataclass(frozen=True)
class CallContext:
    """Per-call facts from the front: metadata (lower-case keys), JWT claims, deadline."""

    meta: Mapping[str, str] = field(default_factory=dict)  # a dict, or built on first read
    claims: dict[str, Any] = field(default_factory=dict)
    deadline: float | None = None  # absolute, time.monotonic() clock
    request_id: str = ""

    @classmethod
    def of(cls, meta: Mapping[str, str], deadline: float | None, request_id: str,
           claims: dict[str, Any] | None = None) -> CallContext:
        """What the fronts build per call: `CallContext(meta=..., deadline=..., request_id=...)`
        without the frozen dataclass's one object.__setattr__ per field (nor `replace`'s
        field introspection, where a call's context gains claims or a deadline)."""
        ctx = object.__new__(cls)
        ctx.__dict__.update(meta=meta, claims={} if claims is None else claims, deadline=deadline,
                            request_id=request_id)
        return ctx


@dataclass(frozen=True)
class LineOperation:
    service: str
    method: str
    backend: str
    input_class: Any
    output_class: Any
    items: tuple[RequestItem, ...]
    reply: ReplySpec
    framing: Framing
    encoding: str
    idempotent: bool = False
    timeout: float | None = None
    auth: str = ""  # required | optional | none; "" = the config's auth.default
    # Derived from framing and encoding: whether values may not hold CR or LF (see below).
    refuse_line_breaks: bool = field(default=False, init=False, repr=False, compare=False)
    # The delimiter of a Delimited framing: its frames are checked and built inline.
    _delimiter: bytes | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "refuse_line_breaks", line_breaks_refused(self.framing, self.encoding))
        if isinstance(self.framing, Delimited):
            object.__setattr__(self, "_delimiter", self.framing.delimiter)

    @property
    def path(self) -> str:
        return f"/{self.service}/{self.method}"

    def render_context(self, request: Any, ctx: CallContext) -> RenderContext:
        return RenderContext(request, {}, ctx.meta, ctx.claims)

    def encode_request(self, rctx: RenderContext) -> bytes:
        """Render and frame every request item; INVALID_ARGUMENT if any value would break
        the framing or cannot be encoded — then nothing at all is sent."""
        out: list[bytes] = []
        for item in self.items:
            text = item.template.render(rctx)
            if self.refuse_line_breaks and not item.body and ("\n" in text or "\r" in text):
                raise CallError(
                    Code.INVALID_ARGUMENT,
                    f"request frame {quote_raw(text)} cannot be sent: a value contains a line "
                    "break (CR or LF), which a line protocol may read as the end of the command "
                    "(line-protocol injection is refused)",
                )
            try:
                # surrogateescape only turns a bytes field's undecodable bytes back into
                # themselves; a character the encoding lacks still fails here.
                payload = text.encode(self.encoding, "surrogateescape")
            except UnicodeEncodeError as e:
                bad = text[e.start : e.end]
                raise CallError(
                    Code.INVALID_ARGUMENT,
                    f"request value contains {bad!r}, which the backend's encoding "
                    f"{self.encoding} cannot represent",
                ) from None
            delim = self._delimiter
            if delim is not None:
                # encode_frame / encode_body for a delimiter, inline: the frame is the payload
                # and the delimiter, and (not a body) must not hold the delimiter before its end
                framed = payload + delim
                if item.body or framed.find(delim) == len(payload):
                    out.append(framed)
                    continue
            try:
                if item.body:
                    out.append(encode_body(self.framing, payload))
                else:
                    check_payload(self.framing, payload)
                    out.append(encode_frame(self.framing, payload))
            except FramingError as e:
                raise CallError(
                    Code.INVALID_ARGUMENT,
                    f"request frame {quote_raw(text)} cannot be sent: {_framing_reason(e)}",
                ) from None
        return out[0] if len(out) == 1 else b"".join(out)

    def reader(self, rctx: RenderContext) -> ReplyReader:
        return self.reply.reader(rctx)


def line_breaks_refused(framing: Framing, encoding: str) -> bool:
    """Whether request values must hold neither CR nor LF.

    With a delimiter made of line ends (CRLF, LF), refusing only the exact delimiter is not
    enough: many legacy servers also end a command at a bare LF or CR (the trick behind SMTP
    smuggling), so a value holding either could still start a second command there.
    """
    if not isinstance(framing, Delimited):
        return False
    text = framing.delimiter.decode(encoding, "replace")
    return "\r" in text or "\n" in text


def _framing_reason(e: FramingError) -> str:
    reason = getattr(e, "reason", "")
    if reason == "delimiter-in-value":
        return "a value contains the framing delimiter (line-protocol injection is refused)"
    if reason == "too-long-for-record":
        return "it does not fit the backend's record/frame size"
    return str(e)


def example_reply_bytes(framing: Framing, encoding: str, text: str) -> bytes:
    r"""The bytes of an `examples:` reply as the backend would send them.

    With a delimiter, text that holds the delimiter is taken as raw bytes (so a body may hold
    it), a missing final delimiter added; otherwise each line is one frame, as YAML writes it
    most readably (`"STMT 1 18\nBALANCE ..."`). Other framings: each line is one frame.
    Raises UnicodeEncodeError for characters the backend's encoding lacks.
    """
    if not text:
        return b""
    if isinstance(framing, Delimited):
        delim = framing.delimiter.decode(encoding, "replace")
        if delim in text:
            return (text if text.endswith(delim) else text + delim).encode(encoding)
    lines = (text[:-1] if text.endswith("\n") else text).split("\n")
    return b"".join(encode_body(framing, line.encode(encoding)) for line in lines)


def run_offline(op: LineOperation, request: Any, reply: str | Sequence[str], *,
                stderr: str | None = None, exit_status: int | None = None,
                per_call: bool = False) -> Any:
    """Feed a canned legacy reply through the operation with no backend: how `check` runs
    a mapping's `examples:`. `reply` is the example's text (see `example_reply_bytes`) or a
    list of frames. Returns the message or raises CallError; a reply the mapping does not read
    to its end fails too, since a live connection would then be closed as out of step.

    Process backends: `per_call` reads the reply as the program's whole stdout, as a per-call
    child does once it has exited (`exit_status` defaults to 0). Otherwise `stderr` lines
    arrive before stdout, each tested as a pooled child's stderr line would be."""
    rctx = op.render_context(request, CallContext())
    op.encode_request(rctx)  # an example whose request cannot be sent must fail the same way
    dec = Decoder(op.framing, op.reply.limits.max_reply_bytes)
    reader = op.reader(rctx)
    try:
        if isinstance(reply, str):
            dec.feed(example_reply_bytes(op.framing, op.encoding, reply))
        else:
            for text in reply:
                dec.feed(encode_body(op.framing, text.encode(op.encoding)))
    except UnicodeEncodeError as e:
        raise CallError(
            Code.INVALID_ARGUMENT,
            f"the example reply holds {e.object[e.start:e.end]!r}, which the backend's encoding "
            f"{op.encoding} cannot represent",
        ) from None
    if per_call:
        return reader.finish_eof(dec, 0 if exit_status is None else exit_status, stderr or "")
    for line in (stderr or "").splitlines():
        try:
            result = reader.on_stderr(line)
        except CallError:
            if dec.pending():
                raise _left_over(dec, _STDERR_ENDED) from None
            raise
        if result is not None:
            if dec.pending():
                raise _left_over(dec, _STDERR_ENDED)
            return result
    try:
        result = reader.pump(dec)
    except CallError as e:
        if e.reusable and dec.pending():
            raise _left_over(dec) from None
        raise
    if result is None:
        raise CallError(Code.DEADLINE_EXCEEDED, "the example reply ended before the mapping finished reading it")
    if dec.pending():
        raise _left_over(dec)
    return result


_STDERR_ENDED = ("a pooled child's call ends at the first stderr line that fits a `stderr` rule, "
                 "so its stdout is then unexpected")


def _left_over(dec: Decoder, why: str = "does 'until' or 'body' miss part of the reply?") -> CallError:
    return CallError(
        Code.INTERNAL,
        f"the mapping left {dec.pending()} byte(s) of the example reply unread (a live connection "
        f"would be closed as out of step); {why}",
    )
