"""Stage ESP: the EFI system partition's file tree (systemd-boot, loader.conf, the UKI)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from appsdk.spec.boards import Board

LOADER_CONF = """\
# appsdk: boot the newest good UKI at once; boot counting picks the fallback.
timeout 0
editor no
auto-entries no
auto-firmware no
console-mode keep
"""


@dataclass(frozen=True)
class EspTree:
    root: Path
    files: tuple[str, ...]


@dataclass(frozen=True)
class EspSecureBoot:
    boot_loader: Path  # systemd-boot, signed with the db key
    enrollment: Mapping[str, Path]  # PK, KEK, db -> their .auth payloads
    enroll: str  # loader.conf secure-boot-enroll


def uki_name(app_id: str, version: str) -> str:
    return f"{app_id}_{version}.efi"


def build_esp_tree(board: Board, tree: Path, uki: Path, app_id: str, version: str,
                   root: Path, epoch: int,
                   additions: Mapping[str, Path | str] | None = None,
                   secure_boot: EspSecureBoot | None = None) -> EspTree:
    """`additions`: ESP path -> host file or text, e.g. a Raspberry Pi firmware chain's
    files and config.txt (rpi_boot.esp_additions). `secure_boot`: the signed systemd-boot
    and the key set systemd-boot enrolls (the UKI given is then the signed one)."""
    if root.exists():
        shutil.rmtree(root)
    arch = board.efi_arch
    sdboot = (secure_boot.boot_loader if secure_boot
              else tree / f"usr/lib/systemd/boot/efi/systemd-boot{arch}.efi")
    files = {
        f"EFI/BOOT/BOOT{arch.upper()}.EFI": sdboot,
        f"EFI/systemd/systemd-boot{arch}.efi": sdboot,
        f"EFI/Linux/{uki_name(app_id, version)}": uki,
    }
    if secure_boot:
        # systemd-boot enrolls automatically only from the directory named "auto".
        files.update({f"loader/keys/auto/{role}.auth": path
                      for role, path in secure_boot.enrollment.items()})
    for rel, src in {**(additions or {}), **files}.items():
        dest = root / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(src, str):
            dest.write_text(src)
        else:
            shutil.copyfile(src, dest)
    (root / "loader").mkdir(parents=True, exist_ok=True)
    (root / "loader/loader.conf").write_text(
        LOADER_CONF + (f"secure-boot-enroll {secure_boot.enroll}\n" if secure_boot else ""))
    # FAT stores timestamps: pin them so the ESP is byte-for-byte reproducible.
    for path in [root, *root.rglob("*")]:
        os.utime(path, (epoch, epoch))
    names = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    return EspTree(root=root, files=tuple(names))
