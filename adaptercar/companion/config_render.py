"""`companion.config`: keep the legacy app's config file rendered from values folders.

Each poll reads the template and every value file (file name = key, content = value, one
trailing newline stripped) and renders; the output is rewritten, and `on_change` fired, only
when the rendered text differs from what the file holds. Re-reading small files each poll is
simpler and more robust than watching them: a Kubernetes ConfigMap mount updates by swapping a
`..data` symlink, which inotify on the key files never reports.

A value or template file modified within the last `SETTLE` seconds is not read yet (the
render waits for a later poll): a file rewritten in place is briefly empty or half-written,
and rendering that would write, and signal, a broken config.

The write is atomic for readers: a temp file in the output's folder, fsync, the old file's mode,
rename over. A missing value or a template error keeps the old file, is logged and counted (`errors`).
A failing `on_change` is logged; the next real change fires it again.
"""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from ..logs import log
from ..mapping.template import RenderContext, Scope, TemplateError, compile_template

COMMAND_TIMEOUT = 30.0
#: A value or template file modified less than this long ago may still be being written in
#: place (`echo 40 > key` truncates, then writes): the render waits for a later poll.
SETTLE = 0.5


class RenderError(Exception):
    pass


class Settling(Exception):
    """A file was modified less than `settle` seconds ago: render on a later poll."""


def _read_settled(path: str, settle: float) -> str:
    """The file's text, unless it changed within `settle` seconds (its mtime is read after the
    text, so a write that overlaps the read shows). An mtime in the future (a skewed network
    filesystem's clock) counts as settled, or the file would never be read."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
        age = time.time() - os.fstat(f.fileno()).st_mtime
    if 0 <= age < settle:
        raise Settling(path)
    return text


def read_values(folders: tuple[str, ...], settle: float = SETTLE) -> dict[str, str]:
    """Keys from every folder, later folders winning; hidden names (`..data`, `..2024_…`) skipped."""
    values: dict[str, str] = {}
    for folder in folders:
        try:
            names = sorted(os.listdir(folder))
        except OSError as e:
            raise RenderError(f"values folder {folder}: {e.strerror or e}") from None
        for name in names:
            if name.startswith("."):
                continue
            path = os.path.join(folder, name)
            if not os.path.isfile(path):
                continue
            try:
                text = _read_settled(path, settle)
            except (OSError, UnicodeDecodeError) as e:
                raise RenderError(f"value file {path}: {e}") from None
            values[name] = text[:-1] if text.endswith("\n") else text
    return values


def render(template_path: str, values: Mapping[str, str], environ: Mapping[str, str],
           settle: float = SETTLE, folders: tuple[str, ...] = ()) -> str:
    """The template rendered with `values` (read from `folders`, named in the error for a
    key that has no value file there)."""
    try:
        source = _read_settled(template_path, settle)
    except (OSError, UnicodeDecodeError) as e:
        raise RenderError(f"template {template_path}: {e}") from None
    # Every plain name is a value key: compiled against only the keys present, a missing one
    # would fall through to the request-field lookup and say "no request field can be used".
    scope = Scope(request=None, groups=_AnyKey(), env=environ, allow_meta=False, allow_claims=False)
    try:
        compiled = compile_template(source, scope)
    except TemplateError as e:
        raise RenderError(f"template {template_path}: {e}") from None
    missing = sorted(compiled.groups_used - values.keys())
    if missing:
        where = ", ".join(folders) or "the values folders"
        known = ", ".join(sorted(values)) or "none"
        raise RenderError(f"template {template_path}: value {missing[0]!r} is missing: no file "
                          f"{missing[0]!r} in {where} (keys: {known})")
    return compiled.render(RenderContext(groups=values))


class _AnyKey(frozenset[str]):
    """Every plain name counts as a value key, so `check` compiles a template without values."""

    def __contains__(self, item: object) -> bool:
        return True


def check_template(template_path: str, folders: tuple[str, ...],
                   environ: Mapping[str, str]) -> str | None:
    """What `adaptercar check` says about one entry's template (None: fine). It must compile;
    when every values folder exists, each key it uses must be in one of them, or no render
    would succeed until that file appears. A missing template is reported by the config checks."""
    try:
        with open(template_path, encoding="utf-8") as f:
            source = f.read()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as e:
        return f"cannot read the template: {e}"
    scope = Scope(request=None, groups=_AnyKey(), env=environ, allow_meta=False, allow_claims=False)
    try:
        used = compile_template(source, scope).groups_used
    except TemplateError as e:
        return f"the template does not compile: {e}"
    if not all(os.path.isdir(folder) for folder in folders):
        return None  # a missing folder is noted at its own key
    keys = {name for folder in folders for name in os.listdir(folder)
            if not name.startswith(".") and os.path.isfile(os.path.join(folder, name))}
    missing = sorted(used - keys)
    if missing:
        known = ", ".join(sorted(keys)) or "none"
        return (f"{{{missing[0]}}}: no value file {missing[0]!r} in the values folders "
                f"(keys: {known})")
    return None


def write_atomically(path: str, text: str) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    try:
        mode = os.stat(path).st_mode & 0o7777
    except FileNotFoundError:
        mode = 0o644
    fd, tmp = tempfile.mkstemp(prefix=".adaptercar-", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    dfd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def _current(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError):
        return None


class ConfigRenderer:
    """One `companion.config` entry; `poll()` renders, writes and fires when the text changed."""

    def __init__(self, entry: Any, environ: Mapping[str, str] | None = None,
                 restart: Callable[[str], None] | None = None,
                 in_thread: Callable[..., Any] | None = None, settle: float = SETTLE) -> None:
        self.settle = settle
        self.template = str(entry.template)
        self.values = tuple(str(v) for v in entry.values)
        self.output = str(entry.output)
        self.on_change = entry.on_change
        self.environ = os.environ if environ is None else environ
        self.restart = restart
        self.in_thread = in_thread or (lambda fn, *a: threading.Thread(target=fn, args=a, daemon=True).start())
        self.last_error: str | None = None
        # render/write failures so far; a metric for them waits for a row in the docs' table
        self.errors = 0

    def poll(self) -> bool:
        """True when the output was rewritten."""
        try:
            text = render(self.template, read_values(self.values, self.settle), self.environ,
                          self.settle, self.values)
        except Settling:
            return False  # a file is being written: the next poll renders what it holds then
        except RenderError as e:
            if str(e) != self.last_error:  # once per distinct problem, not once per poll
                log.error("companion_config_failed", output=self.output, error=str(e))
                self.errors += 1
            self.last_error = str(e)
            return False
        self.last_error = None
        if text == _current(self.output):
            return False
        try:
            write_atomically(self.output, text)
        except OSError as e:
            log.error("companion_config_failed", output=self.output, error=str(e))
            self.errors += 1
            return False
        log.info("companion_config_written", output=self.output)
        self.fire()
        return True

    def fire(self) -> None:
        oc = self.on_change
        if oc is None:
            return
        if oc.signal is not None:
            try:
                with open(str(oc.pidfile), encoding="ascii") as f:
                    pid = int(f.read().strip())
                os.kill(pid, oc.signal)
            except (OSError, ValueError) as e:
                log.error("companion_on_change_failed", output=self.output, action="signal", error=str(e))
            else:
                log.info("companion_on_change", output=self.output, action="signal",
                         signal=signal.Signals(oc.signal).name, pid=pid)
        elif oc.restart is not None:
            if self.restart is None:
                log.error("companion_on_change_failed", output=self.output, action="restart",
                          error="restarting a backend is not available in this process")
            else:
                self.restart(oc.restart)
                log.info("companion_on_change", output=self.output, action="restart", backend=oc.restart)
        elif oc.command is not None:
            self.in_thread(self._command, tuple(oc.command))

    def _command(self, argv: tuple[str, ...]) -> None:
        try:
            res = subprocess.run(argv, capture_output=True, timeout=COMMAND_TIMEOUT, check=False)
        except (OSError, subprocess.TimeoutExpired) as e:
            log.error("companion_on_change_failed", output=self.output, action="command", error=str(e))
            return
        if res.returncode != 0:
            log.error("companion_on_change_failed", output=self.output, action="command",
                      exit_status=res.returncode, stderr=res.stderr.decode("utf-8", "replace")[-500:])
        else:
            log.info("companion_on_change", output=self.output, action="command")
