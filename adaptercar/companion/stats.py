"""`companion.stats`: poll the legacy app's own stats command and export its numbers as gauges.

The request is framed exactly as a mapped method's would be (template, framing) and sent
through the backend's pool, so banner, login and timeouts behave as for calls. The reply is
read by `StatsReader`, a `pump(decoder)` reader like the mapping's `ReplyReader` but producing
a name → value dict instead of a message: frames until `until`, each fitted to `each.match`
(groups `name` and `value`). A frame that does not fit is skipped, `include` filters names before
conversion, and a value that is not a number skips that name, never the poll. A failed poll keeps
the last values (a gauge that drops to 0 on a network blip would page someone) and sets
`adaptercar_companion_stats_up{backend}` to 0.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer

from .. import metrics
from ..logs import log
from ..mapping import framing as fr
from ..mapping.errors import CallError, Code
from ..mapping.template import RenderContext, Scope, Template, TemplateError, compile_template

MAX_FRAMES = 10_000


class StatsConfigError(ValueError):
    """A stats entry that cannot work (no `until`, no `name`/`value` groups, ...)."""


@dataclass(frozen=True)
class StatsSpec:
    backend: str
    every: float
    request: bytes  # framed, ready to send
    until: re.Pattern[str]
    match: re.Pattern[str]
    metric: Template
    include: frozenset[str] | None
    encoding: str
    timeout: float


class StatsReader:
    """One poll's reply in progress: `pump(decoder)` → {name: value} once `until` is seen."""

    __slots__ = ("spec", "values", "frames")

    def __init__(self, spec: StatsSpec) -> None:
        self.spec = spec
        self.values: dict[str, float] = {}
        self.frames = 0

    def pump(self, decoder: fr.Decoder) -> dict[str, float] | None:
        spec = self.spec
        while True:
            try:
                frame = decoder.next_frame()
            except fr.FramingError as e:
                raise CallError(Code.INTERNAL, f"stats reply framing error: {e}", reusable=False) from None
            if frame is None:
                return None
            self.frames += 1
            if self.frames > MAX_FRAMES:
                raise CallError(Code.INTERNAL, f"stats reply exceeds {MAX_FRAMES} frames without its terminator",
                                reusable=False)
            text = frame.decode(spec.encoding, "replace")
            if spec.until.search(text) is not None:
                return self.values
            m = spec.match.search(text)
            if m is None:
                continue
            name, value = m.group("name"), m.group("value")
            if name is None or (spec.include is not None and name not in spec.include):
                continue
            try:
                number = float(value)
            except (TypeError, ValueError):
                continue
            if math.isfinite(number):
                self.values[name] = number


def _pattern(text: str, what: str) -> re.Pattern[str]:
    try:
        return re.compile(text)
    except re.error as e:
        raise StatsConfigError(f"{what} '{text}' does not compile: {e}") from None


def compile_stats(entry: Any, framing: fr.Framing, encoding: str, timeout: float) -> StatsSpec:
    """A `companion.stats` entry + its backend's framing → a StatsSpec, compiled once."""
    resp = entry.response
    until = getattr(resp, "until", None)
    each = getattr(resp, "each", None)
    if until is None or each is None or getattr(each, "match", None) is None:
        raise StatsConfigError("stats 'response' needs {until: REGEX, each: {match: REGEX}}")
    match = _pattern(each.match, "each.match")
    if not {"name", "value"} <= set(match.groupindex):
        raise StatsConfigError(f"each.match '{each.match}' needs the named groups 'name' and 'value'")
    scope = Scope(request=None, env=os.environ, encoding=encoding, allow_meta=False, allow_claims=False)
    request = entry.request
    texts = [request] if isinstance(request, str) else None
    if texts is None:
        raise StatsConfigError("stats 'request' must be one template string")
    try:
        text = compile_template(texts[0], scope).render(RenderContext())
        metric = compile_template(entry.metric, Scope(request=None, groups=frozenset({"name"}),
                                                      allow_meta=False, allow_claims=False))
    except TemplateError as e:
        raise StatsConfigError(str(e)) from None
    if "\n" in text or "\r" in text:
        raise StatsConfigError(f"stats request {text!r} contains a line break")
    try:
        data = fr.encode_frame(framing, text.encode(encoding))
    except (UnicodeEncodeError, fr.FramingError) as e:
        raise StatsConfigError(f"stats request {text!r} cannot be sent: {e}") from None
    return StatsSpec(backend=entry.backend, every=float(entry.every), request=data,
                     until=_pattern(until, "until"), match=match, metric=metric,
                     include=frozenset(entry.include) if entry.include is not None else None,
                     encoding=encoding, timeout=timeout)


_METRIC_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")

#: How a poll is sent: (framed request, reader, timeout) → Deferred of the reader's result.
Send = Callable[[bytes, StatsReader, float], "defer.Deferred[Any]"]


class StatsPoller:
    """Polls one backend every `spec.every`; never two polls at once."""

    def __init__(self, spec: StatsSpec, send: Send, reactor: Any) -> None:
        self.spec = spec
        self.send = send
        self.reactor = reactor
        self.call: Any = None
        self.inflight: defer.Deferred[Any] | None = None
        self.running = False
        self.names: dict[str, str] = {}  # stats name → metric name, rendered once per name
        self.bad_names: set[str] = set()
        self.up = metrics.companion_stats_up.labels(spec.backend)

    def start(self) -> None:
        self.running = True
        self.call = self.reactor.callLater(0, self.poll)

    def stop(self) -> None:
        self.running = False
        if self.call is not None and self.call.active():
            self.call.cancel()
        self.call = None
        if self.inflight is not None:
            self.inflight.cancel()

    def poll(self) -> defer.Deferred[Any]:
        self.call = None
        try:
            d = self.send(self.spec.request, StatsReader(self.spec), self.spec.timeout)
        except Exception as e:  # noqa: BLE001 - a pool that refuses at once
            d = defer.fail(e)
        self.inflight = d
        d.addCallbacks(self._got, self._failed)
        d.addBoth(self._next)
        return d

    def _metric(self, name: str) -> str | None:
        metric = self.names.get(name)
        if metric is None and name not in self.bad_names:
            metric = self.spec.metric.render(RenderContext(groups={"name": name}))
            if not _METRIC_NAME.match(metric):
                self.bad_names.add(name)
                log.warning("companion_stats_skipped", backend=self.spec.backend,
                            error=f"{metric!r} is not a valid metric name")
                return None
            self.names[name] = metric
        return metric

    def _got(self, values: dict[str, float]) -> None:
        for name, value in values.items():
            metric = self._metric(name)
            if metric is None:
                continue
            try:
                gauge = metrics.companion_stats_gauge(metric)
            except ValueError as e:  # the name of a metric registered already
                self.names.pop(name, None)
                self.bad_names.add(name)
                log.warning("companion_stats_skipped", backend=self.spec.backend, error=str(e))
                continue
            gauge.labels(self.spec.backend).set(value)
        self.up.set(1)

    def _failed(self, failure: Any) -> None:
        if isinstance(failure.value, defer.CancelledError) and not self.running:
            return
        self.up.set(0)
        log.warning("companion_stats_failed", backend=self.spec.backend, error=str(failure.value))

    def _next(self, _: Any) -> None:
        self.inflight = None
        if self.running:
            self.call = self.reactor.callLater(self.spec.every, self.poll)
