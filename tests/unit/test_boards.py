from __future__ import annotations

from pathlib import Path

import pytest

from appsdk.core.errors import ConfigError
from appsdk.spec.boards import list_boards, load_board, load_board_file


def test_all_profiles_load() -> None:
    boards = {b.name: b for b in list_boards()}
    assert set(boards) >= {"x86-uefi", "rpi4", "rpi5"}
    x86 = boards["x86-uefi"]
    assert (x86.arch, x86.efi_arch, x86.debian_arch) == ("x86-64", "x64", "amd64")
    assert x86.firmware_chain == "uefi"
    assert x86.emulator is not None and x86.emulator.watchdog == "i6300esb"
    assert boards["rpi4"].firmware_options == ("rpi+uboot", "rpi+edk2")
    assert boards["rpi4"].watchdog is not None and boards["rpi4"].watchdog.max_timeout_s <= 16
    assert boards["rpi5"].efi_arch == "aa64"
    # Emulated stand-ins, first is the default; each names the UART Linux sees there.
    rpi4 = boards["rpi4"]
    assert [e.name for e in rpi4.emulators] == ["virt-uboot", "virt-edk2", "virt-edk2-sb"]
    assert rpi4.emulator_named(None).bios == "u-boot-qemu:qemu_arm64/u-boot.bin"
    assert rpi4.emulator_named("virt-edk2").firmware_code == ("qemu-efi-aarch64:AAVMF_CODE.fd",)
    # Debian's AAVMF_CODE.fd is the build without Secure Boot; the secboot one enforces it.
    assert rpi4.emulator_named("virt-edk2-sb").firmware_code == (
        "qemu-efi-aarch64:AAVMF_CODE.secboot.fd",)
    assert {e.console for e in rpi4.emulators} == {"ttyAMA0"}
    with pytest.raises(ConfigError, match="no emulator 'raspi4b'"):
        rpi4.emulator_named("raspi4b")
    with pytest.raises(ConfigError, match="no emulator profile"):
        boards["rpi5"].emulator_named(None)


def test_unknown_board_lists_known() -> None:
    with pytest.raises(ConfigError) as info:
        load_board("rpi3")
    assert info.value.hint and "x86-uefi" in info.value.hint


def test_bad_profile(tmp_path: Path) -> None:
    path = tmp_path / "myboard.yaml"
    path.write_text("name: myboard\narch: riscv64\nfirmware_chain: uefi\n"
                    "kernel_package: k\nconsole: ttyS0\n")
    with pytest.raises(ConfigError, match=r"myboard.yaml:2: arch: 'riscv64' is not one of"):
        load_board_file(path)


def test_name_must_match_file(tmp_path: Path) -> None:
    path = tmp_path / "a.yaml"
    path.write_text("name: b\narch: arm64\nfirmware_chain: uefi\nkernel_package: k\n"
                    "console: ttyS0\n")
    with pytest.raises(ConfigError, match="must match the file name"):
        load_board_file(path)


def test_rootfs_recipe_takes_the_kernel_the_board_needs() -> None:
    from appsdk.pipeline.stages.rootfs import mmdebstrap_argv, recipe_for
    from appsdk.spec.appliance import load_appliance

    app = load_appliance(Path(__file__).resolve().parents[2] / "examples/hello")
    x86 = recipe_for(app, load_board("x86-uefi"))
    assert "linux-image-amd64" in x86.packages and x86.extra_suites == ()
    rpi4 = recipe_for(app, load_board("rpi4"))
    assert rpi4.arch == "arm64" and "linux-image-arm64" in rpi4.packages
    # The Pi 5's SD and watchdog drivers are only in trixie-backports' kernel.
    rpi5 = recipe_for(app, load_board("rpi5"))
    assert "linux-image-arm64/trixie-backports" in rpi5.packages
    argv = mmdebstrap_argv(rpi5, Path("/t"))
    assert argv[-3:] == ["/t", "http://deb.debian.org/debian",
                         "deb http://deb.debian.org/debian trixie-backports main"]
    assert "--architectures=arm64" in argv
