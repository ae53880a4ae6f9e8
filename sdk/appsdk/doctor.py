"""`appsdk doctor`: which tools are used from where, and what is missing."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from .boards import list_boards, load_board
from .errors import ToolMissing
from .foreign import check_binfmt
from .qemu import kvm_works
from .tools import TOOLS_USED, cached_tools

HOST_TOOLS = {
    "mmdebstrap": ("mmdebstrap", "creates the rootfs and the tools tree"),
    "bwrap": ("bubblewrap", "runs tools from the tools tree and dracut in the rootfs"),
    "cp": ("coreutils", "copies OS trees"),
    "qemu-system-x86_64": ("qemu-system-x86", "appsdk run (x86-uefi)"),
    "qemu-system-aarch64": ("qemu-system-arm", "appsdk run (arm64 boards)"),
    "sfdisk": ("fdisk", "tests (GPT checks)"),
    "gpg": ("gnupg", "signing updates"),
    "mcopy": ("mtools", "appsdk inspect reads the ESP without mounting it"),
    "dpkg-deb": ("dpkg", "appsdk firmware unpacks pinned firmware packages"),
}


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    where: str
    note: str


def run_checks() -> list[Check]:
    checks = [Check("root", os.geteuid() == 0, "uid", "builds run as root (mmdebstrap, chroot)")]
    for tool, (package, why) in HOST_TOOLS.items():
        path = shutil.which(tool)
        checks.append(Check(tool, path is not None, path or f"apt-get install {package}", why))
    tools = cached_tools()
    if tools is None:
        checks.append(Check("tools-tree", True, "not built yet",
                            "made on the first `appsdk build` (about 20 s)"))
    else:
        for tool, package in TOOLS_USED.items():
            found = any((tools.tree / d / tool).exists() for d in ("usr/bin", "usr/sbin"))
            checks.append(Check(tool, found, f"tools tree {tools.tree}", f"from {package}"))
    for board in list_boards():
        for em in board.emulators:
            # Pinned firmware (component:file) is fetched on first use; host paths must exist.
            refs = em.firmware_code or ((em.bios,) if em.bios else ())
            local = [r for r in refs if r.startswith("/")]
            code = next((r for r in local if Path(r).exists()), None)
            ok = code is not None or not local
            checks.append(Check(f"firmware:{board.name}/{em.name}", ok,
                                code or (refs[0] if ok and refs else "missing"),
                                f"firmware for `appsdk run` ({em.qemu})"))
    try:
        check_binfmt("arm64")
        checks.append(Check("binfmt:arm64", True, "ready", "builds arm64 (Raspberry Pi) images"))
    except ToolMissing as exc:
        checks.append(Check("binfmt:arm64", False, exc.hint or str(exc), str(exc)))
    if shutil.which("qemu-system-x86_64"):
        kvm = kvm_works(load_board("x86-uefi"))
        checks.append(Check("kvm", True, "usable" if kvm else "not usable: TCG is used",
                            "hardware acceleration for appsdk run"))
    return checks
