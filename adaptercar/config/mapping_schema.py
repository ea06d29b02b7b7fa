"""Typed, immutable models of one mapping file, and the building blocks the config reuses.

Shapes that YAML lets users write in several forms (`request` as one template, a list of
frames, or a SOAP part map; `response` as rules, an `until` reply, or a SOAP field map) are
unions with a *callable discriminator*: the form is decided by the YAML type alone, so an error
inside one form is reported once, in that form's words, instead of once per union member.

How `response` is read (the one place where the form is not the YAML type alone):
  - a list                                      → `tuple[Rule, ...]`   (line / process)
  - a mapping with any of `until`, `rules`, `each`, or a list or mapping as a value
                                                → `ResponseUntil`      (line / process)
  - any other mapping                           → `dict[str, str]`     (SOAP: field → reply path)
So a SOAP field map cannot map proto fields named `until`, `rules` or `each`; the loader
reports an `until` form used with a SOAP backend.

Regexes and templates stay strings here: compiling them, with proto knowledge, is the
semantic check's job (it gets positions from the SourceMap; YAML key `bytes` is field `bytes_`).
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    PlainValidator,
    Tag,
    ValidationInfo,
    model_validator,
)
from pydantic_core import PydanticCustomError

from adaptercar.config.problems import describe, suggest

GRPC_CODES: tuple[str, ...] = (
    "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
    "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
    "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
    "UNAUTHENTICATED",
)


def invalid(message: str) -> PydanticCustomError:
    """A validation error whose message is shown to the user as written."""
    return PydanticCustomError("invalid", message)


class Strict(BaseModel):
    """Base of every config model: immutable, and unknown keys are errors.

    The before-validator records which model validated which input mapping (by identity,
    in the validation context), so an unknown key can be answered with "did you mean".
    """

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True, defer_build=True)

    @model_validator(mode="before")
    @classmethod
    def _record_shape(cls, data: Any, info: ValidationInfo) -> Any:
        context = info.context
        if isinstance(context, dict) and isinstance(data, dict):
            shapes = context.setdefault("shapes", {})
            shapes[id(data)] = (data, cls)
        return data


def exactly_one(owner: str, present: dict[str, bool]) -> None:
    """Raise a clear error unless exactly one of the named alternatives is set."""
    chosen = [name for name, is_set in present.items() if is_set]
    if len(chosen) == 1:
        return
    names = ", ".join(f"'{name}'" for name in present)
    if not chosen:
        raise invalid(f"{owner} needs exactly one of {names}")
    both = " and ".join(f"'{name}'" for name in chosen)
    raise invalid(f"{both} are both set; {owner} takes exactly one of {names}")


# --- durations ----------------------------------------------------------------------------

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_NUMBER = re.compile(r"(?:\d+(?:\.\d*)?|\.\d+)")
_DURATION = re.compile(r"(?:(?:\d+(?:\.\d*)?|\.\d+)\s*(?:ms|h|m|s))+")
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*(ms|h|m|s)")


def parse_duration(value: object) -> float:
    """`250ms`, `2s`, `1.5s`, `1m`, `1h`, `1m30s`, or a plain number of seconds → seconds.

    Raises ValueError with a message for users.
    """
    seconds: float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        if _NUMBER.fullmatch(text):
            seconds = float(text)
        elif _DURATION.fullmatch(text):
            seconds = sum(float(n) * _UNITS[unit] for n, unit in _DURATION_PART.findall(text))
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"expected a duration like 250ms, 2s or 1m, got {describe(value)}")
    return seconds


def _duration(value: object) -> float:
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise PydanticCustomError("duration", str(exc)) from None


def _positive_duration(value: object) -> float:
    seconds = _duration(value)
    if seconds <= 0:
        raise PydanticCustomError(
            "duration", f"expected a duration greater than 0, got {describe(value)}")
    return seconds


Duration = Annotated[float, PlainValidator(_duration)]
"""Seconds, written as `250ms`, `2s`, `1m` (or a plain number of seconds); 0 allowed."""
PositiveDuration = Annotated[float, PlainValidator(_positive_duration)]


# --- small validated scalars --------------------------------------------------------------

def _grpc_code(value: object) -> str:
    if isinstance(value, str) and value in GRPC_CODES:
        return value
    if isinstance(value, str) and value.upper() in GRPC_CODES:
        return value.upper()
    if isinstance(value, str):
        raise invalid(f"unknown gRPC code {value!r}" + suggest(value.upper(), GRPC_CODES))
    raise invalid(f"expected a gRPC code name such as NOT_FOUND, got {describe(value)}")


GrpcCode = Annotated[str, PlainValidator(_grpc_code)]
"""A gRPC status code name (OK excluded: it is not an error), upper-cased."""

Regex = str
"""A regular expression, compiled by the semantic check, not here."""
Template = str
"""A template (`{name}`, `{a.b:08d}`, `{x|len}`), compiled by the semantic check."""

Auth = Literal["required", "optional", "none"]


def _span(value: object) -> tuple[int, int]:
    if (
        isinstance(value, list | tuple) and len(value) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        and 0 <= value[0] < value[1]
    ):
        return (value[0], value[1])
    shown = repr(list(value)) if isinstance(value, list | tuple) else describe(value)
    raise invalid(f"expected [start, end] with 0 ≤ start < end, got {shown}")


Span = Annotated[tuple[int, int], PlainValidator(_span)]


# --- request ------------------------------------------------------------------------------

class BytesFrame(Strict):
    """`{bytes: "{text}"}`: exactly these bytes plus the delimiter; may contain the delimiter."""

    bytes_: Template = Field(alias="bytes")


def _frame_form(value: Any) -> str | None:
    if isinstance(value, str):
        return "~template"
    if isinstance(value, dict):
        return "~bytes"
    return None


Frame = Annotated[
    Annotated[Template, Tag("~template")] | Annotated[BytesFrame, Tag("~bytes")],
    Discriminator(_frame_form, custom_error_type="shape",
                  custom_error_message="expected a template string or {bytes: TEMPLATE}"),
]


def _request_form(value: Any) -> str | None:
    if isinstance(value, str):
        return "~template"
    if isinstance(value, list | tuple):
        return "~frames"
    if isinstance(value, dict):
        return "~parts"
    return None


Request = Annotated[
    Annotated[Template, Tag("~template")]
    | Annotated[tuple[Frame, ...], Tag("~frames")]
    | Annotated[dict[str, Template], Tag("~parts")],
    Discriminator(
        _request_form, custom_error_type="shape",
        custom_error_message="expected a template string, a list of frames, "
        "or (SOAP) a mapping of part → template",
    ),
]
"""str: one frame; tuple: one frame per item; dict: SOAP part → template."""


# --- response -----------------------------------------------------------------------------

def _count_as_text(value: object) -> object:
    # `bytes: 16` is a fixed count; the template language wants text.
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


class RuleError(Strict):
    code: GrpcCode
    message: Template | None = None
    """Template; None means the frame itself."""


class Body(Strict):
    """`body: {bytes: "{n}", into: text}`: after the frame, read n bytes (+ delimiter) into a field."""

    bytes_: Annotated[Template, BeforeValidator(_count_as_text)] = Field(alias="bytes")
    into: str


class Rule(Strict):
    match: Regex | None = None
    """Must fit the whole frame (re.fullmatch)."""
    stderr: Regex | None = None
    """Process backends: tests stderr instead of a stdout frame (re.search)."""
    exit_status: int | None = None
    """Process backends, per-call mode."""
    fields: dict[str, Template] = Field(default_factory=dict)
    error: RuleError | None = None
    body: Body | None = None

    @model_validator(mode="after")
    def _check(self) -> Rule:
        if self.match is None and self.stderr is None and self.exit_status is None:
            raise invalid("a rule needs 'match' (or, for process backends, 'stderr' "
                          "or 'exit_status')")
        if self.match is not None and self.stderr is not None:
            raise invalid("a rule tests either 'match' (stdout) or 'stderr', not both")
        if self.fields and self.error is not None:
            raise invalid("a rule sets either 'fields' or 'error', not both")
        return self


class Each(Strict):
    """One repeated element per frame: column slices, or a regex with field templates."""

    into: str | None = None
    """The repeated field; required in mapping files, absent in companion stats."""
    fixed: dict[str, Span] | None = None
    match: Regex | None = None
    fields: dict[str, Template] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check(self) -> Each:
        exactly_one("each", {"fixed": self.fixed is not None, "match": self.match is not None})
        if self.fixed is not None and self.fields:
            raise invalid("'fields' goes with 'match'; 'fixed' names its fields itself")
        return self


class ResponseUntil(Strict):
    until: Regex
    rules: tuple[Rule, ...] = ()
    each: Each | None = None


_UNTIL_KEYS = frozenset({"until", "rules", "each"})


def _response_form(value: Any) -> str | None:
    if isinstance(value, list | tuple):
        return "~rules"
    if isinstance(value, dict):
        # A SOAP field map holds scalars; a nested list or mapping means an `until` form.
        if _UNTIL_KEYS & value.keys() or any(isinstance(v, dict | list) for v in value.values()):
            return "~until"
        return "~soap"
    return None


Response = Annotated[
    Annotated[tuple[Rule, ...], Tag("~rules")]
    | Annotated[ResponseUntil, Tag("~until")]
    | Annotated[dict[str, str], Tag("~soap")],
    Discriminator(
        _response_form, custom_error_type="shape",
        custom_error_message="expected a list of rules, {until: REGEX, ...}, "
        "or (SOAP) a mapping of field → reply path",
    ),
]


# --- SOAP faults --------------------------------------------------------------------------

class FaultMatch(Strict):
    code: Regex | None = None
    """Searched in the fault code's local name (`Client`, `Sender`, ...)."""
    string: Regex | None = None
    """Searched in the fault string / reason text."""
    detail: Regex | None = None
    """Searched in the serialized detail element."""


class Fault(Strict):
    match: FaultMatch = Field(default_factory=FaultMatch)
    error: RuleError


# --- examples -----------------------------------------------------------------------------

class ExpectError(Strict):
    error: GrpcCode
    message: Regex | None = None
    """Optional regex searched in the error message."""


def _expect_form(value: Any) -> str | None:
    if isinstance(value, dict):
        if "error" in value and isinstance(value["error"], str) \
                and set(value) <= {"error", "message"}:
            return "~error"
        return "~fields"
    return None


Expect = Annotated[
    Annotated[ExpectError, Tag("~error")] | Annotated[dict[str, Any], Tag("~fields")],
    Discriminator(_expect_form, custom_error_type="shape",
                  custom_error_message="expected the reply's fields, or {error: CODE}"),
]


class Example(Strict):
    request: dict[str, Any] = Field(default_factory=dict)
    reply: str = ""
    """Raw frames as the legacy application sends them (or the SOAP envelope)."""
    stderr: str | None = None
    exit_status: int | None = None
    expect: Expect


# --- the mapping file ---------------------------------------------------------------------

class MethodMapping(Strict):
    backend: str | None = None
    """Overrides the file's backend."""
    auth: Auth | None = None
    """None: the file's, else the config's `auth.default`."""
    idempotent: bool = False
    timeout: PositiveDuration | None = None
    request: Request | None = None
    """None only for SOAP (proto fields matched to parts by name)."""
    response: Response | None = None
    """None only for SOAP (reply matched to proto fields by name)."""
    operation: str | None = None
    """SOAP: the WSDL operation; default the method name."""
    faults: tuple[Fault, ...] = ()
    examples: tuple[Example, ...] = ()


class MappingFile(Strict):
    service: str = Field(min_length=1)
    backend: str = Field(min_length=1)
    auth: Auth | None = None
    methods: dict[str, MethodMapping]
