"""Block devices as flash targets: who they are (udev), what uses them (mounts, swap,
holders), and every reason not to write to them.

Identity comes from udev properties when udevd has them and from sysfs otherwise (a
container has no udev database), so `devices` and the safety checks work in both."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appsdk.core.errors import DeviceRefused, Option

# Mount points whose disk is "the system": never a target, whatever the flags.
SYSTEM_MOUNTS = ("/", "/usr", "/boot", "/boot/efi", "/efi", "/var", "/home")
# Buses a flash target normally sits on; anything else needs --allow-fixed.
REMOVABLE_BUSES = ("usb", "mmc")
# Kernel names that are never disks someone flashes.
_PSEUDO = ("ram", "zram", "dm-", "md", "sr", "nbd")


@dataclass(frozen=True)
class Refusal:
    reason: str
    override: Option | None = None  # the argument that overrides it, where that is sensible


@dataclass(frozen=True)
class BlockDevice:
    path: str
    name: str
    devnum: tuple[int, int]
    size: int
    vendor: str = ""
    model: str = ""
    serial: str = ""
    bus: str = ""
    removable: bool = False
    readonly: bool = False
    diskseq: str = ""
    mounts: tuple[str, ...] = ()  # "/dev/sdb1 on /media/x"
    system: tuple[str, ...] = ()  # "/ (on /dev/sda2)"
    holders: tuple[str, ...] = ()  # dm-0, md0: something stacked on top of it

    @property
    def identity(self) -> str:
        who = " ".join(x for x in (self.vendor, self.model) if x) or "unknown model"
        serial = f", serial {self.serial}" if self.serial else ""
        return (f"{self.path}: {who}{serial}, {self.size / 2**30:.1f} GiB "
                f"({self.size} bytes), bus {self.bus or 'unknown'}"
                f"{', removable' if self.removable else ''}")

    @property
    def fingerprint(self) -> tuple[Any, ...]:
        """What must not change between the confirmation and the open()."""
        return (self.devnum, self.size, self.serial, self.model, self.diskseq)

    def backed_by(self, file: Path) -> bool:
        """Whether this is a loop device over `file` (by inode: a hard link is the same file),
        so that writing it would overwrite the file."""
        backing = _read(Path(f"/sys/dev/block/{self.devnum[0]}:{self.devnum[1]}/loop/"
                             "backing_file"))
        try:
            return bool(backing) and os.path.samefile(backing, file)
        except OSError:  # a deleted backing file (" (deleted)") is not ours
            return False

    def refusals(self, allow_fixed: bool = False) -> list[Refusal]:
        out: list[Refusal] = []
        if self.system:
            out.append(Refusal("it holds the running system: " + "; ".join(self.system)))
        if self.mounts:
            out.append(Refusal(
                "it has mounted filesystems: " + "; ".join(self.mounts)
                + " (unmount them first, e.g. umount "
                + " ".join(m.split(" on ")[0] for m in self.mounts) + ")"))
        if self.holders:
            out.append(Refusal("it is in use by " + ", ".join(self.holders)
                               + " (device-mapper, LVM or RAID on top of it)"))
        if self.readonly:
            out.append(Refusal("it is read-only (check the card's write-protect switch)"))
        if self.size == 0:
            out.append(Refusal("it has no medium (empty card reader?)"))
        if not self.removable and self.bus not in REMOVABLE_BUSES and not allow_fixed:
            out.append(Refusal(f"it is not removable (bus {self.bus or 'unknown'}), "
                               "so probably an internal disk", Option("allow_fixed")))
        return out


def _read(path: Path, default: str = "") -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return default


def _mounted() -> dict[tuple[int, int], list[str]]:
    """devnum -> mount points, from mountinfo, plus swap devices as "[swap]"."""
    table: dict[tuple[int, int], list[str]] = {}
    for line in _read(Path("/proc/self/mountinfo")).splitlines():
        parts = line.split()
        major, minor = parts[2].split(":")
        target = parts[4].replace("\\040", " ")
        table.setdefault((int(major), int(minor)), []).append(target)
    for line in _read(Path("/proc/swaps")).splitlines()[1:]:
        name = line.split()[0]
        try:
            st = os.stat(name)
        except OSError:
            continue
        if stat.S_ISBLK(st.st_mode):
            table.setdefault((os.major(st.st_rdev), os.minor(st.st_rdev)), []).append("[swap]")
    return table


def _stack(sys_dir: Path) -> Iterable[Path]:
    """The block device, its partitions and everything stacked on them (holders), as sysfs
    directories: whatever is mounted from any of them keeps the disk busy."""
    seen: set[Path] = set()
    todo = [sys_dir]
    while todo:
        d = todo.pop().resolve()
        if d in seen:
            continue
        seen.add(d)
        yield d
        todo += [p for p in d.iterdir() if (p / "partition").exists()]
        holders = d / "holders"
        if holders.is_dir():
            todo += [Path("/sys/class/block") / h.name for h in holders.iterdir()]


def _devnum(sys_dir: Path) -> tuple[int, int]:
    major, minor = _read(sys_dir / "dev", "0:0").split(":")
    return int(major), int(minor)


def _usage(sys_dir: Path, mounted: dict[tuple[int, int], list[str]]
           ) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    mounts, system, holders = [], [], []
    for d in _stack(sys_dir):
        for target in mounted.get(_devnum(d), []):
            mounts.append(f"/dev/{d.name} on {target}")
            if target in SYSTEM_MOUNTS or target == "[swap]":
                system.append(f"{target} (on /dev/{d.name})")
    for d in [sys_dir, *(p for p in sys_dir.iterdir() if (p / "partition").exists())]:
        holders_dir = d / "holders"
        if holders_dir.is_dir():
            holders += [h.name for h in holders_dir.iterdir()]
    return tuple(mounts), tuple(system), tuple(sorted(set(holders)))


def _bus(props: dict[str, str], sys_dir: Path) -> str:
    if props.get("ID_BUS"):
        return props["ID_BUS"]
    real = str(sys_dir.resolve())
    for marker, bus in (("/usb", "usb"), ("/mmc_host/", "mmc"), ("/nvme", "nvme"),
                        ("/virtio", "virtio"), ("/ata", "ata"), ("/virtual/block/loop", "loop")):
        if marker in real:
            return bus
    return ""


def _from_sys(sys_dir: Path, props: dict[str, str],
              mounted: dict[tuple[int, int], list[str]]) -> BlockDevice:
    name = sys_dir.name
    device = sys_dir / "device"
    mounts, system, holders = _usage(sys_dir, mounted)
    return BlockDevice(
        path=props.get("DEVNAME") or f"/dev/{name}",
        name=name,
        devnum=_devnum(sys_dir),
        size=int(_read(sys_dir / "size", "0")) * 512,
        vendor=props.get("ID_VENDOR", "").replace("_", " ") or _read(device / "vendor"),
        model=props.get("ID_MODEL", "").replace("_", " ") or _read(device / "model")
        or _read(device / "name") or _loop_model(sys_dir),
        serial=props.get("ID_SERIAL_SHORT") or _read(sys_dir / "serial")
        or _read(device / "serial"),
        bus=_bus(props, sys_dir),
        removable=_read(sys_dir / "removable") == "1",
        readonly=_read(sys_dir / "ro") == "1",
        diskseq=props.get("DISKSEQ") or _read(sys_dir / "diskseq"),
        mounts=mounts, system=system, holders=holders,
    )


def _loop_model(sys_dir: Path) -> str:
    backing = _read(sys_dir / "loop" / "backing_file")
    return f"loop over {backing}" if backing else ""


def _udev_props(name: str) -> dict[str, str]:
    try:
        import pyudev

        dev = pyudev.Devices.from_name(pyudev.Context(), "block", name)
        return dict(dev.properties)
    except Exception:  # no libudev, or a device that vanished: sysfs still answers
        return {}


def probe(path: str | Path) -> BlockDevice:
    """The whole-disk block device at `path` (a /dev node or a symlink to one)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise DeviceRefused(f"{path}: no such device",
                            hint="list candidates with: appsdk devices") from None
    if not stat.S_ISBLK(st.st_mode):
        kind = "a regular file" if stat.S_ISREG(st.st_mode) else "not a block device"
        raise DeviceRefused(f"{path}: is {kind}, not a disk",
                            hint="to write an image file, just copy it; "
                            "list disks with: appsdk devices")
    sys_dir = Path(f"/sys/dev/block/{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}").resolve()
    if (sys_dir / "partition").exists():
        raise DeviceRefused(f"{path}: is a partition of /dev/{sys_dir.parent.name}",
                            hint=f"flash the whole disk: /dev/{sys_dir.parent.name}")
    return _from_sys(sys_dir, _udev_props(sys_dir.name), _mounted())


@dataclass(frozen=True)
class Listed:
    device: BlockDevice
    refusals: list[Refusal] = field(default_factory=list)

    @property
    def candidate(self) -> bool:
        return not self.refusals


def list_devices(allow_fixed: bool = False) -> list[Listed]:
    """Every whole disk worth showing, with the reasons it is not a flash candidate."""
    out = []
    mounted = _mounted()  # once for all disks
    for sys_dir in sorted(Path("/sys/block").iterdir()):
        name = sys_dir.name
        if name.startswith(_PSEUDO) or (name.startswith("mmcblk") and "boot" in name):
            continue
        dev = _from_sys(sys_dir, _udev_props(name), mounted)
        if name.startswith("loop") and dev.size == 0:
            continue  # unattached loop devices
        out.append(Listed(dev, dev.refusals(allow_fixed)))
    return out


def refuse_if_unsafe(dev: BlockDevice, allow_fixed: bool, min_size: int) -> None:
    refusals = dev.refusals(allow_fixed)
    if dev.size and dev.size < min_size:
        refusals.append(Refusal(f"it is too small: {dev.size} bytes, the image needs "
                                f"{min_size} bytes"))
    if refusals:
        overrides = sorted({r.override for r in refusals if r.override})
        only = overrides[0] if len(overrides) == 1 and all(r.override for r in refusals) \
            else None
        raise DeviceRefused(
            f"refusing to write to {dev.identity}: "
            + "; ".join(r.reason for r in refusals) + ". Nothing was written.",
            hint="if you are sure it is the right disk, allow it" if only else None,
            device=dev.path, remedy=only)
