"""The reply state machine: legacy frames in, a proto message or a CallError out.

The same machine serves TCP and stdio backends. It pulls from a per-connection `Decoder`
(frames, or exactly-n-byte bodies) and never over-reads: it consumes exactly the frames that
belong to this reply, so the next reply on a pipelined connection starts at the right byte.
Everything it needs — patterns, templates, setters — is compiled once per config load.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
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
        """Whether fitting this rule settles the reply's outcome. A body fills a field, so it
        is a result too: in a memcached `get` hit, `VALUE` (with its body) decides and the
        `END` that follows no longer means NOT_FOUND."""
        return bool(self.fields) or self.error is not None or self.body is not None


@dataclass(frozen=True)
class SideRule:
    """A process-backend rule on the program's stderr or exit status instead of a stdout frame.

    Pool mode: a stderr line that `stderr` finds ends the call. Per-call mode: tested on the
    whole stderr and the exit status once the program has exited, before stdout frames."""

    stderr: re.Pattern[str] | None = None
    exit_status: int | None = None
    fields: tuple[tuple[Template, FieldSetter], ...] = ()
    error: tuple[Code, Template | None] | None = None


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
    side_rules: tuple[SideRule, ...] = ()

    def reader(self, ctx: RenderContext) -> ReplyReader:
        return ReplyReader(self, ctx)


_NO_GROUPS: Mapping[str, str] = MappingProxyType({})


def _fail(code: Code, message: str) -> CallError:
    return CallError(code, message, reusable=False)


class ReplyReader:
    """One call's reply in progress. `pump(decoder)` returns the message when the reply is
    complete, None when it needs more bytes, and raises CallError for failures (with
    `reusable=False` when the connection must not carry another call)."""

    __slots__ = (
        "spec", "ctx", "frames_seen", "bytes_seen", "raw", "pending_body", "decided",
        "decided_groups", "decided_text", "bodies", "items", "unmatched", "ended", "extra",
    )

    def __init__(self, spec: ReplySpec, ctx: RenderContext) -> None:
        self.spec = spec
        self.ctx = ctx
        self.frames_seen = 0
        self.bytes_seen = 0
        # The latest frames only: an UNKNOWN quotes the frames that led to it, not the
        # first ones of a long listing.
        self.raw: deque[str] = deque(maxlen=5)
        self.pending_body: tuple[Rule, int] | None = None
        self.decided: Rule | None = None
        # replaced, never changed in place: these two start as one shared empty mapping
        self.decided_groups: Mapping[str, str] = _NO_GROUPS
        self.decided_text = ""
        self.bodies: list[tuple[FieldSetter, str]] = []
        self.items: list[Any] = []
        self.unmatched = False
        self.ended = False
        self.extra: Mapping[str, str] = _NO_GROUPS  # {exit_status}, {stderr} of a process backend

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
        shown = "\n".join(self.raw)
        return _fail(Code.UNKNOWN, f"unrecognized reply from backend: {quote_raw(shown)}")

    def _render(self, tpl: Template, groups: Mapping[str, str]) -> str:
        ref = tpl.group_ref
        if ref is not None:
            return groups.get(ref, "")  # what the compiled `{group}` renders, without a context
        return tpl.render(RenderContext(self.ctx.request, groups, self.ctx.meta, self.ctx.claims))

    def _start_body(self, rule: Rule, groups: dict[str, str]) -> None:
        assert rule.body is not None
        text = self._render(rule.body.length, groups)
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
                if self.decided is not None and rule.body is None:
                    return rule  # nothing left for this rule to do: skip building its groups
                groups = {**self.extra, **m.groupdict(default="")} if self.extra else m.groupdict(default="")
                if rule.body is not None:
                    self._start_body(rule, groups)
                if self.decided is None and rule.decides:
                    self.decided = rule
                    self.decided_groups = groups
                    self.decided_text = text
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
            try:
                for tpl, setter in each.fields:
                    setter.apply(el, tpl.render(ctx))
            except CallError as e:
                raise _fail(e.code, e.message) from None  # the rest of the listing is unread
        else:
            try:
                for setter, start, end in each.fixed:
                    setter.apply(el, text[start:end].rstrip())
            except CallError as e:
                raise _fail(e.code, e.message) from None
        self.items.append(el)

    # -- the machine -----------------------------------------------------------------------
    def pump(self, decoder: Decoder) -> Any | None:
        spec = self.spec
        until = spec.until
        max_bytes = spec.limits.max_reply_bytes
        encoding = spec.encoding
        try:
            while True:
                if self.pending_body is not None:
                    rule, n = self.pending_body
                    body = decoder.next_body(n)
                    if body is None:
                        return None
                    self.bytes_seen += len(body)
                    if self.bytes_seen > max_bytes:
                        self._count(0)
                    try:
                        text = body.decode(encoding)
                    except UnicodeDecodeError:
                        text = self._decode(body)
                    self.pending_body = None
                    assert rule.body is not None
                    self.bodies.append((rule.body.setter, text))
                    if until is None or self.ended:
                        return self._finish(end=self.ended)
                    continue
                frame = decoder.next_frame()
                if frame is None:
                    return None
                # _count and _decode, inline: this loop runs once per frame of every reply
                self.bytes_seen += len(frame)
                if self.bytes_seen > max_bytes:
                    self._count(0)
                try:
                    text = frame.decode(encoding)
                except UnicodeDecodeError:
                    text = self._decode(frame)
                self.frames_seen += 1
                self.raw.append(text)
                if until is None:
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
                is_end = until.search(text) is not None
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
            code, etpl = rule.error
            message = self._render(etpl, self.decided_groups) if etpl is not None else self.decided_text
            raise CallError(code, message, reusable=True)
        msg = spec.output_class()
        if rule is not None:
            groups = self.decided_groups
            ctx: RenderContext | None = None
            for tpl, setter in rule.fields:
                ref = tpl.group_ref
                if ref is not None:
                    text = groups.get(ref, "")
                else:
                    if ctx is None:
                        ctx = RenderContext(self.ctx.request, groups, self.ctx.meta, self.ctx.claims)
                    text = tpl.render(ctx)
                if setter.convert is str and setter.plain:
                    setattr(msg, setter.name, text)  # FieldSetter.apply for a plain string field
                else:
                    setter.apply(msg, text)
        for setter, text in self.bodies:
            if setter.convert is str and setter.plain:
                setattr(msg, setter.name, text)
            else:
                setter.apply(msg, text)
        if spec.each is not None and self.items:
            obj = msg
            for p in spec.each.parents:
                obj = getattr(obj, p)
            getattr(obj, spec.each.into).extend(self.items)
        return msg

    # -- process backends ------------------------------------------------------------------
    def _side(self, rule: SideRule, groups: dict[str, str]) -> Any:
        ctx = RenderContext(self.ctx.request, groups, self.ctx.meta, self.ctx.claims)
        if rule.error is not None:
            code, tpl = rule.error
            message = tpl.render(ctx) if tpl is not None else groups.get("stderr", "")
            raise CallError(code, message, reusable=True)
        msg = self.spec.output_class()
        for tpl, setter in rule.fields:
            setter.apply(msg, tpl.render(ctx))
        return msg

    def on_stderr(self, line: str) -> Any | None:
        """Pool mode: a stderr line while this call is outstanding. Returns the message if a
        `stderr` rule with fields fits, raises CallError for an error rule, else None."""
        for rule in self.spec.side_rules:
            if rule.stderr is None or rule.exit_status is not None:
                continue
            m = rule.stderr.search(line)
            if m is not None:
                return self._side(rule, {"stderr": line, **m.groupdict(default="")})
        return None

    def finish_eof(self, decoder: Decoder, exit_status: int, stderr: str) -> Any:
        """Per-call mode: the program has exited. Side rules first (in order), then stdout
        read as a reply whose terminator is EOF; nothing fitting is UNKNOWN with the exit
        status and the stderr tail."""
        extra = {"exit_status": str(exit_status), "stderr": stderr}
        for rule in self.spec.side_rules:
            if rule.exit_status is not None and rule.exit_status != exit_status:
                continue
            groups = dict(extra)
            if rule.stderr is not None:
                m = rule.stderr.search(stderr)
                if m is None:
                    continue
                groups.update(m.groupdict(default=""))
            return self._side(rule, groups)
        self.extra = extra
        try:
            while True:
                if self.pending_body is not None:
                    body_rule, n = self.pending_body
                    body = decoder.next_body(n)
                    if body is None:
                        raise _fail(Code.UNKNOWN, "the program's output ended inside a byte-counted body")
                    self._count(len(body))
                    self.pending_body = None
                    assert body_rule.body is not None
                    self.bodies.append((body_rule.body.setter, self._decode(body)))
                    continue
                frame = decoder.next_frame()
                if frame is None:
                    frame = decoder.take_rest()  # a last line without its newline
                    if not frame:
                        break
                self._count(len(frame))
                text = self._decode(frame)
                self.frames_seen += 1
                self.raw.append(text)
                if self.frames_seen > self.spec.limits.max_frames:
                    raise _fail(Code.INTERNAL, f"the program printed more than max_frames ({self.spec.limits.max_frames}) frames")
                if self.spec.each is not None:
                    self._element(text)
                elif self._match_rules(text) is None:
                    self.unmatched = True
        except FramingError as e:
            raise _fail(Code.INTERNAL, f"the program's output has a framing error: {e}") from None
        if self.frames_seen == 0 and self.decided is None:
            tail_lines = stderr.splitlines()[-5:]
            raise CallError(
                Code.UNKNOWN,
                f"the program printed nothing (exit status {exit_status}); stderr: "
                f"{quote_raw(chr(10).join(tail_lines))}",
            )
        return self._finish(end=True)
