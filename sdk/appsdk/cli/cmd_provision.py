"""`appsdk provision`: the factory bench over USB, or one device over its serial console."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from appsdk.cli.common import print_json, reporter_for
from appsdk.core.errors import EXIT_OK, ProvisionFailed


def cmd_provision(args: argparse.Namespace) -> int:
    if args.provision_command == "serial":
        return cmd_provision_serial(args)
    from appsdk.deliver.flash import open_source
    from appsdk.deliver.provision_usb import UdevWatcher, provision_usb

    source = open_source(args.source)
    reporter = reporter_for(args)
    watcher = UdevWatcher(rpiboot=args.rpiboot, rpiboot_dir=args.rpiboot_dir,
                          reporter=reporter)
    reports = provision_usb(source, watcher, count=args.count,
                            board=args.board, timeout=args.timeout, reporter=reporter,
                            on_report=lambda r: print(
                                json.dumps(r.as_dict(), sort_keys=True) if args.json
                                else r.line(), flush=True))
    return EXIT_OK if reports and all(r.ok for r in reports) else ProvisionFailed.exit_code


def _serial_plan(args: argparse.Namespace) -> Any:
    # The library checks each flag with the validator of the plan field it overrides.
    from appsdk.deliver.provision_serial import apply_overrides, select_device

    return apply_overrides(
        select_device(args.plan, args.device), hostname=args.hostname, serial=args.serial,
        update_url=args.update_url, files=args.file, credentials=args.credential,
        authorized_keys=args.authorized_key, user=args.user, password=args.password)


def cmd_provision_serial(args: argparse.Namespace) -> int:
    from appsdk.deliver.console import SerialConsole, Shell
    from appsdk.deliver.provision_serial import provision_serial, read_status

    plan = _serial_plan(args)
    reporter = reporter_for(args)
    if args.status:
        console = SerialConsole(args.port, baud=args.baud)
        try:
            shell = Shell(console, log=args.log)
            shell.attach(plan.user, plan.password)
            print_json(read_status(shell))
        finally:
            console.close()
        return EXIT_OK
    report = provision_serial(args.port, plan, baud=args.baud, update_dir=args.update,
                              reporter=reporter, log=args.log)
    if args.json:
        print(json.dumps(report.as_dict(), sort_keys=True))
    elif report.ok:
        print(f"provisioned {report.hostname or '?'} (serial {report.serial or '?'}) on "
              f"{report.port} in {report.seconds:.0f}s")
        for f in report.files:
            print(f"  {f['dest']}  {f['bytes']} bytes  sha256 {f['sha256'][:16]}...  "
                  f"{f['seconds']}s  {f['retries']} retries")
        for key, value in report.status.items():
            print(f"  {key}: {value}")
    else:
        print(f"FAILED on {report.port} after {report.seconds:.0f}s: {report.error}",
              file=sys.stderr)
    return EXIT_OK if report.ok else ProvisionFailed.exit_code
