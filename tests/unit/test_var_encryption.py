"""var.encrypt: tpm2, as the build settles it and as the image carries it: refused without
Secure Boot or a PCR key, refused or plain on a board without a TPM, and (when on) a repart
definition with Encrypt=tpm2, a crypttab, an fstab on the mapping, the sealing options and
the initrd that opens /var."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from appsdk.contract.layout import device_repart, layout_for
from appsdk.contract.ondevice import (
    RECOVERY_SERVICE,
    crypttab,
    etc_files,
    fstab,
    usr_files,
)
from appsdk.core.errors import ConfigError
from appsdk.core.progress import NullReporter
from appsdk.pipeline.inputs import check_var_encryption, var_for_board
from appsdk.pipeline.stages.initrd import dracut_argv
from appsdk.pipeline.stages.rootfs import TPM2_PACKAGES, recipe_for
from appsdk.spec.appliance import Var, load_appliance
from appsdk.spec.boards import load_board
from appsdk.trust.secureboot import SecureBootKeys

ENCRYPTED = "id: x\nversion: '1'\nsecure_boot: true\nvar:\n  encrypt: tpm2\n"


def app_of(tmp_path: Path, text: str = ENCRYPTED):  # type: ignore[no-untyped-def]
    (tmp_path / "appliance.yaml").write_text(text)
    return load_appliance(tmp_path)


def test_default_is_plain(tmp_path: Path) -> None:
    app = app_of(tmp_path, "id: x\nversion: '1'\n")
    assert app.var == Var("none", "refuse")
    layout = layout_for(app, load_board("x86-uefi"))
    assert not layout.var_encrypted
    assert "Encrypt" not in device_repart(layout)["50-var.conf"]
    assert "crypttab" not in etc_files(app)
    assert "PARTLABEL=var /var ext4" in etc_files(app)["fstab"].content
    assert not any("tpm2" in name for name in usr_files(app, layout))


def test_encrypted_var_on_the_device(tmp_path: Path) -> None:
    app = app_of(tmp_path)
    board = load_board("x86-uefi")
    layout = layout_for(app, board)
    assert layout.var_encrypted
    var = device_repart(layout)["50-var.conf"]
    assert "Encrypt=tpm2\n" in var and "Format=ext4\n" in var
    etc = etc_files(app)
    assert etc["crypttab"].content == crypttab()
    assert "var /dev/disk/by-partlabel/var - tpm2-device=auto,headless=true," in crypttab()
    assert etc["fstab"].content == fstab(True)
    assert fstab(True).splitlines()[1].startswith("/dev/mapper/var /var ext4 ")
    usr = usr_files(app, layout)
    dropin = usr["lib/systemd/system/systemd-repart.service.d/appsdk-tpm2.conf"].content
    # Sealed to Secure Boot's state (7) and to PCR 11 as the PCR key signs it.
    assert "--tpm2-pcrs=7 " in dropin and "--tpm2-public-key-pcrs=11" in dropin
    assert "--tpm2-public-key=/run/systemd/tpm2-pcr-public-key.pem" in dropin
    assert dropin.count("ExecStart=") == 2  # the package's line is reset, not added to
    assert f"lib/systemd/system/{RECOVERY_SERVICE}" in usr
    assert usr["lib/appsdk/appsdk-var-recovery"].mode == 0o755
    assert set(TPM2_PACKAGES) <= set(recipe_for(app, board).packages)
    plain = recipe_for(dataclasses.replace(app, var=Var()), board).packages
    assert not set(TPM2_PACKAGES) & set(plain)


def test_initrd_gets_the_tpm_only_when_asked() -> None:
    board = load_board("x86-uefi")
    plain = dracut_argv(board, "6.12", Path("/o"))
    sealed = dracut_argv(board, "6.12", Path("/o"), var_encrypted=True)

    def value(argv: list[str], option: str) -> list[str]:
        return argv[argv.index(option) + 1].split()

    assert "appsdk-var-tpm2" not in value(plain, "--add")
    assert "appsdk-var-tpm2" in value(sealed, "--add")
    assert "dm_crypt" not in value(plain, "--drivers")
    assert {"dm_crypt", "xts", *board.tpm_modules} <= set(value(sealed, "--drivers"))


def test_board_without_tpm_refuses_or_stays_plain(tmp_path: Path) -> None:
    app = app_of(tmp_path)
    pi = load_board("rpi4")
    assert not pi.tpm_modules
    with pytest.raises(ConfigError) as refused:
        var_for_board(app, pi, NullReporter())
    assert refused.value.field == "var.encrypt" and "no TPM" in str(refused.value)
    assert "without_tpm: plain" in (refused.value.hint or "")
    plain = dataclasses.replace(app, var=Var("tpm2", "plain"))
    assert var_for_board(plain, pi, NullReporter()).var.encrypt == "none"
    x86 = load_board("x86-uefi")
    assert var_for_board(app, x86, NullReporter()) is app


def test_needs_secure_boot_and_a_pcr_key(tmp_path: Path) -> None:
    app = app_of(tmp_path)
    with pytest.raises(ConfigError, match="needs secure_boot"):
        check_var_encryption(app, None)
    keys = tmp_path / "keys"
    keys.mkdir()
    with pytest.raises(ConfigError, match="needs a PCR key") as no_pcr:
        check_var_encryption(app, SecureBootKeys(keys))
    assert no_pcr.value.field == "var.encrypt"
    (keys / "pcr.crt").write_text("-----BEGIN CERTIFICATE-----\n")
    check_var_encryption(app, SecureBootKeys(keys))  # a PCR key: settled
    check_var_encryption(dataclasses.replace(app, var=Var()), None)  # plain needs nothing
