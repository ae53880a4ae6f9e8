"""A card that verifies must also boot: flash the real hello image to a loop device with
`appsdk flash` (bmap, direct I/O, read-back) and boot QEMU from that block device."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from vmlib import ovmf_vars, vm_boot

import appsdk
from appsdk.cli import main
from appsdk.deliver.flash import image_digest, open_source

GiB = 1024**3


def test_flashed_device_boots(hello_v1: appsdk.BuildResult, tmp_path: Path, vm_logs: Path,
                              capsys: pytest.CaptureFixture[str]) -> None:
    backing = tmp_path / "card"
    with backing.open("wb") as f:
        f.truncate(6 * GiB)
    dev = subprocess.run(["losetup", "--find", "--show", "--direct-io=on", str(backing)],
                         check=True, capture_output=True, text=True).stdout.strip()
    try:
        # Too small for first boot (slot B and /var): refused before anything is written.
        small = tmp_path / "small"
        with small.open("wb") as f:
            f.truncate(2 * GiB)
        small_dev = subprocess.run(["losetup", "--find", "--show", str(small)], check=True,
                                   capture_output=True, text=True).stdout.strip()
        try:
            assert main(["flash", str(hello_v1.output), small_dev, "--yes",
                         "--allow-fixed"]) == 7
            assert "too small" in capsys.readouterr().err
        finally:
            subprocess.run(["losetup", "-d", small_dev], check=False)

        assert main(["flash", str(hello_v1.output), dev, "--yes", "--allow-fixed",
                     "--board", "x86-uefi", "--json"]) == 0
        out = capsys.readouterr().out
        assert image_digest(open_source(hello_v1.output)) in out

        with vm_boot(Path(dev), ovmf_vars(tmp_path), vm_logs, "flash-boot") as vm:
            sh = vm.shell
            sh.expect(r"appsdk: IMAGE_ID=hello IMAGE_VERSION=1.0 booted", 300)
            sh.login()
            labels = sh.output("lsblk -lno PARTLABEL /dev/vda | sort | tr '\\n' ' '").split()
            sh.send("systemctl poweroff")
            vm.wait_exit(120)
        # First boot on the flashed device made slot B and /var, as on a built disk.
        assert labels == sorted(["esp", "usr_1.0", "verity_1.0", "_empty", "_empty", "var"])
    finally:
        subprocess.run(["losetup", "-d", dev], check=False)
