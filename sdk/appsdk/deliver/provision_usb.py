"""Factory bench over USB mass storage: wait for disks to be plugged in, flash and verify
each, report one line per device.

Disks come from a udev monitor (the kernel's uevents where no udevd runs, e.g. in a
container). A disk is new when its (name, diskseq) was not there at start: re-plugging a
stick or changing the card in a reader gives a new diskseq. CM4/CM5 modules appear as
disks only after usbboot has loaded the mass-storage gadget; with rpiboot=True the
watcher runs the external `rpiboot` for every Broadcom boot-ROM device it sees."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from appsdk.core.errors import AppsdkError, CommandFailed, CommandTimeout
from appsdk.core.progress import Event, EventKind, NullReporter, Reporter
from appsdk.core.runner import Runner, require
from appsdk.deliver.blockdev import BlockDevice, probe
from appsdk.deliver.flash import flash
from appsdk.deliver.source import Source

# Raspberry Pi boot ROMs in USB device mode (BCM2711 = CM4, BCM2712 = CM5, older ones).
RPI_BOOT_IDS = {("0a5c", "2711"), ("0a5c", "2712"), ("0a5c", "2763"), ("0a5c", "2764")}


def rpiboot_argv(directory: Path | None) -> list[str]:
    """rpiboot loads firmware over USB that exposes the module's eMMC as a USB disk: its
    built-in MSD firmware (CM3/CM4) or, with -d, a directory such as usbboot's
    mass-storage-gadget64 (CM4/CM5, faster; required on CM5)."""
    return ["rpiboot", *(["-d", str(directory)] if directory else [])]


# rpiboot takes a module through two stages in seconds; one that hangs (a module that
# dropped off the bus) must not stall the bench.
RPIBOOT_TIMEOUT_S = 120.0


def usb_ids(props: Mapping[str, str]) -> tuple[str, str] | None:
    """(vendor, product) of a USB *device* uevent (not its interfaces), from udev's ID_*
    properties or, where no udevd runs, the kernel's PRODUCT=vid/pid/bcd (hex, unpadded)."""
    if props.get("DEVTYPE") != "usb_device":
        return None
    vid, pid = props.get("ID_VENDOR_ID", ""), props.get("ID_MODEL_ID", "")
    if not (vid and pid):
        try:
            v, p, _ = props.get("PRODUCT", "").split("/")
            vid, pid = f"{int(v, 16):04x}", f"{int(p, 16):04x}"
        except ValueError:
            return None
    return vid.lower(), pid.lower()


def in_boot_mode(sys_path: Path) -> bool:
    """Is the USB device at `sys_path` (still) a boot ROM waiting for rpiboot? After
    rpiboot it has re-enumerated as a mass-storage gadget under another path, so a queued
    "add" for the boot ROM's earlier enumeration finds nothing here."""
    try:
        ids = ((sys_path / "idVendor").read_text().strip(),
               (sys_path / "idProduct").read_text().strip())
    except OSError:
        return False
    return ids in RPI_BOOT_IDS


def maybe_rpiboot(action: str, props: Mapping[str, str], sys_path: Path, runner: Runner,
                  directory: Path | None, reporter: Reporter) -> bool:
    """Run rpiboot for a Compute Module that just appeared in USB boot mode. A failure is
    reported and the bench goes on waiting (the module's eMMC then never appears)."""
    if action != "add" or usb_ids(props) not in RPI_BOOT_IDS or not in_boot_mode(sys_path):
        return False
    reporter.emit(Event(EventKind.INFO, "provision", f"Compute Module in USB boot mode at "
                        f"{sys_path.name}: running rpiboot"))
    try:
        runner.run(rpiboot_argv(directory), timeout=RPIBOOT_TIMEOUT_S)
    except (CommandFailed, CommandTimeout) as exc:
        reporter.emit(Event(EventKind.INFO, "provision", f"rpiboot FAILED for the module at "
                            f"{sys_path.name}: {exc}; check its cable and nRPIBOOT jumper, "
                            "then plug it in again"))
        return False
    return True


def is_usb_disk(dev: BlockDevice) -> bool:
    return dev.bus == "usb"


class Watcher(Protocol):
    def wait(self, timeout: float | None) -> str | None:
        """The /dev path of the next newly plugged disk, or None after `timeout` seconds."""
        ...


class UdevWatcher:
    def __init__(self, match: Callable[[BlockDevice], bool] = is_usb_disk,
                 rpiboot: bool = False, rpiboot_dir: Path | None = None,
                 runner: Runner | None = None, reporter: Reporter | None = None) -> None:
        import pyudev

        self.match = match
        self.rpiboot = rpiboot
        self.rpiboot_dir = rpiboot_dir
        self.runner = runner or Runner()
        self.reporter = reporter or NullReporter()
        context = pyudev.Context()
        source = "udev" if Path("/run/udev/control").exists() else "kernel"
        self.monitor = pyudev.Monitor.from_netlink(context, source=source)
        self.monitor.filter_by("block")
        if rpiboot:
            require("rpiboot", hint="build it from https://github.com/raspberrypi/usbboot "
                    "(make; sudo make install) and put it on PATH")
            self.monitor.filter_by("usb")
        self.monitor.start()
        # Disks present now are not "plugged in": remember them to skip.
        self.seen = {(d.sys_name, d.properties.get("DISKSEQ", ""))
                     for d in context.list_devices(subsystem="block", DEVTYPE="disk")}

    def wait(self, timeout: float | None) -> str | None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if left == 0.0:
                return None
            device = self.monitor.poll(timeout=left if left is not None else 1.0)
            if device is None:
                continue
            if device.subsystem == "usb":
                maybe_rpiboot(device.action or "", device.properties, Path(device.sys_path),
                              self.runner, self.rpiboot_dir, self.reporter)
                continue
            if device.device_type != "disk" or device.action not in ("add", "change"):
                continue
            key = (device.sys_name, device.properties.get("DISKSEQ", ""))
            if key in self.seen or device.device_node is None:
                continue
            try:
                dev = probe(device.device_node)
            except AppsdkError:
                continue
            if dev.size == 0 or not self.match(dev):
                continue
            self.seen.add(key)
            return dev.path


@dataclass(frozen=True)
class DeviceReport:
    device: str
    serial: str
    model: str
    ok: bool
    seconds: float
    sha256: str = ""
    error: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"event": "device", "device": self.device, "serial": self.serial,
                "model": self.model, "result": "ok" if self.ok else "failed",
                "seconds": round(self.seconds, 2), "sha256": self.sha256, "error": self.error}

    def line(self) -> str:
        who = f"{self.device} serial={self.serial or '?'} {self.model}".rstrip()
        if self.ok:
            return f"OK     {who}  {self.seconds:.1f}s  sha256={self.sha256}"
        return f"FAILED {who}  {self.seconds:.1f}s  {self.error}"


def provision_usb(source: Source, watcher: Watcher, *, count: int = 0,
                  board: str | None = None, timeout: float = 0, allow_fixed: bool = False,
                  reporter: Reporter | None = None,
                  on_report: Callable[[DeviceReport], None] | None = None
                  ) -> list[DeviceReport]:
    """Flash every disk `watcher` reports, one after the other, until `count` devices
    (0: forever) or `timeout` seconds without a new disk (0: no limit)."""
    reporter = reporter or NullReporter()
    reports: list[DeviceReport] = []
    while count == 0 or len(reports) < count:
        reporter.emit(Event(EventKind.INFO, "provision",
                            f"waiting for a disk ({len(reports)} done)"))
        path = watcher.wait(timeout or None)
        if path is None:
            reporter.emit(Event(EventKind.INFO, "provision",
                                f"no new disk in {timeout:.0f}s; stopping"))
            break
        start = time.monotonic()
        serial = model = ""
        try:
            dev = probe(path)
            serial, model = dev.serial, f"{dev.vendor} {dev.model}".strip()
            result = flash(source, path, board=board, allow_fixed=allow_fixed,
                           reporter=reporter)
            report = DeviceReport(path, serial, model, True, time.monotonic() - start,
                                  sha256=result.digest)
        except AppsdkError as exc:
            report = DeviceReport(path, serial, model, False, time.monotonic() - start,
                                  error=str(exc))
        reports.append(report)
        if on_report:
            on_report(report)
    return reports
