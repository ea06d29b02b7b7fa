#!/usr/bin/env python3
"""ratequote: a 1990s batch rating program on stdin/stdout, one fixed-width record per line.

Request record (40 columns): product code (cols 1-10, left-aligned), quantity (11-18,
zero-padded digits), region (19-22, e.g. EU__ / US__ / APAC), the rest blank.
Reply record (40 columns):
  OK  + unit price cents (12, zero padded) + total cents (14, zero padded) + currency (3)
      + region (4) + 5 blanks
  ERR + code (3 digits) + space + message (left-aligned, padded to 33)
Error codes: 404 unknown product, 400 bad quantity, 422 unknown region, 413 record too long.
It reads with plain line-buffered stdio and flushes after each reply, as such programs do.

Switches so tests can drive every failure:
  --crash-after N     exit with status 3 after answering N requests (stderr says why)
  --crash-on CODE     exit with status 3, without answering, on a request for product CODE
  --hang-on CODE      never answer a request for product CODE (keeps reading nothing)
  --stderr-noise      write a chatty diagnostic line to stderr for every request
  --unsolicited-after N  after the N-th reply, also print an unrequested line
  --unsolicited-with-reply  ...in the same write as that reply (as a block-buffered program
                      would), so both reach the reader at once
  --banner            print "RATEQUOTE 2.1 READY" before reading
  --rates FILE        read the price table from FILE ("PRODUCT CENTS" per line); a missing
                      file is reported on stderr and the program exits with status 2 at once,
                      as a batch program with a bad install does (a crash loop when pooled)
  --ignore-sigterm    ignore SIGTERM, as some old daemons do: only SIGKILL ends it
"""

from __future__ import annotations

import argparse
import signal
import sys
import time

PRICES = {"WIDGET": 1250, "GADGET": 9999, "SPROCKET": 75, "GIZMO": 123456}
REGIONS = {"EU": ("EUR", 100), "US": ("USD", 110), "APAC": ("SGD", 135)}


def quote(record: str, prices: dict[str, int] = PRICES) -> str:
    if len(record) > 40:
        return _err(413, "record too long")
    record = record.ljust(40)
    product = record[0:10].strip()
    qty_text = record[10:18].strip()
    region = record[18:22].strip().rstrip("_")
    if product not in prices:
        return _err(404, f"unknown product {product}")
    if not qty_text.isdigit() or int(qty_text) == 0:
        return _err(400, "bad quantity")
    if region not in REGIONS:
        return _err(422, f"unknown region {region or '?'}")
    currency, pct = REGIONS[region]
    unit = prices[product] * pct // 100
    total = unit * int(qty_text)
    return f"OK {unit:012d}{total:014d}{currency}{region:<4}".ljust(40)


def _load_rates(path: str) -> dict[str, int]:
    with open(path) as f:
        return {name: int(cents) for name, cents in (line.split() for line in f if line.strip())}


def _err(code: int, message: str) -> str:
    return f"ERR{code:03d} {message}"[:40].ljust(40)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="ratequote")
    p.add_argument("--crash-after", type=int, default=0)
    p.add_argument("--crash-on", default="")
    p.add_argument("--hang-on", default="")
    p.add_argument("--stderr-noise", action="store_true")
    p.add_argument("--unsolicited-after", type=int, default=0)
    p.add_argument("--unsolicited-with-reply", action="store_true")
    p.add_argument("--banner", action="store_true")
    p.add_argument("--rates", default="")
    p.add_argument("--ignore-sigterm", action="store_true")
    args = p.parse_args(argv)
    out, err = sys.stdout, sys.stderr
    if args.ignore_sigterm:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    prices = PRICES
    if args.rates:
        try:
            prices = _load_rates(args.rates)
        except (OSError, ValueError) as e:
            err.write(f"ratequote: cannot read rate table {args.rates}: {e}\n")
            err.flush()
            return 2
    if args.banner:
        out.write("RATEQUOTE 2.1 READY\n")
        out.flush()
    answered = 0
    for raw in sys.stdin:
        record = raw.rstrip("\n").rstrip("\r")
        if args.stderr_noise:
            err.write(f"ratequote: rating {record[:10].strip() or '?'}\n")
            err.flush()
        if args.crash_on and record[0:10].strip() == args.crash_on:
            err.write(f"ratequote: fatal: rate table corrupt at {args.crash_on}\n")
            err.flush()
            return 3
        if args.hang_on and record[0:10].strip() == args.hang_on:
            while True:
                time.sleep(3600)
        answered += 1
        notice = ""
        if args.unsolicited_after and answered == args.unsolicited_after:
            notice = "NOTICE rate table reloaded".ljust(40) + "\n"
        if args.unsolicited_with_reply:
            out.write(quote(record, prices) + "\n" + notice)
            out.flush()
        else:
            out.write(quote(record, prices) + "\n")
            out.flush()
            if notice:
                out.write(notice)
                out.flush()
        if args.crash_after and answered >= args.crash_after:
            err.write(f"ratequote: internal table overflow after {answered} requests\n")
            err.flush()
            return 3
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
