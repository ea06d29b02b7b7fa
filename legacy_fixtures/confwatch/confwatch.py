#!/usr/bin/env python3
"""confwatch: a daemon that reads its config file at start and again on SIGHUP, nothing else.

The stand-in for a legacy program whose config adaptercar's companion renders
(`companion.config` with `on_change: {signal: HUP, pidfile: ...}`). Standard library only.

  python -m legacy_fixtures.confwatch --config FILE [--pidfile FILE] [--status FILE]

- The config is `key = value` lines; blank lines and `#` comments are skipped. A missing or
  unreadable file keeps what was loaded before (none at first) and says so on stderr.
- `--pidfile`: its pid, written before the first load, removed at exit.
- `--status`: after every load a JSON object {"pid", "generation", "hups", "values", "error"}
  (written to a temp file and renamed), so tests and the demo can see what it has loaded.
- Prints `CONFWATCH READY <pid>` on stdout once started; each load is one line on stderr.
  SIGTERM and SIGINT stop it.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from typing import Any


def parse(text: str) -> dict[str, str]:
    values = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if sep:
            values[key.strip()] = value.strip()
    return values


def _write(path: str, text: str) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


class Watcher:
    def __init__(self, config: str, status: str | None) -> None:
        self.config = config
        self.status = status
        self.values: dict[str, str] = {}
        self.generation = 0
        self.hups = 0
        self.error: str | None = None

    def load(self) -> None:
        try:
            with open(self.config, encoding="utf-8") as f:
                self.values = parse(f.read())
        except (OSError, UnicodeDecodeError) as e:
            self.error = f"cannot read {self.config}: {e}"
            print(f"confwatch: {self.error}; keeping generation {self.generation}", file=sys.stderr, flush=True)
        else:
            self.error = None
            self.generation += 1
            shown = ", ".join(f"{k}={v}" for k, v in sorted(self.values.items()))
            print(f"confwatch: generation {self.generation} loaded: {shown}", file=sys.stderr, flush=True)
        if self.status:
            state: dict[str, Any] = {"pid": os.getpid(), "generation": self.generation, "hups": self.hups,
                                     "values": self.values, "error": self.error}
            _write(self.status, json.dumps(state) + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="confwatch")
    p.add_argument("--config", required=True)
    p.add_argument("--pidfile")
    p.add_argument("--status")
    args = p.parse_args(argv)
    watcher = Watcher(args.config, args.status)
    # signals are taken one by one with sigwait: none is lost between two checks of a flag
    wanted = {signal.SIGHUP, signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, wanted)
    if args.pidfile:
        _write(args.pidfile, f"{os.getpid()}\n")
    try:
        watcher.load()
        print(f"CONFWATCH READY {os.getpid()}", flush=True)
        while signal.sigwait(wanted) == signal.SIGHUP:
            watcher.hups += 1
            watcher.load()
    finally:
        if args.pidfile:
            try:
                os.unlink(args.pidfile)
            except OSError:
                pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
