"""An Operation: one mapped rpc, compiled once per config load.

Fronts hand an Operation a request message and call context; the backend shell asks it for the
wire bytes of the request and a reply reader. The Operation itself does no I/O, so the whole
translation — render, frame, parse, convert — is testable without sockets and runs offline for
`examples:` in `adaptercar check`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import CallError, Code, quote_raw
from .framing import Framing, FramingError, check_payload, encode_body, encode_frame
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

    meta: dict[str, str] = field(default_factory=dict)
    claims: dict[str, Any] = field(default_factory=dict)
    deadline: float | None = None  # absolute, time.monotonic() clock
    request_id: str = ""


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
    auth: str = "none"

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
            try:
                payload = text.encode(self.encoding)
            except UnicodeEncodeError as e:
                bad = text[e.start : e.end]
                raise CallError(
                    Code.INVALID_ARGUMENT,
                    f"request value contains {bad!r}, which the backend's encoding "
                    f"{self.encoding} cannot represent",
                ) from None
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
        return b"".join(out)

    def reader(self, rctx: RenderContext) -> ReplyReader:
        return self.reply.reader(rctx)


def _framing_reason(e: FramingError) -> str:
    reason = getattr(e, "reason", "")
    if reason == "delimiter-in-value":
        return "a value contains the framing delimiter (line-protocol injection is refused)"
    if reason == "too-long-for-record":
        return "it does not fit the backend's record/frame size"
    return str(e)


def run_offline(op: LineOperation, request: Any, reply_frames: Sequence[str]) -> Any:
    """Feed a canned legacy reply through the operation with no backend: how `check` runs
    a mapping's `examples:`. Returns the message or raises CallError."""
    from .framing import Decoder

    rctx = op.render_context(request, CallContext())
    op.encode_request(rctx)  # an example whose request cannot be sent must fail the same way
    dec = Decoder(op.framing, op.reply.limits.max_reply_bytes)
    reader = op.reader(rctx)
    for text in reply_frames:
        dec.feed(encode_body(op.framing, text.encode(op.encoding)))
    result = reader.pump(dec)
    if result is None:
        raise CallError(Code.DEADLINE_EXCEEDED, "the example reply ended before the mapping finished reading it")
    return result
