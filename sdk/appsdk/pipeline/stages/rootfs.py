"""Stage rootfs: the appliance's OS tree from Debian by mmdebstrap, cached by recipe hash."""

from __future__ import annotations

import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from appsdk.core.cache import cached_dir, key_of
from appsdk.core.errors import BuildError
from appsdk.core.foreign import check_binfmt
from appsdk.core.progress import Event, EventKind, Reporter
from appsdk.core.runner import Runner
from appsdk.pipeline.tools import DPKG_EXCLUDES
from appsdk.spec.appliance import Appliance
from appsdk.spec.boards import Board

# What every appliance needs: systemd as init with sysupdate/repart/bless-boot, dracut for a
# systemd initrd, veritysetup for dm-verity /usr, and mkfs.ext4 for /var on first boot.
BASE_PACKAGES = (
    "systemd", "systemd-sysv", "udev", "systemd-boot", "systemd-boot-efi",
    "systemd-container", "systemd-repart", "systemd-cryptsetup", "dracut", "e2fsprogs",
    "login", "passwd", "procps", "kmod", "util-linux",
    # zstd: dracut silently falls back to gzip without it; gpg: sysupdate verifies
    # SHA256SUMS.gpg by running gpg; dosfstools: fsck.vfat for the ESP after a power cut.
    "zstd", "gpg", "dosfstools",
)
# var.encrypt: tpm2: the TSS that systemd-repart, systemd-cryptsetup and systemd-pcrphase load
# at run time (dlopen, so no package depends on it). Names of trixie's t64 libraries.
TPM2_PACKAGES = (
    "libtss2-esys-3.0.2-0t64", "libtss2-mu-4.0.1-0t64", "libtss2-rc0t64", "libtss2-sys1t64",
    "libtss2-tctildr0t64", "libtss2-tcti-device0t64",
)


@dataclass(frozen=True)
class RootfsRecipe:
    suite: str
    mirror: str
    components: tuple[str, ...]
    arch: str
    packages: tuple[str, ...]
    extra_suites: tuple[str, ...] = ()  # e.g. trixie-backports, for pkg/suite packages


@dataclass(frozen=True)
class Rootfs:
    tree: Path
    kernel_version: str
    key: str
    cached: bool


def recipe_for(app: Appliance, board: Board) -> RootfsRecipe:
    kernel = board.kernel_package
    extra: set[str] = set()
    if board.kernel_backports:
        # A board whose hardware needs a newer kernel than the release has (Pi 5).
        extra.add(f"{app.base.suite}-backports")
        kernel = f"{kernel}/{app.base.suite}-backports"
    # A package pinned as name/suite (appliance.yaml) needs that suite's sources too.
    extra |= {p.split("/", 1)[1] for p in app.base.packages if "/" in p}
    extra.discard(app.base.suite)
    tpm2 = TPM2_PACKAGES if app.var.sealed else ()
    packages = sorted({*BASE_PACKAGES, kernel, *tpm2, *app.base.packages})
    return RootfsRecipe(
        suite=app.base.suite,
        mirror=app.base.mirror,
        components=app.base.components,
        arch=board.debian_arch,
        packages=tuple(packages),
        extra_suites=tuple(sorted(extra)),
    )


def mmdebstrap_argv(recipe: RootfsRecipe, target: Path) -> list[str]:
    return [
        "mmdebstrap", "--variant=minbase", "--mode=root",
        f"--architectures={recipe.arch}",
        f"--components={','.join(recipe.components)}",
        f"--include={','.join(recipe.packages)}",
        *DPKG_EXCLUDES,
        # The kernel's install hooks build a host initrd we never use; drop it from the cache.
        '--customize-hook=rm -f "$1"/boot/initrd.img*',
        recipe.suite, str(target), recipe.mirror,
        *(f"deb {recipe.mirror} {suite} {' '.join(recipe.components)}"
          for suite in recipe.extra_suites),
    ]


def build_rootfs(recipe: RootfsRecipe, runner: Runner, reporter: Reporter) -> Rootfs:
    fields = asdict(recipe)
    if not recipe.extra_suites:
        del fields["extra_suites"]  # the key of recipes from before the field existed
    key = key_of("rootfs", fields)

    def make(tmp: Path) -> None:
        runner.which("mmdebstrap")
        check_binfmt(recipe.arch)
        reporter.emit(Event(EventKind.INFO, "rootfs", f"mmdebstrap {recipe.suite}/{recipe.arch}: "
                            f"{len(recipe.packages)} packages"))
        # INITRD=No: the kernel hooks would build a host initrd we delete anyway (minutes
        # under qemu-user for a foreign architecture).
        runner.run(mmdebstrap_argv(recipe, tmp / "tree"),
                   env={"SOURCE_DATE_EPOCH": "0", "INITRD": "No"},
                   timeout=3600)

    path, cached = cached_dir("rootfs", key, make)
    tree = path / "tree"
    return Rootfs(tree=tree, kernel_version=kernel_version(tree), key=key, cached=cached)


def kernel_version(tree: Path) -> str:
    versions = sorted(p.name for p in (tree / "usr/lib/modules").glob("*") if p.is_dir())
    if len(versions) != 1:
        raise BuildError(f"expected exactly one kernel in {tree}/usr/lib/modules, found {versions}")
    kernel_image(tree, versions[0])
    return versions[0]


def device_tree_dir(tree: Path, kernel_version: str) -> Path:
    """Where Debian's kernel package keeps its device trees: /usr/lib/linux-image-V, which
    newer kernels make a link to modules/V/dtb. The link is resolved inside `tree`: an
    absolute target names a path in the tree, never one on the host."""
    path = tree / "usr/lib" / f"linux-image-{kernel_version}"
    if not path.is_symlink():
        return path
    link = Path(os.readlink(path))
    return tree / link.relative_to("/") if link.is_absolute() else path.parent / link


def kernel_image(tree: Path, version: str) -> Path:
    """The kernel of a tree: /boot/vmlinuz-V (trixie), or the image kept with its modules
    (newer Debian kernels, e.g. trixie-backports' 7.x, may only ship that)."""
    for candidate in (tree / "boot" / f"vmlinuz-{version}",
                      tree / "usr/lib/modules" / version / "vmlinuz"):
        if candidate.exists():
            return candidate
    raise BuildError(f"kernel image for {version} missing in {tree} (looked in /boot and "
                     f"/usr/lib/modules/{version})")


def copy_tree(runner: Runner, src: Path, dst: Path) -> None:
    """Copy an OS tree with owners, modes, links and xattrs (reflinks where supported)."""
    if dst.exists():
        shutil.rmtree(dst)
    runner.run(["cp", "-a", "--reflink=auto", str(src), str(dst)])
