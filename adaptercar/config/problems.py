"""Problems found while loading configuration, and the translation of pydantic's errors.

Everything a user sees from `adaptercar check` is a `Problem`: one line, pointing at the file
and line where the fix goes. pydantic's own messages ("Input should be a valid integer, unable
to parse string as an integer") speak about Python; these speak about the YAML the user wrote.
"""

from __future__ import annotations

import datetime
import difflib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ValidationError

if TYPE_CHECKING:
    from adaptercar.config.yamlsource import SourceMap

Severity = Literal["error", "note"]
YamlPath = tuple[str | int, ...]

# Error types raised by our own validators: their message is already written for users.
OWN_ERROR_TYPES = frozenset({"invalid", "duration", "shape"})

_PLAIN_KEY = re.compile(r"^[A-Za-z0-9_\-/$@+*]+$")
_QUOTED = re.compile(r"'((?:[^'\\]|\\.)*)'")


@dataclass(frozen=True)
class Problem:
    """One thing wrong, where it is, and what was expected."""

    file: str
    line: int
    path: str
    message: str
    severity: Severity = "error"

    def format(self) -> str:
        # A problem about the whole document (a YAML syntax error) has no path.
        where = f"{self.file}:{self.line}: "
        prefix = "note: " if self.severity == "note" else ""
        if self.path:
            return f"{where}{self.path}: {prefix}{self.message}"
        return f"{where}{prefix}{self.message}"

    def __str__(self) -> str:
        return self.format()


def render_path(path: Sequence[str | int]) -> str:
    """`('backends', 'ledger', 'on_connect', 0, 'send')` → `backends.ledger.on_connect[0].send`.

    Keys that would make the dotted form ambiguous (dots, spaces, brackets) are quoted as
    `["a.b"]`, so a path can always be read back unambiguously.
    """
    out: list[str] = []
    for part in path:
        if isinstance(part, int):
            out.append(f"[{part}]")
        elif _PLAIN_KEY.match(part):
            out.append(f".{part}" if out else part)
        else:
            escaped = part.replace("\\", "\\\\").replace('"', '\\"')
            out.append(f'["{escaped}"]')
    return "".join(out)


def describe(value: Any) -> str:
    """How a YAML value reads back to the user in a message."""
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, datetime.date):
        return f"a date ({value.isoformat()})"
    if isinstance(value, bytes):
        return "binary data"
    return type(value).__name__


def suggest(word: str, choices: Iterable[str]) -> str:
    """`" (did you mean 'timeout'?)"`, or the list of choices when none is close."""
    options = sorted(set(choices))
    close = difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    if close:
        return f" (did you mean '{close[0]}'?)"
    if options:
        return " (expected one of: " + ", ".join(options) + ")"
    return ""


def model_keys(model: type[BaseModel]) -> list[str]:
    """The YAML spellings of a model's keys (aliases where a key is a Python keyword)."""
    return [field.alias or name for name, field in model.model_fields.items()]


def _quote_hint(value: Any) -> str:
    # YAML 1.1 reads yes/no/on/off as booleans and 2024-01-01 as a date: say so.
    if isinstance(value, bool) or isinstance(value, datetime.date):
        return " (quote the value in YAML to keep it a string)"
    return ""


def message_for(error: dict[str, Any], parent_model: type[BaseModel] | None) -> str:
    """A user-facing message for one pydantic error dict."""
    kind: str = error["type"]
    value = error.get("input")
    ctx: dict[str, Any] = error.get("ctx") or {}
    got = describe(value)
    if kind in OWN_ERROR_TYPES:
        return str(error["msg"])
    if kind == "missing":
        return f"missing required key '{error['loc'][-1]}'"
    if kind == "extra_forbidden":
        key = str(error["loc"][-1])
        known = model_keys(parent_model) if parent_model is not None else []
        return f"unknown key '{key}'" + suggest(key, known)
    if kind in ("string_type", "string_unicode"):
        return f"expected a string, got {got}{_quote_hint(value)}"
    if kind in ("string_too_short",):
        return "must not be empty"
    if kind in ("int_type", "int_parsing", "int_from_float", "int_parsing_size"):
        return f"expected an integer, got {got}"
    if kind in ("float_type", "float_parsing", "finite_number"):
        return f"expected a number, got {got}"
    if kind in ("bool_type", "bool_parsing"):
        return f"expected true or false, got {got}"
    if kind in ("dict_type", "model_type", "model_attributes_type", "mapping_type"):
        return f"expected a mapping, got {got}"
    if kind in ("list_type", "tuple_type", "set_type", "iterable_type"):
        return f"expected a list, got {got}"
    if kind == "too_short":
        if ctx.get("min_length") == 1:
            return "must not be empty (expected at least one item)"
        return f"expected at least {ctx.get('min_length')} items, got {ctx.get('actual_length')}"
    if kind == "too_long":
        return f"expected at most {ctx.get('max_length')} items, got {ctx.get('actual_length')}"
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        sign = {"greater_than": ">", "greater_than_equal": "≥", "less_than": "<",
                "less_than_equal": "≤"}[kind]
        bound = next(iter(ctx.values()), "?")
        return f"expected a number {sign} {bound}, got {got}"
    if kind in ("literal_error", "enum"):
        expected = str(ctx.get("expected", ""))
        hint = ""
        if isinstance(value, str):
            options = [m.group(1) for m in _QUOTED.finditer(expected)]
            close = difflib.get_close_matches(value, options, n=1, cutoff=0.6)
            if close:
                hint = f" (did you mean '{close[0]}'?)"
        return f"expected {expected}, got {got}{hint}"
    if kind == "value_error":
        return str(ctx.get("error", error["msg"]))
    if kind == "path_type":
        return f"expected a path, got {got}"
    text = str(error["msg"])
    return f"{text[:1].lower()}{text[1:]} (got {got})"


def _walk_loc(
    loc: Sequence[str | int], data: Any, shapes: dict[int, tuple[Any, type[BaseModel]]]
) -> tuple[YamlPath, type[BaseModel] | None]:
    """Turn pydantic's `loc` into the path in the user's data, and find the model there.

    pydantic puts union tags (ours start with `~`) and dict-key markers into `loc`; they name
    nothing in the YAML, so they are dropped by walking the data alongside. The model that
    validated the innermost mapping is looked up by identity in `shapes` (filled by the
    models' before-validators) — that is how an unknown key gets its "did you mean".
    """
    path: list[str | int] = []
    node: Any = data
    parent_model: type[BaseModel] | None = None
    last = len(loc) - 1
    for i, part in enumerate(loc):
        if isinstance(part, str) and (part.startswith("~") or part == "[key]"):
            continue
        if isinstance(node, dict) and part in node:
            entry = shapes.get(id(node))
            parent_model = entry[1] if entry is not None and entry[0] is node else None
            path.append(part)
            node = node[part]
        elif isinstance(node, list | tuple) and isinstance(part, int) and 0 <= part < len(node):
            path.append(part)
            node = node[part]
        elif i == last:
            # A key that is not in the data: the missing one. Its parent is the model.
            if isinstance(node, dict):
                entry = shapes.get(id(node))
                parent_model = entry[1] if entry is not None and entry[0] is node else None
            path.append(part)
            node = None
        # anything else is a synthetic element (a union member's name): skip it
    return tuple(path), parent_model


def from_validation_error(
    error: ValidationError,
    source: SourceMap,
    data: Any,
    shapes: dict[int, tuple[Any, type[BaseModel]]] | None = None,
    prefix: YamlPath = (),
) -> list[Problem]:
    """Every error in `error` as a Problem with the line it belongs to.

    `data` is the exact object that was validated (so paths can be walked), `shapes` the
    registry the models filled in the validation context, `prefix` the path of `data` in the file.
    """
    registry = shapes or {}
    problems: list[Problem] = []
    seen: set[tuple[YamlPath, str]] = set()
    for err in error.errors(include_url=False):
        loc: tuple[str | int, ...] = tuple(err["loc"])
        path, parent_model = _walk_loc(loc, data, registry)
        message = message_for(dict(err), parent_model)
        if err["type"] == "missing" and path:
            # Point at the mapping that lacks the key, not at a key that is not there.
            path = path[:-1]
        full = prefix + path
        if (full, message) in seen:
            continue
        seen.add((full, message))
        problems.append(
            Problem(file=source.file, line=source.line(full), path=render_path(full),
                    message=message)
        )
    return problems
