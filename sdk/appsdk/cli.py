"""The `appsdk` command: argument parsing, rendering and exit codes, nothing else.
Every command is a call into the library."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, NoReturn

from appsdk.core.errors import (
    AppsdkError,
    InternalError,
    Interrupted,
    OutputClosed,
    PathError,
    ProvisionFailed,
    ToolMissing,
    UsageError,
)
from appsdk.core.progress import JsonReporter, Reporter, TextReporter
from appsdk.core.units import parse_size
from appsdk.core.version import __version__


class _Parser(argparse.ArgumentParser):
    """Raises UsageError instead of exiting, so main renders a bad command line like any
    other error (as JSON under --json). Subparsers inherit the class."""

    def error(self, message: str) -> NoReturn:
        flag = re.match(r"argument ([^:]+): ", message)
        raise UsageError(message, usage=self.format_usage(), flag=flag.group(1) if flag else None,
                         hint=f"see `{self.prog} --help`")


# Values argparse checks before any command runs. Each raises ArgumentTypeError with a
# message argparse prefixes with the flag ("argument --baud: ...").
def _int_in(text: str, what: str, low: int, high: int | None = None) -> int:
    try:
        value = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number ({what})") from None
    if value < low or (high is not None and value > high):
        bounds = f"from {low} to {high}" if high is not None else f"at least {low}"
        raise argparse.ArgumentTypeError(f"{text!r}: must be {bounds} ({what})")
    return value


def _port(text: str) -> int:
    return _int_in(text, "a TCP port", 1, 65535)


def _count(text: str) -> int:
    return _int_in(text, "a count, 0 for no limit", 0)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: seconds must be 0 or more")
    return value


# termios rates Linux serial drivers accept (pyserial refuses others on many adapters).
BAUD_RATES = (50, 75, 110, 134, 150, 200, 300, 600, 1200, 1800, 2400, 4800, 9600, 19200,
              38400, 57600, 115200, 230400, 460800, 500000, 576000, 921600, 1000000, 1152000,
              1500000, 2000000, 2500000, 3000000, 3500000, 4000000)


def _baud(text: str) -> int:
    value = _int_in(text, "a baud rate", 1)
    if value not in BAUD_RATES:
        raise argparse.ArgumentTypeError(
            f"{value} is not a standard baud rate (e.g. 9600, 115200, 921600, 1500000)")
    return value


def _forward(text: str) -> tuple[int, int]:
    host, sep, guest = text.partition(":")
    if not sep:
        raise argparse.ArgumentTypeError(f"{text!r}: use HOST:GUEST, two TCP ports (8080:80)")
    return _port(host), _port(guest)


def _size(text: str) -> int:
    try:
        value = parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: the size must be more than 0")
    return value


def _existing(text: str) -> Path:
    if not os.path.lexists(text):
        raise argparse.ArgumentTypeError(f"{text}: no such file or directory")
    return Path(text)


def _new_dir(text: str) -> Path:
    """A directory, or a path where one can be made: no existing part of it is a file."""
    path = Path(text)
    for part in (path, *path.parents):
        if os.path.lexists(part):
            if not part.is_dir():
                where = f"{text} exists and" if part == path else f"{text}: {part}"
                raise argparse.ArgumentTypeError(f"{where} is not a directory")
            break
    return path


def _new_file(text: str) -> Path:
    """A file to write: not a directory, and no existing part of its directory a file."""
    if os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"{text} is a directory, not a file")
    _new_dir(os.path.dirname(text) or ".")
    return Path(text)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="appsdk",
        description="Build, flash, provision and update immutable appliances "
        "(Raspberry Pi 4/5, x86 UEFI).",
    )
    parser.add_argument("--version", action="version", version=f"appsdk {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every command run")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("init", help="create a new appliance directory")
    p.add_argument("directory", type=_new_dir)
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
    p.add_argument("--output", "-o", type=_new_dir,
                   help="output directory (default: DIR/build/BOARD)")
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
    k.add_argument("--keys", type=_new_dir, metavar="DIR", help="where to create the key")
    k.add_argument("--json", action="store_true")

    p = sub.add_parser("release", help="assemble a signed update directory from builds",
                       description="Copy the update artifacts of one or more builds into OUT "
                       "(several versions side by side) and sign one SHA256SUMS over all.")
    p.add_argument("out", type=_new_dir)
    p.add_argument("builds", type=_existing, nargs="+", metavar="BUILD_DIR")
    p.add_argument("--keys", type=_existing, metavar="DIR", help="signing key directory")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("serve", help="serve an update directory over HTTP (labs, tests)",
                       description="A plain HTTP server for labs and tests. In production, "
                       "publish the directory on any static web server or CDN.")
    p.add_argument("directory", type=Path)
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--list", action="store_true",
                   help="list directories that have no index.html (default: 404)")

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
                       epilog="exit status: 0 written and verified; 2 the image, bmap or "
                       "build.json is bad (nothing written); 7 refused (nothing "
                       "written); 8 verification failed; 11 the device failed a write or "
                       "read (all codes: docs/cli.md). A flash that does not finish leaves no "
                       "valid partition table.")
    p.add_argument("source", type=_existing, metavar="IMAGE|BUILD_DIR")
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
    p.add_argument("source", type=_existing, metavar="IMAGE|BUILD_DIR")
    p.add_argument("device", metavar="DEVICE")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("provision", help="provision devices on a factory bench")
    prov = p.add_subparsers(dest="provision_command", required=True, metavar="CHANNEL")
    u = prov.add_parser("usb", help="flash every USB disk that is plugged in",
                        description="Wait for USB mass-storage disks (card readers, USB "
                        "sticks, CM4/CM5 eMMC exposed by rpiboot) to appear, flash and verify "
                        "each, and print one report line per device.")
    u.add_argument("source", type=_existing, metavar="IMAGE|BUILD_DIR")
    u.add_argument("--wait", action="store_true", required=True,
                   help="wait for disks to be plugged in (disks present at start are ignored)")
    u.add_argument("--count", type=_count, default=0, help="stop after N devices (default: never)")
    u.add_argument("--board", help="refuse images built for another board")
    u.add_argument("--timeout", type=_seconds, default=0,
                   help="give up after this many seconds without a new disk (default: never)")
    u.add_argument("--rpiboot", action="store_true",
                   help="run the external rpiboot for each CM4/CM5 in USB boot mode, so its "
                   "eMMC appears as a USB disk (install usbboot's rpiboot first)")
    u.add_argument("--rpiboot-dir", type=_existing, metavar="DIR",
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
    sp.add_argument("plan", type=_existing, nargs="?", help="provisioning plan (YAML)")
    sp.add_argument("--device", metavar="SERIAL", help="which device of the plan this is")
    sp.add_argument("--baud", type=_baud, default=115200)
    sp.add_argument("--user", help="login user (default: root, or the plan's)")
    sp.add_argument("--password", help="login password (or the plan's login.password)")
    sp.add_argument("--hostname")
    sp.add_argument("--serial", help="serial number to record (default: --device)")
    sp.add_argument("--update-url", metavar="URL", help="this device's update server")
    sp.add_argument("--authorized-key", action="append", default=[], type=_existing,
                    metavar="FILE", help="ssh public key for root (repeatable)")
    sp.add_argument("--credential", action="append", default=[], metavar="NAME=FILE",
                    help="a credential for services (LoadCredential=NAME; repeatable)")
    sp.add_argument("--file", action="append", default=[], metavar="SRC:DEST[:MODE]",
                    help="push a file (repeatable)")
    sp.add_argument("--update", type=_existing, metavar="DIR",
                    help="install the update in DIR (build or release) from pushed files")
    sp.add_argument("--status", action="store_true",
                    help="only log in and print the device's status")
    sp.add_argument("--log", type=_new_file, help="write the console transcript here")
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
    f.add_argument("--offline", type=_existing, metavar="DIR",
                   help="take the .deb/.zip files from DIR instead of the network")
    f.add_argument("--mirror", metavar="URL", help="Debian mirror (default: deb.debian.org)")
    f.add_argument("--json", action="store_true")

    p = sub.add_parser("inspect", help="what an image or build contains",
                       description="Partitions, ESP files, board, image id and version, and "
                       "the UKI's kernel command line of a build directory or disk image.")
    p.add_argument("target", type=_existing, metavar="IMAGE|BUILD_DIR")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("run", help="boot an image in QEMU",
                       description="Boot a built image in QEMU (KVM if it works, else TCG). "
                       "The image is not modified: writes go to a snapshot unless --disk or "
                       "--in-place is given.")
    p.add_argument("target", type=_existing, help="build directory or .img file")
    p.add_argument("--board", help="board profile (default: from build.json)")
    p.add_argument("--emulator", metavar="NAME",
                   help="one of the board's emulator profiles, e.g. virt-uboot or virt-edk2 "
                   "for rpi4 (default: the board's first; `appsdk boards --json` lists them)")
    p.add_argument("--disk", type=Path, help="persistent working copy of the image (made once)")
    p.add_argument("--disk-size", type=_size,
                   help="grow the working copy to this size, e.g. 6G")
    p.add_argument("--in-place", action="store_true", help="boot and modify the image itself")
    p.add_argument("--serial-port", type=_port, help="serial console on 127.0.0.1:PORT, not stdio")
    p.add_argument("--forward", action="append", default=[], metavar="HOST:GUEST", type=_forward,
                   help="forward a TCP port from 127.0.0.1:HOST to the guest")
    p.add_argument("--accel", choices=("auto", "kvm", "tcg"), default="auto",
                   help="auto: KVM if the board's own firmware, booted under it once, writes "
                   "to its console without a KVM error (cached; `appsdk doctor` shows it), "
                   "else TCG")
    p.add_argument("--print", dest="print_only", action="store_true",
                   help="print the QEMU command line and exit")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # Known before parsing, so that a bad command line is reported as JSON too.
    as_json = "--json" in argv
    try:
        args = _parser().parse_args(argv)
    except UsageError as exc:
        print(exc.usage, end="", file=sys.stderr)
        return _fail(exc, as_json)
    as_json = bool(getattr(args, "json", False))
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(name)s: %(message)s")
    try:
        return int(COMMANDS[args.command](args))
    except AppsdkError as exc:
        return _fail(exc, as_json)
    except KeyboardInterrupt:
        return _fail(Interrupted("interrupted"), as_json)
    except BrokenPipeError:
        return _output_closed()
    except OSError as exc:
        # A path the user gave that cannot be read or written, caught nowhere closer.
        if exc.filename is None:
            return _fail(_internal(exc), as_json)
        return _fail(PathError.from_oserror(exc), as_json)
    except Exception as exc:  # the last-resort net: a bug, reported as one
        return _fail(_internal(exc), as_json)


def _output_closed() -> int:
    """The reader of stdout went away (`appsdk devices --json | head -1`): stop quietly, and
    point stdout at /dev/null so that the interpreter's last flush cannot fail again."""
    with contextlib.suppress(OSError, ValueError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return OutputClosed.exit_code


def _fail(exc: AppsdkError, as_json: bool) -> int:
    """Report an error: text on stderr always; under --json also one object on stdout."""
    kind = "internal error" if isinstance(exc, InternalError) else "error"
    print(f"appsdk: {kind}: {exc}", file=sys.stderr)
    if exc.hint:
        print(f"appsdk: hint: {exc.hint}", file=sys.stderr)
    if as_json:
        print(json.dumps(exc.as_dict(), sort_keys=True, default=str), flush=True)
    return exc.exit_code


def _internal(exc: BaseException) -> InternalError:
    return InternalError(f"{type(exc).__name__}: {exc}", _save_traceback(exc))


def _save_traceback(exc: BaseException) -> str | None:
    """Write the traceback to a file (the cache, else $TMPDIR) and return its path."""
    import tempfile
    import traceback

    from appsdk.core.cache import cache_root

    text = "".join(traceback.format_exception(exc))
    for directory in (cache_root() / "tracebacks", Path(tempfile.gettempdir())):
        try:
            directory.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(prefix="appsdk-traceback-", suffix=".txt",
                                        dir=directory)
            with os.fdopen(fd, "w") as out:
                out.write(text)
            return name
        except OSError:
            continue
    return None


def _reporter(args: argparse.Namespace) -> Reporter:
    return JsonReporter() if args.json else TextReporter()


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=True, default=str))


def cmd_init(args: argparse.Namespace) -> int:
    from appsdk.spec.scaffold import init

    path = init(args.directory, args.id, args.board)
    print(f"created {path}; build it with: appsdk build {args.directory}")
    return 0


def cmd_boards(args: argparse.Namespace) -> int:
    from appsdk.spec.boards import list_boards

    boards = list_boards()
    if args.json:
        _print_json([{"name": b.name, "arch": b.arch, "firmware_chain": b.firmware_chain,
                      "firmware_options": list(b.firmware_options), "console": b.console,
                      "emulators": [e.name for e in b.emulators], "complete": b.complete,
                      "description": b.description, "source": str(b.source)}
                     for b in boards])
        return 0
    for b in boards:
        extra = "" if b.complete else "  (partial)"
        print(f"{b.name:<10} {b.arch:<7} {'/'.join(b.firmware_options):<22} {b.description}"
              f"{extra}  [{b.source}]")
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from appsdk.doctor import run_checks

    checks = run_checks()
    if args.json:
        _print_json([asdict(c) for c in checks])
    else:
        for c in checks:
            print(f"{'ok ' if c.ok else 'MISSING'} {c.name:<20} {c.where}  ({c.note})")
    return 0 if all(c.ok for c in checks) else ToolMissing.exit_code


def cmd_build(args: argparse.Namespace) -> int:
    from appsdk.pipeline.builder import build

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


def cmd_keys(args: argparse.Namespace) -> int:
    from appsdk.core.runner import Runner
    from appsdk.spec.appliance import load_appliance
    from appsdk.trust import keys

    app = load_appliance(args.directory)
    home = keys.home_for(app, args.keys)
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
    from appsdk.contract.buildinfo import load_build
    from appsdk.core.runner import Runner
    from appsdk.trust import keys
    from appsdk.trust.keys import default_dir
    from appsdk.update.release import release

    runner = Runner()
    if not args.builds:  # argparse drops "--" tokens: `release OUT --` has no build left
        raise UsageError("release needs at least one BUILD_DIR", flag="BUILD_DIR")
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
    from appsdk.update.serve import make_server

    server = make_server(args.directory, args.port, args.host, verbose=True,
                         list_directories=args.list)
    port = server.server_address[1]  # the real one when --port 0 let the kernel choose
    print(f"serving {args.directory} on http://{args.host}:{port}/ (Ctrl-C stops)",
          file=sys.stderr)
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from appsdk.contract.buildinfo import locate_image
    from appsdk.core.foreign import needs_emulation
    from appsdk.emulate.qemu import (
        VmSpec,
        check_ports,
        firmware_vars,
        kvm_works,
        prepare_disk,
        qemu_argv,
        scratch_dir,
    )
    from appsdk.image.gpt import disk_table
    from appsdk.spec.boards import load_board

    image, record = locate_image(args.target)
    disk_table(image)  # a build.json or tarball would boot to nothing, or be written to
    board = load_board(args.board or (record["board"]["name"] if record else "x86-uefi"))
    if not args.print_only:
        check_ports(args.serial_port, args.forward)
    disk = prepare_disk(image, args.disk, args.disk_size)
    accel = args.accel
    if accel == "auto":
        # KVM only runs guests of the host's own architecture.
        accel = ("kvm" if not needs_emulation(board.debian_arch)
                 and kvm_works(board, args.emulator) else "tcg")
    spec = VmSpec(board=board, disk=disk, snapshot=not (args.in_place or args.disk),
                  serial_port=args.serial_port, forward=tuple(args.forward),
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
    from appsdk.deliver.blockdev import list_devices

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
    try:
        answer = input(f"Type 'yes' to write to {dev.path}: ")
    except EOFError:  # Ctrl-D is a no
        return False
    return answer.strip().lower() == "yes"


def cmd_flash(args: argparse.Namespace) -> int:
    from appsdk.deliver.flash import flash, open_source

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
    from appsdk.deliver.flash import open_source, verify_device

    reporter = _reporter(args)
    digest, seconds = verify_device(open_source(args.source), args.device, reporter)
    if args.json:
        print(json.dumps({"event": "result", "device": args.device, "verified": True,
                          "sha256": digest, "seconds": round(seconds, 2)}))
    else:
        print(f"{args.device} matches {args.source}: sha256 {digest} ({seconds:.1f}s)")
    return 0


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
    return 0 if report.ok else ProvisionFailed.exit_code


def cmd_firmware(args: argparse.Namespace) -> int:
    from appsdk.spec import firmware

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
    from appsdk.image.inspect import inspect

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
    from appsdk.deliver.flash import open_source
    from appsdk.deliver.provision_usb import UdevWatcher, provision_usb

    source = open_source(args.source)
    reporter = _reporter(args)
    watcher = UdevWatcher(rpiboot=args.rpiboot, rpiboot_dir=args.rpiboot_dir,
                          reporter=reporter)
    reports = provision_usb(source, watcher, count=args.count,
                            board=args.board, timeout=args.timeout, reporter=reporter,
                            on_report=lambda r: print(
                                json.dumps(r.as_dict(), sort_keys=True) if args.json
                                else r.line(), flush=True))
    return 0 if reports and all(r.ok for r in reports) else ProvisionFailed.exit_code


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
