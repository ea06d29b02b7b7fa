"""`adaptercar run | check | demo`."""

from __future__ import annotations

import argparse
import sys


def _check(args: argparse.Namespace) -> int:
    from .compile import load_all

    loaded = load_all(args.config)
    errors = [p for p in loaded.problems if p.severity == "error"]
    for p in loaded.problems:
        print(p.format(), file=sys.stdout if p.severity == "note" else sys.stderr)
    if errors:
        print(f"{len(errors)} problem(s) found in {args.config}", file=sys.stderr)
        return 1
    print(f"{args.config}: OK ({len(loaded.ops)} methods mapped, {len(loaded.specs)} backends)")
    return 0


def _run(args: argparse.Namespace) -> int:
    from .runtime import app

    if args.single_process:
        return app.run_single(args.config)
    return app.run_supervisor(args.config)


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(check=args.check)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="adaptercar",
        description="A sidecar that puts a legacy application behind gRPC and JSON/HTTP.",
    )
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run the sidecar (foreground, JSON logs on stdout)")
    r.add_argument("-c", "--config", default="adaptercar.yaml")
    r.add_argument("--single-process", action="store_true",
                   help="run every role on one event loop (debugging, tiny deployments)")
    r.set_defaults(func=_run)
    c = sub.add_parser("check", help="validate config, protos and mappings; run mapping examples")
    c.add_argument("-c", "--config", default="adaptercar.yaml")
    c.set_defaults(func=_check)
    d = sub.add_parser("demo", help="start the bundled ledger fixture and the sidecar on the demo config")
    d.add_argument("--check", action="store_true", help="call every demo method once and exit 0 if all answered right")
    d.set_defaults(func=_demo)
    args = p.parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
