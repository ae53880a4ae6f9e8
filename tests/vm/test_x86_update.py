"""Signed A/B updates with real systemd-sysupdate, proven on the device: a v1 device refuses
every bad release (wrong hash, foreign signature, truncated image, older version) without
touching its slots or ESP, then installs v2 into slot B, boots it, and keeps v1 as fallback.
The device's story is update_story.py (it goes on to the rollback scenario).
(dm-verity catching a byte flipped in /usr: test_x86_boot.py.)"""

from __future__ import annotations

from typing import Any

import pytest
from vmlib import TRANSFER_TIMEOUT


@pytest.fixture(scope="module")
def update_run(update_and_rollback: dict[str, dict[str, Any]]) -> dict[str, object]:
    return update_and_rollback["update"]


@pytest.mark.parametrize("attempt", ["bad-hash", "foreign-key", "truncated", "older"])
def test_bad_release_is_refused_and_changes_nothing(update_run: dict[str, object],
                                                    attempt: str) -> None:
    result = update_run["attempts"][attempt]  # type: ignore[index]
    assert result["after"] == update_run["before"], result["output"]
    assert result["after"]["version"] == "1.0"
    assert "usr_2.0" not in result["after"]["labels"]
    if attempt != "older":
        assert result["status"] != 0, result["output"]
    # Refused for what was wrong with the release, not because a download stalled.
    assert TRANSFER_TIMEOUT not in result["output"].split("--- try again ---")[-1]


def test_before_update_one_slot_pair_is_empty(update_run: dict[str, object]) -> None:
    before = update_run["before"]
    assert before["labels"] == ["esp", "usr_1.0", "verity_1.0", "_empty", "_empty", "var"]
    assert before["esp"] == ["hello_1.0.efi"]


def test_update_installs_v2_into_slot_b(update_run: dict[str, object]) -> None:
    update = update_run["update"]
    assert update["status"] == 0, update["output"]
    after = update["after"]
    assert after["labels"] == ["esp", "usr_1.0", "verity_1.0", "usr_2.0", "verity_2.0", "var"]
    assert sorted(after["esp"]) == ["hello_1.0.efi", "hello_2.0+3-0.efi"]
    assert after["version"] == "1.0"  # still running v1 until the reboot


def test_device_runs_v2_after_reboot_with_v1_as_fallback(update_run: dict[str, object]) -> None:
    assert update_run["banner2"] == ("hello", "2.0")
    assert update_run["var2"]["token"] == update_run["token"]
    after = update_run["after2"]
    assert after["version"] == "2.0"
    assert after["labels"] == ["esp", "usr_1.0", "verity_1.0", "usr_2.0", "verity_2.0", "var"]
    # Blessed on its first good boot; v1 stays installed as the fallback.
    assert sorted(update_run["esp2"]) == ["hello_1.0.efi", "hello_2.0.efi"]
    assert "1.0" in str(update_run["list_v2"]) and "2.0" in str(update_run["list_v2"])


def test_the_signed_v2_installed_by_sysupdate_boots_under_secure_boot(
        update_run: dict[str, object]) -> None:
    assert update_run["banner2"] == ("hello", "2.0")
    assert update_run["secureboot2"] == "01"
    console = str(update_run["console2"])
    assert "EFI stub: UEFI Secure Boot is enabled." in console
    assert "systemd.verity_usr_data=/dev/disk/by-partlabel/usr_2.0" in console
    assert "Loaded X.509 cert 'Hello appliance Secure Boot db" in console


SEALED = {"encrypted": True, "unlock": "tpm2", "pcrs": [7], "pcr_key_pcrs": [11],
          "pcr_key_is_uki_key": True, "recovery_key": True}


def test_v2_installed_by_sysupdate_opens_the_var_v1_sealed(update_run: dict[str, Any]) -> None:
    """v1's first boot sealed /var to the TPM; v2's UKI measures differently, and the PCR
    key's signature in it is what opens /var, with no prompt and the data intact."""
    v1, v2 = update_run["var1"], update_run["var2"]
    assert v1["status"] == SEALED and v1["source"] == "/dev/mapper/var"
    assert v2 == v1 and v2["token"] == update_run["token"]
    console = str(update_run["console2"])
    assert "/var is locked" not in console and "Please enter passphrase" not in console
    assert "appsdk: /var recovery key" not in console  # shown on the first boot only


def test_blessed_v2_runs_healthy(update_run: dict[str, object]) -> None:
    # That it stays the default on later boots: test_x86_rollback.py's fallback boot.
    status = update_run["status2"]
    assert isinstance(status, dict)
    assert status["running"] == "2.0" and status["blessed"] is True
    assert status["failed"] == [] and status["installed"] == ["1.0", "2.0"]
    assert status["health"] == {"appsdk-health-hello-http.service": "active"}


def test_damaged_new_slot_is_found_and_installed_again(update_run: dict[str, object]) -> None:
    repair = update_run["repair"]
    assert repair["status"] == 0, repair["output"]
    assert "usr_2.0 does not match the root hash its UKI was signed with" in repair["output"]
    assert "Successfully installed update '2.0'" in repair["output"]
    after = repair["after"]
    assert after["labels"] == ["esp", "usr_1.0", "verity_1.0", "usr_2.0", "verity_2.0", "var"]
    assert sorted(after["esp"]) == ["hello_1.0.efi", "hello_2.0+3-0.efi"]
    # ...and the v2 boot after it (above) came up on dm-verity over the rewritten slot.


def test_good_fallback_slot_is_checked_and_left_alone(update_run: dict[str, object]) -> None:
    recheck = update_run["recheck"]
    assert recheck["status"] == 0, recheck["output"]
    assert "does not match" not in recheck["output"], recheck["output"]
    assert "No update needed" in recheck["output"], recheck["output"]
    assert recheck["after"]["labels"] == ["esp", "usr_1.0", "verity_1.0", "usr_2.0",
                                          "verity_2.0", "var"]
    assert sorted(recheck["after"]["esp"]) == ["hello_1.0.efi", "hello_2.0.efi"]
