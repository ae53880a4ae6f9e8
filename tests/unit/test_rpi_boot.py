"""Raspberry Pi ESP contents and config.txt per board and firmware chain (exact sets)."""

from __future__ import annotations

from pathlib import Path

import pytest

from appsdk.contract.esprecord import FIRMWARE_RECORD
from appsdk.core.errors import BuildError, ConfigError
from appsdk.pipeline.rpi_boot import chain_files, components, config_txt, esp_additions, resolve
from appsdk.pipeline.stages.esp import build_esp_tree
from appsdk.pipeline.stages.rootfs import device_tree_dir
from appsdk.spec.boards import load_board
from appsdk.spec.firmware import load_manifests

RPI4_DTBS = ["bcm2711-rpi-4-b.dtb", "bcm2711-rpi-400.dtb", "bcm2711-rpi-cm4.dtb"]
RPI5_DTBS = ["bcm2712-d-rpi-5-b.dtb", "bcm2712-rpi-5-b.dtb"]

EXPECTED = {
    ("rpi4", "rpi+uboot"): (
        sorted([*RPI4_DTBS, "fixup4.dat", "start4.elf", "u-boot.bin"]),
        ["arm_64bit=1", "enable_uart=1", "uart_2ndstage=1", "disable_overscan=1",
         "kernel=u-boot.bin", "kernel_watchdog_timeout=15"]),
    ("rpi4", "rpi+edk2"): (
        sorted([*RPI4_DTBS, "RPI_EFI.fd", "fixup4.dat", "start4.elf",
                "overlays/miniuart-bt.dtbo", "overlays/upstream-pi4.dtbo"]),
        ["arm_64bit=1", "enable_uart=1", "uart_2ndstage=1", "disable_overscan=1",
         "armstub=RPI_EFI.fd", "enable_gic=1", "disable_commandline_tags=1",
         "device_tree_address=0x3e0000", "device_tree_end=0x400000",
         "dtoverlay=miniuart-bt", "dtoverlay=upstream-pi4", "kernel_watchdog_timeout=15"]),
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
    # DTB on the ESP comes from the kernel package (EDK2: from pftf's tested set).
    assert all(f.kind in ("dtb", "edk2-rpi4") for f in chain_files(b, chain)
               if f.esp_path.endswith(".dtb"))


def test_uboot_chains_use_the_pinned_uboot_and_firmware() -> None:
    manifests = load_manifests()
    for board in ("rpi4", "rpi5"):
        for name in components(load_board(board), "rpi+uboot"):
            assert name in manifests, f"{board} needs {name}, which is not pinned"


def test_chain_the_board_does_not_offer_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"rpi5 has no firmware chain 'rpi\+edk2'"):
        chain_files(load_board("rpi5"), "rpi+edk2")


def fake_inputs(tmp: Path, board: str, chain: str) -> tuple[dict[str, Path], Path, Path]:
    """Unpacked components (every pinned file, content = its name), a kernel dtb directory
    and an OS tree with systemd-boot: what esp_additions and build_esp_tree read."""
    manifests = load_manifests()
    b = load_board(board)
    unpacked = {}
    for name in components(b, chain):
        unpacked[name] = tmp / "fw" / name
        for file, _ in manifests[name].files:
            (unpacked[name] / file).parent.mkdir(parents=True, exist_ok=True)
            (unpacked[name] / file).write_bytes(file.encode())
    tree = tmp / "tree"
    dtbs = device_tree_dir(tree, "6.12.0-test-arm64")
    for f in chain_files(b, chain):
        if f.kind == "dtb":
            (dtbs / f.path).parent.mkdir(parents=True, exist_ok=True)
            (dtbs / f.path).write_bytes(f.path.encode())
    efi = tree / "usr/lib/systemd/boot/efi"
    efi.mkdir(parents=True)
    (efi / f"systemd-boot{b.efi_arch}.efi").write_bytes(b"sd-boot")
    return unpacked, dtbs, tree


@pytest.mark.parametrize("board, chain", sorted(EXPECTED))
def test_exact_esp_tree(board: str, chain: str, tmp_path: Path) -> None:
    b = load_board(board)
    unpacked, dtbs, tree = fake_inputs(tmp_path, board, chain)
    uki = tmp_path / "hello.efi"
    uki.write_bytes(b"uki")
    additions = esp_additions(b, chain, unpacked, dtbs, load_manifests())
    esp = build_esp_tree(b, tree, uki, "hello", "1.0", tmp_path / "esp", 0, additions)
    assert list(esp.files) == sorted([
        *EXPECTED[(board, chain)][0], "config.txt", FIRMWARE_RECORD,
        "EFI/BOOT/BOOTAA64.EFI", "EFI/systemd/systemd-bootaa64.efi", "EFI/Linux/hello_1.0.efi",
        "loader/loader.conf"])
    root = esp.root
    assert (root / "config.txt").read_text() == config_txt(b, chain)
    assert (root / "EFI/BOOT/BOOTAA64.EFI").read_bytes() == b"sd-boot"
    record = (root / FIRMWARE_RECORD).read_text().splitlines()
    manifests = load_manifests()
    assert record[1:] == [f"{n} {manifests[n].version} {manifests[n].sha256}"
                          for n in components(b, chain)]
    if chain == "rpi+uboot":
        assert (root / "u-boot.bin").read_bytes() == b"u-boot.bin"
    else:
        assert (root / "RPI_EFI.fd").read_bytes() == b"RPI_EFI.fd"


def test_x86_esp_has_no_firmware_files(tmp_path: Path) -> None:
    assert esp_additions(load_board("x86-uefi"), "uefi", {}, tmp_path, load_manifests()) == {}


def test_missing_inputs_are_named(tmp_path: Path) -> None:
    board = load_board("rpi4")
    unpacked, dtbs, _ = fake_inputs(tmp_path, "rpi4", "rpi+uboot")
    # A DTB missing from the kernel package is a build error naming it.
    (dtbs / "broadcom/bcm2711-rpi-cm4-io.dtb").unlink()
    with pytest.raises(BuildError, match=r"bcm2711-rpi-cm4\.dtb: .*bcm2711-rpi-cm4-io\.dtb"):
        resolve(board, "rpi+uboot", unpacked, dtbs)
    # So is a component nobody fetched.
    del unpacked["u-boot-rpi"]
    (dtbs / "broadcom/bcm2711-rpi-cm4-io.dtb").write_bytes(b"x")
    with pytest.raises(BuildError, match=r"'u-boot-rpi' \(for u-boot.bin\)"):
        resolve(board, "rpi+uboot", unpacked, dtbs)
