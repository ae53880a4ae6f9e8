"""Signed A/B updates with real systemd-sysupdate, proven on the device: a v1 device refuses
every bad release (wrong hash, foreign signature, truncated image, older version) without
touching its slots or ESP, then installs v2 into slot B, boots it, and keeps v1 as fallback.
A byte flipped in /usr on the disk is caught by dm-verity."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from vmlib import (
    SB_EMULATOR,
    TRANSFER_TIMEOUT,
    disk_copy,
    efi_global,
    ovmf_vars,
    sb_vars,
    sysupdate_update,
    vm_boot,
)

import appsdk
from appsdk.contract.updatefiles import SUMS, sha256sums
from appsdk.core.runner import Runner
from appsdk.pipeline.tools import ensure_tools
from appsdk.trust import keys, secureboot
from appsdk.update.release import release
from appsdk.update.serve import serve_in_thread

GiB = 1024**3
SYSUPDATE = "appsdk-update --no-pager"


class Publisher:
    """The release server's document root; each variant is copied in before an attempt."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir()

    def publish(self, variant: Path) -> None:
        for old in self.root.iterdir():
            old.unlink()
        for f in variant.iterdir():
            shutil.copyfile(f, self.root / f.name)


@pytest.fixture(scope="module")
def releases(hello_v1: appsdk.BuildResult, hello_v2: appsdk.BuildResult,
             signing_key: keys.SigningKey, tmp_path_factory: pytest.TempPathFactory
             ) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("releases")
    runner = Runner()
    good = release(base / "good", [hello_v1.output, hello_v2.output], signing_key,
                   runner).directory

    def variant(name: str) -> Path:
        path = base / name
        shutil.copytree(good, path)
        return path

    bad_hash = variant("bad-hash")
    lines = (bad_hash / SUMS).read_text().splitlines(keepends=True)
    lines = [("0" * 64 + line[64:]) if "hello_2.0.usr.xz" in line else line for line in lines]
    (bad_hash / SUMS).write_text("".join(lines))
    keys.sign(signing_key, bad_hash / SUMS, runner)  # validly signed, wrong hash

    foreign = variant("foreign-key")
    other = keys.generate(base / "other-key", "someone else", runner)
    keys.sign(other, foreign / SUMS, runner)

    # A download cut short: the signed SHA256SUMS describes the whole file.
    truncated = variant("truncated")
    usr = truncated / "hello_2.0.usr.xz"
    with usr.open("r+b") as f:
        f.truncate(usr.stat().st_size // 2)

    older = base / "older"
    older.mkdir()
    for kind in ("efi", "usr", "verity"):
        shutil.copyfile(good / f"hello_1.0.{kind}.xz", older / f"hello_0.9.{kind}.xz")
    (older / SUMS).write_text(sha256sums(older, [p.name for p in older.glob("*.xz")]))
    keys.sign(signing_key, older / SUMS, runner)
    return {"good": good, "bad-hash": bad_hash, "foreign-key": foreign,
            "truncated": truncated, "older": older}


@pytest.fixture(scope="module")
def server(update_port: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Publisher]:
    publisher = Publisher(tmp_path_factory.mktemp("srv") / "root")
    httpd = serve_in_thread(publisher.root, port=update_port)
    yield publisher
    httpd.shutdown()


def device_state(sh) -> dict[str, object]:  # type: ignore[no-untyped-def]
    sh.run("udevadm settle")  # partition labels reach lsblk through udev
    return {
        "version": sh.output(". /usr/lib/os-release; echo $IMAGE_VERSION"),
        "labels": sh.output("lsblk -lno PARTLABEL /dev/vda | sed '/^$/d'").split(),
        "esp": sh.output("ls /efi/EFI/Linux").split(),
    }


@pytest.fixture(scope="module")
def update_run(hello_v1: appsdk.BuildResult, releases: dict[str, Path], server: Publisher,
               sb_keyset: secureboot.SecureBootKeys, tmp_path_factory: pytest.TempPathFactory,
               vm_logs: Path) -> dict[str, object]:
    work = tmp_path_factory.mktemp("x86-update")
    disk = disk_copy(hello_v1.image, work / "disk.img", 6 * GiB)
    # Under Secure Boot: OVMF's secboot build, started from a store with the key set the
    # images are signed with, checks systemd-boot and every UKI, v2's as sysupdate put it.
    vars_fd = sb_vars(work, sb_keyset)
    facts: dict[str, object] = {"attempts": {}}

    with vm_boot(disk, vars_fd, vm_logs, "x86-update-v1", emulator=SB_EMULATOR) as vm:
        sh = vm.shell
        sh.expect(r"appsdk: IMAGE_ID=hello IMAGE_VERSION=1.0 booted", 300)
        sh.login()
        facts["token"] = sh.output("head -c 8 /dev/urandom | od -An -tx1 | tr -d ' \\n' "
                                   "| tee /var/lib/appsdk-test-token")
        sh.run("/usr/lib/systemd/systemd-networkd-wait-online --timeout=90", timeout=120)
        facts["before"] = device_state(sh)
        for name in ("bad-hash", "foreign-key", "truncated", "older"):
            server.publish(releases[name])
            status, output = sysupdate_update(sh)
            facts["attempts"][name] = {  # type: ignore[index]
                "status": status, "output": output, "after": device_state(sh)}
        server.publish(releases["good"])
        facts["list_v1"] = sh.output(f"{SYSUPDATE} list 2>&1", timeout=300)
        started = time.monotonic()
        status, output = sysupdate_update(sh)
        # A figure for the notes and bench/, never asserted.
        (vm_logs / "figures-update.json").write_text(json.dumps(
            {"sysupdate_update_s": round(time.monotonic() - started, 1)}) + "\n")
        facts["update"] = {"status": status, "output": output, "after": device_state(sh)}
        # The new slot damaged after sysupdate labelled it (4 KiB of noise 64 MiB in, inside
        # the erofs image): the next run must find it and install v2 again, not call it done.
        sh.run("dd if=/dev/urandom of=/dev/disk/by-partlabel/usr_2.0 bs=4096 seek=16384 "
               "count=1 conv=notrunc,fsync status=none")
        status, output = sysupdate_update(sh)
        facts["repair"] = {"status": status, "output": output, "after": device_state(sh)}
        sh.send("sync; systemctl poweroff")
        vm.wait_exit(120)

    with vm_boot(disk, vars_fd, vm_logs, "x86-update-v2", emulator=SB_EMULATOR) as vm:
        sh = vm.shell
        facts["banner2"] = sh.expect(r"appsdk: IMAGE_ID=(\S+) IMAGE_VERSION=(\S+) booted",
                                     300).groups()
        sh.login()
        facts["secureboot2"] = efi_global(sh, "SecureBoot")
        facts["console2"] = vm.console_log.read_text(errors="replace")
        facts["token2"] = sh.output("cat /var/lib/appsdk-test-token")
        # systemd-bless-boot renames the UKI once boot-complete.target is reached.
        facts["esp2"] = sh.output(
            "for i in $(seq 60); do ls /efi/EFI/Linux | grep -qx hello_2.0.efi && break; "
            "sleep 1; done; ls /efi/EFI/Linux").split()
        facts["after2"] = device_state(sh)
        facts["list_v2"] = sh.output(f"{SYSUPDATE} list 2>&1", timeout=300)
        sh.send("systemctl poweroff")
        vm.wait_exit(120)

    # A blessed v2 stays the default on later boots.
    with vm_boot(disk, vars_fd, vm_logs, "x86-update-v2-again", emulator=SB_EMULATOR) as vm:
        sh = vm.shell
        facts["banner3"] = sh.expect(r"appsdk: IMAGE_ID=(\S+) IMAGE_VERSION=(\S+) booted",
                                     300).groups()
        sh.login()
        facts["status3"] = json.loads(sh.output("appsdk-status --json"))
        # v1's slot, now the fallback, is checked too, found good and left alone.
        sh.run("/usr/lib/systemd/systemd-networkd-wait-online --timeout=90", timeout=120)
        status, output = sysupdate_update(sh)
        facts["recheck"] = {"status": status, "output": output, "after": device_state(sh)}
        sh.send("systemctl poweroff")
        vm.wait_exit(120)
    return facts


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
    assert update_run["token2"] == update_run["token"]
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


def test_blessed_v2_stays_default(update_run: dict[str, object]) -> None:
    assert update_run["banner3"] == ("hello", "2.0")
    status = update_run["status3"]
    assert isinstance(status, dict)
    assert status["running"] == "2.0" and status["blessed"] is True
    assert status["failed"] == [] and status["installed"] == ["1.0", "2.0"]
    assert status["health"] == {"appsdk-health-hello-http.service": "active"}


def erofs_file_offset(usr_image: Path, path: str) -> int:
    """Physical offset of a file's first data extent in the erofs image (dump.erofs)."""
    tools = ensure_tools(Runner(), appsdk.core.progress.NullReporter())
    out = tools.sandbox(ro_binds=(usr_image.parent,)).run(
        Runner(), ["dump.erofs", f"--path={path}", "-e", str(usr_image)]).stdout
    for line in out.splitlines():
        parts = line.replace("|", " ").replace(":", " ").split()
        if parts and parts[0] == "0":
            return int(parts[4].rstrip("."))
    raise AssertionError(f"no extent for {path}:\n{out}")


def test_flipped_byte_in_usr_is_caught_by_dm_verity(
        hello_v1: appsdk.BuildResult, tmp_path: Path, vm_logs: Path) -> None:
    disk = disk_copy(hello_v1.image, tmp_path / "tampered.img", 6 * GiB)
    table = json.loads(subprocess.run(["sfdisk", "--json", str(disk)], check=True,
                                      capture_output=True, text=True).stdout)
    usr_part = next(p for p in table["partitiontable"]["partitions"] if p["name"] == "usr_1.0")
    victim = "/share/common-licenses/GPL-3"
    offset = usr_part["start"] * 512 + erofs_file_offset(hello_v1.artifacts["usr"].path,
                                                         victim) + 100
    with disk.open("r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))

    with vm_boot(disk, ovmf_vars(tmp_path), vm_logs, "x86-verity-tamper") as vm:
        sh = vm.shell
        sh.expect(r"appsdk: IMAGE_ID=hello IMAGE_VERSION=1.0 booted", 300)
        sh.login()
        status, output = sh.run(f"cat /usr{victim} > /dev/null")
        intact_status, _ = sh.run("cat /usr/share/common-licenses/GPL-2 > /dev/null")
        kernel = sh.output("dmesg | grep -i 'verity' | tail -3")
        sh.send("systemctl poweroff")
        vm.wait_exit(120)
    assert status != 0 and "Input/output error" in output, output
    assert intact_status == 0
    assert "corrupted" in kernel, kernel


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
