"""`${VAR}` / `${VAR:-default}` expansion in the string values of adaptercar.yaml.

Expansion runs after YAML parsing, on values only, so a variable can never change the
structure of the file (no injected keys, no YAML quoting surprises), and the positions of the
source map stay valid. Semantics follow the shell and docker-compose: `${VAR:-default}` takes
the default when VAR is unset *or empty*; `${VAR}` set to "" is "". `$${` is a literal `${`.

Mapping files are never expanded (a RESP frame `"${key|len}"` means a literal `$`), which is
why this is a function the loader applies to adaptercar.yaml only.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from adaptercar.config.problems import YamlPath

_TOKEN = re.compile(r"\$\$\{|\$\{([^}]*)\}|\$\{")
_BODY = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)(?::-(.*))?$", re.DOTALL)


class ExpansionError(ValueError):
    """A reference that cannot be expanded; the message is written for users."""


def expand_string(text: str, environ: Mapping[str, str]) -> str:
    """Expand one string; raises ExpansionError naming every variable that is missing."""
    if "$" not in text:
        return text
    missing: list[str] = []
    out: list[str] = []
    pos = 0
    for token in _TOKEN.finditer(text):
        out.append(text[pos:token.start()])
        pos = token.end()
        whole = token.group(0)
        if whole == "$${":
            out.append("${")
            continue
        body = token.group(1)
        if body is None:
            raise ExpansionError(
                f"unclosed '${{' in {text!r} (expected ${{VAR}} or ${{VAR:-default}}; "
                "write $${ for a literal ${)"
            )
        parsed = _BODY.match(body)
        if parsed is None:
            raise ExpansionError(
                f"malformed variable reference '{whole}' (expected ${{VAR}} or ${{VAR:-default}}"
                ", VAR made of letters, digits and _)"
            )
        name, default = parsed.group(1), parsed.group(2)
        if default is not None and "${" in default:
            raise ExpansionError(f"nested variable references are not supported in '{whole}'")
        value = environ.get(name)
        if default is not None:
            out.append(value if value else default)
        elif value is None:
            missing.append(name)
        else:
            out.append(value)
    out.append(text[pos:])
    if missing:
        names = ", ".join(missing)
        plural = "s" if len(missing) > 1 else ""
        raise ExpansionError(
            f"environment variable{plural} {names} not set (set it, or give a default: "
            f"${{{missing[0]}:-value}})"
        )
    return "".join(out)


def expand_env(
    data: Any, environ: Mapping[str, str], path: YamlPath = ()
) -> tuple[Any, list[tuple[YamlPath, str]]]:
    """A copy of `data` with every string value expanded, and the (path, message) failures.

    A value that fails to expand is kept as written, so validation can go on and report
    everything else; the loader then ignores validation complaints about that same value.
    """
    problems: list[tuple[YamlPath, str]] = []

    def walk(node: Any, where: YamlPath) -> Any:
        if isinstance(node, str):
            try:
                return expand_string(node, environ)
            except ExpansionError as exc:
                problems.append((where, str(exc)))
                return node
        if isinstance(node, dict):
            return {key: walk(value, where + (key,)) for key, value in node.items()}
        if isinstance(node, list):
            return [walk(item, where + (index,)) for index, item in enumerate(node)]
        return node

    return walk(data, path), problems
