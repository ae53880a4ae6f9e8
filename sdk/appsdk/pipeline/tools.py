"""The tools tree: a cached Debian trixie tree holding the build tools at versions the
pipeline needs (systemd-repart 257 offline mode, ukify, erofs-utils 1.8), whatever the host."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from appsdk.core.cache import cache_root, cached_dir, key_of
from appsdk.core.progress import Event, EventKind, Reporter
from appsdk.core.runner import Runner
from appsdk.core.sandbox import Sandbox

TOOLS_SUITE = "trixie"
TOOLS_MIRROR = os.environ.get("APPSDK_TOOLS_MIRROR", "http://deb.debian.org/debian")
TOOLS_PACKAGES = (
    "systemd-repart", "systemd-ukify", "python3-pefile", "erofs-utils", "squashfs-tools",
    "dosfstools", "mtools", "cryptsetup-bin", "xz-utils", "zstd", "fdisk", "e2fsprogs",
    "gnupg", "gpgv", "sbsigntool", "faketime", "kmod",
    # systemd-measure (ukify's PCR policy signer) is in systemd itself; it computes TPM2
    # policy digests with the TSS, which systemd loads at run time (dlopen).
    "systemd", "libtss2-esys-3.0.2-0t64", "libtss2-mu-4.0.1-0t64", "libtss2-rc0t64",
    # Keys in an HSM: OpenSSL's pkcs11 provider finds modules through p11-kit; SoftHSM is
    # a software token for trying that out (and the tests), openssl checks a key in one.
    "openssl", "pkcs11-provider", "p11-kit", "softhsm2",
)
# Binaries the pipeline calls inside the tree, and the package that provides each.
TOOLS_USED = {
    "systemd-repart": "systemd-repart", "ukify": "systemd-ukify", "mkfs.erofs": "erofs-utils",
    "mkfs.vfat": "dosfstools", "mcopy": "mtools", "veritysetup": "cryptsetup-bin",
    "xz": "xz-utils", "sfdisk": "fdisk", "gpg": "gnupg", "sbverify": "sbsigntool",
    "faketime": "faketime", "openssl": "openssl", "softhsm2-util": "softhsm2",
    "depmod": "kmod", "gzip": "gzip",
}
# Documentation, man pages and translations are never needed in a tree we build.
DPKG_EXCLUDES = (
    "--dpkgopt=path-exclude=/usr/share/man/*",
    "--dpkgopt=path-exclude=/usr/share/locale/*",
    "--dpkgopt=path-include=/usr/share/locale/locale.alias",
    "--dpkgopt=path-exclude=/usr/share/doc/*",
    "--dpkgopt=path-include=/usr/share/doc/*/copyright",
    "--dpkgopt=path-exclude=/usr/share/info/*",
)


@dataclass(frozen=True)
class ToolsTree:
    tree: Path
    key: str

    def sandbox(self, binds: tuple[Path, ...] = (), ro_binds: tuple[Path, ...] = ()) -> Sandbox:
        return Sandbox(self.tree, binds=binds, ro_binds=ro_binds)


def tools_key() -> str:
    return key_of("tools", TOOLS_SUITE, TOOLS_MIRROR, sorted(TOOLS_PACKAGES))


def ensure_tools(runner: Runner, reporter: Reporter) -> ToolsTree:
    key = tools_key()

    def make(tmp: Path) -> None:
        reporter.emit(Event(EventKind.INFO, "tools",
                            f"creating tools tree ({TOOLS_SUITE}) in {tmp}"))
        runner.run(
            [runner.which("mmdebstrap"), "--variant=minbase", "--mode=root",
             f"--include={','.join(TOOLS_PACKAGES)}", *DPKG_EXCLUDES,
             TOOLS_SUITE, tmp / "tree", TOOLS_MIRROR],
            env={"SOURCE_DATE_EPOCH": "0"},
            timeout=1800,
        )

    path, _ = cached_dir("tools", key, make)
    return ToolsTree(path / "tree", key)


def cached_tools() -> ToolsTree | None:
    path = cache_root() / "tools" / tools_key()
    return ToolsTree(path / "tree", tools_key()) if (path / ".complete").exists() else None
