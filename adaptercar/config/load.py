"""Loading adaptercar.yaml and mapping files into typed objects plus every problem found.

Loading never stops at the first problem and never raises for bad input: YAML errors,
`${VAR}` failures, schema errors and the structural cross-checks that need several files at
once (backend names, SOAP-only keys, methods mapped twice, missing files) all come back as
`Problem`s with file and line. Semantic checks that need protos, templates or regexes build
on `Project` (objects + SourceMaps) and add their own problems the same way.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from adaptercar.config.expand import expand_env
from adaptercar.config.mapping_schema import (
    MappingFile,
    MethodMapping,
    ResponseUntil,
    Rule,
)
from adaptercar.config.problems import (
    Problem,
    YamlPath,
    from_validation_error,
    render_path,
    suggest,
)
from adaptercar.config.schema import Backend, Config, split_host_port
from adaptercar.config.yamlsource import SourceMap, load_yaml

M = TypeVar("M", bound=BaseModel)

MAPPING_SUFFIXES = (".yaml", ".yml")


def validation_context(base_dir: Path | None) -> dict[str, Any]:
    """What the models read while validating: the folder for relative paths, and a registry."""
    return {"base_dir": base_dir, "shapes": {}}


def display_path(path: Path | str) -> str:
    """A path as short as it can be shown unambiguously: relative to cwd when below it."""
    text = os.fspath(path)
    if not os.path.isabs(text):
        return text
    try:
        relative = os.path.relpath(text)
    except ValueError:
        return text
    return text if relative.startswith("..") else relative


def _errors(problems: list[Problem]) -> bool:
    return any(p.severity == "error" for p in problems)


def _by_line(problems: list[Problem]) -> list[Problem]:
    return sorted(problems, key=lambda p: p.line)


@dataclass(frozen=True)
class LoadResult:
    """`config` is set only when there is no error; `validated` whenever the schema passed
    (so checks can keep going and report more). Run nothing on `validated`."""

    config: Config | None
    problems: list[Problem]
    source: SourceMap
    validated: Config | None = None

    @property
    def ok(self) -> bool:
        return not _errors(self.problems)


@dataclass(frozen=True)
class MappingResult:
    mapping: MappingFile | None
    problems: list[Problem]
    source: SourceMap
    file: Path
    validated: MappingFile | None = None

    @property
    def ok(self) -> bool:
        return not _errors(self.problems)


@dataclass(frozen=True)
class Project:
    """adaptercar.yaml and every mapping file it names, with all their problems."""

    config: LoadResult
    mappings: list[MappingResult] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not _errors(self.problems)


def _validate(
    model: type[M], data: Any, source: SourceMap, base_dir: Path | None,
    skip: Sequence[YamlPath] = (),
) -> tuple[M | None, list[Problem]]:
    context = validation_context(base_dir)
    try:
        return model.model_validate(data, context=context), []
    except ValidationError as exc:
        problems = from_validation_error(exc, source, data, context["shapes"])
    # A value whose ${VAR} failed to expand was already reported; its validation would only echo.
    skipped = [render_path(p) for p in skip]
    return None, [
        p for p in problems
        if not any(p.path == s or p.path.startswith((s + ".", s + "[")) for s in skipped)
    ]


def load_config(
    path: str | os.PathLike[str], environ: Mapping[str, str] = os.environ
) -> LoadResult:
    """Load adaptercar.yaml: parse, expand `${VAR}` from `environ`, validate, cross-check."""
    document = load_yaml(path)
    source = document.source
    problems = list(document.problems)
    data = document.data
    if data is None:
        if problems:
            return LoadResult(None, _by_line(problems), source)
        data = {}  # an empty file configures nothing, which is valid
    if not isinstance(data, dict):
        problems.append(source.problem((), "expected a mapping of sections "
                                            "(grpc, http, admin, backends, ...)"))
        return LoadResult(None, _by_line(problems), source)
    expanded, failures = expand_env(data, environ)
    problems.extend(source.problem(where, message) for where, message in failures)
    base_dir = Path(os.path.abspath(os.path.dirname(os.fspath(path)) or "."))
    config, schema_problems = _validate(Config, expanded, source, base_dir,
                                        [where for where, _ in failures])
    problems.extend(schema_problems)
    if config is not None:
        problems.extend(check_config(config, source))
    problems = _by_line(problems)
    return LoadResult(None if _errors(problems) else config, problems, source, config)


def load_mapping(
    path: str | os.PathLike[str], display: str | None = None
) -> MappingResult:
    """Load one mapping file (never `${VAR}`-expanded: `$` is literal in frames)."""
    document = load_yaml(path, display)
    source = document.source
    problems = list(document.problems)
    mapping: MappingFile | None = None
    if document.data is None and not problems:
        problems.append(source.problem((), "empty mapping file (expected service, backend "
                                            "and methods)"))
    elif document.data is not None:
        mapping, schema_problems = _validate(MappingFile, document.data, source, None)
        problems.extend(schema_problems)
        if mapping is not None:
            problems.extend(_check_mapping_alone(mapping, source))
    problems = _by_line(problems)
    return MappingResult(None if _errors(problems) else mapping, problems, source,
                         Path(path), mapping)


def expand_mapping_paths(config: Config) -> list[Path]:
    """The mapping files `mappings:` names: files as given, folders → sorted *.yaml/*.yml."""
    found: list[Path] = []
    for entry in config.mappings:
        if entry.is_dir():
            found.extend(sorted(p for p in entry.iterdir()
                                if p.suffix in MAPPING_SUFFIXES and p.is_file()))
        elif entry.is_file():
            found.append(entry)
    seen: set[Path] = set()
    unique = []
    for p in found:
        if p not in seen:
            seen.add(p)
            unique.append(p)
    return unique


def load_all(
    path: str | os.PathLike[str], environ: Mapping[str, str] = os.environ
) -> Project:
    """The config, every mapping file it names, and every problem across all of them."""
    config_result = load_config(path, environ)
    config = config_result.validated
    problems = list(config_result.problems)
    mappings: list[MappingResult] = []
    if config is not None:
        for mapping_path in expand_mapping_paths(config):
            result = load_mapping(mapping_path, display_path(mapping_path))
            mappings.append(result)
            problems.extend(result.problems)
        problems.extend(check_mappings(config, mappings))
    order = {config_result.source.file: 0}
    for index, result in enumerate(mappings, start=1):
        order.setdefault(result.source.file, index)
    problems.sort(key=lambda p: (order.get(p.file, len(order)), p.line))
    return Project(config_result, mappings, problems)


# --- cross-checks on a validated config ---------------------------------------------------

_WILDCARDS = frozenset({"", "0.0.0.0", "::", "*"})


def _listeners(config: Config) -> Iterator[tuple[YamlPath, str]]:
    for section in ("grpc", "http", "admin"):
        front = getattr(config, section)
        if front is not None:
            yield (section, "listen"), front.listen
    for index, route in enumerate(config.ambassador):
        yield ("ambassador", index, "listen"), route.listen


def _same_socket(a: str, b: str) -> bool:
    if a.startswith("unix:") or b.startswith("unix:"):
        return a == b
    host_a, port_a = split_host_port(a)
    host_b, port_b = split_host_port(b)
    if port_a != port_b or port_a == 0:
        return False
    return host_a == host_b or host_a in _WILDCARDS or host_b in _WILDCARDS


def _exists(path: Path, *, folder: bool | None = None) -> str | None:
    if folder is True and not path.is_dir():
        return f"no such folder: {display_path(path)}"
    if folder is False and not path.is_file():
        return f"no such file: {display_path(path)}"
    if folder is None and not path.exists():
        return f"no such file or folder: {display_path(path)}"
    return None


def check_config(config: Config, source: SourceMap) -> list[Problem]:
    """What one model cannot see alone: clashing listeners, names, references, missing files."""
    problems: list[Problem] = []

    def report(where: YamlPath, message: str | None) -> None:
        if message is not None:
            problems.append(source.problem(where, message))

    taken: list[tuple[YamlPath, str]] = []
    for where, address in _listeners(config):
        for other_where, other in taken:
            if _same_socket(address, other):
                report(where, f"address {address!r} is already used by "
                              f"{render_path(other_where)} (line {source.line(other_where)})")
                break
        taken.append((where, address))

    names: dict[str, int] = {}
    for index, route in enumerate(config.ambassador):
        if route.name in names:
            report(("ambassador", index, "name"),
                   f"route name {route.name!r} is already used by ambassador[{names[route.name]}]")
        names.setdefault(route.name, index)

    for key in ("protos", "mappings"):
        for index, entry in enumerate(getattr(config, key)):
            report((key, index), _exists(entry))

    for name, backend in config.backends.items():
        if backend.soap is not None and isinstance(backend.soap.wsdl, Path):
            report(("backends", name, "soap", "wsdl"), _exists(backend.soap.wsdl, folder=False))
        if backend.process is not None and backend.process.cwd is not None:
            report(("backends", name, "process", "cwd"),
                   _exists(backend.process.cwd, folder=True))

    if config.auth is not None and isinstance(config.auth.jwt.keys, Path):
        report(("auth", "jwt", "keys"), _exists(config.auth.jwt.keys, folder=False))

    if config.companion is not None:
        for index, stats in enumerate(config.companion.stats):
            where = ("companion", "stats", index, "backend")
            report(where, _backend_problem(config, stats.backend))
            target = config.backends.get(stats.backend)
            if target is not None and target.soap is not None:
                report(where, f"stats need a line or process backend; {stats.backend!r} is SOAP")
        for index, item in enumerate(config.companion.config):
            report(("companion", "config", index, "template"),
                   _exists(item.template, folder=False))
            for vindex, folder in enumerate(item.values):
                where = ("companion", "config", index, "values", vindex)
                if not folder.exists():  # the render retries every second: it may appear later
                    problems.append(source.problem(where, f"no such folder: {display_path(folder)}"
                                                   " (rendering fails until it exists)", "note"))
                elif not folder.is_dir():
                    report(where, f"not a folder: {display_path(folder)} (a values folder holds "
                                  "one file per key)")
            if item.on_change is not None and item.on_change.restart is not None:
                name = item.on_change.restart
                where = ("companion", "config", index, "on_change", "restart")
                report(where, _backend_problem(config, name))
                target = config.backends.get(name)
                if target is not None and target.soap is not None:
                    report(where, f"{name!r} is a SOAP backend: it keeps no connections or "
                                  "children to restart (expected a line or process backend)")
        for index, log in enumerate(config.companion.logs):
            folder = log.path.parent
            if not folder.is_dir():  # the file may appear later; its folder usually exists
                problems.append(source.problem(
                    ("companion", "logs", index, "path"),
                    f"no such folder: {display_path(folder)} (nothing is read until "
                    f"{log.path.name} appears there)", "note"))
    return problems


def _backend_problem(config: Config, name: str) -> str | None:
    if name in config.backends:
        return None
    if not config.backends:
        return f"unknown backend {name!r} (adaptercar.yaml defines no backends)"
    return f"unknown backend {name!r}" + suggest(name, config.backends)


# --- checks on mapping files --------------------------------------------------------------

def _each_needs_into(method: MethodMapping) -> bool:
    response = method.response
    return (isinstance(response, ResponseUntil) and response.each is not None
            and response.each.into is None)


def _check_mapping_alone(mapping: MappingFile, source: SourceMap) -> list[Problem]:
    problems = []
    for name, method in mapping.methods.items():
        if _each_needs_into(method):
            problems.append(source.problem(
                ("methods", name, "response", "each"),
                "missing required key 'into' (the repeated field that receives the elements)"))
    return problems


def _rules_of(method: MethodMapping) -> Iterator[tuple[YamlPath, Rule]]:
    response = method.response
    if isinstance(response, tuple):
        for index, rule in enumerate(response):
            yield ("response", index), rule
    elif isinstance(response, ResponseUntil):
        for index, rule in enumerate(response.rules):
            yield ("response", "rules", index), rule


def _check_method(
    name: str, method: MethodMapping, backend_name: str, backend: Backend, source: SourceMap,
) -> list[Problem]:
    here: YamlPath = ("methods", name)
    kind = backend.kind
    what = f"backend {backend_name!r} is a {kind} backend"
    problems: list[Problem] = []

    def report(where: YamlPath, message: str) -> None:
        problems.append(source.problem(here + where, message))

    if kind == "soap":
        if method.request is not None and not isinstance(method.request, dict):
            report(("request",), "a SOAP request is a mapping of part → template (or omitted "
                                 f"to match proto fields to parts by name); {what}")
        if method.response is not None and not isinstance(method.response, dict):
            report(("response",), "a SOAP response is a mapping of field → reply path (or "
                                  f"omitted to match by name); {what}")
        return problems
    if method.request is None:
        report((), f"missing required key 'request' (a frame template; {what})")
    elif isinstance(method.request, dict):
        report(("request",), f"a mapping of parts is only for SOAP backends; {what} "
                             "(expected a template or a list of frames)")
    if method.response is None:
        report((), f"missing required key 'response' (rules that read the reply; {what})")
    elif isinstance(method.response, dict):
        hint = "".join(suggest(key, ("until", "rules", "each")) for key in method.response
                       if difflib.get_close_matches(key, ("until", "rules", "each"), 1, 0.6))
        report(("response",), f"a mapping of reply paths is only for SOAP backends; {what} "
                              "(expected a list of rules or {until: ...})" + hint)
    if method.operation is not None:
        report(("operation",), f"'operation' is only for SOAP backends; {what}")
    if method.faults:
        report(("faults",), f"'faults' are only for SOAP backends; {what}")
    if kind != "process":
        for where, rule in _rules_of(method):
            for key in ("stderr", "exit_status"):
                if getattr(rule, key) is not None:
                    report(where + (key,), f"{key!r} rules are only for process backends; {what}")
        for index, example in enumerate(method.examples):
            for key in ("stderr", "exit_status"):
                if getattr(example, key) is not None:
                    report(("examples", index, key),
                           f"{key!r} is only for process backends; {what}")
    return problems


def check_mappings(config: Config, results: list[MappingResult]) -> list[Problem]:
    """Checks that need the config and all mapping files together."""
    problems: list[Problem] = []
    mapped: dict[tuple[str, str], tuple[str, int]] = {}
    for result in results:
        mapping, source = result.validated, result.source
        if mapping is None:
            continue
        default_problem = _backend_problem(config, mapping.backend)
        if default_problem is not None:
            problems.append(source.problem(("backend",), default_problem))
        for name, method in mapping.methods.items():
            key = (mapping.service, name)
            where: YamlPath = ("methods", name)
            if key in mapped:
                file, line = mapped[key]
                problems.append(source.problem(
                    where, f"{mapping.service}/{name} is already mapped in {file}:{line}"))
            else:
                mapped[key] = (source.file, source.line(where))
            backend_name = method.backend or mapping.backend
            if method.backend is not None:
                override = _backend_problem(config, method.backend)
                if override is not None:
                    problems.append(source.problem(where + ("backend",), override))
                    continue
            backend = config.backends.get(backend_name)
            if backend is not None:
                problems.extend(_check_method(name, method, backend_name, backend, source))
    return problems
