"""`appsdk doctor`: which tools are used from where, and what is missing."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from appsdk.core.errors import ToolMissing
from appsdk.core.foreign import check_binfmt
from appsdk.emulate.qemu import kvm_works
from appsdk.pipeline.tools import TOOLS_USED, cached_tools
from appsdk.spec.boards import DEFAULT_BOARD, HostFile, list_boards, load_board


@dataclass(frozen=True)
class HostTool:
    """Something on the host that the pipeline or the tests use, and the Debian package
    that provides it (`make deps` installs every one of these packages)."""

    name: str  # a command on PATH, or an absolute path for a data file
    package: str
    why: str
    tests_only: bool = False


HOST_TOOLS = (
    HostTool("mmdebstrap", "mmdebstrap", "creates the rootfs and the tools tree"),
    HostTool("arch-test", "arch-test", "mmdebstrap's check for foreign architectures (arm64)"),
    HostTool("/usr/share/keyrings/debian-archive-keyring.gpg", "debian-archive-keyring",
             "mmdebstrap verifies the Debian mirror"),
    HostTool("/etc/ssl/certs/ca-certificates.crt", "ca-certificates", "https mirrors"),
    HostTool("bwrap", "bubblewrap", "runs tools from the tools tree and dracut in the rootfs"),
    HostTool("qemu-aarch64-static", "qemu-user-static", "runs arm64 binaries in arm64 builds"),
    HostTool("cp", "coreutils", "copies OS trees"),
    HostTool("gpg", "gnupg", "signing updates"),
    HostTool("gpgconf", "gnupg", "stops the gpg agents signing starts"),
    HostTool("openssl", "openssl", "makes Secure Boot keys and their enrollment payloads"),
    HostTool("/usr/share/OVMF/OVMF_CODE_4M.secboot.fd", "ovmf",
             "UEFI firmware with Secure Boot for appsdk run (x86, q35-ovmf-sb)"),
    HostTool("dpkg-deb", "dpkg", "appsdk firmware unpacks pinned firmware packages"),
    HostTool("mcopy", "mtools", "appsdk inspect reads the ESP without mounting it"),
    HostTool("qemu-system-x86_64", "qemu-system-x86", "appsdk run (x86-uefi)"),
    HostTool("qemu-system-aarch64", "qemu-system-arm", "appsdk run (arm64 boards)"),
    HostTool("/usr/share/OVMF/OVMF_CODE_4M.fd", "ovmf", "UEFI firmware for appsdk run (x86)"),
    HostTool("losetup", "mount", "appsdk flash tests and VM tests on loop devices", True),
    HostTool("lsblk", "util-linux", "block device listing in tests", True),
    HostTool("sfdisk", "fdisk", "reads our GPT as an independent oracle", True),
    HostTool("bmaptool", "bmap-tools", "reads and writes our .bmap as the oracle", True),
    HostTool("umockdev-run", "umockdev", "fakes USB and SATA disks", True),
    HostTool("mkfs.ext4", "e2fsprogs", "update media for the serial VM test", True),
    HostTool("mkfs.vfat", "dosfstools", "checks the ESP cluster size FAT32 allows", True),
    HostTool("fsck.vfat", "dosfstools", "reads back the ESP a build made", True),
    HostTool("blkid", "util-linux", "filesystem labels on flashed disks", True),
    HostTool("findmnt", "util-linux", "what is mounted", True),
    HostTool("partx", "util-linux", "partition nodes of loop devices in device tests", True),
    HostTool("mount", "mount", "mounts a flashed /var to check it", True),
    HostTool("cryptsetup", "cryptsetup-bin", "opens a TPM-sealed /var with its recovery key",
             True),
    HostTool("swtpm", "swtpm", "the TPM of emulated machines (appsdk run --tpm)"),
)


def _find(tool: HostTool) -> str | None:
    if tool.name.startswith("/"):
        return tool.name if Path(tool.name).exists() else None
    return shutil.which(tool.name)


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    where: str
    note: str


def run_checks() -> list[Check]:
    checks = [Check("root", os.geteuid() == 0, "uid", "builds run as root (mmdebstrap, chroot)")]
    for tool in HOST_TOOLS:
        path = _find(tool)
        why = f"{tool.why}; {'tests only, ' if tool.tests_only else ''}package {tool.package}"
        checks.append(Check(tool.name, path is not None,
                            path or f"apt-get install {tool.package}", why))
    tools = cached_tools()
    if tools is None:
        checks.append(Check("tools-tree", True, "not built yet",
                            "made on the first `appsdk build` (about 20 s)"))
    else:
        for binary, package in TOOLS_USED.items():
            found = any((tools.tree / d / binary).exists() for d in ("usr/bin", "usr/sbin"))
            checks.append(Check(binary, found, f"tools tree {tools.tree}", f"from {package}"))
    for board in list_boards():
        for em in board.emulators:
            # Pinned firmware (component:file) is fetched on first use; host paths must exist.
            refs = em.firmware_code or ((em.bios,) if em.bios else ())
            local = [r for r in refs if isinstance(r, HostFile)]
            code = next((r for r in local if r.path.exists()), None)
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
        kvm = kvm_works(load_board(DEFAULT_BOARD))
        checks.append(Check("kvm", True, "usable" if kvm else "not usable: TCG is used",
                            "hardware acceleration for appsdk run"))
    return checks
