"""Walking skeleton, proven on a booted device: build examples/hello for x86-uefi, flash it
with `appsdk flash` (bmap, direct I/O, read-back) to a 6 GiB loop device, boot that block
device twice with q35 + OVMF under TCG (appsdk's command line, then the README's plain one)
and read the facts off its console. A card that verifies must also boot: the first boot is
the flashed card's (a boot of its own before: one boot fewer)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from vmlib import REPO, free_port, ovmf_vars, running, vm_boot

import appsdk
from appsdk.cli import main
from appsdk.core.progress import NullReporter
from appsdk.core.runner import Runner
from appsdk.deliver.flash import image_digest, open_source
from appsdk.pipeline.tools import ensure_tools

sys.path.insert(0, str(REPO / "tests/device"))
from loopdev import loop_device  # the block-device tests' own

GiB = 1024**3
SECTOR = 512


def plain_qemu(image: Path, vars_fd: Path, port: int) -> list[str]:
    """The README's 'no appsdk needed' command line, with the serial port on TCP."""
    return [
        "qemu-system-x86_64", "-machine", "q35", "-accel", "tcg", "-cpu", "max", "-m", "2048",
        "-smp", "2",
        "-display", "none",
        "-drive", "if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd",
        "-drive", f"if=pflash,format=raw,unit=1,file={vars_fd}",
        "-drive", f"if=none,id=d0,format=raw,file={image}",
        "-device", "virtio-blk-pci,drive=d0,bootindex=0",
        "-serial", f"tcp:127.0.0.1:{port},server=on,wait=off", "-no-reboot",
    ]


def partitions(shell) -> list[tuple[str, int, int]]:  # type: ignore[no-untyped-def]
    """[(label, start, size)] in 512-byte sectors, in disk order, as the guest sees them."""
    out = shell.output(
        # Labels from udev (blkid reads the GPT); the kernel's PARTNAME is missing for
        # partitions that repart added at runtime.
        "for p in /sys/class/block/vda/vda*; do "
        "echo \"$(lsblk -dno PARTLABEL /dev/${p##*/}) $(cat $p/start) $(cat $p/size)\"; done")
    table = []
    for line in out.splitlines():
        label, start, size = line.split()
        table.append((label, int(start), int(size)))
    return sorted(table, key=lambda row: row[1])


VICTIM = "/share/common-licenses/GPL-3"  # a file in /usr that booting never reads


def erofs_file_offset(usr_image: Path, path: str) -> int:
    """Physical offset of a file's first data extent in the erofs image (dump.erofs)."""
    tools = ensure_tools(Runner(), NullReporter())
    out = tools.sandbox(ro_binds=(usr_image.parent,)).run(
        Runner(), ["dump.erofs", f"--path={path}", "-e", str(usr_image)]).stdout
    for line in out.splitlines():
        parts = line.replace("|", " ").replace(":", " ").split()
        if parts and parts[0] == "0":
            return int(parts[4].rstrip("."))
    raise AssertionError(f"no extent for {path}:\n{out}")


def flip_a_byte_in_usr(disk: Path, usr_image: Path) -> None:
    """What an attacker with the card in hand does: change one byte of a file in /usr."""
    table = json.loads(subprocess.run(["sfdisk", "--json", str(disk)], check=True,
                                      capture_output=True, text=True).stdout)
    usr_part = next(p for p in table["partitiontable"]["partitions"] if p["name"] == "usr_1.0")
    offset = usr_part["start"] * SECTOR + erofs_file_offset(usr_image, VICTIM) + 100
    with disk.open("r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))
        os.fsync(f.fileno())


@pytest.fixture(scope="module")
def card(hello_v1: appsdk.BuildResult, tmp_path_factory: pytest.TempPathFactory
         ) -> Iterator[tuple[str, subprocess.CompletedProcess[str]]]:
    """hello v1 flashed by the CLI to a 6 GiB loop device: (device, the flash's result)."""
    with loop_device(tmp_path_factory.mktemp("card") / "card", 6 * GiB) as dev:
        flashed = subprocess.run(
            [sys.executable, "-m", "appsdk.cli", "flash", str(hello_v1.output), dev, "--yes",
             "--allow-fixed", "--board", "x86-uefi", "--json"],
            capture_output=True, text=True, timeout=900)
        yield dev, flashed


@pytest.fixture(scope="module")
def booted_twice(hello_v1: appsdk.BuildResult,
                 card: tuple[str, subprocess.CompletedProcess[str]],
                 tmp_path_factory: pytest.TempPathFactory,
                 vm_logs: Path) -> dict[str, object]:
    """Boot 1 of the flashed card via appsdk's QEMU command line, boot 2 via the plain
    README command line."""
    dev, flashed = card
    assert flashed.returncode == 0, flashed.stderr[-3000:]
    work = tmp_path_factory.mktemp("x86-boot")
    disk = Path(dev)
    vars_fd = ovmf_vars(work)
    facts: dict[str, object] = {}

    with vm_boot(disk, vars_fd, vm_logs, "x86-boot1") as vm:
        sh = vm.shell
        facts["banner1"] = sh.expect(r"appsdk: IMAGE_ID=(\S+) IMAGE_VERSION=(\S+) booted",
                                     300).groups()
        sh.login()
        facts["root_fstype"] = sh.output("findmnt -no FSTYPE /")
        facts["usr_mount"] = sh.output("findmnt -no SOURCE,FSTYPE,OPTIONS /usr")
        # /usr is the dm-verity device "usr" on top of the usr_1.0 partition.
        facts["usr_dm"] = sh.output(
            "d=$(basename $(readlink -f $(findmnt -no SOURCE /usr))); "
            "cat /sys/block/$d/dm/name /sys/block/$d/dm/uuid; "
            "for s in /sys/block/$d/slaves/*; do lsblk -dno PARTLABEL /dev/${s##*/}; done")
        facts["usr_write"] = sh.run("touch /usr/lib/should-fail")[0]
        facts["disk_sectors"] = int(sh.output("cat /sys/class/block/vda/size"))
        facts["partitions"] = partitions(sh)
        facts["var_fstype"] = sh.output("findmnt -no FSTYPE /var")
        facts["token"] = sh.output("head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \\n' "
                                   "| tee /var/lib/appsdk-test-token")
        facts["machine_id1"] = sh.output("cat /etc/machine-id")
        facts["health"] = sh.output(
            "for i in $(seq 30); do python3 -c \"import urllib.request as u; "
            "print(u.urlopen('http://127.0.0.1:8080/health').read().decode())\" "
            "2>/dev/null && break; sleep 1; done")
        facts["failed_units"] = sh.output("systemctl --failed --no-legend --plain | cat")
        facts["timers"] = sh.output("systemctl list-units --type=timer --no-legend --plain "
                                    "| cut -d' ' -f1").split()
        sh.send("sync; systemctl poweroff")
        assert vm.wait_exit(120) == 0

    # Between the boots the card is altered offline: dm-verity must catch it on read (and
    # the boot, which never reads that file, still comes up: one boot for both).
    flip_a_byte_in_usr(disk, hello_v1.artifacts["usr"].path)
    port = free_port()
    with running(plain_qemu(disk, vars_fd, port), port, vm_logs, "x86-boot2", disk,
                 vars_fd) as vm:
        sh = vm.shell
        facts["banner2"] = sh.expect(r"appsdk: IMAGE_ID=(\S+) IMAGE_VERSION=(\S+) booted",
                                     300).groups()
        sh.login()
        facts["token2"] = sh.output("cat /var/lib/appsdk-test-token")
        facts["machine_id2"] = sh.output("cat /etc/machine-id")
        facts["partitions2"] = partitions(sh)
        facts["tampered_read"] = sh.run(f"cat /usr{VICTIM} > /dev/null")
        facts["intact_read"] = sh.run("cat /usr/share/common-licenses/GPL-2 > /dev/null")[0]
        facts["verity_log"] = sh.output("dmesg | grep -i 'verity' | tail -3")
        sh.send("systemctl poweroff")
        vm.wait_exit(120)
    return facts


def test_too_small_a_card_is_refused_before_anything_is_written(
        hello_v1: appsdk.BuildResult, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    # Too small for first boot (slot B and /var): refused, nothing written.
    with loop_device(tmp_path / "small", 2 * GiB) as dev:
        assert main(["flash", str(hello_v1.output), dev, "--yes", "--allow-fixed"]) == 7
        assert "too small" in capsys.readouterr().err
        with open(dev, "rb") as f:
            assert f.read(1 << 20) == bytes(1 << 20)


def test_the_flash_reports_the_images_digest(
        hello_v1: appsdk.BuildResult, card: tuple[str, subprocess.CompletedProcess[str]]
        ) -> None:
    _, flashed = card
    assert flashed.returncode == 0, flashed.stderr[-3000:]
    assert image_digest(open_source(hello_v1.output)) in flashed.stdout


def test_banner_shows_id_and_version(booted_twice: dict[str, object]) -> None:
    assert booted_twice["banner1"] == ("hello", "1.0")
    assert booted_twice["banner2"] == ("hello", "1.0")


def test_root_is_tmpfs_and_usr_is_readonly_slot_a(booted_twice: dict[str, object]) -> None:
    assert booted_twice["root_fstype"] == "tmpfs"
    source, fstype, options = str(booted_twice["usr_mount"]).split()
    assert source == "/dev/mapper/usr" and fstype == "erofs"
    assert re.match(r"ro(,|$)", options)
    name, uuid, *slaves = str(booted_twice["usr_dm"]).split()
    assert name == "usr" and uuid.startswith("CRYPT-VERITY-")
    assert sorted(slaves) == ["usr_1.0", "verity_1.0"]
    assert booted_twice["usr_write"] != 0


def test_first_boot_made_empty_b_slot_and_var_to_end_of_disk(
        booted_twice: dict[str, object]) -> None:
    parts = booted_twice["partitions"]
    assert isinstance(parts, list)
    labels = [label for label, _, _ in parts]
    assert labels == ["esp", "usr_1.0", "verity_1.0", "_empty", "_empty", "var"], parts
    sizes = [size for _, _, size in parts]
    # Slot B matches slot A: data and verity partitions of the same pinned sizes.
    assert sizes[1] == sizes[3] == GiB // SECTOR
    assert sizes[2] == sizes[4] == 16 * 1024**2 // SECTOR
    _, var_start, var_size = parts[5]
    var_end = var_start + var_size
    disk = booted_twice["disk_sectors"]
    assert isinstance(disk, int)
    # GPT keeps 33 sectors for its backup at the end; repart aligns to 4 KiB.
    assert disk - var_end <= 34 + 8, (disk, var_end)
    # 6 GiB disk - 256 MiB ESP - 2 x (1 GiB + 16 MiB) slots: /var got the remaining ~3.7 GiB.
    assert var_size * SECTOR > 3.6 * GiB
    assert booted_twice["var_fstype"] == "ext4"
    # The layout is stable: the second boot changed nothing.
    assert booted_twice["partitions2"] == parts


def test_var_survives_reboot_with_machine_id(booted_twice: dict[str, object]) -> None:
    assert re.fullmatch(r"[0-9a-f]{24}", str(booted_twice["token"]))
    assert booted_twice["token2"] == booted_twice["token"]
    assert re.fullmatch(r"[0-9a-f]{32}", str(booted_twice["machine_id1"]))
    assert booted_twice["machine_id2"] == booted_twice["machine_id1"]


def test_hello_service_answers_health(booted_twice: dict[str, object]) -> None:
    health = json.loads(str(booted_twice["health"]).splitlines()[-1])
    assert health == {"status": "ok", "id": "hello", "version": "1.0"}


def test_no_failed_units(booted_twice: dict[str, object]) -> None:
    assert booted_twice["failed_units"] == ""


def test_first_boot_enables_nothing_beyond_the_build(booted_twice: dict[str, object]) -> None:
    # update.automatic is false for hello: no sysupdate timer; no package-manager timers.
    timers = booted_twice["timers"]
    assert isinstance(timers, list)
    assert "systemd-sysupdate.timer" not in timers, timers
    assert not [t for t in timers if t.startswith(("apt-", "dpkg-"))], timers


def test_a_byte_flipped_in_usr_offline_is_caught_by_dm_verity(
        booted_twice: dict[str, object]) -> None:
    status, output = booted_twice["tampered_read"]  # type: ignore[misc]
    assert status != 0 and "Input/output error" in output, output
    assert booted_twice["intact_read"] == 0
    assert "corrupted" in str(booted_twice["verity_log"]), booted_twice["verity_log"]
