"""The processes a benchmark run starts, and what /proc says about them.

Every server is started through one `Processes` registry so that a run that fails half-way
still stops all of them, by pid, in reverse order. CPU time and PSS are read from /proc for a
whole process tree, because the sidecar's default model is a supervisor plus one worker per
front and the cost of all of them is the cost of the sidecar.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
_PR_SET_PDEATHSIG = 1
TOOLS = {"wrk": "wrk", "h2load": "nghttp2-client", "nghttp": "nghttp2-client", "memcached": "memcached",
         "nginx": "nginx", "haproxy": "haproxy"}


class BenchError(RuntimeError):
    """A benchmark could not run (missing tool, server that did not start, wrong replies)."""


def missing_tools() -> list[str]:
    return [t for t in TOOLS if shutil.which(t) is None]


def install_hint(tools: Sequence[str]) -> str:
    debs = sorted({TOOLS[t] for t in tools})
    return f"missing {', '.join(tools)}: install with `sudo apt-get install -y {' '.join(debs)}`"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes], what: str, timeout: float = 20.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise BenchError(f"{what} exited with status {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise BenchError(f"{what} is not listening on 127.0.0.1:{port} after {timeout:.0f}s")


def python_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in [str(ROOT), env.get("PYTHONPATH", "")] if p)
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env.update(extra or {})
    return env


# -- /proc ------------------------------------------------------------------------------------
def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) may hold spaces and parentheses: split after its last ')'
    return raw[raw.rindex(")") + 2:].split()


def _start_time(pid: int) -> str | None:
    f = _stat_fields(pid)
    return f[19] if f else None


def process_tree(root: int) -> list[int]:
    """`root` and all its live descendants (pids), found through each process's parent pid."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        f = _stat_fields(int(entry))
        if f is not None:
            children.setdefault(int(f[1]), []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        if Path(f"/proc/{pid}").exists():
            out.append(pid)
            todo.extend(children.get(pid, []))
    return out


def cpu_seconds(pids: Sequence[int]) -> float:
    """User + system CPU seconds used so far by these processes (not their dead children)."""
    total = 0
    for pid in pids:
        f = _stat_fields(pid)
        if f is not None:
            total += int(f[11]) + int(f[12])  # utime, stime (fields 14 and 15 of stat)
    return total / CLK_TCK


def pss_mib(pids: Sequence[int]) -> float:
    """Proportional set size of these processes together: shared pages are counted once."""
    kib = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    kib += int(line.split()[1])
                    break
        except OSError:
            continue
    return kib / 1024


def alone_mib(pids: Sequence[int]) -> float:
    """What these processes would have as their PSS if nothing else ran on the machine: each
    page of a file they map (the interpreter, shared objects) counted once for all of them,
    plus their anonymous memory (its PSS: pages a fork shares are split among the sharers).

    Plain PSS also divides file pages with every *other* process mapping the same file (other
    Python processes, other checkouts' venvs hard-linked from one cache), so it moves with
    what else runs; this figure does not. A mapping's file pages are counted as resident in
    the process that has the most of them (the same library's pages are the same pages)."""
    files: dict[tuple[str, str, str], int] = {}
    anon = 0
    for pid in pids:
        try:
            text = Path(f"/proc/{pid}/smaps").read_text()
        except OSError:
            continue
        key: tuple[str, str, str] | None = None
        rss = 0
        for line in text.splitlines():
            head = line.split(None, 6)
            if head and "-" in head[0] and len(head) >= 5 and not head[0].endswith(":"):
                key = (head[3], head[4], head[2]) if head[4] != "0" else None  # dev, inode, offset
            elif line.startswith("Rss:"):
                rss = int(line.split()[1])
            elif line.startswith("Pss:") and key is None:
                anon += int(line.split()[1])
            elif line.startswith("Anonymous:") and key is not None:
                private = int(line.split()[1])  # copy-on-write pages of a file mapping
                anon += private
                files[key] = max(files.get(key, 0), rss - private)
    return (anon + sum(files.values())) / 1024


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM it when the harness dies, even by SIGKILL (Linux)."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


# -- the registry -----------------------------------------------------------------------------
@dataclass
class Started:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


class Processes:
    """Starts servers and stops every one of them (and their children) by pid, in reverse."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.started: list[Started] = []

    def start(self, name: str, argv: Sequence[str], env: dict[str, str] | None = None,
              cwd: Path = ROOT) -> Started:
        log = self.workdir / f"{name}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(list(argv), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=env or python_env(), cwd=cwd, preexec_fn=_die_with_parent)
        s = Started(name, proc, log)
        self.started.append(s)
        return s

    def stop(self, s: Started, timeout: float = 15.0) -> None:
        tree = [(pid, _start_time(pid)) for pid in process_tree(s.pid)]
        if s.proc.poll() is None:
            s.proc.send_signal(signal.SIGTERM)
            try:
                s.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                s.proc.kill()
                s.proc.wait()
        for pid, started_at in tree[1:]:
            # a child that outlived its parent; the start time guards against a reused pid
            if started_at is not None and _start_time(pid) == started_at:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        if s in self.started:
            self.started.remove(s)

    def stop_all(self) -> None:
        for s in reversed(list(self.started)):
            try:
                self.stop(s)
            except Exception as e:  # noqa: BLE001 - keep stopping the others
                print(f"bench: could not stop {s.name} (pid {s.pid}): {e}", file=sys.stderr)


def memcached_argv(port: int) -> list[str]:
    argv = ["memcached", "-l", "127.0.0.1", "-p", str(port), "-U", "0", "-t", "1", "-m", "64", "-c", "1024"]
    if os.geteuid() == 0:
        argv += ["-u", pwd.getpwuid(0).pw_name]  # memcached refuses to run as root without -u
    return argv
