"""Config files → one whole, validated, compiled generation of the sidecar.

`load_all` is what `adaptercar check` runs and what every reload runs: it loads
adaptercar.yaml and the mapping files, compiles the protos, compiles every mapped method into
an Operation (templates, regexes, field setters — nothing is compiled per call later), runs
the mappings' `examples:` offline, and collects *every* problem with its file and line.
`build_set` then turns a problem-free load into live objects (backend pools, method entries).
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any
from weakref import WeakKeyDictionary

from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor

from .admission import Gate
from .backends.line import LinePool, LineSpec, ProbeSpec
from .backends.process import ProcessPool, ProcessSpec, child_env
from .config.load import load_all as config_load_all
from .config.problems import Problem
from .config.yamlsource import SourceMap
from .mapping import framing as fr
from .mapping.convert import ConfigTargetError, field_setter, repeated_message_field
from .mapping.errors import CallError, Code
from .mapping.operation import (
    CallContext,
    LineOperation,
    RequestItem,
    line_breaks_refused,
    run_offline,
)
from .mapping.reply import BodySpec, EachSpec, Limits, ReplySpec, Rule, SideRule
from .mapping.template import Scope, Template, TemplateError, compile_template
from .protos import ProtoError, ProtoSet, compile_protos, empty_protoset

if TYPE_CHECKING:  # imported where used: lxml and the SOAP code cost every process ~7 MiB
    from .backends.soap import SoapBackend, SoapSpec, WsdlBinding
    from .mapping.soap_operation import SoapOperation

Path_ = tuple[str | int, ...]


@dataclass
class Loaded:
    config_path: str
    config: Any = None
    source: SourceMap | None = None
    protoset: ProtoSet = field(default_factory=empty_protoset)
    problems: list[Problem] = field(default_factory=list)
    specs: dict[str, LineSpec | ProcessSpec] = field(default_factory=dict)
    ops: dict[str, LineOperation | SoapOperation] = field(default_factory=dict)
    soap: dict[str, tuple[SoapSpec, WsdlBinding]] = field(default_factory=dict)
    service_backends: dict[str, set[str]] = field(default_factory=dict)
    verifier: Any = None  # fronts.auth.Verifier when `auth:` is configured
    tls: dict[str, Any] = field(default_factory=dict)  # "grpc"/"http" → tls.ServerMaterial

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]


class _Collector:
    def __init__(self, problems: list[Problem], source: SourceMap) -> None:
        self.problems = problems
        self.source = source

    def error(self, path: Path_, message: str) -> None:
        self.problems.append(self.source.problem(path, message))

    def note(self, path: Path_, message: str) -> None:
        self.problems.append(self.source.problem(path, message, "note"))


def _regex(c: _Collector, path: Path_, pattern: str) -> re.Pattern[str] | None:
    try:
        return re.compile(pattern)
    except re.error as e:
        # shown as written in YAML (repr would double every backslash of '\d')
        c.error(path, f"regular expression '{pattern}' does not compile: {e}")
        return None


# --- backends -------------------------------------------------------------------------------

def _framing(line: Any, encoding: str) -> fr.Framing:
    f = line.framing
    if getattr(f, "delimiter", None) is not None:
        return fr.Delimited(f.delimiter.encode(encoding))
    if getattr(f, "length_prefix", None) is not None:
        return fr.LengthPrefixed(f.length_prefix, bool(getattr(f, "ascii", False)))
    if getattr(f, "fixed", None) is not None:
        return fr.FixedRecord(f.fixed, " ".encode(encoding))
    return fr.StxEtx()


def _stream_basics(c: _Collector, base: Path_, cfg: Any, environ: Mapping[str, str]) -> (
        tuple[fr.Framing, Any, tuple[tuple[bytes, re.Pattern[str] | None], ...], Scope] | None):
    """What line and process backends share: framing, banner, the on_connect exchange."""
    encoding = cfg.encoding
    try:
        framing = _framing(cfg, encoding)
        fr.Decoder(framing, cfg.max_line_bytes)
    except (ValueError, UnicodeError) as e:
        c.error((*base, "framing"), f"invalid framing: {e}")
        return None
    banner = _regex(c, (*base, "banner"), cfg.banner) if cfg.banner else None
    scope = Scope(request=None, env=environ, encoding=encoding, allow_meta=False, allow_claims=False)
    on_connect: list[tuple[bytes, re.Pattern[str] | None]] = []
    ok = True
    for i, step in enumerate(cfg.on_connect):
        try:
            text = compile_template(step.send, scope).render(_EMPTY_CTX)
            frame = encode_const(framing, encoding, text)
        except (TemplateError, ValueError) as e:
            c.error((*base, "on_connect", i, "send"), str(e))
            ok = False
            continue
        expect = _regex(c, (*base, "on_connect", i, "expect"), step.expect) if step.expect else None
        on_connect.append((frame, expect))
    return (framing, banner, tuple(on_connect), scope) if ok else None


def _line_spec(name: str, line: Any, c: _Collector, environ: Mapping[str, str]) -> LineSpec | None:
    base: Path_ = ("backends", name, "line")
    encoding = line.encoding
    basics = _stream_basics(c, base, line, environ)
    if basics is None:
        return None
    framing, banner, on_connect, scope = basics
    ok = True
    probe = None
    if line.probe is not None:
        pat = _regex(c, (*base, "probe", "expect"), line.probe.expect or "")
        try:
            # a template like on_connect's `send` (so `{env.NAME}` works and braces mean the same)
            text = compile_template(line.probe.send, scope).render(_EMPTY_CTX)
            send = encode_const(framing, encoding, text)
        except (TemplateError, ValueError) as e:
            c.error((*base, "probe", "send"), str(e))
            ok = False
        else:
            if pat is not None:
                probe = ProbeSpec(send, pat, line.probe.every, line.probe.timeout)
    if not ok:
        return None
    pool = line.pool
    return LineSpec(
        name=name, address=line.address, framing=framing, encoding=encoding, mode=line.mode,
        banner=banner, on_connect=on_connect, pool_size=pool.size, pipeline=pool.pipeline,
        max_waiting=pool.max_waiting, idle_timeout=pool.idle_timeout, max_age=pool.max_age,
        keepalive=pool.keepalive, timeout=line.timeout, connect_timeout=line.connect_timeout,
        max_line_bytes=line.max_line_bytes, probe=probe,
    )


def _process_spec(name: str, proc: Any, c: _Collector, environ: Mapping[str, str]) -> ProcessSpec | None:
    """A process backend: argv as written, argv[0] looked up on PATH (of the child's env,
    from its cwd) now, so a typo is a `check` error and not a crash loop in production."""
    import shutil

    base: Path_ = ("backends", name, "process")
    encoding = proc.encoding
    basics = _stream_basics(c, base, proc, environ)
    if basics is None:
        return None
    framing, banner, on_connect, _ = basics
    env = child_env({k: str(v) for k, v in proc.env.items()}, environ)
    cwd = str(proc.cwd) if proc.cwd is not None else "."
    argv0 = proc.command[0]
    found = shutil.which(argv0, path=env.get("PATH")) if "/" not in argv0 else (
        argv0 if os.path.isabs(argv0) else os.path.join(cwd, argv0))
    if found is None or not os.path.exists(found):
        c.error((*base, "command", 0), f"program {argv0!r} not found "
                f"({'on PATH' if '/' not in argv0 else 'relative to cwd ' + cwd})")
        return None
    if not os.access(found, os.X_OK) or os.path.isdir(found):
        c.error((*base, "command", 0), f"program {found!r} is not an executable file")
        return None
    return ProcessSpec(
        name=name, argv=tuple(proc.command), env=env, cwd=cwd, framing=framing, encoding=encoding,
        mode=proc.mode, pool_size=proc.pool.size, max_waiting=proc.pool.max_waiting, timeout=proc.timeout,
        max_line_bytes=proc.max_line_bytes, max_reply_bytes=proc.max_reply_bytes,
        restart_base=proc.restart.base, restart_max=proc.restart.max, banner=banner,
        on_connect=on_connect,
    )


def encode_const(framing: fr.Framing, encoding: str, text: str) -> bytes:
    if line_breaks_refused(framing, encoding) and ("\r" in text or "\n" in text):
        raise ValueError(f"{text!r} cannot be sent: it contains a line break (CR or LF)")
    try:
        payload = text.encode(encoding)
    except UnicodeEncodeError as e:
        raise ValueError(f"{text!r} cannot be encoded in {encoding}") from e
    try:
        return fr.encode_frame(framing, payload)
    except fr.FramingError as e:
        raise ValueError(f"{text!r} cannot be framed: {e}") from e


from .mapping.template import RenderContext  # noqa: E402

_EMPTY_CTX = RenderContext()


# --- methods --------------------------------------------------------------------------------

def _templates(c: _Collector, path: Path_, text: str, scope: Scope) -> Template | None:
    try:
        return compile_template(text, scope)
    except TemplateError as e:
        c.error(path, f"template {text!r}: {e}")
        return None


_PROCESS_GROUPS = frozenset({"exit_status", "stderr"})


def _side_rule(c: _Collector, path: Path_, rule: Any, out: Descriptor, req: Descriptor,
               spec: ProcessSpec, environ: Mapping[str, str]) -> SideRule | None:
    if rule.body is not None:
        c.error((*path, "body"), "a stderr/exit_status rule cannot read a byte-counted body")
        return None
    pat = None
    if rule.stderr is not None:
        pat = _regex(c, (*path, "stderr"), rule.stderr)
        if pat is None:
            return None
    if rule.exit_status is not None and spec.mode != "per-call":
        c.error((*path, "exit_status"), "exit_status rules need `mode: per-call` (a pooled "
                "child's exit is a crash, answered UNAVAILABLE)")
        return None
    groups = frozenset(pat.groupindex if pat is not None else ()) | _PROCESS_GROUPS
    scope = Scope(request=req, groups=groups, env=environ, encoding=spec.encoding)
    fields = []
    for target, text in rule.fields.items():
        tpl = _templates(c, (*path, "fields", target), text, scope)
        try:
            setter = field_setter(out, target, spec.encoding)
        except ConfigTargetError as e:
            c.error((*path, "fields", target), f"reply field '{target}': {e}")
            return None
        if tpl is None:
            return None
        fields.append((tpl, setter))
    error = None
    if rule.error is not None:
        msg_tpl = None
        if rule.error.message is not None:
            msg_tpl = _templates(c, (*path, "error", "message"), rule.error.message, scope)
            if msg_tpl is None:
                return None
        error = (Code[rule.error.code], msg_tpl)
    return SideRule(pat, rule.exit_status, tuple(fields), error)


def _rule(c: _Collector, path: Path_, rule: Any, out: Descriptor, req: Descriptor,
          spec: LineSpec | ProcessSpec, environ: Mapping[str, str]) -> Rule | None:
    if rule.match is None:
        c.error(path, "line backends read stdout frames: this rule needs 'match' "
                      "('stderr' and 'exit_status' are for process backends)")
        return None
    if rule.exit_status is not None:
        c.error((*path, "exit_status"), "a rule tests either a stdout frame ('match') or the "
                "exit status; write two rules")
        return None
    pat = _regex(c, (*path, "match"), rule.match)
    if pat is None:
        return None
    groups = frozenset(pat.groupindex)
    if isinstance(spec, ProcessSpec):
        groups |= _PROCESS_GROUPS - groups
    scope = Scope(request=req, groups=groups, env=environ, encoding=spec.encoding)
    fields = []
    ok = True
    for target, text in rule.fields.items():
        tpl = _templates(c, (*path, "fields", target), text, scope)
        try:
            setter = field_setter(out, target, spec.encoding)
        except ConfigTargetError as e:
            c.error((*path, "fields", target), f"reply field '{target}': {e}")
            ok = False
            continue
        if tpl is None:
            ok = False
            continue
        fields.append((tpl, setter))
    error = None
    if rule.error is not None:
        msg_tpl = None
        if rule.error.message is not None:
            msg_tpl = _templates(c, (*path, "error", "message"), rule.error.message, scope)
            ok = ok and msg_tpl is not None
        error = (Code[rule.error.code], msg_tpl)
    body = None
    if rule.body is not None:
        length = _templates(c, (*path, "body", "bytes"), rule.body.bytes_, scope)
        try:
            setter = field_setter(out, rule.body.into, spec.encoding)
        except ConfigTargetError as e:
            c.error((*path, "body", "into"), f"body target '{rule.body.into}': {e}")
            return None
        if length is None:
            return None
        body = BodySpec(length, setter)
    if not ok:
        return None
    return Rule(pat, tuple(fields), error, body)


def _each(c: _Collector, path: Path_, each: Any, out: Descriptor, req: Descriptor,
          spec: LineSpec | ProcessSpec,
          protoset: ProtoSet, environ: Mapping[str, str]) -> EachSpec | None:
    if not each.into:
        c.error(path, "missing required key 'into' (the repeated message field to fill)")
        return None
    try:
        parents, fd = repeated_message_field(out, each.into)
    except ConfigTargetError as e:
        c.error((*path, "into"), str(e))
        return None
    el_desc = fd.message_type
    assert el_desc is not None
    el_class = protoset.message_class(el_desc)
    if each.fixed is not None:
        slices = []
        for target, (start, end) in each.fixed.items():
            try:
                slices.append((field_setter(el_desc, target, spec.encoding), start, end))
            except ConfigTargetError as e:
                c.error((*path, "fixed", target), str(e))
                return None
        return EachSpec(parents, fd.name, el_class, fixed=tuple(slices))
    pat = _regex(c, (*path, "match"), each.match)
    if pat is None:
        return None
    scope = Scope(request=req, groups=frozenset(pat.groupindex), env=environ, encoding=spec.encoding)
    fields = []
    for target, text in each.fields.items():
        tpl = _templates(c, (*path, "fields", target), text, scope)
        try:
            setter = field_setter(el_desc, target, spec.encoding)
        except ConfigTargetError as e:
            c.error((*path, "fields", target), str(e))
            return None
        if tpl is None:
            return None
        fields.append((tpl, setter))
    return EachSpec(parents, fd.name, el_class, pattern=pat, fields=tuple(fields))


def _line_op(c: _Collector, mpath: Path_, service: str, name: str, m: Any, backend: str,
             spec: LineSpec | ProcessSpec,
             protoset: ProtoSet, line_cfg: Any, environ: Mapping[str, str]) -> LineOperation | None:
    md = protoset.method(service, name)
    req, out = md.input_type, md.output_type
    if m.request is None or isinstance(m.request, dict):
        c.error((*mpath, "request"), "a line backend needs 'request': a template string or a list of frames")
        return None
    if m.response is None or isinstance(m.response, dict):
        c.error((*mpath, "response"), "a line backend needs 'response': a list of rules or {until: ..., ...}")
        return None
    scope = Scope(request=req, env=environ, encoding=spec.encoding)
    items: list[RequestItem] = []
    raw_items = [m.request] if isinstance(m.request, str) else list(m.request)
    if not raw_items:
        c.error((*mpath, "request"), "needs at least one frame (a request that sends nothing "
                                     "would only wait for its timeout)")
        return None
    ok = True
    for i, item in enumerate(raw_items):
        ipath = (*mpath, "request") if isinstance(m.request, str) else (*mpath, "request", i)
        is_body = not isinstance(item, str)
        text: str = item if isinstance(item, str) else item.bytes_
        tpl = _templates(c, (*ipath, "bytes") if is_body else ipath, text, scope)
        if tpl is None:
            ok = False
            continue
        literal = "".join(p for p in tpl.parts if isinstance(p, str))
        if not is_body and isinstance(spec.framing, fr.Delimited) and (
            spec.framing.delimiter.decode(spec.encoding, "replace") in literal
            or (line_breaks_refused(spec.framing, spec.encoding)
                and ("\r" in literal or "\n" in literal))
        ):
            c.error(ipath, "the template's literal text contains the framing delimiter or a "
                           "line break; use a list of frames instead")
            ok = False
        items.append(RequestItem(tpl, is_body))
    resp = m.response
    rules: list[Rule] = []
    until = None
    each = None
    if isinstance(resp, tuple | list):
        rule_list, rpath = resp, (*mpath, "response")
    else:
        rule_list, rpath = resp.rules, (*mpath, "response", "rules")
        until = _regex(c, (*mpath, "response", "until"), resp.until)
        ok = ok and until is not None
        if resp.each is not None:
            each = _each(c, (*mpath, "response", "each"), resp.each, out, req, spec, protoset, environ)
            ok = ok and each is not None
    side_rules: list[SideRule] = []
    for i, r in enumerate(rule_list):
        if isinstance(spec, ProcessSpec) and r.match is None:
            side = _side_rule(c, (*rpath, i), r, out, req, spec, environ)
            if side is None:
                ok = False
            else:
                side_rules.append(side)
            continue
        rule = _rule(c, (*rpath, i), r, out, req, spec, environ)
        if rule is None:
            ok = False
        else:
            rules.append(rule)
    if not rule_list and until is None:
        c.error((*mpath, "response"), "needs at least one rule")
        ok = False
    if not ok:
        return None
    limits = Limits(line_cfg.max_reply_bytes, line_cfg.max_frames)
    reply = ReplySpec(protoset.message_class(out), tuple(rules), until, each, spec.encoding, limits,
                      tuple(side_rules))
    return LineOperation(
        service=service, method=name, backend=backend, input_class=protoset.message_class(req),
        output_class=protoset.message_class(out), items=tuple(items), reply=reply, framing=spec.framing,
        encoding=spec.encoding, idempotent=m.idempotent, timeout=m.timeout,
    )


def _run_examples(c: _Collector, mpath: Path_, op: LineOperation | SoapOperation, m: Any,
                  process_mode: str | None = None, soap: WsdlBinding | None = None) -> None:
    """`process_mode`: a process backend's mode, so `stderr`/`exit_status` examples are read
    as that backend reads them (None: a line backend, whose examples have neither). `soap`:
    the WSDL of a SOAP method's backend (its examples' `reply` is XML)."""
    for i, ex in enumerate(m.examples):
        epath = (*mpath, "examples", i)
        if soap is not None and (ex.stderr is not None or ex.exit_status is not None):
            c.error(epath, "`stderr` and `exit_status` are for process backends; a SOAP "
                           "example has a `reply` (the envelope, or what goes in its Body)")
            continue
        if ex.exit_status is not None and process_mode != "per-call":
            c.error((*epath, "exit_status"), "an exit status is only seen in `mode: per-call` "
                    "(a pooled child's exit is a crash, answered UNAVAILABLE)")
            continue
        try:
            request = json_format.ParseDict(ex.request, op.input_class())
        except json_format.ParseError as e:
            c.error((*epath, "request"),
                    f"example request does not fit {op.input_class.DESCRIPTOR.full_name}: {_one_line(e)}")
            continue
        expect = ex.expect
        try:
            if not isinstance(op, LineOperation):
                from .backends.soap import run_offline as run_soap_offline

                assert soap is not None
                result = run_soap_offline(soap, op, request, ex.reply)
            else:
                result = run_offline(op, request, ex.reply, stderr=ex.stderr,
                                     exit_status=ex.exit_status,
                                     per_call=process_mode == "per-call")
        except CallError as e:
            want = getattr(expect, "error", None)
            if want is None:
                c.error(epath, f"example failed: expected a reply, got {e.code.name}: {e.message}")
            elif want != e.code.name:
                c.error(epath, f"example failed: expected error {want}, got {e.code.name}: {e.message}")
            elif getattr(expect, "message", None):
                pattern = _regex(c, (*epath, "expect", "message"), expect.message)
                if pattern is not None and not pattern.search(e.message):
                    c.error(epath, f"example failed: error message {e.message!r} does not match "
                                   f"{expect.message!r}")
            continue
        if getattr(expect, "error", None) is not None:
            c.error(epath, f"example failed: expected error {expect.error}, got a reply "
                           f"{json_format.MessageToDict(result)}")
            continue
        try:
            want_msg = json_format.ParseDict(expect, op.output_class())
        except json_format.ParseError as e:
            c.error((*epath, "expect"),
                    f"expected reply does not fit {op.output_class.DESCRIPTOR.full_name}: {_one_line(e)}")
            continue
        if want_msg != result:
            c.error(epath, "example failed: " + "; ".join(_differences(want_msg, result)))


def _relative_paths(text: str) -> str:
    """protoc names files by the absolute paths it was given; show them from the current
    folder, as every other problem names its file."""
    here = os.getcwd().rstrip(os.sep) + os.sep
    return text.replace(here, "") if here != os.sep else text


def _one_line(e: Exception) -> str:
    return " ".join(str(e).split())


def _show(fd: Any, value: Any) -> str:
    if fd.is_repeated:
        return "[" + ", ".join(_show_one(fd, v) for v in value) + "]"
    return _show_one(fd, value)


def _show_one(fd: Any, value: Any) -> str:
    if fd.message_type is not None:
        return json.dumps(json_format.MessageToDict(value, preserving_proto_field_name=True),
                          ensure_ascii=False)
    if fd.enum_type is not None:
        known = fd.enum_type.values_by_number.get(value)
        return known.name if known is not None else str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | bytes):
        return repr(value)
    return str(value)


def _differences(want: Any, got: Any) -> list[str]:
    """Field by field, so a failing example says which field is wrong, not two whole dicts."""
    out = []
    for fd in want.DESCRIPTOR.fields:
        a, b = getattr(want, fd.name), getattr(got, fd.name)
        if a != b:
            out.append(f"{fd.name}: expected {_show(fd, a)}, got {_show(fd, b)}")
    return out or ["the reply differs from 'expect'"]


def load_all(config_path: str | os.PathLike[str], environ: Mapping[str, str] | None = None,
             run_examples: bool = True) -> Loaded:
    env = dict(os.environ if environ is None else environ)
    project = config_load_all(config_path, env)
    res = project.config
    loaded = Loaded(str(config_path), res.config, res.source, problems=list(project.problems))
    cfg = res.validated  # keep checking what passed the schema, even if other parts did not
    if cfg is None:
        return loaded
    top = _Collector(loaded.problems, res.source)
    if cfg.auth is not None:
        from .fronts.auth import AuthConfigError, load_verifier

        try:
            loaded.verifier = load_verifier(cfg.auth)
        except AuthConfigError as e:
            top.error(("auth", "jwt", "keys"), str(e))
    _load_tls(cfg, top, loaded)
    if cfg.protos:
        try:
            loaded.protoset = compile_protos([Path(p) for p in cfg.protos])
        except ProtoError as e:
            top.error(("protos",), f"protos do not compile:\n{_relative_paths(str(e))}")
            return loaded
    for name, b in cfg.backends.items():
        spec: LineSpec | ProcessSpec | None = None
        if b.line is not None:
            spec = _line_spec(name, b.line, top, env)
        elif b.process is not None:
            spec = _process_spec(name, b.process, top, env)
        if spec is not None:
            loaded.specs[name] = spec
        if b.soap is not None:
            soap = _soap_backend(name, b.soap, top)
            if soap is not None:
                loaded.soap[name] = soap
    mapped: set[str] = set()
    for mres in project.mappings:
        mp = mres.validated
        if mp is None:
            continue
        mc = _Collector(loaded.problems, mres.source)
        services = loaded.protoset.services()
        svc = services.get(mp.service)
        if svc is None:
            known = ", ".join(sorted(services)) or "none (check 'protos' in adaptercar.yaml)"
            mc.error(("service",), f"service {mp.service!r} is not defined in the protos (known: {known})")
            continue
        for name, m in mp.methods.items():
            mpath: Path_ = ("methods", name)
            md = svc.methods_by_name.get(name)
            if md is None:
                known = ", ".join(x.name for x in svc.methods)
                mc.error(mpath, f"{mp.service} has no method {name!r} (methods: {known})")
                continue
            full = f"/{mp.service}/{name}"
            if full in mapped:
                continue  # reported by the config checks
            mapped.add(full)  # mapped, if wrongly: no "not mapped" note on top of the error
            if md.client_streaming or md.server_streaming:
                mc.error(mpath, f"{mp.service}.{name} is a streaming rpc; only unary rpcs can be mapped")
                continue
            backend = m.backend or mp.backend
            bcfg = cfg.backends.get(backend)
            if bcfg is None:
                continue  # reported by the config checks
            stream_cfg = bcfg.line if bcfg.line is not None else bcfg.process
            if stream_cfg is None:
                soap = loaded.soap.get(backend)
                if soap is None:
                    continue  # its config problems are already reported
                sop = _soap_op(mc, mpath, mp.service, name, m, backend, soap[1], loaded.protoset, env)
                if sop is not None:
                    if run_examples:
                        _run_examples(mc, mpath, sop, m, soap=soap[1])
                    loaded.ops[full] = replace(sop, auth=m.auth or mp.auth or "")
                    loaded.service_backends.setdefault(mp.service, set()).add(backend)
                continue
            bspec = loaded.specs.get(backend)
            if bspec is None:
                continue  # its config problems are already reported
            op = _line_op(mc, mpath, mp.service, name, m, backend, bspec, loaded.protoset, stream_cfg, env)
            if op is None:
                continue
            if run_examples:
                _run_examples(mc, mpath, op, m, bspec.mode if isinstance(bspec, ProcessSpec) else None)
            loaded.ops[full] = replace(op, auth=m.auth or mp.auth or "")
            loaded.service_backends.setdefault(mp.service, set()).add(backend)
    _companion_templates(cfg, top, env)
    # One reading order for every problem, whichever stage found it: the config file first,
    # then the mapping files as loaded, each from top to bottom.
    order = {res.source.file: 0}
    for index, mres in enumerate(project.mappings, start=1):
        order.setdefault(mres.source.file, index)
    loaded.problems.sort(key=lambda p: (order.get(p.file, len(order)), p.line))
    if loaded.errors:
        loaded.config = None
    for sname, svc in loaded.protoset.services().items():
        for md in svc.methods:
            if f"/{sname}/{md.name}" not in mapped:
                top.note(("protos",), f"{sname}.{md.name} is not mapped by any mapping file, so it is not served")
    return loaded


def _companion_templates(cfg: Any, c: _Collector, env: Mapping[str, str]) -> None:
    """`companion.config` templates compile now, with this environment, or `check` says so."""
    if cfg.companion is None:
        return
    from .companion.config_render import check_template

    for index, entry in enumerate(cfg.companion.config):
        problem = check_template(str(entry.template), tuple(str(v) for v in entry.values), env)
        if problem is not None:
            c.error(("companion", "config", index, "template"), problem)


# --- TLS -------------------------------------------------------------------------------------

def _load_tls(cfg: Any, c: _Collector, loaded: Loaded) -> None:
    """Read and check every certificate file now, so `check` and a reload report a missing,
    unreadable or mismatched file at its config line (and a reload picks up renewed files)."""
    fronts = [f for f in ("grpc", "http") if getattr(getattr(cfg, f), "tls", None) is not None]
    if not fronts and all(r.upstream.tls is None for r in cfg.ambassador):
        return  # TLS off: import nothing of it
    from .tls import TlsFileError, load_client, load_server

    for front in fronts:
        try:
            loaded.tls[front] = load_server(getattr(cfg, front).tls)
        except TlsFileError as e:
            c.error((front, "tls", e.key), str(e))
    for index, route in enumerate(cfg.ambassador):
        if route.upstream.tls is None:
            continue
        path: Path_ = ("ambassador", index, "upstream", "tls")
        try:
            load_client(route.upstream.tls)
        except TlsFileError as e:
            c.error((*path, e.key), str(e))
            continue
        if not route.upstream.tls.verify:
            c.note((*path, "verify"), "certificates of this upstream are not checked")


# --- SOAP ------------------------------------------------------------------------------------

def _soap_backend(name: str, cfg: Any, c: _Collector) -> tuple[SoapSpec, WsdlBinding] | None:
    """Loads the WSDL now (blocking, at config load), so `check` reports a bad WSDL, service
    or port, and calls never wait for it."""
    from .backends.soap import SoapSpec, WsdlError, load_wsdl

    tls = None
    if cfg.tls is not None:
        from .tls import TlsFileError, load_client

        try:
            tls = load_client(cfg.tls)
        except TlsFileError as e:
            c.error(("backends", name, "soap", "tls", e.key), str(e))
            return None
        if not cfg.tls.verify:
            c.note(("backends", name, "soap", "tls", "verify"),
                   "certificates of this endpoint are not checked")
    wsse = None if cfg.wsse is None else (cfg.wsse.username, cfg.wsse.password, cfg.wsse.digest)
    basic = None if cfg.basic_auth is None else (cfg.basic_auth.username, cfg.basic_auth.password)
    spec = SoapSpec(name=name, wsdl=str(cfg.wsdl), endpoint=cfg.endpoint, service=cfg.service,
                    port=cfg.port, wsse=wsse, basic_auth=basic, timeout=cfg.timeout,
                    connect_timeout=cfg.connect_timeout,
                    pool_size=cfg.pool.size, max_reply_bytes=cfg.max_reply_bytes, tls=tls)
    try:
        wsdl = load_wsdl(spec)
    except WsdlError as e:
        c.error(("backends", name, "soap", e.key), str(e))
        return None
    if tls is not None and not wsdl.address.startswith("https://"):
        c.error(("backends", name, "soap", "tls"),
                f"'tls' needs an https:// endpoint, the endpoint is {wsdl.address}")
        return None
    return spec, wsdl


def _soap_op(c: _Collector, mpath: Path_, service: str, name: str, m: Any, backend: str,
             wsdl: WsdlBinding, protoset: ProtoSet, environ: Mapping[str, str]) -> SoapOperation | None:
    from .backends.soap import enum_values, reply_wrapper, request_type
    from .mapping.soap_operation import (
        FAULT_GROUPS,
        FaultRule,
        SoapMappingError,
        SoapOperation,
        compile_explicit_request,
        compile_explicit_response,
        compile_request,
        compile_response,
        schema_elems,
    )

    md = protoset.method(service, name)
    req, out = md.input_type, md.output_type
    opname = m.operation or name
    zop = wsdl.operations.get(opname)
    if zop is None:
        c.error((*mpath, "operation") if m.operation else mpath,
                f"port {wsdl.port} has no operation {opname!r} (operations: "
                f"{', '.join(sorted(wsdl.operations))})")
        return None
    ok = True
    if m.request is not None and not isinstance(m.request, dict):
        c.error((*mpath, "request"), "a soap backend takes 'request' as a mapping of element → "
                                     "template (or none: fields matched by name)")
        ok = False
    if m.response is not None and not isinstance(m.response, dict):
        c.error((*mpath, "response"), "a soap backend takes 'response' as a mapping of field → "
                                      "reply path (or none: matched by name)")
        ok = False
    if not ok:
        return None
    in_type = request_type(zop)
    in_elems = schema_elems(in_type)
    out_type, wrap_as = reply_wrapper(zop)
    scope = Scope(request=req, env=environ, encoding="utf-8")

    def literals(typ: Any) -> tuple[str, ...]:
        return enum_values(wsdl, typ)

    try:
        if m.request is None:
            request: Any = compile_request(req, in_type, opname, literals=literals)
        else:
            def tpl(text: str) -> Template:
                try:
                    return compile_template(text, scope)
                except TemplateError as e:
                    raise SoapMappingError(f"template {text!r}: {e}") from e
            request = compile_explicit_request(req, in_elems, m.request, tpl, "request", literals)
    except SoapMappingError as e:
        c.error((*mpath, "request") if m.request is not None else mpath, str(e))
        ok = False
    try:
        response: Any = (compile_response(out, out_type, opname) if m.response is None
                         else compile_explicit_response(out, m.response, "response", out_type))
    except SoapMappingError as e:
        c.error((*mpath, "response") if m.response is not None else mpath, str(e))
        ok = False
    rules = []
    fscope = Scope(request=req, groups=FAULT_GROUPS, env=environ, encoding="utf-8")
    for i, fault in enumerate(m.faults):
        fpath = (*mpath, "faults", i)
        pats = {}
        for key in ("code", "string", "detail"):
            text = getattr(fault.match, key)
            pats[key] = None if text is None else _regex(c, (*fpath, "match", key), text)
            ok = ok and (text is None or pats[key] is not None)
        msg = None
        if fault.error.message is not None:
            msg = _templates(c, (*fpath, "error", "message"), fault.error.message, fscope)
            ok = ok and msg is not None
        rules.append(FaultRule(pats["code"], pats["string"], pats["detail"], Code[fault.error.code], msg))
    if not ok:
        return None
    return SoapOperation(
        service=service, method=name, backend=backend, operation=opname,
        input_class=protoset.message_class(req), output_class=protoset.message_class(out),
        request=request, response=response, wrap_as=wrap_as, faults=tuple(rules),
        idempotent=m.idempotent, timeout=m.timeout,
    )


def _soap_invoker(op: SoapOperation, backend: SoapBackend, drain: Any) -> Any:
    """The call path of one SOAP rpc, in callback form (no Deferred per call) like `_invoker`."""
    from .fronts.calls import CallbackInvoke, Done
    from .mapping.soap_operation import FaultInfo

    default_timeout = op.timeout if op.timeout is not None else backend.spec.timeout
    monotonic = time.monotonic

    def start(request: Any, ctx: CallContext, info: dict[str, Any], done: Done) -> Any:
        rctx = RenderContext(request, {}, ctx.meta, ctx.claims)
        kwargs = op.kwargs(request, rctx)  # CallError(INVALID_ARGUMENT) before anything is sent
        timeout = default_timeout
        if ctx.deadline is not None:
            left = ctx.deadline - monotonic()
            if left <= 0:
                raise CallError(Code.DEADLINE_EXCEEDED, "deadline expired before the call was sent")
            timeout = min(timeout, left)
        headers = {}
        if ctx.request_id:
            headers["X-Request-Id"] = ctx.request_id
        trace = ctx.meta.get("traceparent")
        if trace:
            headers["traceparent"] = trace
        t0 = monotonic()

        def finished(result: Any, err: BaseException | None) -> None:
            info["backend_s"] = monotonic() - t0
            drain.leave()
            if err is not None:
                done(None, err)
                return
            if isinstance(result, FaultInfo):
                done(None, op.fault(result, request))
                return
            try:
                message = op.message(result)
            except Exception as e:  # noqa: BLE001 - CallError from the mapping, or a bug
                done(None, e)
                return
            done(message, None)

        drain.enter()
        try:
            return backend.start_call(op.operation, kwargs, timeout, headers, op.idempotent,
                                      finished)
        except BaseException:
            drain.leave()
            raise

    return CallbackInvoke(start)


# --- live objects ---------------------------------------------------------------------------

def redacted_view(loaded: Loaded) -> dict[str, Any]:
    from .config.schema import redacted_dict

    return {"config_file": loaded.config_path, "config": redacted_dict(loaded.config),
            "methods": sorted(loaded.ops)}


def build_set(loaded: Loaded, reactor: Any, generation: int, drain: Any,
              reuse: Mapping[str, Any] | None = None) -> Any:
    """Turn a problem-free load into live objects. Pools whose spec did not change are reused
    (their connections survive a reload); the caller starts new ones and stops dropped ones."""
    from .fronts.calls import ConfigSet, MethodEntry

    pools: dict[str, LinePool | ProcessPool | SoapBackend] = {}
    for name, (sspec, wsdl) in loaded.soap.items():
        from .backends.soap import SoapBackend

        soap_backend = pools[name] = SoapBackend(sspec, wsdl, reactor)
        old_soap = (reuse or {}).get(name)
        if isinstance(old_soap, SoapBackend) and old_soap.wsdl.address == wsdl.address:
            soap_backend.probe_ok = old_soap.probe_ok  # ready through a reload until re-probed
    for name, spec in loaded.specs.items():
        old = (reuse or {}).get(name)
        if old is not None and old.spec == spec:
            pools[name] = old
        elif isinstance(spec, ProcessSpec):
            pools[name] = ProcessPool(spec, reactor)
        else:
            pools[name] = LinePool(spec, reactor)
    gates = {name: _gate(name, loaded.config.backends[name], pool, reactor, drain)
             for name, pool in pools.items()}
    methods: dict[str, MethodEntry] = {}
    for path, op in loaded.ops.items():
        pool = pools[op.backend]
        if isinstance(op, LineOperation):
            assert isinstance(pool, LinePool | ProcessPool)
            invoke = _invoker(op, pool, drain)
        else:
            invoke = _soap_invoker(op, pool, drain)  # type: ignore[arg-type]
        gate = gates[op.backend]
        if gate is not None:
            invoke = _admitted(invoke, gate, op.timeout if op.timeout is not None else pool.spec.timeout)
        mode = op.auth or (loaded.config.auth.default if loaded.config.auth is not None else "none")
        if mode != "none" and loaded.verifier is not None:
            invoke = _authenticated(invoke, loaded.verifier, mode)
        methods[path] = MethodEntry(
            service=op.service, method=op.method, input_class=op.input_class,
            output_class=op.output_class, backend=op.backend, invoke=invoke,
            descriptor=loaded.protoset.method(op.service, op.method), auth=mode,
        )
    return ConfigSet(generation=generation, config=loaded.config, protoset=loaded.protoset,
                     methods=methods, backends=dict(pools), service_backends=loaded.service_backends)


_GATES: WeakKeyDictionary[Any, Gate] = WeakKeyDictionary()


def _gate(name: str, bcfg: Any, pool: Any, reactor: Any, drain: Any) -> Gate | None:
    """The backend's admission gate, when it sets `max_concurrency` or `queue` (else the pool's
    own bounds apply, as before): `max_concurrency` calls at once (default: what the pool can
    carry), `queue` waiting (default: pool.max_waiting). A pool kept across a reload keeps its
    gate, so calls of the old and new generation share one limit."""
    from . import metrics

    cfg = bcfg.line or bcfg.process or bcfg.soap
    if cfg.max_concurrency is None and cfg.queue is None:
        return None
    pipeline = cfg.pool.pipeline if bcfg.line is not None else 1
    limit = cfg.max_concurrency or cfg.pool.size * pipeline
    queue = cfg.queue if cfg.queue is not None else cfg.pool.max_waiting
    old = _GATES.get(pool)
    if old is not None and (old.core.limit, old.core.queue) == (limit, queue):
        return old
    counters: dict[str, Any] = {}

    def on_shed(reason: str) -> None:
        c = counters.get(reason)
        if c is None:
            c = counters[reason] = metrics.backend_shed_total.labels(name, reason)
        c.inc()

    gate = _GATES[pool] = Gate(name, limit, queue, time.monotonic, reactor.callLater, on_shed, drain)
    return gate


def _admitted(invoke: Any, gate: Gate, timeout: float) -> Any:
    """`invoke` behind its backend's admission gate (one way for line, process and SOAP)."""
    from .fronts.calls import CallbackInvoke, start_from_invoke

    return CallbackInvoke(gate.wrap(start_from_invoke(invoke), timeout))


def _authenticated(invoke: Any, verifier: Any, mode: str) -> Any:
    """Check the caller's bearer token before anything else; verified claims become
    `{claims.*}` for templates, so a legacy field can carry the caller's identity and no
    caller can supply it. `optional`: no token is fine, a bad one is not."""
    from .fronts.calls import CallbackInvoke, start_from_invoke

    inner = start_from_invoke(invoke)

    def start(request: Any, ctx: CallContext, info: dict[str, Any], done: Any) -> Any:
        header = ctx.meta.get("authorization")
        if mode == "optional" and not header:
            return inner(request, ctx, info, done)
        try:
            claims = verifier.verify(header)
        except CallError as e:
            info["auth_error"] = getattr(e, "reason", "")
            raise
        authed = CallContext.of(ctx.meta, ctx.deadline, ctx.request_id, claims)
        return inner(request, authed, info, done)

    return CallbackInvoke(start)


def _invoker(op: LineOperation, pool: LinePool | ProcessPool, drain: Any) -> Any:
    """The call path of one rpc: render and frame the request, then hand it to the pool.
    Offered in callback form (`start`, what the fronts use: no Deferred per call on a line
    pool) and as a Deferred-returning callable."""
    from .fronts.calls import CallbackInvoke, Done
    from .mapping.reply import ReplyReader

    default_timeout = op.timeout if op.timeout is not None else pool.spec.timeout
    monotonic = time.monotonic
    encode_request, reply_spec = op.encode_request, op.reply
    idempotent = op.idempotent
    line_pool = pool if isinstance(pool, LinePool) else None
    no_groups: dict[str, str] = {}

    def start(request: Any, ctx: CallContext, info: dict[str, Any], done: Done) -> Any:
        # op.render_context, inline (request templates only read groups: one empty dict serves)
        rctx = RenderContext(request, no_groups, ctx.meta, ctx.claims)
        data = encode_request(rctx)  # CallError(INVALID_ARGUMENT) before anything is sent
        timeout = default_timeout
        if ctx.deadline is not None:
            left = ctx.deadline - monotonic()
            if left <= 0:
                raise CallError(Code.DEADLINE_EXCEEDED, "deadline expired before the call was sent")
            timeout = min(timeout, left)
        t0 = monotonic()
        drain.enter()

        def finished(result: Any, err: BaseException | None) -> None:
            # seconds: the front rounds them to backend_ms only if it writes an access line
            info["backend_s"] = monotonic() - t0
            drain.leave()
            done(result, err)

        reader = ReplyReader(reply_spec, rctx)  # op.reader(rctx), inline
        if line_pool is not None:
            return line_pool.call_cb(data, reader, timeout, idempotent, finished).cancel
        d = pool.call(data, reader, timeout, idempotent)
        d.addCallbacks(lambda r: finished(r, None), lambda f: finished(None, f.value))
        return d.cancel

    return CallbackInvoke(start)
