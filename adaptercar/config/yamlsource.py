"""YAML → plain Python data, plus where every key and item came from.

pyyaml's constructors forget positions, and silently keep the last of two equal keys. We
compose the node graph with SafeLoader and build the data ourselves so that every mapping
entry and list item keeps its line (for `FILE:LINE:` messages long after loading) and a
duplicate key becomes a problem instead of a silent override.

Mapping keys stay exactly as written: YAML 1.1 would read `on:` (as in `retry: {on: [...]}`)
or `no:` as booleans and `404:` as an int; a key is a name, so it is always its source text.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from adaptercar.config.problems import Problem, Severity, YamlPath, render_path

# Far beyond any real config; stops alias bombs ("billion laughs") before they eat memory.
MAX_NODES = 200_000

_MERGE_TAG = "tag:yaml.org,2002:merge"
_PLAIN_TAGS = frozenset({"tag:yaml.org,2002:map", "tag:yaml.org,2002:seq"})


class SourceMap:
    """Answers "which line of which file" for a path into the loaded data."""

    def __init__(
        self, file: str, lines: dict[YamlPath, int] | None = None,
        value_lines: dict[YamlPath, int] | None = None,
    ) -> None:
        self.file = file
        self._lines = lines if lines is not None else {}
        self._value_lines = value_lines if value_lines is not None else {}

    def line(self, path: YamlPath) -> int:
        """1-based line of the key (mapping entry) or item (list); else of the nearest ancestor."""
        return self._nearest(self._lines, tuple(path))

    def value_line(self, path: YamlPath) -> int:
        """1-based line where the value starts (a block scalar starts below its key)."""
        return self._nearest(self._value_lines, tuple(path))

    def has(self, path: YamlPath) -> bool:
        return tuple(path) in self._lines

    def problem(self, path: YamlPath, message: str, severity: Severity = "error") -> Problem:
        """A Problem at `path` of this file: what semantic checks built on the loader use."""
        return Problem(file=self.file, line=self.line(path), path=render_path(path),
                       message=message, severity=severity)

    @staticmethod
    def _nearest(table: dict[YamlPath, int], path: YamlPath) -> int:
        while path:
            found = table.get(path)
            if found is not None:
                return found
            path = path[:-1]
        return table.get((), 1)


@dataclass
class YamlDocument:
    data: Any
    source: SourceMap
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not any(p.severity == "error" for p in self.problems)


class _TooLarge(Exception):
    pass


class _Builder:
    """Walks a composed node graph into dicts, lists and scalars, recording positions."""

    def __init__(self, loader: yaml.SafeLoader, file: str) -> None:
        self.loader = loader
        self.file = file
        self.lines: dict[YamlPath, int] = {}
        self.value_lines: dict[YamlPath, int] = {}
        self.problems: list[Problem] = []
        self.count = 0
        self.active: set[int] = set()

    def problem(self, line: int, path: YamlPath, message: str) -> None:
        self.problems.append(Problem(self.file, line, render_path(path), message))

    def build(self, node: Node, path: YamlPath) -> Any:
        self.count += 1
        if self.count > MAX_NODES:
            raise _TooLarge
        self.value_lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, ScalarNode):
            return self.loader.construct_object(node, deep=True)
        if id(node) in self.active:
            self.problem(node.start_mark.line + 1, path, "recursive YAML alias")
            return None
        if node.tag not in _PLAIN_TAGS:
            # We build collections ourselves, so a tag would be silently ignored: refuse it.
            tag = node.tag.replace("tag:yaml.org,2002:", "!!")
            self.problem(node.start_mark.line + 1, path, f"unsupported YAML tag '{tag}'")
            return None
        self.active.add(id(node))
        try:
            if isinstance(node, SequenceNode):
                out: list[Any] = []
                for index, item in enumerate(node.value):
                    item_path = path + (index,)
                    self.lines[item_path] = item.start_mark.line + 1
                    out.append(self.build(item, item_path))
                return out
            if isinstance(node, MappingNode):
                return self.build_mapping(node, path)
        finally:
            self.active.discard(id(node))
        return self.loader.construct_object(node, deep=True)  # pragma: no cover

    def build_mapping(self, node: MappingNode, path: YamlPath) -> dict[str, Any]:
        first_seen: dict[str, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == _MERGE_TAG or not isinstance(key_node, ScalarNode):
                continue
            line = key_node.start_mark.line + 1
            if key_node.value in first_seen:
                self.problem(
                    line, path + (key_node.value,),
                    f"duplicate key '{key_node.value}' (first defined on line "
                    f"{first_seen[key_node.value]}; YAML would silently keep only the last)",
                )
            else:
                first_seen[key_node.value] = line
        self.loader.flatten_mapping(node)  # resolves `<<: *anchor` merge keys
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, ScalarNode):
                self.problem(key_node.start_mark.line + 1, path,
                             "a key must be a plain name, not a list or mapping")
                continue
            key = key_node.value
            entry_path = path + (key,)
            self.lines[entry_path] = key_node.start_mark.line + 1
            out[key] = self.build(value_node, entry_path)
        return out


def _yaml_problem(file: str, exc: yaml.YAMLError) -> Problem:
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        what = exc.problem or exc.context or "invalid YAML"
        message = f"invalid YAML: {what}"
        if exc.context and exc.problem and exc.context_mark is not None:
            message += f" ({exc.context} on line {exc.context_mark.line + 1})"
        return Problem(file, line, "", message)
    return Problem(file, 1, "", f"invalid YAML: {exc}")


def parse_yaml(text: str, file: str) -> YamlDocument:
    """Parse one YAML document; never raises for bad input, reports Problems instead."""
    source = SourceMap(file)
    loader = yaml.SafeLoader(text)
    try:
        try:
            node = loader.get_single_node()
        except yaml.YAMLError as exc:
            return YamlDocument(None, source, [_yaml_problem(file, exc)])
        if node is None:
            return YamlDocument(None, source, [])
        builder = _Builder(loader, file)
        try:
            data = builder.build(node, ())
        except yaml.YAMLError as exc:
            return YamlDocument(None, source, builder.problems + [_yaml_problem(file, exc)])
        except _TooLarge:
            return YamlDocument(None, source, [Problem(
                file, 1, "", f"document too large: more than {MAX_NODES} nodes after aliases")])
        except RecursionError:
            return YamlDocument(None, source, [Problem(file, 1, "", "document nested too deeply")])
        source = SourceMap(file, builder.lines, builder.value_lines)
        return YamlDocument(data, source, builder.problems)
    finally:
        loader.dispose()


def load_yaml(path: str | os.PathLike[str], display: str | None = None) -> YamlDocument:
    """Read and parse a YAML file; `display` is how the file is named in problems."""
    file = display if display is not None else os.fspath(path)
    try:
        with open(path, "rb") as stream:
            raw = stream.read()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        return YamlDocument(None, SourceMap(file), [Problem(file, 1, "", f"cannot read: {reason}")])
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        return YamlDocument(None, SourceMap(file), [
            Problem(file, line, "", f"not UTF-8 text: byte {raw[exc.start]:#04x} cannot be decoded")
        ])
    return parse_yaml(text, file)
