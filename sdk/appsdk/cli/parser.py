"""The command line's grammar: every command, flag and help text, and a parser that raises
UsageError instead of exiting."""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import NoReturn

from appsdk.cli.argtypes import (
    baud,
    count,
    existing,
    forward,
    key_source,
    new_dir,
    new_file,
    port,
    seconds,
    size,
)
from appsdk.core.errors import (
    EXIT_OK,
    ConfigError,
    DeviceFailed,
    DeviceRefused,
    UsageError,
    VerifyFailed,
)
from appsdk.core.version import __version__

# Built from the error classes, so the codes in `appsdk flash --help` cannot drift from them.
_FLASH_EXITS = (
    (EXIT_OK, "written and verified"),
    (ConfigError.exit_code, "the image, bmap or build.json is bad (nothing written)"),
    (DeviceRefused.exit_code, "refused (nothing written)"),
    (VerifyFailed.exit_code, "verification failed"),
    (DeviceFailed.exit_code, "the device failed a write or read"),
)
FLASH_EPILOG = ("exit status: " + "; ".join(f"{code} {what}" for code, what in _FLASH_EXITS)
                + " (all codes: docs/cli.md). A flash that does not finish leaves no valid "
                "partition table.")


class Parser(argparse.ArgumentParser):
    """Raises UsageError instead of exiting, so main renders a bad command line like any
    other error (as JSON under --json). Subparsers inherit the class."""

    def error(self, message: str) -> NoReturn:
        flag = re.match(r"argument ([^:]+): ", message)
        raise UsageError(message, usage=self.format_usage(), flag=flag.group(1) if flag else None,
                         hint=f"see `{self.prog} --help`")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="appsdk",
        description="Build, flash, provision and update immutable appliances "
        "(Raspberry Pi 4/5, x86 UEFI).",
    )
    parser.add_argument("--version", action="version", version=f"appsdk {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every command run")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("init", help="create a new appliance directory")
    p.add_argument("directory", type=new_dir)
    p.add_argument("--id", help="appliance id (default: the directory name)")
    p.add_argument("--board")  # default: spec.boards.DEFAULT_BOARD, filled in by cmd_init

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
    p.add_argument("--output", "-o", type=new_dir,
                   help="output directory (default: DIR/build/BOARD)")
    p.add_argument("--keys", type=Path, metavar="DIR",
                   help="update-signing key directory (default: update.key in appliance.yaml, "
                   "else ~/.config/appsdk/keys/ID)")
    p.add_argument("--update-url", metavar="URL", help="override update.url of appliance.yaml")
    p.add_argument("--secure-boot-keys", type=Path, metavar="DIR",
                   help="Secure Boot key set, when appliance.yaml enables secure_boot "
                   "(default: secure_boot.keys, else secure-boot/ in the --keys directory)")
    p.add_argument("--json", action="store_true", help="progress and result as JSON lines")

    p = sub.add_parser("keys", help="manage the update-signing and Secure Boot keys")
    keys_sub = p.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    k = keys_sub.add_parser("generate", help="create the project's update-signing key",
                            description="Create an OpenPGP signing key (ed25519) in its own "
                            "GnuPG home. Keep that directory out of the image and out of git; "
                            "devices only get the public key.")
    k.add_argument("directory", type=Path, nargs="?", default=Path("."),
                   help="appliance directory (for its id and update.key)")
    k.add_argument("--keys", type=new_dir, metavar="DIR", help="where to create the key")
    k.add_argument("--secure-boot", action="store_true",
                   help="also create a Secure Boot key set in DIR/secure-boot, or where "
                   "secure_boot.keys says (see `appsdk keys secure-boot`)")
    k.add_argument("--json", action="store_true")
    k = keys_sub.add_parser(
        "secure-boot", help="create the appliance's Secure Boot key set (PK, KEK, db, PCR)",
        description="Create a UEFI Secure Boot key set: PK, KEK and db (RSA-2048 X.509 "
        "certificate + private key each) and the signed enrollment payloads PK.auth, "
        "KEK.auth, db.auth that systemd-boot writes into a machine in setup mode; and a PCR "
        "policy key, never enrolled. Builds with secure_boot: in appliance.yaml sign "
        "systemd-boot and every UKI with the db key, and each UKI's expected PCR 11 values "
        "with the PCR key. Keep PK and KEK offline once devices are enrolled "
        "(docs/secure-boot.md).")
    k.add_argument("directory", type=Path, nargs="?", default=Path("."),
                   help="appliance directory (for its id, name and secure_boot.keys)")
    k.add_argument("--keys", type=new_dir, metavar="DIR",
                   help="the appliance's key directory (default: the update key's); the set "
                   "goes into DIR/secure-boot unless appliance.yaml names secure_boot.keys")
    k.add_argument("--secure-boot-keys", type=new_dir, metavar="DIR",
                   help="exactly where to create the key set")
    k.add_argument("--db-key", type=key_source, metavar="FILE|URI",
                   help="use this db private key instead of making one: a PEM file, or a key "
                   "in an HSM as a PKCS#11 URI ('pkcs11:token=...;object=...'; see "
                   "docs/secure-boot.md); needs --db-cert")
    k.add_argument("--db-cert", type=existing, metavar="FILE",
                   help="the X.509 certificate (PEM) of --db-key")
    k.add_argument("--pcr-key", type=key_source, metavar="FILE|URI",
                   help="use this PCR policy key instead of making one (a PEM file or a "
                   "PKCS#11 URI, as --db-key); it signs each UKI's expected PCR 11 values so "
                   "the TPM unseals /var for every UKI it signed (docs/tpm.md); needs "
                   "--pcr-cert")
    k.add_argument("--pcr-cert", type=existing, metavar="FILE",
                   help="the X.509 certificate (PEM) of --pcr-key")
    k.add_argument("--json", action="store_true")

    k = keys_sub.add_parser(
        "vars", help="write a UEFI variable store with the Secure Boot key set enrolled",
        description="Write an edk2 UEFI variable store (OVMF, AAVMF) with the appliance's "
        "PK, KEK and db enrolled and Secure Boot on, for `appsdk run --vars` or any QEMU: a "
        "machine that starts from it enforces Secure Boot on its first boot. Needs "
        "virt-fw-vars (pip install virt-firmware).")
    k.add_argument("directory", type=Path, nargs="?", default=Path("."),
                   help="appliance directory (for its id, board and secure_boot.keys)")
    k.add_argument("--output", "-o", type=new_file, required=True, metavar="FILE",
                   help="the variable store to write")
    k.add_argument("--keys", type=Path, metavar="DIR", help="the appliance's key directory")
    k.add_argument("--secure-boot-keys", type=Path, metavar="DIR", help="the key set itself")
    k.add_argument("--template", type=existing, metavar="FILE",
                   help="the store to start from (default: the board emulator's)")
    k.add_argument("--board", help="board whose emulator's store is the template "
                   "(default: the appliance's)")
    k.add_argument("--emulator", metavar="NAME", help="that board's emulator profile")
    k.add_argument("--json", action="store_true")

    p = sub.add_parser("release", help="assemble a signed update directory from builds",
                       description="Copy the update artifacts of one or more builds into OUT "
                       "(several versions side by side) and sign one SHA256SUMS over all.")
    p.add_argument("out", type=new_dir)
    p.add_argument("builds", type=existing, nargs="+", metavar="BUILD_DIR")
    p.add_argument("--keys", type=existing, metavar="DIR", help="signing key directory")
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
                       epilog=FLASH_EPILOG)
    p.add_argument("source", type=existing, metavar="IMAGE|BUILD_DIR")
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
    p.add_argument("source", type=existing, metavar="IMAGE|BUILD_DIR")
    p.add_argument("device", metavar="DEVICE")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("provision", help="provision devices on a factory bench")
    prov = p.add_subparsers(dest="provision_command", required=True, metavar="CHANNEL")
    u = prov.add_parser("usb", help="flash every USB disk that is plugged in",
                        description="Wait for USB mass-storage disks (card readers, USB "
                        "sticks, CM4/CM5 eMMC exposed by rpiboot) to appear, flash and verify "
                        "each, and print one report line per device.")
    u.add_argument("source", type=existing, metavar="IMAGE|BUILD_DIR")
    u.add_argument("--wait", action="store_true", required=True,
                   help="wait for disks to be plugged in (disks present at start are ignored)")
    u.add_argument("--count", type=count, default=0, help="stop after N devices (default: never)")
    u.add_argument("--board", help="refuse images built for another board")
    u.add_argument("--timeout", type=seconds, default=0,
                   help="give up after this many seconds without a new disk (default: never)")
    u.add_argument("--rpiboot", action="store_true",
                   help="run the external rpiboot for each CM4/CM5 in USB boot mode, so its "
                   "eMMC appears as a USB disk (install usbboot's rpiboot first)")
    u.add_argument("--rpiboot-dir", type=existing, metavar="DIR",
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
    sp.add_argument("plan", type=existing, nargs="?", help="provisioning plan (YAML)")
    sp.add_argument("--device", metavar="SERIAL", help="which device of the plan this is")
    sp.add_argument("--baud", type=baud, default=115200)
    sp.add_argument("--user", help="login user (default: root, or the plan's)")
    sp.add_argument("--password", help="login password (or the plan's login.password)")
    sp.add_argument("--hostname")
    sp.add_argument("--serial", help="serial number to record (default: --device)")
    sp.add_argument("--update-url", metavar="URL", help="this device's update server")
    sp.add_argument("--authorized-key", action="append", default=[], type=existing,
                    metavar="FILE", help="ssh public key for root (repeatable)")
    sp.add_argument("--credential", action="append", default=[], metavar="NAME=FILE",
                    help="a credential for services (LoadCredential=NAME; repeatable)")
    sp.add_argument("--file", action="append", default=[], metavar="SRC:DEST[:MODE]",
                    help="push a file (repeatable)")
    sp.add_argument("--update", type=existing, metavar="DIR",
                    help="install the update in DIR (build or release) from pushed files")
    sp.add_argument("--status", action="store_true",
                    help="only log in and print the device's status")
    sp.add_argument("--log", type=new_file, help="write the console transcript here")
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
    f.add_argument("--offline", type=existing, metavar="DIR",
                   help="take the .deb/.zip files from DIR instead of the network")
    f.add_argument("--mirror", metavar="URL", help="Debian mirror (default: deb.debian.org)")
    f.add_argument("--json", action="store_true")

    p = sub.add_parser("inspect", help="what an image or build contains",
                       description="Partitions, ESP files, board, image id and version, and "
                       "the UKI's kernel command line of a build directory or disk image.")
    p.add_argument("target", type=existing, metavar="IMAGE|BUILD_DIR")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("run", help="boot an image in QEMU",
                       description="Boot a built image in QEMU (KVM if it works, else TCG). "
                       "The image is not modified: writes go to a snapshot unless --disk or "
                       "--in-place is given.")
    p.add_argument("target", type=existing, help="build directory or .img file")
    p.add_argument("--board", help="board profile (default: from build.json)")
    p.add_argument("--emulator", metavar="NAME",
                   help="one of the board's emulator profiles, e.g. virt-uboot or virt-edk2 "
                   "for rpi4 (default: the board's first; `appsdk boards --json` lists them)")
    p.add_argument("--disk", type=Path, help="persistent working copy of the image (made once)")
    p.add_argument("--disk-size", type=size,
                   help="grow the working copy to this size, e.g. 6G")
    p.add_argument("--vars", type=Path, metavar="FILE",
                   help="persistent UEFI variable store, kept across runs (made from the "
                   "emulator's if missing; `appsdk keys vars` makes one with Secure Boot on)")
    p.add_argument("--tpm", type=Path, metavar="DIR",
                   help="give the machine a TPM 2.0 (swtpm) whose state is kept in DIR across "
                   "runs: the same DIR is the same device, a new one another device")
    p.add_argument("--in-place", action="store_true", help="boot and modify the image itself")
    p.add_argument("--serial-port", type=port, help="serial console on 127.0.0.1:PORT, not stdio")
    p.add_argument("--forward", action="append", default=[], metavar="HOST:GUEST", type=forward,
                   help="forward a TCP port from 127.0.0.1:HOST to the guest")
    p.add_argument("--accel", choices=("auto", "kvm", "tcg"), default="auto",
                   help="auto: KVM if the board's own firmware, booted under it once, writes "
                   "to its console without a KVM error (cached; `appsdk doctor` shows it), "
                   "else TCG")
    p.add_argument("--print", dest="print_only", action="store_true",
                   help="print the QEMU command line and exit")
    return parser


