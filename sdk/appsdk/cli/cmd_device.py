"""Commands on one disk: `devices` (the candidates), `flash` and `verify`."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from typing import Any

from appsdk.cli.common import print_json, reporter_for
from appsdk.core.errors import EXIT_OK


def _devices_json(listed: Any) -> list[dict[str, Any]]:
    return [{**asdict(item.device), "candidate": item.candidate,
             "refusals": [r.reason for r in item.refusals]} for item in listed]


def cmd_devices(args: argparse.Namespace) -> int:
    from appsdk.deliver.blockdev import list_devices

    listed = list_devices()
    if args.json:
        print_json(_devices_json(listed))
        return EXIT_OK
    shown = [item for item in listed if args.all or item.candidate]
    if not shown:
        print("no candidate disks (plug in a card or USB disk; --all lists the others)")
    for item in shown:
        d = item.device
        print(f"{d.path:<14} {d.size / 1e9:7.1f} GB  {d.bus or '?':<7} "
              f"{(d.vendor + ' ' + d.model).strip() or '?'}  serial={d.serial or '?'}"
              + ("" if item.candidate else "\n" + "".join(
                  f"    not a candidate: {r.reason}\n" for r in item.refusals).rstrip()))
    hidden = len(listed) - len(shown)
    if hidden:
        print(f"({hidden} non-candidate disks hidden; --all shows them and why)")
    return EXIT_OK


def _ask(dev: Any) -> bool:
    print(f"About to ERASE {dev.identity}", file=sys.stderr)
    if not sys.stdin.isatty():
        print("appsdk: stdin is not a terminal; pass --yes to flash without asking",
              file=sys.stderr)
        return False
    try:
        answer = input(f"Type 'yes' to write to {dev.path}: ")
    except EOFError:  # Ctrl-D is a no
        return False
    return answer.strip().lower() == "yes"


def cmd_flash(args: argparse.Namespace) -> int:
    from appsdk.deliver.flash import flash, open_source

    reporter = reporter_for(args)
    source = open_source(args.source)
    result = flash(source, args.device, board=args.board, allow_fixed=args.allow_fixed,
                   confirm=None if args.yes else _ask, reporter=reporter,
                   verify=not args.no_verify)
    summary = {"device": result.device.path, "serial": result.device.serial,
               "image": str(result.image), "written_bytes": result.written,
               "write_seconds": round(result.write_seconds, 2),
               "verify_seconds": round(result.verify_seconds, 2),
               "verified": bool(result.digest), "sha256": result.digest}
    if args.json:
        print(json.dumps({"event": "result", **summary}, sort_keys=True))
    else:
        print(f"flashed {result.image.name} to {result.device.identity}: "
              f"{result.written / 1e6:.0f} MB in {result.write_seconds:.1f}s"
              + (f", verified as it went, {result.verify_seconds:.1f}s more "
                 f"(sha256 {result.digest[:16]}...)" if result.digest else ", NOT verified"))
    return EXIT_OK


def cmd_verify(args: argparse.Namespace) -> int:
    from appsdk.deliver.flash import open_source, verify_device

    reporter = reporter_for(args)
    digest, seconds = verify_device(open_source(args.source), args.device, reporter)
    if args.json:
        print(json.dumps({"event": "result", "device": args.device, "verified": True,
                          "sha256": digest, "seconds": round(seconds, 2)}))
    else:
        print(f"{args.device} matches {args.source}: sha256 {digest} ({seconds:.1f}s)")
    return EXIT_OK
