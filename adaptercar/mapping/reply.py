"""The reply state machine: legacy frames in, a proto message or a CallError out.

The same machine serves TCP and stdio backends. It pulls from a per-connection `Decoder`
(frames, or exactly-n-byte bodies) and never over-reads: it consumes exactly the frames that
belong to this reply, so the next reply on a pipelined connection starts at the right byte.
Everything it needs — patterns, templates, setters — is compiled once per config load.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .convert import FieldSetter
from .errors import CallError, Code, quote_raw
from .framing import Decoder, FramingError
from .template import RenderContext, Template


@dataclass(frozen=True)
class BodySpec:
    length: Template
    setter: FieldSetter


@dataclass(frozen=True)
class Rule:
    pattern: re.Pattern[str]
    fields: tuple[tuple[Template, FieldSetter], ...] = ()
    error: tuple[Code, Template | None] | None = None
    body: BodySpec | None = None

    @property
    def decides(self) -> bool:
        return bool(self.fields) or self.error is not None


@dataclass(frozen=True)
class EachSpec:
    """One repeated element per frame: by column slices or by a regex with named groups."""

    parents: tuple[str, ...]
    into: str
    element_class: Callable[[], Any]
    fixed: tuple[tuple[FieldSetter, int, int], ...] = ()
    pattern: re.Pattern[str] | None = None
    fields: tuple[tuple[Template, FieldSetter], ...] = ()


@dataclass(frozen=True)
class Limits:
    max_reply_bytes: int = 1 << 20
    max_frames: int = 10_000


@dataclass(frozen=True)
class ReplySpec:
    output_class: Callable[[], Any]
    rules: tuple[Rule, ...]
    until: re.Pattern[str] | None = None
    each: EachSpec | None = None
    encoding: str = "utf-8"
    limits: Limits = Limits()

    def reader(self, ctx: RenderContext) -> ReplyReader:
        return ReplyReader(self, ctx)


def _fail(code: Code, message: str) -> CallError:
    return CallError(code, message, reusable=False)


class ReplyReader:
    """One call's reply in progress. `pump(decoder)` returns the message when the reply is
    complete, None when it needs more bytes, and raises CallError for failures (with
    `reusable=False` when the connection must not carry another call)."""

    __slots__ = (
        "spec", "ctx", "frames_seen", "bytes_seen", "raw", "pending_body", "decided",
        "decided_groups", "bodies", "items", "unmatched", "ended",
    )

    def __init__(self, spec: ReplySpec, ctx: RenderContext) -> None:
        self.spec = spec
        self.ctx = ctx
        self.frames_seen = 0
        self.bytes_seen = 0
        self.raw: list[str] = []
        self.pending_body: tuple[Rule, int] | None = None
        self.decided: Rule | None = None
        self.decided_groups: dict[str, str] = {}
        self.bodies: list[tuple[FieldSetter, str]] = []
        self.items: list[Any] = []
        self.unmatched = False
        self.ended = False

    # -- helpers -------------------------------------------------------------------------
    def _count(self, n: int) -> None:
        self.bytes_seen += n
        if self.bytes_seen > self.spec.limits.max_reply_bytes:
            raise _fail(
                Code.INTERNAL,
                f"legacy reply exceeds max_reply_bytes ({self.spec.limits.max_reply_bytes})",
            )

    def _decode(self, data: bytes) -> str:
        try:
            return data.decode(self.spec.encoding)
        except UnicodeDecodeError as e:
            raise _fail(Code.INTERNAL, f"legacy reply is not valid {self.spec.encoding}: {e}") from None

    def _unknown(self) -> CallError:
        shown = "\n".join(self.raw[-5:])
        return _fail(Code.UNKNOWN, f"unrecognized reply from backend: {quote_raw(shown)}")

    def _start_body(self, rule: Rule, groups: dict[str, str]) -> None:
        assert rule.body is not None
        ctx = RenderContext(self.ctx.request, groups, self.ctx.meta, self.ctx.claims)
        text = rule.body.length.render(ctx)
        try:
            n = int(text)
            if n < 0:
                raise ValueError
        except ValueError:
            raise _fail(Code.INTERNAL, f"body length {quote_raw(text)} is not a byte count") from None
        if self.bytes_seen + n > self.spec.limits.max_reply_bytes:
            raise _fail(
                Code.INTERNAL,
                f"legacy reply announces {n} body bytes, over max_reply_bytes ({self.spec.limits.max_reply_bytes})",
            )
        self.pending_body = (rule, n)

    def _match_rules(self, text: str) -> Rule | None:
        for rule in self.spec.rules:
            m = rule.pattern.fullmatch(text)
            if m is not None:
                groups = m.groupdict(default="")
                if rule.body is not None:
                    self._start_body(rule, groups)
                if rule.decides and self.decided is None:
                    self.decided = rule
                    self.decided_groups = groups
                return rule
        return None

    def _element(self, text: str) -> None:
        each = self.spec.each
        assert each is not None
        el = each.element_class()
        if each.pattern is not None:
            m = each.pattern.fullmatch(text)
            if m is None:
                raise self._unknown()
            ctx = RenderContext(self.ctx.request, m.groupdict(default=""), self.ctx.meta, self.ctx.claims)
            for tpl, setter in each.fields:
                setter.apply(el, tpl.render(ctx))
        else:
            for setter, start, end in each.fixed:
                setter.apply(el, text[start:end].rstrip())
        self.items.append(el)

    # -- the machine -----------------------------------------------------------------------
    def pump(self, decoder: Decoder) -> Any | None:
        spec = self.spec
        try:
            while True:
                if self.pending_body is not None:
                    rule, n = self.pending_body
                    body = decoder.next_body(n)
                    if body is None:
                        return None
                    self._count(len(body))
                    self.pending_body = None
                    assert rule.body is not None
                    self.bodies.append((rule.body.setter, self._decode(body)))
                    if spec.until is None or self.ended:
                        return self._finish(end=self.ended)
                    continue
                frame = decoder.next_frame()
                if frame is None:
                    return None
                self._count(len(frame))
                text = self._decode(frame)
                self.frames_seen += 1
                if len(self.raw) < 50:
                    self.raw.append(text)
                if spec.until is None:
                    single = self._match_rules(text)
                    if single is None:
                        raise self._unknown()
                    if self.pending_body is None:
                        return self._finish()
                    continue
                if self.frames_seen > spec.limits.max_frames:
                    raise _fail(
                        Code.INTERNAL,
                        f"legacy reply exceeds max_frames ({spec.limits.max_frames}) without its terminator",
                    )
                is_end = spec.until.search(text) is not None
                if spec.each is not None and not is_end:
                    self._element(text)
                    continue
                matched = self._match_rules(text)
                if matched is None and not is_end:
                    self.unmatched = True
                if is_end:
                    self.ended = True
                    if self.pending_body is None:
                        return self._finish(end=True)
        except FramingError as e:
            raise _fail(Code.INTERNAL, f"legacy reply framing error: {e}") from None

    def _finish(self, end: bool = False) -> Any:
        spec = self.spec
        rule = self.decided
        if rule is None and end and spec.each is None and spec.rules and self.unmatched:
            raise self._unknown()
        if rule is not None and rule.error is not None:
            code, tpl = rule.error
            ctx = RenderContext(self.ctx.request, self.decided_groups, self.ctx.meta, self.ctx.claims)
            message = tpl.render(ctx) if tpl is not None else self.raw[-1] if self.raw else ""
            raise CallError(code, message, reusable=True)
        msg = spec.output_class()
        if rule is not None:
            ctx = RenderContext(self.ctx.request, self.decided_groups, self.ctx.meta, self.ctx.claims)
            for tpl, setter in rule.fields:
                setter.apply(msg, tpl.render(ctx))
        for setter, text in self.bodies:
            setter.apply(msg, text)
        if spec.each is not None and self.items:
            obj = msg
            for p in spec.each.parents:
                obj = getattr(obj, p)
            getattr(obj, spec.each.into).extend(self.items)
        return msg
