"""Stage sign: every EFI binary the device runs (systemd-boot, the UKI) signed with the
appliance's Secure Boot db key, and each signature checked by a second implementation
before anything is published."""

from __future__ import annotations

import contextlib
import datetime as dt
from pathlib import Path

from appsdk.core.errors import BuildError, CommandFailed
from appsdk.core.runner import Runner
from appsdk.pipeline.tools import ToolsTree
from appsdk.trust import pkcs11
from appsdk.trust.secureboot import SecureBootKeys

SBSIGN = "/usr/lib/systemd/systemd-sbsign"  # systemd 257; takes OpenSSL provider keys too


def sign_efi(binary: Path, output: Path, keys: SecureBootKeys, epoch: int, tools: ToolsTree,
             runner: Runner) -> Path:
    """`binary` signed into `output` (Authenticode, db key). The signature's signing time
    is the build's SOURCE_DATE_EPOCH (through libfaketime: neither systemd-sbsign nor
    sbsign take one), so the same inputs give the same bytes."""
    output.unlink(missing_ok=True)
    when = dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
    signer = keys.db_signer()
    with contextlib.ExitStack() as stack:
        if isinstance(signer, pkcs11.Pkcs11Key):
            # In the HSM: systemd-sbsign asks OpenSSL's pkcs11 provider to sign; no key file.
            provider = stack.enter_context(pkcs11.provider_env(signer))
            key_args = ["--private-key-source=provider:pkcs11", f"--private-key={signer.uri}"]
        else:
            provider = pkcs11.ProviderEnv((), (), {})
            key_args = [f"--private-key={signer}"]
        sandbox = tools.sandbox(
            binds=(output.parent, *provider.rw),
            ro_binds=tuple(dict.fromkeys((binary.parent, keys.directory, *provider.ro))))
        try:
            sandbox.run(runner, ["faketime", "-f", when, SBSIGN, "sign", *key_args,
                                 f"--certificate={keys.db_cert}", f"--output={output}",
                                 str(binary)], env={"TZ": "UTC", **provider.env}, timeout=300)
        except CommandFailed as exc:
            output.unlink(missing_ok=True)
            raise BuildError(f"cannot sign {binary.name} with the Secure Boot db key "
                             f"{signer}:\n{exc.stderr.strip()}",
                             hint="check the key set (`appsdk keys secure-boot` made it)"
                             + ("; and that the token is present, its PIN right and "
                                f"${pkcs11.BIND_ENV} lists what its module needs"
                                if isinstance(signer, pkcs11.Pkcs11Key) else "")) from None
    verify_efi(output, keys, tools, runner)
    return output


def verify_efi(binary: Path, keys: SecureBootKeys, tools: ToolsTree, runner: Runner) -> None:
    """sbverify (sbsigntool, not systemd's code) accepts `binary` for the db certificate."""
    result = tools.sandbox(ro_binds=tuple(dict.fromkeys((binary.parent, keys.directory)))).run(
        runner, ["sbverify", "--cert", str(keys.db_cert), str(binary)], check=False,
        timeout=120)
    if result.returncode != 0:
        raise BuildError(f"the signature on {binary.name} does not verify against "
                         f"{keys.db_cert}:\n{(result.stderr or result.stdout).strip()}")
