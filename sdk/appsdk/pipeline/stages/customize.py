"""Stage customize: turn the Debian tree into the appliance tree (overlay, identity,
on-device units, factory /etc), in a fresh copy so the cached rootfs stays pristine."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from appsdk.contract.confirm import confirmation_files, confirmation_units
from appsdk.contract.layout import Layout
from appsdk.contract.ondevice import (
    DISABLE_UNITS,
    ENABLE_UNITS,
    IMPORT_PUBRING,
    RECOVERY_SERVICE,
    UPDATE_TIMER,
    File,
    etc_files,
    os_release,
    usr_files,
)
from appsdk.core.errors import BuildError
from appsdk.core.runner import Runner
from appsdk.core.sandbox import Sandbox
from appsdk.pipeline.stages.rootfs import Rootfs, copy_tree, device_tree_dir, kernel_image
from appsdk.pipeline.tools import ToolsTree
from appsdk.pipeline.treefs import (
    copy_into_tree,
    copy_overlay,
    read_in_tree,
    symlink_in_tree,
    write_in_tree,
)
from appsdk.spec.appliance import Appliance
from appsdk.spec.boards import Board


@dataclass(frozen=True)
class Customized:
    tree: Path
    kernel: Path  # the kernel image, kept outside /usr (it goes into the UKI)
    kernel_version: str
    # modules_exclude entries this kernel does not have (e.g. drivers/isdn on arm64)
    absent_excludes: tuple[str, ...] = ()


def customize(app: Appliance, layout: Layout, rootfs: Rootfs, work: Path, runner: Runner,
              tools: ToolsTree, update_url: str | None = None, pubring: Path | None = None,
              board: Board | None = None) -> Customized:
    tree = work / "tree"
    copy_tree(runner, rootfs.tree, tree)
    kernel = work / "vmlinuz"
    shutil.copyfile(kernel_image(tree, rootfs.kernel_version), kernel)
    drop_device_trees(tree, rootfs.kernel_version)

    if app.overlay:
        copy_overlay(app.overlay, tree)

    absent: list[str] = []
    if app.modules_exclude:
        absent = prune_modules(tree, rootfs.kernel_version, app.modules_exclude, tools,
                               runner)

    base_release = read_in_tree(tree / "usr", "lib/os-release")
    write_files(tree / "usr", {"lib/os-release": File(os_release(base_release, app))})
    write_files(tree / "usr", usr_files(app, layout, update_url))
    if board is not None:
        write_files(tree / "usr", confirmation_files(app, board))
        symlink_in_tree(tree / "usr", "bin/appsdk-status", "../lib/appsdk/appsdk-status")
    if pubring:
        write_in_tree(tree / "usr", IMPORT_PUBRING, pubring.read_bytes(), 0o644)
    write_files(tree / "etc", etc_files(app))
    install_dracut_module(tree)

    systemctl = Sandbox(tree, binds=(tree,))
    missing = [u for u in app.services if not unit_exists(tree, u)]
    if missing:
        raise BuildError(
            f"services listed in {app.source}: unit(s) not found in the image: "
            f"{', '.join(missing)}",
            hint="add the unit under overlay/usr/lib/systemd/system/ or install its package",
        )
    timer = (UPDATE_TIMER,) if update_url and app.update.automatic else ()
    confirm = confirmation_units(app) if board is not None else ()
    recovery = (RECOVERY_SERVICE,) if layout.var_encrypted else ()
    systemctl.run(runner, ["systemctl", f"--root={tree}", "enable", *ENABLE_UNITS,
                           *app.services, *timer, *confirm, *recovery])
    present = [u for u in DISABLE_UNITS if unit_exists(tree, u)]
    if present:
        systemctl.run(runner, ["systemctl", f"--root={tree}", "disable", *present])

    # Like `cp -a etc/. usr/share/factory/etc`, without following links the overlay left there.
    copy_into_tree(tree / "etc", tree, "usr/share/factory/etc")
    return Customized(tree=tree, kernel=kernel, kernel_version=rootfs.kernel_version,
                      absent_excludes=tuple(absent))


def drop_device_trees(tree: Path, kernel_version: str) -> None:
    """Device trees for every arm64 board (56 MB with Debian's arm64 kernel) leave /usr: a
    board that needs some gets them on its ESP from its firmware chain (rpi_boot reads them
    from the cached rootfs); nothing reads them from /usr. Newer kernels make the directory
    a link to modules/V/dtb, resolved inside the tree so no link can reach the host."""
    target = device_tree_dir(tree, kernel_version)
    if target.resolve().is_relative_to(tree.resolve()):
        shutil.rmtree(target, ignore_errors=True)
    link = tree / "usr/lib" / f"linux-image-{kernel_version}"
    if link.is_symlink():
        link.unlink()


def prune_modules(tree: Path, kernel_version: str, excluded: tuple[str, ...],
                  tools: ToolsTree, runner: Runner) -> list[str]:
    """Drop module trees the appliance never loads (sound, GPU, ...), then re-run depmod.
    Returns the entries this kernel does not have: one appliance.yaml serves boards whose
    kernels differ (no drivers/isdn on arm64), so they are reported, not fatal."""
    base = tree / "usr/lib/modules" / kernel_version / "kernel"
    absent = []
    for rel in excluded:
        target = base / rel
        if not os.path.lexists(target):
            absent.append(rel)
            continue
        # A link (say, one an overlay put there) must not make rmtree delete host files.
        if target.is_symlink() or not target.resolve().is_relative_to(base.resolve()):
            raise BuildError(f"modules_exclude: {target} is a symlink or leads out of the "
                             "kernel's module tree; not deleting through it",
                             hint="remove that link from the overlay")
        if target.is_dir():
            shutil.rmtree(target)
        else:
            target.unlink()
    # The tools tree's depmod (same Debian, same kmod): the image's own would run under
    # qemu-user for a foreign architecture (26 s for arm64 against under 1 s), and depmod's
    # output does not depend on the host's architecture.
    tools.sandbox(binds=(tree,)).run(runner, ["depmod", "-b", str(tree), kernel_version])
    return absent


def unit_exists(tree: Path, unit: str) -> bool:
    template = unit.split("@")[0] + "@." + unit.rsplit(".", 1)[1] if "@" in unit else unit
    return any((tree / d / name).exists()
               for d in ("usr/lib/systemd/system", "etc/systemd/system")
               for name in (unit, template))


def write_files(root: Path, files: dict[str, File]) -> None:
    for rel, spec in files.items():
        write_in_tree(root, rel, spec.content.encode(), spec.mode)


# Our dracut modules (appsdk/data/dracut): /etc and the machine-id for every image, opening
# the TPM-sealed /var for var.encrypt: tpm2. The initrd stage hashes them into its cache key.
DRACUT_MODULE_DIRS = ("90appsdk-etc", "90appsdk-var-tpm2")


def install_dracut_module(tree: Path) -> None:
    for module in DRACUT_MODULE_DIRS:
        source = resources.files("appsdk") / "data" / "dracut" / module
        for entry in source.iterdir():
            write_in_tree(tree / "usr", f"lib/dracut/modules.d/{module}/{entry.name}",
                          entry.read_bytes(), 0o755 if entry.name.endswith(".sh") else 0o644)
