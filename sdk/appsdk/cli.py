"""The `appsdk` command: argument parsing, rendering and exit codes, nothing else.
Every command is a call into the library."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from . import __version__
from .errors import AppsdkError
from .progress import JsonReporter, Reporter, TextReporter
from .units import parse_size


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="appsdk",
        description="Build, flash, provision and update immutable appliances "
        "(Raspberry Pi 4/5, x86 UEFI).",
    )
    parser.add_argument("--version", action="version", version=f"appsdk {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every command run")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("init", help="create a new appliance directory")
    p.add_argument("directory", type=Path)
    p.add_argument("--id", help="appliance id (default: the directory name)")
    p.add_argument("--board", default="x86-uefi")

    p = sub.add_parser("boards", help="list board profiles")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("doctor", help="check the host: tools, tools tree, firmware, KVM")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("build", help="build the disk image, UKI and /usr image",
                       description="Build an appliance: writes <id>_<ver>.img, .img.bmap, "
                       ".efi, .usr and build.json into the output directory.")
    p.add_argument("directory", type=Path, nargs="?", default=Path("."),
                   help="appliance directory or appliance.yaml (default: .)")
    p.add_argument("--board", help="board profile (default: the appliance's board)")
    p.add_argument("--firmware", metavar="CHAIN",
                   help="firmware chain of the board, e.g. rpi+uboot or rpi+edk2 for rpi4 "
                   "(default: appliance.yaml firmware, else the board's default; see "
                   "`appsdk boards`)")
    p.add_argument("--version", dest="app_version", metavar="V",
                   help="override the version in appliance.yaml")
    p.add_argument("--output", "-o", type=Path, help="output directory (default: DIR/build/BOARD)")
    p.add_argument("--keys", type=Path, metavar="DIR",
                   help="update-signing key directory (default: update.key in appliance.yaml, "
                   "else ~/.config/appsdk/keys/ID)")
    p.add_argument("--update-url", metavar="URL", help="override update.url of appliance.yaml")
    p.add_argument("--json", action="store_true", help="progress and result as JSON lines")

    p = sub.add_parser("keys", help="manage the update-signing key")
    keys_sub = p.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    k = keys_sub.add_parser("generate", help="create the project's update-signing key",
                            description="Create an OpenPGP signing key (ed25519) in its own "
                            "GnuPG home. Keep that directory out of the image and out of git; "
                            "devices only get the public key.")
    k.add_argument("directory", type=Path, nargs="?", default=Path("."),
                   help="appliance directory (for its id and update.key)")
    k.add_argument("--keys", type=Path, metavar="DIR", help="where to create the key")
    k.add_argument("--json", action="store_true")

    p = sub.add_parser("release", help="assemble a signed update directory from builds",
                       description="Copy the update artifacts of one or more builds into OUT "
                       "(several versions side by side) and sign one SHA256SUMS over all.")
    p.add_argument("out", type=Path)
    p.add_argument("builds", type=Path, nargs="+", metavar="BUILD_DIR")
    p.add_argument("--keys", type=Path, metavar="DIR", help="signing key directory")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("serve", help="serve an update directory over HTTP (labs, tests)",
                       description="A plain HTTP server for labs and tests. In production, "
                       "publish the directory on any static web server or CDN.")
    p.add_argument("directory", type=Path)
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--host", default="127.0.0.1")

    p = sub.add_parser("devices", help="list disks that could be flashed, and why not",
                       description="Disks found through udev/sysfs with their identity, size, "
                       "bus and whether they hold mounted filesystems. Disks that are not "
                       "candidates say why.")
    p.add_argument("--all", action="store_true", help="also list disks that are not candidates")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("flash", help="write an image to a disk (SD card, USB, eMMC) and verify",
                       description="Write only the mapped blocks of the image's bmap and read "
                       "them back from the device behind the writer, comparing checksums. "
                       "Refuses system, mounted, read-only and too-small disks, and images "
                       "built for another board. Asks for confirmation unless --yes.",
                       epilog="exit status: 0 written and verified; 7 refused (nothing "
                       "written); 8 verification failed; 11 the device failed a write or "
                       "read. A flash that does not finish leaves no valid partition table.")
    p.add_argument("source", type=Path, metavar="IMAGE|BUILD_DIR")
    p.add_argument("device", metavar="DEVICE", help="whole-disk block device, e.g. /dev/sdb")
    p.add_argument("--board", help="the board this card is for; refuses images built for "
                   "another board")
    p.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    p.add_argument("--allow-fixed", action="store_true",
                   help="allow a disk that is not removable (internal disk, loop device)")
    p.add_argument("--no-verify", action="store_true", help="skip the read-back")
    p.add_argument("--json", action="store_true", help="progress and result as JSON lines")

    p = sub.add_parser("verify", help="check a flashed disk against an image's bmap",
                       description="Read every mapped range of the image back from DEVICE "
                       "(bypassing the page cache) and compare with the bmap checksums.")
    p.add_argument("source", type=Path, metavar="IMAGE|BUILD_DIR")
    p.add_argument("device", metavar="DEVICE")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("provision", help="provision devices on a factory bench")
    prov = p.add_subparsers(dest="provision_command", required=True, metavar="CHANNEL")
    u = prov.add_parser("usb", help="flash every USB disk that is plugged in",
                        description="Wait for USB mass-storage disks (card readers, USB "
                        "sticks, CM4/CM5 eMMC exposed by rpiboot) to appear, flash and verify "
                        "each, and print one report line per device.")
    u.add_argument("source", type=Path, metavar="IMAGE|BUILD_DIR")
    u.add_argument("--wait", action="store_true", required=True,
                   help="wait for disks to be plugged in (disks present at start are ignored)")
    u.add_argument("--count", type=int, default=0, help="stop after N devices (default: never)")
    u.add_argument("--board", help="refuse images built for another board")
    u.add_argument("--timeout", type=float, default=0,
                   help="give up after this many seconds without a new disk (default: never)")
    u.add_argument("--rpiboot", action="store_true",
                   help="run the external rpiboot for each CM4/CM5 in USB boot mode, so its "
                   "eMMC appears as a USB disk (install usbboot's rpiboot first)")
    u.add_argument("--rpiboot-dir", type=Path, metavar="DIR",
                   help="firmware directory for rpiboot -d, e.g. usbboot/mass-storage-gadget64 "
                   "(needed for CM5)")
    u.add_argument("--json", action="store_true", help="reports as JSON lines")

    sp = prov.add_parser(
        "serial", help="provision one device over its serial console",
        description="Log in on the console, write the device's identity (hostname, serial, "
        "ssh keys, credentials, update URL) into /var where it survives updates, push files "
        "(chunked, checksummed, retried, renamed atomically), optionally install an update "
        "from pushed files, and print the device's status.")
    sp.add_argument("port", help="/dev/ttyUSB0, socket://HOST:PORT, rfc2217://HOST:PORT, ...")
    sp.add_argument("plan", type=Path, nargs="?", help="provisioning plan (YAML)")
    sp.add_argument("--device", metavar="SERIAL", help="which device of the plan this is")
    sp.add_argument("--baud", type=int, default=115200)
    sp.add_argument("--user", help="login user (default: root, or the plan's)")
    sp.add_argument("--password", help="login password (or the plan's login.password)")
    sp.add_argument("--hostname")
    sp.add_argument("--serial", help="serial number to record (default: --device)")
    sp.add_argument("--update-url", metavar="URL", help="this device's update server")
    sp.add_argument("--authorized-key", action="append", default=[], type=Path,
                    metavar="FILE", help="ssh public key for root (repeatable)")
    sp.add_argument("--credential", action="append", default=[], metavar="NAME=FILE",
                    help="a credential for services (LoadCredential=NAME; repeatable)")
    sp.add_argument("--file", action="append", default=[], metavar="SRC:DEST[:MODE]",
                    help="push a file (repeatable)")
    sp.add_argument("--update", type=Path, metavar="DIR",
                    help="install the update in DIR (build or release) from pushed files")
    sp.add_argument("--status", action="store_true",
                    help="only log in and print the device's status")
    sp.add_argument("--log", type=Path, help="write the console transcript here")
    sp.add_argument("--json", action="store_true", help="the report as JSON")

    p = sub.add_parser("firmware", help="pinned firmware: list, fetch and verify",
                       description="Firmware components are pinned by manifests in firmware/ "
                       "(Debian package or release zip, exact version, sha256). `fetch` "
                       "downloads into the "
                       "cache (or copies from --offline DIR), verifies the sha256 before use "
                       "and unpacks the files the boards need.")
    fw = p.add_subparsers(dest="firmware_command", required=True, metavar="ACTION")
    f = fw.add_parser("list", help="the pinned components")
    f.add_argument("--json", action="store_true")
    f = fw.add_parser("fetch", help="download (or copy), verify and unpack")
    f.add_argument("names", nargs="*", metavar="COMPONENT", help="default: all")
    f.add_argument("--offline", type=Path, metavar="DIR",
                   help="take the .deb/.zip files from DIR instead of the network")
    f.add_argument("--mirror", metavar="URL", help="Debian mirror (default: deb.debian.org)")
    f.add_argument("--json", action="store_true")

    p = sub.add_parser("inspect", help="what an image or build contains",
                       description="Partitions, ESP files, board, image id and version, and "
                       "the UKI's kernel command line of a build directory or disk image.")
    p.add_argument("target", type=Path, metavar="IMAGE|BUILD_DIR")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("run", help="boot an image in QEMU",
                       description="Boot a built image in QEMU (KVM if it works, else TCG). "
                       "The image is not modified: writes go to a snapshot unless --disk or "
                       "--in-place is given.")
    p.add_argument("target", type=Path, help="build directory or .img file")
    p.add_argument("--board", help="board profile (default: from build.json)")
    p.add_argument("--emulator", metavar="NAME",
                   help="one of the board's emulator profiles, e.g. virt-uboot or virt-edk2 "
                   "for rpi4 (default: the board's first; `appsdk boards --json` lists them)")
    p.add_argument("--disk", type=Path, help="persistent working copy of the image (made once)")
    p.add_argument("--disk-size", help="grow the working copy to this size, e.g. 6G")
    p.add_argument("--in-place", action="store_true", help="boot and modify the image itself")
    p.add_argument("--serial-port", type=int, help="serial console on 127.0.0.1:PORT, not stdio")
    p.add_argument("--forward", action="append", default=[], metavar="HOST:GUEST",
                   help="forward a TCP port from 127.0.0.1:HOST to the guest")
    p.add_argument("--accel", choices=("auto", "kvm", "tcg"), default="auto",
                   help="auto: KVM if the board's own firmware, booted under it once, writes "
                   "to its console without a KVM error (cached; `appsdk doctor` shows it), "
                   "else TCG")
    p.add_argument("--print", dest="print_only", action="store_true",
                   help="print the QEMU command line and exit")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(name)s: %(message)s")
    try:
        return int(COMMANDS[args.command](args))
    except AppsdkError as exc:
        print(f"appsdk: error: {exc}", file=sys.stderr)
        if exc.hint:
            print(f"appsdk: hint: {exc.hint}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("appsdk: interrupted", file=sys.stderr)
        return 130


def _reporter(args: argparse.Namespace) -> Reporter:
    return JsonReporter() if args.json else TextReporter()


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=True, default=str))


def cmd_init(args: argparse.Namespace) -> int:
    from .scaffold import init

    path = init(args.directory, args.id, args.board)
    print(f"created {path}; build it with: appsdk build {args.directory}")
    return 0


def cmd_boards(args: argparse.Namespace) -> int:
    from .boards import list_boards

    boards = list_boards()
    if args.json:
        _print_json([{"name": b.name, "arch": b.arch, "firmware_chain": b.firmware_chain,
                      "firmware_options": list(b.firmware_options), "console": b.console,
                      "emulators": [e.name for e in b.emulators], "complete": b.complete,
                      "description": b.description} for b in boards])
        return 0
    for b in boards:
        extra = "" if b.complete else "  (partial)"
        print(f"{b.name:<10} {b.arch:<7} {'/'.join(b.firmware_options):<22} {b.description}{extra}")
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from .doctor import run_checks

    checks = run_checks()
    if args.json:
        _print_json([asdict(c) for c in checks])
    else:
        for c in checks:
            print(f"{'ok ' if c.ok else 'MISSING'} {c.name:<20} {c.where}  ({c.note})")
    return 0 if all(c.ok for c in checks) else 1


def cmd_build(args: argparse.Namespace) -> int:
    from .pipeline import build

    reporter = _reporter(args)
    result = build(args.directory, board=args.board, version=args.app_version,
                   firmware=args.firmware,
                   output=args.output, reporter=reporter, key_dir=args.keys,
                   update_url=args.update_url)
    if args.json:
        _print_json({"output": result.output, "id": result.app_id, "version": result.version,
                     "board": result.board, "seconds": round(result.seconds, 1),
                     "artifacts": {k: asdict(a) for k, a in result.artifacts.items()}})
    else:
        print(f"built {result.app_id} {result.version} for {result.board} "
              f"in {result.seconds:.0f}s:")
        for artifact in result.artifacts.values():
            print(f"  {artifact.path}  {artifact.size / 1e6:.1f} MB")
    return 0


def _key_dir(args: argparse.Namespace, appliance: Path) -> Path:
    from .config import load_appliance
    from .keys import default_dir

    if args.keys:
        return Path(args.keys)
    app = load_appliance(appliance)
    return app.update.key or default_dir(app.id)


def cmd_keys(args: argparse.Namespace) -> int:
    from . import keys
    from .config import load_appliance
    from .runner import Runner

    app = load_appliance(args.directory)
    home = _key_dir(args, args.directory)
    key = keys.generate(home, f"{app.name} update signing ({app.id})", Runner())
    if args.json:
        _print_json({"directory": key.home, "fingerprint": key.fingerprint,
                     "public_keyring": key.public_keyring})
    else:
        print(f"created update-signing key {key.fingerprint}\n  in {key.home} "
              "(keep it secret and backed up; never commit it)\n"
              f"  public key: {key.public_keyring}")
    return 0


def cmd_release(args: argparse.Namespace) -> int:
    from . import keys
    from .buildinfo import load_build
    from .keys import default_dir
    from .release import release
    from .runner import Runner

    runner = Runner()
    home = args.keys or default_dir(load_build(args.builds[0])["id"])
    result = release(args.out, list(args.builds), keys.load(home, runner), runner)
    if args.json:
        _print_json({"directory": result.directory, "versions": list(result.versions),
                     "files": list(result.files)})
    else:
        print(f"release in {result.directory}: versions {', '.join(result.versions)}")
        for name in result.files:
            print(f"  {name}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from .serve import make_server

    server = make_server(args.directory, args.port, args.host, verbose=True)
    print(f"serving {args.directory} on http://{args.host}:{args.port}/ (Ctrl-C stops)",
          file=sys.stderr)
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from .boards import load_board
    from .buildinfo import locate_image
    from .foreign import needs_emulation
    from .qemu import (
        VmSpec,
        firmware_vars,
        kvm_works,
        prepare_disk,
        qemu_argv,
        scratch_dir,
    )

    image, record = locate_image(args.target)
    board = load_board(args.board or (record["board"]["name"] if record else "x86-uefi"))
    size = parse_size(args.disk_size) if args.disk_size else None
    disk = prepare_disk(image, args.disk, size)
    accel = args.accel
    if accel == "auto":
        # KVM only runs guests of the host's own architecture.
        accel = ("kvm" if not needs_emulation(board.debian_arch)
                 and kvm_works(board, args.emulator) else "tcg")
    forward = tuple(tuple(int(x) for x in f.split(":", 1)) for f in args.forward)
    spec = VmSpec(board=board, disk=disk, snapshot=not (args.in_place or args.disk),
                  serial_port=args.serial_port, forward=forward,  # type: ignore[arg-type]
                  accel=accel, emulator=args.emulator,
                  vars_file=firmware_vars(board, scratch_dir(), args.emulator))
    argv = qemu_argv(spec)
    em = board.emulator_named(args.emulator)
    cmdline = record.get("cmdline", "") if record else ""
    if em.console and cmdline and f"console={em.console}" not in cmdline:
        print(f"appsdk: note: the image's kernel console is not {em.console}, the UART of "
              f"emulator {em.name}: after the firmware's output the console stays quiet. "
              f"Add console={em.console},115200 to kernel.cmdline in "
              "appliance.yaml to see Linux there.", file=sys.stderr)
    if args.print_only:
        print(" ".join(argv))
        return 0
    print(f"appsdk: booting {disk} ({accel}); quit with Ctrl-A X", file=sys.stderr)
    os.execvp(argv[0], argv)


def _devices_json(listed: Any) -> list[dict[str, Any]]:
    return [{**asdict(item.device), "candidate": item.candidate,
             "refusals": [r.reason for r in item.refusals]} for item in listed]


def cmd_devices(args: argparse.Namespace) -> int:
    from .blockdev import list_devices

    listed = list_devices()
    if args.json:
        _print_json(_devices_json(listed))
        return 0
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
    return 0


def _ask(dev: Any) -> bool:
    print(f"About to ERASE {dev.identity}", file=sys.stderr)
    if not sys.stdin.isatty():
        print("appsdk: stdin is not a terminal; pass --yes to flash without asking",
              file=sys.stderr)
        return False
    answer = input(f"Type 'yes' to write to {dev.path}: ")
    return answer.strip().lower() == "yes"


def cmd_flash(args: argparse.Namespace) -> int:
    from .flash import flash, open_source

    reporter = _reporter(args)
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
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from .flash import open_source, verify_device

    reporter = _reporter(args)
    digest, seconds = verify_device(open_source(args.source), args.device, reporter)
    if args.json:
        print(json.dumps({"event": "result", "device": args.device, "verified": True,
                          "sha256": digest, "seconds": round(seconds, 2)}))
    else:
        print(f"{args.device} matches {args.source}: sha256 {digest} ({seconds:.1f}s)")
    return 0


def _serial_plan(args: argparse.Namespace) -> Any:
    from dataclasses import replace

    from .errors import ConfigError
    from .provision_serial import DevicePlan, FileSpec, load_plan

    plan = load_plan(args.plan).device(args.device) if args.plan else DevicePlan(
        serial=args.device or "")
    files = list(plan.files)
    for spec in args.file:
        parts = spec.split(":")
        if len(parts) not in (2, 3) or not parts[1].startswith("/"):
            raise ConfigError(f"--file {spec}: use SRC:/ABSOLUTE/DEST[:MODE]")
        src = Path(parts[0])
        if not src.is_file():
            raise ConfigError(f"--file {spec}: {src} not found")
        files.append(FileSpec(src, parts[1], int(parts[2], 8) if len(parts) == 3 else 0o644))
    creds = dict(plan.credentials)
    for spec in args.credential:
        name, _, path = spec.partition("=")
        if not name or not Path(path).is_file():
            raise ConfigError(f"--credential {spec}: use NAME=FILE with an existing file")
        creds[name] = Path(path)
    return replace(
        plan, hostname=args.hostname or plan.hostname, serial=args.serial or plan.serial,
        update_url=args.update_url or plan.update_url, files=tuple(files),
        authorized_keys=plan.authorized_keys + tuple(args.authorized_key),
        credentials=tuple(sorted(creds.items())), user=args.user or plan.user,
        password=args.password if args.password is not None else plan.password)


def cmd_provision_serial(args: argparse.Namespace) -> int:
    from .console import SerialConsole, Shell
    from .provision_serial import provision_serial, read_status

    plan = _serial_plan(args)
    reporter = _reporter(args)
    if args.status:
        console = SerialConsole(args.port, baud=args.baud)
        try:
            shell = Shell(console, log=args.log)
            shell.attach(plan.user, plan.password)
            _print_json(read_status(shell))
        finally:
            console.close()
        return 0
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
    return 0 if report.ok else 9


def cmd_firmware(args: argparse.Namespace) -> int:
    from . import firmware

    manifests = firmware.load_manifests()
    if args.firmware_command == "list":
        rows = [{"name": m.name, "version": m.version, "sha256": m.sha256,
                 "source": m.origin(None), "files": [n for n, _ in m.files],
                 "license": m.license} for m in manifests.values()]
        if args.json:
            _print_json(rows)
        else:
            for m in manifests.values():
                print(f"{m.name:<18} {m.version:<22} {m.sha256[:16]}...  "
                      f"{', '.join(n for n, _ in m.files)}")
        return 0
    out = firmware.fetch(args.names or None, mirror=args.mirror, offline=args.offline,
                         manifests=manifests)
    if args.json:
        _print_json({name: str(path) for name, path in out.items()})
    else:
        for name, path in out.items():
            print(f"{name} {manifests[name].version}: verified, in {path}")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from .inspect import inspect

    info = inspect(args.target)
    if args.json:
        _print_json(info)
        return 0
    chain = f", firmware {info['firmware_chain']}" if info.get("firmware_chain") else ""
    print(f"image:     {info['id']} {info['version']}  (board {info['board']}{chain})")
    print(f"disk:      {info['image_size']} bytes, GPT {info['disk_guid']}")
    for p in info["partitions"]:
        print(f"  {p['label']:<14} {p['type']:<22} offset {p['offset']:>12}  "
              f"size {p['size']:>12}")
    print("ESP files:")
    for f in info["esp_files"]:
        print(f"  {f['path']:<40} {f['size']:>10}  {f['sha256'][:16]}...")
    print(f"cmdline:   {info['cmdline']}")
    print(f"systemd-boot: {info['systemd_boot'] or '-'}")
    for name, fw in info["firmware"].items():
        print(f"firmware:  {name} {fw['version']} (sha256 {fw['sha256'][:16]}...)")
    return 0


def cmd_provision(args: argparse.Namespace) -> int:
    if args.provision_command == "serial":
        return cmd_provision_serial(args)
    from .flash import open_source
    from .provision_usb import UdevWatcher, provision_usb

    source = open_source(args.source)
    reporter = _reporter(args)
    watcher = UdevWatcher(rpiboot=args.rpiboot, rpiboot_dir=args.rpiboot_dir,
                          reporter=reporter)
    reports = provision_usb(source, watcher, count=args.count,
                            board=args.board, timeout=args.timeout, reporter=reporter,
                            on_report=lambda r: print(
                                json.dumps(r.as_dict(), sort_keys=True) if args.json
                                else r.line(), flush=True))
    return 0 if reports and all(r.ok for r in reports) else 1


COMMANDS = {
    "firmware": cmd_firmware,
    "inspect": cmd_inspect,
    "devices": cmd_devices,
    "flash": cmd_flash,
    "verify": cmd_verify,
    "provision": cmd_provision,
    "init": cmd_init,
    "boards": cmd_boards,
    "doctor": cmd_doctor,
    "build": cmd_build,
    "run": cmd_run,
    "keys": cmd_keys,
    "release": cmd_release,
    "serve": cmd_serve,
}


if __name__ == "__main__":
    sys.exit(main())
