"""Raspberry Pi ESP contents and config.txt per board and firmware chain (exact sets)."""

from __future__ import annotations

from pathlib import Path

import pytest

from appsdk.boards import load_board
from appsdk.errors import BuildError, ConfigError
from appsdk.firmware import load_manifests
from appsdk.inspect import FIRMWARE_RECORD
from appsdk.rpi_boot import chain_files, components, config_txt, resolve, write_rpi_files

RPI4_DTBS = ["bcm2711-rpi-4-b.dtb", "bcm2711-rpi-400.dtb", "bcm2711-rpi-cm4.dtb"]
RPI5_DTBS = ["bcm2712-d-rpi-5-b.dtb", "bcm2712-rpi-5-b.dtb", "bcm2712-rpi-cm5-cm5io.dtb"]

EXPECTED = {
    ("rpi4", "rpi+uboot"): (
        sorted([*RPI4_DTBS, "fixup4.dat", "start4.elf", "u-boot.bin"]),
        ["arm_64bit=1", "enable_uart=1", "uart_2ndstage=1", "disable_overscan=1",
         "kernel=u-boot.bin", "kernel_watchdog_timeout=15"]),
    ("rpi4", "rpi+edk2"): (
        sorted([*RPI4_DTBS, "RPI_EFI.fd", "fixup4.dat", "start4.elf"]),
        ["arm_64bit=1", "enable_uart=1", "uart_2ndstage=1", "disable_overscan=1",
         "armstub=RPI_EFI.fd", "enable_gic=1", "disable_commandline_tags=1",
         "device_tree_address=0x1f0000", "device_tree_end=0x200000",
         "dtoverlay=miniuart-bt", "kernel_watchdog_timeout=15"]),
    ("rpi5", "rpi+uboot"): (
        sorted([*RPI5_DTBS, "u-boot.bin"]),  # Pi 5 firmware lives in EEPROM: no start*.elf
        ["arm_64bit=1", "enable_uart=1", "uart_2ndstage=1", "kernel=u-boot.bin",
         "kernel_watchdog_timeout=15"]),
}


@pytest.mark.parametrize("board, chain", sorted(EXPECTED))
def test_exact_esp_files_and_config_txt(board: str, chain: str) -> None:
    files, lines = EXPECTED[(board, chain)]
    b = load_board(board)
    assert [f.esp_path for f in chain_files(b, chain)] == files
    text = config_txt(b, chain)
    assert text.startswith(f"# appsdk: {board}, firmware chain {chain}.")
    assert text.splitlines()[1:] == lines
    # The firmware DT is passed through: no chain puts a .dtb into the UKI, and every
    # DTB on the ESP comes from the kernel package.
    assert all(f.kind == "dtb" for f in chain_files(b, chain) if f.esp_path.endswith(".dtb"))


def test_uboot_chains_use_the_pinned_uboot_and_firmware() -> None:
    manifests = load_manifests()
    for board in ("rpi4", "rpi5"):
        for name in components(load_board(board), "rpi+uboot"):
            assert name in manifests, f"{board} needs {name}, which is not pinned"


def test_chain_the_board_does_not_offer_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"rpi5 has no firmware chain 'rpi\+edk2'"):
        chain_files(load_board("rpi5"), "rpi+edk2")


def test_resolve_and_write(tmp_path: Path) -> None:
    board = load_board("rpi4")
    fw = {"raspi-firmware": tmp_path / "fw", "u-boot-rpi": tmp_path / "ub"}
    for d, names in ((fw["raspi-firmware"], ["start4.elf", "fixup4.dat"]),
                     (fw["u-boot-rpi"], ["u-boot.bin"])):
        d.mkdir()
        for n in names:
            (d / n).write_bytes(n.encode())
    dtbs = tmp_path / "dtbs/broadcom"
    dtbs.mkdir(parents=True)
    for n in RPI4_DTBS:
        (dtbs / n).write_bytes(n.encode())
    files = resolve(board, "rpi+uboot", fw, tmp_path / "dtbs")
    esp = tmp_path / "esp"
    written = write_rpi_files(board, "rpi+uboot", files, load_manifests(), esp)
    assert written == sorted([*EXPECTED[("rpi4", "rpi+uboot")][0], "config.txt",
                              FIRMWARE_RECORD])
    assert (esp / "u-boot.bin").read_bytes() == b"u-boot.bin"
    record = (esp / FIRMWARE_RECORD).read_text().splitlines()
    assert record[1].startswith("raspi-firmware 1.20240424+ds-6 f95a3d3c")
    assert record[2].startswith("u-boot-rpi 2026.10~rc5-1 44c33795")
    # A DTB missing from the kernel package is a build error naming it.
    (dtbs / "bcm2711-rpi-cm4.dtb").unlink()
    with pytest.raises(BuildError, match=r"bcm2711-rpi-cm4\.dtb"):
        resolve(board, "rpi+uboot", fw, tmp_path / "dtbs")
    # EDK2 has no pinned manifest yet: resolving that chain says so.
    with pytest.raises(BuildError, match=r"'edk2-rpi4'.*no pinned manifest"):
        resolve(board, "rpi+edk2", fw, tmp_path / "dtbs")
