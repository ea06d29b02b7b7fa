"""Entry point of the `companion` worker process spawned by the supervisor.

`python -m adaptercar.companion -c CONFIG`: the same worker life (control channel, state
reports, drain on SIGTERM) as the front workers, hosting only the companion duties.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="adaptercar-companion")
    p.add_argument("-c", "--config", required=True)
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    from ..runtime.app import run_worker

    return run_worker("companion", args.config)


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor decides; Ctrl-C goes to it
    os.environ.setdefault("ADAPTERCAR_WORKER", "1")
    raise SystemExit(main())
