"""Building for another CPU architecture: the rootfs's maintainer scripts and dracut run
arm64 binaries on an x86-64 host through qemu-user, registered with binfmt_misc. This only
checks that the host can do that and says how to fix it; it changes nothing."""

from __future__ import annotations

import platform
from pathlib import Path

from appsdk.core.errors import ToolMissing

BINFMT = Path("/proc/sys/fs/binfmt_misc")
# Debian architecture -> (what `uname -m` says on such a host, qemu-user's name)
MACHINES = {"amd64": (("x86_64",), "x86_64"), "arm64": (("aarch64",), "aarch64")}


def needs_emulation(arch: str, host: str | None = None) -> bool:
    return (host or platform.machine()) not in MACHINES[arch][0]


def check_binfmt(arch: str, binfmt: Path = BINFMT, host: str | None = None) -> None:
    """Raise unless binaries for `arch` can run here, also inside a chroot (flag F: the
    interpreter is opened at registration, so the rootfs need not contain it)."""
    if not needs_emulation(arch, host):
        return
    name = MACHINES[arch][1]
    entry = binfmt / f"qemu-{name}"
    hint = ("apt-get install qemu-user-static, then register it: `make binfmt` in the appsdk "
            f"source tree, or: cat /usr/lib/binfmt.d/qemu-{name}.conf > {binfmt}/register")
    if not entry.is_file():
        raise ToolMissing(f"this {host or platform.machine()} host cannot run {arch} binaries: "
                          f"no qemu-user handler in {binfmt}", hint=hint)
    text = entry.read_text()
    flags = next((line.split(":", 1)[1].strip() for line in text.splitlines()
                  if line.startswith("flags:")), "")
    if not text.startswith("enabled") or "F" not in flags:
        raise ToolMissing(f"the qemu-{name} binfmt handler is disabled or lacks flag F "
                          f"(flags: {flags or 'none'}); {arch} chroots would fail", hint=hint)
