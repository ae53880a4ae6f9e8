"""Commands that start a project and look around: `init`, `boards`, `firmware` and
`doctor` (the host check)."""

from __future__ import annotations

import argparse
from dataclasses import asdict

from appsdk.cli.common import print_json
from appsdk.core.errors import EXIT_OK, ToolMissing


def cmd_init(args: argparse.Namespace) -> int:
    from appsdk.spec.boards import DEFAULT_BOARD
    from appsdk.spec.scaffold import init

    # The default is filled in here, not by the parser: the board module (and YAML) loads
    # only for the commands that need it.
    board = DEFAULT_BOARD if args.board is None else args.board
    path = init(args.directory, args.id, board)
    print(f"created {path}; build it with: appsdk build {args.directory}")
    return EXIT_OK


def cmd_boards(args: argparse.Namespace) -> int:
    from appsdk.spec.boards import list_boards

    boards = list_boards()
    if args.json:
        print_json([{"name": b.name, "arch": b.arch, "firmware_chain": b.firmware_chain,
                     "firmware_options": list(b.firmware_options), "console": b.console,
                     "emulators": [e.name for e in b.emulators], "complete": b.complete,
                     "description": b.description, "source": str(b.source)}
                    for b in boards])
        return EXIT_OK
    for b in boards:
        extra = "" if b.complete else "  (partial)"
        print(f"{b.name:<10} {b.arch:<7} {'/'.join(b.firmware_options):<22} {b.description}"
              f"{extra}  [{b.source}]")
    return EXIT_OK


def cmd_firmware(args: argparse.Namespace) -> int:
    from appsdk.spec import firmware

    manifests = firmware.load_manifests()
    if args.firmware_command == "list":
        rows = [{"name": m.name, "version": m.version, "sha256": m.sha256,
                 "source": m.origin(None), "files": [n for n, _ in m.files],
                 "license": m.license} for m in manifests.values()]
        if args.json:
            print_json(rows)
        else:
            for m in manifests.values():
                print(f"{m.name:<18} {m.version:<22} {m.sha256[:16]}...  "
                      f"{', '.join(n for n, _ in m.files)}")
        return EXIT_OK
    out = firmware.fetch(args.names or None, mirror=args.mirror, offline=args.offline,
                         manifests=manifests)
    if args.json:
        print_json({name: str(path) for name, path in out.items()})
    else:
        for name, path in out.items():
            print(f"{name} {manifests[name].version}: verified, in {path}")
    return EXIT_OK


def cmd_doctor(args: argparse.Namespace) -> int:
    from appsdk.doctor import run_checks

    checks = run_checks()
    if args.json:
        print_json([asdict(c) for c in checks])
    else:
        for c in checks:
            print(f"{'ok ' if c.ok else 'MISSING'} {c.name:<20} {c.where}  ({c.note})")
    return EXIT_OK if all(c.ok for c in checks) else ToolMissing.exit_code
