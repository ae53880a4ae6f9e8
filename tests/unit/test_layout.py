"""The on-device contract as generated files: repart.d, command line, units."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from appsdk.contract.layout import (
    ESP_SECTOR,
    FAT32_MIN_CLUSTERS,
    device_repart,
    esp_cluster_sectors,
    image_repart,
    kernel_cmdline,
    layout_for,
)
from appsdk.contract.ondevice import (
    IDENTITY_UNIT,
    MACHINE_ID_UNIT,
    etc_files,
    os_release,
    sysupdate_transfers,
    usr_files,
)
from appsdk.spec.appliance import load_appliance
from appsdk.spec.boards import load_board

REPO = Path(__file__).resolve().parents[2]


def hello():  # type: ignore[no-untyped-def]
    return load_appliance(REPO / "examples/hello"), load_board("x86-uefi")


def parse(text: str) -> dict[str, str]:
    lines = text.splitlines()
    assert lines[0] == "[Partition]"
    return dict(line.split("=", 1) for line in lines[1:])


def test_device_repart_pins_slot_sizes_and_grows_var() -> None:
    app, board = hello()
    files = {name: parse(text) for name, text in device_repart(layout_for(app, board)).items()}
    assert list(files) == ["10-esp.conf", "20-usr-a.conf", "21-usr-b.conf", "30-verity-a.conf",
                           "31-verity-b.conf", "50-var.conf"]
    for name in ("30-verity-a.conf", "31-verity-b.conf"):
        assert files[name]["Type"] == "usr-x86-64-verity"
        assert files[name]["SizeMinBytes"] == files[name]["SizeMaxBytes"] == str(16 * 1024**2)
    assert files["31-verity-b.conf"]["Label"] == "_empty"
    gib = str(1024**3)
    for name in ("20-usr-a.conf", "21-usr-b.conf"):
        assert files[name]["Type"] == "usr-x86-64"
        assert files[name]["SizeMinBytes"] == files[name]["SizeMaxBytes"] == gib
    assert files["21-usr-b.conf"]["Label"] == "_empty"
    assert "Label" not in files["20-usr-a.conf"]  # A keeps whatever version label it has
    var = files["50-var.conf"]
    assert var == {"Type": "var", "Label": "var", "Format": "ext4",
                   "SizeMinBytes": str(2 * 1024**3), "FactoryReset": "yes"}


def test_image_repart_holds_esp_and_slot_a_only() -> None:
    app, board = hello()
    files = image_repart(layout_for(app, board), "/w/esp", "/w/hello.usr", "/w/hello.verity")
    assert parse(files["10-esp.conf"]) == {
        "Type": "esp", "Format": "vfat", "CopyFiles": "/w/esp:/",
        "SizeMinBytes": str(256 * 1024**2), "SizeMaxBytes": str(256 * 1024**2)}
    usr = parse(files["20-usr-a.conf"])
    assert usr["Label"] == "usr_1.0" and usr["CopyBlocks"] == "/w/hello.usr"
    verity = parse(files["30-verity-a.conf"])
    assert verity["Label"] == "verity_1.0" and verity["Type"] == "usr-x86-64-verity"
    assert len(files) == 3


MiB = 1024**2
ESP_SIZES = st.integers(64 * MiB, 4 * 1024 * MiB)  # the esp: range appliance.yaml accepts


@given(ESP_SIZES)
def test_esp_clusters_are_the_largest_fat32_allows(size: int) -> None:
    sectors = esp_cluster_sectors(size)
    assert sectors in (1, 2, 4, 8)  # at most 4 KiB
    assert size // (ESP_SECTOR * sectors) > FAT32_MIN_CLUSTERS
    if sectors < 8:  # one size up would leave too few clusters for FAT32
        assert size // (ESP_SECTOR * sectors * 2) < FAT32_MIN_CLUSTERS * 103 // 100


@pytest.mark.skipif(shutil.which("mkfs.vfat") is None, reason="dosfstools")
@pytest.mark.parametrize("mib", [64, 128, 131, 132, 256, 260, 263, 264, 512])
def test_mkfs_makes_a_clean_fat32_with_that_cluster_size(mib: int, tmp_path: Path) -> None:
    """mkfs.fat itself warns when FAT32 gets fewer clusters than it must have (readers would
    take it for FAT16); fsck.fat reads back the cluster size asked for."""
    image = tmp_path / "esp.img"
    with image.open("wb") as f:
        f.truncate(mib * MiB)
    sectors = esp_cluster_sectors(mib * MiB)
    made = subprocess.run(["mkfs.vfat", "-F", "32", "-S", "512", "-s", str(sectors), str(image)],
                          capture_output=True, text=True, check=True)
    assert "WARNING" not in made.stdout + made.stderr
    checked = subprocess.run(["fsck.vfat", "-n", "-v", str(image)], capture_output=True,
                             text=True)
    assert checked.returncode == 0, checked.stdout
    assert f"{sectors * 512} bytes per cluster" in checked.stdout
    assert "less than the required minimum" not in checked.stdout


def test_kernel_cmdline() -> None:
    app, board = hello()
    assert kernel_cmdline(app, board, "ab" * 32) == (
        "root=tmpfs", "rootflags=mode=0755", f"usrhash={'ab' * 32}",
        "systemd.verity_usr_data=/dev/disk/by-partlabel/usr_1.0",
        "systemd.verity_usr_hash=/dev/disk/by-partlabel/verity_1.0",
        "mount.usr=/dev/mapper/usr", "mount.usrfstype=erofs", "mount.usrflags=ro",
        "console=ttyS0,115200", "systemd.firstboot=off")


def test_os_release_carries_image_identity() -> None:
    app, _ = hello()
    text = os_release('PRETTY_NAME="Debian"\nID=debian\nIMAGE_VERSION=old\n', app)
    assert "IMAGE_ID=hello\n" in text and "IMAGE_VERSION=1.0\n" in text
    assert "IMAGE_VERSION=old" not in text and "ID=debian" in text


def test_files_for_device() -> None:
    app, board = hello()
    usr = usr_files(app, layout_for(app, board))
    assert "lib/repart.d/21-usr-b.conf" in usr
    assert usr["lib/appsdk/banner"].mode == 0o755
    etc = etc_files(app)
    assert "PARTLABEL=var /var ext4" in etc["fstab"].content
    assert etc["machine-id"].content == "uninitialized\n"
    assert "systemd/system/serial-getty@.service.d/autologin.conf" in etc


def test_esp_is_read_only_and_checked() -> None:
    app, _ = hello()
    lines = etc_files(app)["fstab"].content.splitlines()
    esp = next(line for line in lines if " /efi " in line).split()
    assert esp[3].split(",")[0] == "ro" and esp[5] == "2"  # fsck.vfat -a after a power cut
    var = next(line for line in lines if " /var " in line).split()
    assert "nofail" not in var[3]  # a boot without /var stops (local-fs.target fails)


def test_esp_writers_get_it_read_write_for_their_run_only() -> None:
    app, board = hello()
    usr = usr_files(app, layout_for(app, board))
    assert usr["bin/appsdk-update"].mode == 0o755
    assert usr["lib/appsdk/appsdk-esp"].mode == 0o755
    sysupdate = usr["lib/systemd/system/systemd-sysupdate.service.d/appsdk-esp.conf"].content
    assert "ExecStartPre=+/usr/lib/appsdk/appsdk-esp rw %n" in sysupdate
    assert "ExecStopPost=+/usr/lib/appsdk/appsdk-esp ro %n" in sysupdate  # failure counts
    bless = usr["lib/systemd/system/systemd-bless-boot.service.d/appsdk-esp.conf"].content
    assert "ExecStartPost=-+/usr/lib/appsdk/appsdk-esp ro %n" in bless  # RemainAfterExit
    seed = usr["lib/systemd/system/systemd-boot-random-seed.service.d/appsdk-esp.conf"]
    assert "ConditionPathIsReadWrite=/efi" in seed.content


def test_units_refuse_a_missing_var() -> None:
    for unit in (MACHINE_ID_UNIT, IDENTITY_UNIT):
        assert "AssertPathIsMountPoint=/var" in unit
        assert "OnFailure=emergency.target" in unit
    assert "ConditionPathIsDirectory" not in IDENTITY_UNIT  # runs every boot


def test_transfer_source_doubles_percent() -> None:
    app, board = hello()
    files = sysupdate_transfers(app, layout_for(app, board), "https://u.example/a%20b")
    assert "Path=https://u.example/a%%20b/\n" in files["50-usr.transfer"]
