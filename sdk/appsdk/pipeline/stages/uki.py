"""Stage UKI: systemd-stub + kernel + initrd + command line + os-release, by ukify; with a
PCR key, also the signed PCR 11 policy (.pcrsig) and its public key (.pcrpkey)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

from appsdk.core.errors import BuildError, CommandFailed
from appsdk.core.runner import Runner
from appsdk.image import pcrsig
from appsdk.pipeline.tools import ToolsTree
from appsdk.spec.boards import Board
from appsdk.trust import pkcs11
from appsdk.trust.secureboot import PCR, SecureBootKeys


@dataclass(frozen=True)
class Uki:
    path: Path
    cmdline: str
    pcr_phases: int = 0  # boot phases with a signed PCR 11 policy (0: none)


def pcr_args(keys: SecureBootKeys, signer: Path | pkcs11.Pkcs11Key,
             public_key: Path) -> list[str]:
    """ukify's options to sign the PCR 11 policy of every boot phase (its default set:
    enter-initrd, then leave-initrd, sysinit, ready) with the key set's PCR key `signer`."""
    common = [f"--pcrpkey={public_key}", f"--pcr-banks={pcrsig.BANK}"]
    if isinstance(signer, pkcs11.Pkcs11Key):
        # systemd-measure signs through OpenSSL's pkcs11 provider and reads the public key
        # from the certificate; ukify allows a provider only with systemd-sbsign as signtool.
        return [*common, "--signtool=systemd-sbsign", "--signing-provider=pkcs11",
                f"--pcr-private-key={signer.uri}", f"--pcr-public-key={keys.cert(PCR)}"]
    return [*common, f"--pcr-private-key={signer}", f"--pcr-public-key={public_key}"]


def build_uki(board: Board, tree: Path, kernel: Path, kernel_version: str, initrd: Path,
              cmdline: tuple[str, ...], output: Path, tools: ToolsTree,
              runner: Runner, pcr_keys: SecureBootKeys | None = None) -> Uki:
    stub = tree / f"usr/lib/systemd/boot/efi/linux{board.efi_arch}.efi.stub"
    text = " ".join(cmdline)
    output.unlink(missing_ok=True)
    with contextlib.ExitStack() as stack:
        extra: list[str] = []
        provider = pkcs11.ProviderEnv((), (), {})
        ro: tuple[Path, ...] = ()
        if pcr_keys is not None:
            signer = pcr_keys.signer(PCR)
            if isinstance(signer, pkcs11.Pkcs11Key):
                provider = stack.enter_context(pkcs11.provider_env(signer))
            public = output.parent / f".{output.name}.pcrpkey.pem"
            public.write_text(pcr_keys.pcr_public_key())
            stack.callback(public.unlink, missing_ok=True)
            extra = pcr_args(pcr_keys, signer, public)
            ro = (pcr_keys.directory, *provider.ro)
        box = tools.sandbox(binds=(output.parent, *provider.rw),
                            ro_binds=tuple(dict.fromkeys((tree, kernel.parent, initrd.parent,
                                                          *ro))))
        try:
            box.run(runner, [
                "ukify", "build",
                f"--linux={kernel}", f"--initrd={initrd}", f"--cmdline={text}",
                f"--os-release=@{tree / 'usr/lib/os-release'}", f"--uname={kernel_version}",
                f"--stub={stub}", f"--efi-arch={board.efi_arch}", *extra,
                f"--output={output}",
            ], env={"SOURCE_DATE_EPOCH": "0", **provider.env}, timeout=600)
        except CommandFailed as exc:
            output.unlink(missing_ok=True)
            if pcr_keys is None:
                raise
            raise BuildError(f"ukify could not sign the PCR policy with {pcr_keys.signer(PCR)}:"
                             f"\n{exc.stderr.strip()[-2000:]}",
                             hint="check the key set's pcr.key/pcr.uri and pcr.crt (`appsdk "
                             "keys secure-boot` made them)") from None
    phases = 0
    if pcr_keys is not None:
        try:
            phases = len(pcrsig.verify(output, pcr_keys, tools.sandbox(), runner))
        except BaseException:
            output.unlink(missing_ok=True)
            raise
    return Uki(path=output, cmdline=text, pcr_phases=phases)
