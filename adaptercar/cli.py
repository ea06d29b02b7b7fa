"""`adaptercar run | check | demo | import-wsdl`."""

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
    backends = len(loaded.specs) + len(loaded.soap)
    print(f"{args.config}: OK ({len(loaded.ops)} methods mapped, {backends} backends)")
    return 0


def _import_wsdl(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .wsdl_import import ImportError_, import_wsdl

    try:
        result = import_wsdl(args.wsdl, args.package, Path(args.out), args.service, args.port)
    except ImportError_ as e:
        print(f"adaptercar: import-wsdl: {e}", file=sys.stderr)
        return 1
    for w in result.warnings:
        print(f"warning: {w}", file=sys.stderr)
    for f in result.files:
        print(f"wrote {f}")
    print(f"next: adaptercar check -c {Path(args.out) / 'adaptercar.yaml'}")
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
    w = sub.add_parser("import-wsdl", help="write protos, a mapping and a config serving a WSDL")
    w.add_argument("wsdl", help="the WSDL file")
    w.add_argument("--package", required=True, help="proto package, e.g. crm.v1")
    w.add_argument("--service", help="WSDL service (default: the only one)")
    w.add_argument("--port", help="WSDL port (default: the first SOAP 1.1 port)")
    w.add_argument("--out", required=True, help="folder to write into")
    w.set_defaults(func=_import_wsdl)
    args = p.parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
