"""Stage initrd: a generic (not host-only) dracut initrd with systemd, built inside the
appliance tree so it matches the image's kernel and systemd exactly. Cached."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from appsdk.core.cache import cached_dir, hash_tree, key_of
from appsdk.core.foreign import check_binfmt
from appsdk.core.progress import Reporter
from appsdk.core.runner import Runner
from appsdk.core.sandbox import Sandbox
from appsdk.pipeline.stages.customize import DRACUT_MODULE_DIRS, Customized
from appsdk.spec.boards import Board

DRACUT_MODULES = ("systemd", "systemd-initrd", "systemd-veritysetup", "appsdk-etc")
# hwdb alone is 13 MB; the initrd only needs to find and mount /usr.
DRACUT_OMIT = ("plymouth", "rescue", "resume", "i18n", "btrfs", "lvm", "mdraid", "multipath",
               "hwdb", "nvdimm", "fips")


@dataclass(frozen=True)
class Initrd:
    path: Path
    cached: bool


# var.encrypt: tpm2: the initrd opens /var with the TPM (data/dracut/90appsdk-var-tpm2);
# dm-crypt and XTS (modules in Debian's kernels; AES itself is built in) and the board's
# TPM driver join its drivers.
VAR_TPM2_MODULES = ("appsdk-var-tpm2",)
VAR_TPM2_DRIVERS = ("dm_crypt", "xts")


def dracut_argv(board: Board, kernel_version: str, output: Path,
                var_encrypted: bool = False) -> list[str]:
    modules = DRACUT_MODULES + (VAR_TPM2_MODULES if var_encrypted else ())
    drivers = board.initrd_modules + (
        VAR_TPM2_DRIVERS + board.tpm_modules if var_encrypted else ())
    return [
        "dracut", "--force", "--no-hostonly", "--no-hostonly-cmdline", "--reproducible",
        "--kver", kernel_version,
        "--add", " ".join(modules),
        "--omit", " ".join(DRACUT_OMIT),
        # --drivers is exclusive: only the board's list (and dependencies), instead of
        # dracut's generic "every storage, HID, USB and filesystem driver" set.
        "--drivers", " ".join(drivers),
        "--compress", "zstd",
        str(output),
    ]


def build_initrd(board: Board, custom: Customized, rootfs_key: str, runner: Runner,
                 reporter: Reporter, var_encrypted: bool = False) -> Initrd:
    modules = [hash_tree(custom.tree / "usr/lib/dracut/modules.d" / name)
               for name in DRACUT_MODULE_DIRS]
    key = key_of("initrd", rootfs_key, *modules,
                 dracut_argv(board, "K", Path("o"), var_encrypted))

    def make(tmp: Path) -> None:
        check_binfmt(board.debian_arch)  # dracut runs inside the (maybe foreign) tree
        Sandbox(custom.tree, binds=(tmp,)).run(
            runner, dracut_argv(board, custom.kernel_version, tmp / "initrd.img",
                                var_encrypted),
            env={"SOURCE_DATE_EPOCH": "0"}, timeout=1800)

    path, cached = cached_dir("initrd", key, make)
    return Initrd(path=path / "initrd.img", cached=cached)
