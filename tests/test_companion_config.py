"""companion.config: values folders (ConfigMap-style symlink swaps) → an atomically written
config file, and SIGHUP to the demo's confwatch fixture exactly once per real change."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from adaptercar.companion.config_render import ConfigRenderer
from tests.harness import ROOT, env_with_root

# A reader in its own process (no GIL shared with the writer), reading the file in a tight loop
# until stdin closes; it reports every distinct content it saw and every error it met.
READER = """\
import json, sys, threading
path = sys.argv[1]
done = threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), done.set()), daemon=True).start()
seen, errors, reads = set(), [], 0
while not done.is_set() or reads == 0:
    try:
        with open(path, encoding="utf-8") as f:
            seen.add(f.read())
    except Exception as e:
        errors.append(f"{type(e).__name__}: {e}")
    reads += 1
    if reads == 1:
        print("reading", flush=True)
print(json.dumps({"seen": sorted(seen), "errors": errors[:10], "n_errors": len(errors), "reads": reads}))
"""


class ConfigMap:
    """A folder laid out as kubelet mounts a ConfigMap: keys → `..data/key`, `..data` → a
    timestamped folder; an update writes a new folder and swaps `..data` with one rename."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir()
        self.n = 0

    def set(self, values: dict[str, str]) -> None:
        self.n += 1
        d = self.root / f"..2026_{self.n:04d}"
        d.mkdir()
        for k, v in values.items():
            (d / k).write_text(v + "\n")
        tmp = self.root / "..data_tmp"
        os.symlink(d.name, tmp)
        os.replace(tmp, self.root / "..data")
        for k in values:
            if not (self.root / k).is_symlink():
                os.symlink(f"..data/{k}", self.root / k)


def _entry(tmp: Path, template: str, on_change: Any = None) -> Any:
    (tmp / "app.conf.tpl").write_text(template)
    return SimpleNamespace(template=tmp / "app.conf.tpl", values=(tmp / "values",), output=tmp / "app.conf",
                           on_change=on_change)


@pytest.fixture
def hup_process(tmp_path: Path) -> Any:
    """The demo's confwatch fixture, reading `app.conf` (the output) at start and on each SIGHUP;
    its status file says how many SIGHUPs it took and what it loaded."""
    status = tmp_path / "confwatch.json"
    pidfile = tmp_path / "legacy.pid"
    with (tmp_path / "confwatch.log").open("wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "legacy_fixtures.confwatch", "--config",
                                 str(tmp_path / "app.conf"), "--pidfile", str(pidfile), "--status", str(status)],
                                stdout=subprocess.PIPE, stderr=err, env=env_with_root(), cwd=ROOT)
    assert proc.stdout is not None and proc.stdout.readline().startswith(b"CONFWATCH READY")

    def state() -> dict[str, Any]:
        return dict(json.loads(status.read_text()))

    yield SimpleNamespace(pidfile=pidfile, hups=lambda: int(state()["hups"]), state=state)
    proc.kill()
    proc.wait()


def _wait_hups(hups: Any, n: int) -> None:
    end = time.monotonic() + 5
    while hups() < n and time.monotonic() < end:
        time.sleep(0.02)
    time.sleep(0.2)  # and no extra one arrives
    assert hups() == n


def test_symlink_swaps_rewrite_atomically_and_signal_once_per_real_change(tmp_path: Path,
                                                                         hup_process: Any) -> None:
    cm = ConfigMap(tmp_path / "values")
    cm.set({"port": "7000", "name": "alpha" * 200})
    entry = _entry(tmp_path, "port={port}\nname={name}\nhome={env.HOME_X}\n",
                   SimpleNamespace(signal=1, pidfile=hup_process.pidfile, restart=None, command=None))
    out = tmp_path / "app.conf"
    out.write_text("old\n")
    os.chmod(out, 0o640)
    r = ConfigRenderer(entry, settle=0, environ={"HOME_X": "/srv"})
    assert r.poll() is True
    assert out.read_text() == f"port=7000\nname={'alpha' * 200}\nhome=/srv\n"
    assert out.stat().st_mode & 0o777 == 0o640  # mode kept
    _wait_hups(hup_process.hups, 1)
    assert r.poll() is False  # nothing changed: no write, no signal
    _wait_hups(hup_process.hups, 1)

    reader = subprocess.Popen([sys.executable, "-c", READER, str(out)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    assert reader.stdin is not None and reader.stdout is not None
    try:
        assert reader.stdout.readline() == "reading\n"
        wanted = {f"port=7000\nname={'alpha' * 200}\nhome=/srv\n"}
        for i in range(20):
            name = ("beta" if i % 2 else "gamma") * 300
            cm.set({"port": str(7001 + i), "name": name})
            wanted.add(f"port={7001 + i}\nname={name}\nhome=/srv\n")
            assert r.poll() is True
            # signals of one kind do not queue: wait for each before the next change; the
            # signal comes after the rename, so confwatch reloads and finds the new values
            end = time.monotonic() + 5
            while hup_process.hups() < i + 2 and time.monotonic() < end:
                time.sleep(0.005)
            assert hup_process.state()["values"]["port"] == str(7001 + i)
        cm.set({"port": "7020", "name": "beta" * 300})  # the same values again: no change
        assert r.poll() is False
    finally:
        report = json.loads(reader.communicate("", timeout=30)[0].splitlines()[-1])
    assert report["errors"] == [], report  # never a missing or unreadable file
    print("reader", report["reads"], "reads", len(report["seen"]), "versions")
    seen = set(report["seen"])
    assert seen <= wanted, sorted(seen - wanted)[:2]  # never a partial file
    assert len(seen) > 1, report["reads"]  # and it did read while the file changed
    _wait_hups(hup_process.hups, 21)
    state = hup_process.state()
    assert state["error"] is None
    assert state["values"] == {"port": "7020", "name": "beta" * 300, "home": "/srv"}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".adaptercar-")]  # no temp left


def test_a_missing_value_or_bad_template_keeps_the_old_file(tmp_path: Path) -> None:
    cm = ConfigMap(tmp_path / "values")
    cm.set({"port": "7000"})
    entry = _entry(tmp_path, "port={port}\n")
    r = ConfigRenderer(entry, settle=0, environ={})
    assert r.poll() is True
    (tmp_path / "app.conf.tpl").write_text("port={port}\nhost={host}\n")  # host has no value
    assert r.poll() is False
    assert r.last_error is not None and "value 'host' is missing: no file 'host' in " in r.last_error
    assert str(tmp_path / "values") in r.last_error and "(keys: port)" in r.last_error
    assert "request field" not in r.last_error
    assert (tmp_path / "app.conf").read_text() == "port=7000\n"
    (tmp_path / "app.conf.tpl").write_text("port={port\n")
    assert r.poll() is False and "bad placeholder" in (r.last_error or "")
    assert (tmp_path / "app.conf").read_text() == "port=7000\n"
    cm.set({"port": "7000", "host": "db"})
    (tmp_path / "app.conf.tpl").write_text("port={port}\nhost={host}\n")
    assert r.poll() is True
    assert (tmp_path / "app.conf").read_text() == "port=7000\nhost=db\n"


def test_a_failing_on_change_is_retried_on_the_next_change(tmp_path: Path, hup_process: Any) -> None:
    cm = ConfigMap(tmp_path / "values")
    cm.set({"v": "1"})
    missing = tmp_path / "not-yet.pid"
    entry = _entry(tmp_path, "v={v}\n", SimpleNamespace(signal=1, pidfile=missing, restart=None, command=None))
    r = ConfigRenderer(entry, settle=0, environ={})
    assert r.poll() is True  # written; the signal fails (no pidfile) and is only logged
    os.replace(hup_process.pidfile, missing)
    cm.set({"v": "2"})
    assert r.poll() is True
    _wait_hups(hup_process.hups, 1)


def test_on_change_command_runs_with_argv_and_no_shell(tmp_path: Path) -> None:
    cm = ConfigMap(tmp_path / "values")
    cm.set({"v": "1"})
    marker = tmp_path / "ran; echo injected"
    entry = _entry(tmp_path, "v={v}\n", SimpleNamespace(signal=None, pidfile=None, restart=None,
                                                        command=("touch", str(marker))))
    done = threading.Event()
    r = ConfigRenderer(entry, settle=0, environ={}, in_thread=lambda fn, *a: (fn(*a), done.set()))
    assert r.poll() is True
    assert done.is_set() and marker.exists()


def _age(path: Path, seconds: float) -> None:
    """Make the file's last change `seconds` ago (negative: in the future, a skewed clock)."""
    when = time.time() - seconds
    os.utime(path, (when, when))


def test_a_value_rewritten_in_place_is_read_only_once_it_has_settled(tmp_path: Path) -> None:
    (tmp_path / "values").mkdir()
    value = tmp_path / "values" / "limit"
    value.write_text("10\n")
    entry = _entry(tmp_path, "limit={limit}\n")
    _age(value, 10)
    _age(tmp_path / "app.conf.tpl", 10)
    r = ConfigRenderer(entry, environ={})  # the sidecar's default settle time
    assert r.poll() is True and (tmp_path / "app.conf").read_text() == "limit=10\n"
    with open(value, "w") as f:  # as `echo 2000 > limit` does it: truncate, then write
        assert r.poll() is False  # empty right now: not rendered
        f.write("2")
        f.flush()
        assert r.poll() is False  # half-written: not rendered
        f.write("000\n")
    assert r.poll() is False  # complete, but nothing says the writer is done yet
    assert (tmp_path / "app.conf").read_text() == "limit=10\n"
    assert r.last_error is None and r.errors == 0  # waiting is not an error
    _age(value, 1)
    assert r.poll() is True and (tmp_path / "app.conf").read_text() == "limit=2000\n"
    # a file from a clock ahead of ours is read at once, not waited for forever
    value.write_text("3000\n")
    _age(value, -3600)
    assert r.poll() is True and (tmp_path / "app.conf").read_text() == "limit=3000\n"
    # a template edited in place waits the same way
    (tmp_path / "app.conf.tpl").write_text("limit = {limit}\n")
    assert r.poll() is False
    _age(tmp_path / "app.conf.tpl", 1)
    assert r.poll() is True and (tmp_path / "app.conf").read_text() == "limit = 3000\n"


def test_a_settled_value_file_written_in_place_is_rendered_by_a_polling_loop(tmp_path: Path) -> None:
    """Real time, no faked mtimes: a slow in-place writer never gets its half value rendered."""
    (tmp_path / "values").mkdir()
    value = tmp_path / "values" / "name"
    value.write_text("old\n")
    entry = _entry(tmp_path, "name={name}\n")
    _age(value, 10)
    _age(tmp_path / "app.conf.tpl", 10)
    r = ConfigRenderer(entry, environ={})
    assert r.poll() is True
    rendered: list[str] = []
    with open(value, "w") as f:
        for part in ("n", "e", "w", "-value\n"):
            f.write(part)
            f.flush()
            for _ in range(3):
                if r.poll():
                    rendered.append((tmp_path / "app.conf").read_text())
                time.sleep(0.02)
    end = time.monotonic() + 10
    while not rendered and time.monotonic() < end:
        if r.poll():
            rendered.append((tmp_path / "app.conf").read_text())
        time.sleep(0.1)
    assert rendered == ["name=new-value\n"]
