"""Flash-target safety rules, on BlockDevice records (no devices touched)."""

from __future__ import annotations

import pytest

from appsdk.core.errors import DeviceRefused
from appsdk.deliver.blockdev import BlockDevice, refuse_if_unsafe
from appsdk.deliver.provision_usb import DeviceReport, rpiboot_argv

GB = 10**9


def disk(**kw: object) -> BlockDevice:
    base: dict[str, object] = dict(path="/dev/sdb", name="sdb", devnum=(8, 16), size=32 * GB,
                                   vendor="SanDisk", model="Ultra", serial="123", bus="usb",
                                   removable=True)
    base.update(kw)
    return BlockDevice(**base)  # type: ignore[arg-type]


def test_usb_stick_and_sd_card_are_candidates() -> None:
    assert disk().refusals() == []
    assert disk(name="mmcblk0", bus="mmc", removable=False).refusals() == []


def test_internal_disk_needs_allow_fixed() -> None:
    sata = disk(bus="ata", removable=False)
    [refusal] = sata.refusals()
    assert "not removable (bus ata)" in refusal.reason and refusal.override == "allow_fixed"
    assert sata.refusals(allow_fixed=True) == []


def test_system_mounted_readonly_and_empty_are_never_overridable() -> None:
    for dev, words in [
        (disk(system=("/ (on /dev/sdb2)",), mounts=("/dev/sdb2 on /",)), "running system"),
        (disk(mounts=("/dev/sdb1 on /media/card",)), "umount /dev/sdb1"),
        (disk(readonly=True), "write-protect"),
        (disk(size=0), "no medium"),
        (disk(holders=("dm-0",)), "dm-0"),
    ]:
        with pytest.raises(DeviceRefused) as err:
            refuse_if_unsafe(dev, allow_fixed=True, min_size=1)
        assert words in str(err.value) and "Nothing was written" in str(err.value)
        assert err.value.hint is None  # no flag makes these safe


def test_too_small_names_both_sizes() -> None:
    with pytest.raises(DeviceRefused, match=r"too small: 2000000000 bytes.*4600000000"):
        refuse_if_unsafe(disk(size=2 * GB), False, 4_600_000_000)


def test_identity_names_what_the_user_sees_on_the_label() -> None:
    text = disk().identity
    assert "/dev/sdb" in text and "SanDisk Ultra" in text and "serial 123" in text
    assert "29.8 GiB" in text


def test_rpiboot_argv() -> None:
    assert rpiboot_argv(None) == ["rpiboot"]
    from pathlib import Path

    assert rpiboot_argv(Path("/opt/usbboot/mass-storage-gadget64")) == [
        "rpiboot", "-d", "/opt/usbboot/mass-storage-gadget64"]


def test_report_lines() -> None:
    ok = DeviceReport("/dev/sdb", "123", "SanDisk Ultra", True, 12.34, sha256="ab" * 32)
    assert ok.line().startswith("OK     /dev/sdb serial=123 SanDisk Ultra  12.3s  sha256=abab")
    bad = DeviceReport("/dev/sdc", "", "", False, 1.0, error="verification FAILED")
    assert bad.as_dict()["result"] == "failed" and "FAILED /dev/sdc serial=?" in bad.line()
