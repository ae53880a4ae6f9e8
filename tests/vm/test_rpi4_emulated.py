"""The rpi4 image (arm64, built on this x86-64 host) on QEMU's arm64 `virt` machine, booted
by both firmware chains' stand-ins: U-Boot qemu_arm64 of the version the Pi profile pins,
and EDK2 (AAVMF), on one disk. Under U-Boot v1 installs a good v2 that confirms itself,
then a v3 whose health check fails; under EDK2 v3 gets its one try (boot.tries: 1) and
systemd-boot falls back to v2 by itself. That needs the firmware to rename the UKI (boot
counting): v2's boot proves it of U-Boot, v3's of EDK2. The images are signed for Secure
Boot and EDK2 runs with the key set enrolled: Secure Boot is enforced on both EDK2 boots.
Everything is read off the device's console.

arm64 under TCG is several times slower than x86: one image set, five boots in all. The
updates are gzip-compressed (update.compression) and boot without the watchdog (see
variant)."""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from vmlib import (
    disk_copy,
    efi_global,
    esp_put,
    gzip_updates,
    sysupdate_update,
    tampered,
    vm_boot,
    watch_boot,
)

import appsdk
from appsdk.core.progress import TextReporter
from appsdk.core.runner import Runner
from appsdk.emulate.qemu import firmware_vars, first_existing
from appsdk.spec.boards import load_board
from appsdk.trust import keys, secureboot
from appsdk.update.release import release
from appsdk.update.serve import serve_in_thread

GiB = 1024**3
LOADER_GUID = "4a67b082-0a4c-41cf-b6c7-440b29bb8c4f"
UP = r"appsdk: IMAGE_ID=hello IMAGE_VERSION=(\S+) booted"
BOOT_TIMEOUT = 1200  # s; arm64 under TCG, firmware included
# Which firmware ran, as systemd-boot reports it to the OS (the firmware's own banner is
# printed before the test's serial connection exists).
FIRMWARE_VENDOR = {"virt-uboot": "Das U-Boot", "virt-edk2-sb": "EDK II"}


def efivar(shell: Any, name: str) -> str:
    """A systemd-boot variable (UTF-16 after 4 attribute bytes) as text; "" if unset.
    (efivarfs files cannot seek: read them whole.)"""
    return str(shell.output(f"cat /sys/firmware/efi/efivars/{name}-{LOADER_GUID} 2>/dev/null "
                            "| tail -c +5 | tr -d '\\000'"))


def variant(tmp: Path, base: Path, version: str, failing: bool) -> Path:
    """`base` (hello, signed for Secure Boot, never enrolling) for the rpi4 board."""
    app = tmp / f"hello-rpi4-{version}"
    shutil.copytree(base, app, ignore=shutil.ignore_patterns("build"))
    config = yaml.safe_load((app / "appliance.yaml").read_text())
    config["board"] = "rpi4"
    # virt's UART is a PL011 (ttyAMA0); the Pi's console (board data) stays on the cmdline.
    config["kernel"]["cmdline"] = "console=ttyAMA0,115200"
    config["boot"] = {"tries": 1}
    if version != "1.0":
        # The Pi's watchdog allows 15 s at most (board data), which arm64 under TCG on a
        # slow or busy host can miss while PID 1 is busy: seen here, a v2 boot reset at
        # basic.target. The factory image keeps it (its boot proves it is armed); the
        # updates fail by their health check, not by the watchdog, so they go without.
        config["boot"]["watchdog"] = 0
    if failing:
        config["health"] = [{"name": "always-fails", "command": "false", "timeout": 5}]
    (app / "appliance.yaml").write_text(yaml.safe_dump(config))
    gzip_updates(app)  # its update runs are arm64's slowest part; x86 keeps xz
    return app


@pytest.fixture(scope="module")
def rpi4_builds(root_required: None, hello_app: Path, signing_key: keys.SigningKey,
                update_port: int,
                tmp_path_factory: pytest.TempPathFactory) -> dict[str, appsdk.BuildResult]:
    tmp = tmp_path_factory.mktemp("rpi4")
    builds = {}
    for version, failing in (("1.0", False), ("2.0", False), ("3.0", True)):
        builds[version] = appsdk.build(
            variant(tmp, hello_app, version, failing), version=version,
            output=tmp / f"build-{version}",
            reporter=TextReporter(__import__("sys").stderr), key_dir=signing_key.home,
            update_url=f"http://10.0.2.2:{update_port}/")
    return builds


@pytest.fixture(scope="module")
def rpi4_server(update_port: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("rpi4-srv")
    httpd = serve_in_thread(root, port=update_port)
    yield root
    httpd.shutdown()


def publish(srv: Path, builds: list[appsdk.BuildResult], key: keys.SigningKey) -> None:
    for old in srv.iterdir():
        old.unlink()
    release(srv, [b.output for b in builds], key, Runner())


def boot_facts(shell: Any) -> dict[str, Any]:
    return {
        "status": json.loads(shell.output("appsdk-status --json")),
        "firmware": efivar(shell, "LoaderFirmwareInfo"),
        "count_path": efivar(shell, "LoaderBootCountPath"),
        # "" where the image runs without one (the updates, see variant).
        "watchdog": shell.output("journalctl -b -o cat _PID=1 | grep -m1 'hardware watchdog'"
                                 " || true"),
        "arch": shell.output("uname -m"),
    }


def run_story(builds: dict[str, appsdk.BuildResult], key: keys.SigningKey,
              keyset: secureboot.SecureBootKeys, srv: Path, tmp: Path,
              logs: Path) -> dict[str, Any]:
    """One device, both firmware chains. Under U-Boot: boot v1, install v2, boot v2
    (blessed), install the bad v3. Then the same disk under EDK2 with Secure Boot on: v3
    gets its one try, resets, and systemd-boot falls back to v2."""
    disk = disk_copy(builds["1.0"].image, tmp / "disk.img", 6 * GiB)
    board = load_board("rpi4")
    facts: dict[str, Any] = {"boots": [], "seconds": []}

    def boot(emulator: str, name: str) -> Any:
        # No retry on early panics: the int3 race is x86's (kernel code patching), and
        # the look-ahead would wait through arm64's slow kernel start for nothing.
        return vm_boot(disk, firmware_vars(board, tmp, emulator), logs,
                       f"rpi4-{emulator}-{name}", board="rpi4", emulator=emulator,
                       retry_early_panic=False)

    def update(vm: Any, key_name: str, releases: list[str]) -> None:
        publish(srv, [builds[v] for v in releases], key)
        vm.shell.run("/usr/lib/systemd/systemd-networkd-wait-online --timeout=120",
                     timeout=180)
        status, out = sysupdate_update(vm.shell, timeout=1800)
        facts[key_name] = {"status": status, "output": out}
        vm.shell.send("sync; systemctl poweroff")
        vm.wait_exit(300)

    def came_up(vm: Any, started: float) -> None:
        facts["boots"].append(vm.shell.expect(UP, BOOT_TIMEOUT).group(1))
        facts["seconds"].append(round(time.monotonic() - started, 1))
        vm.shell.login()

    # v1, the factory image, under U-Boot.
    started = time.monotonic()
    with boot("virt-uboot", "v1") as vm:
        came_up(vm, started)
        facts["v1"] = boot_facts(vm.shell)
        update(vm, "update_v2", ["1.0", "2.0"])

    # v2 on its one counted try: confirmed by its health check, then blessed.
    started = time.monotonic()
    with boot("virt-uboot", "v2") as vm:
        came_up(vm, started)
        facts["v2"] = boot_facts(vm.shell)
        facts["v2"]["esp"] = vm.shell.output(
            "for i in $(seq 120); do ls /efi/EFI/Linux | grep -qx hello_2.0.efi && break; "
            "sleep 1; done; ls /efi/EFI/Linux").split()
        facts["v2"]["status"] = json.loads(vm.shell.output("appsdk-status --json"))
        update(vm, "update_v3", ["1.0", "2.0", "3.0"])

    # Now under EDK2, with the appliance's key set enrolled and Secure Boot on (AAVMF's
    # store prepared by `appsdk keys vars`' code): v3 fails its health check on its only
    # try, the device reboots, and systemd-boot, seeing no tries left, boots v2 without
    # being told. AAVMF checks systemd-boot and both UKIs, all signed by the build.
    edk2 = board.emulator_named("virt-edk2-sb")
    secureboot.write_vars(keyset, "hello", first_existing(edk2.firmware_vars,
                                                          "UEFI variable store", board),
                          tmp / f"{board.name}-{edk2.name}-efivars.fd", Runner())
    # And an attacker's UKI, v2's with one byte changed, with one try: AAVMF refuses it
    # (systemd-boot counted the try first), and in the same power-on systemd-boot runs
    # again and boots the next entry.
    esp_put(disk, tampered(builds["2.0"].artifacts["uki"].path, tmp / "tampered.efi"),
            "hello_9.0+1.efi")
    for attempt in range(1, 4):
        started = time.monotonic()
        with boot("virt-edk2-sb", f"after-v3-{attempt}") as vm:
            version, outcome = watch_boot(
                vm, r"appsdk: IMAGE_ID=hello IMAGE_VERSION=2\.0 booted", timeout=BOOT_TIMEOUT)
            facts["boots"].append(f"{version}:{outcome}")
            facts["seconds"].append(round(time.monotonic() - started, 1))
            if outcome == "up":
                vm.shell.login()
                facts["rolled_back"] = boot_facts(vm.shell)
                facts["rolled_back"]["esp"] = vm.shell.output("ls /efi/EFI/Linux").split()
                facts["rolled_back"]["secureboot"] = efi_global(vm.shell, "SecureBoot")
                vm.shell.send("systemctl poweroff")
                vm.wait_exit(300)
            else:
                vm.wait_exit(60)
        # Every boot's transcript, the one that came up included (it holds the refusal).
        facts.setdefault("edk2_consoles", []).append(vm.console_log.read_text(errors="replace"))
        if outcome == "up":
            break
    # Figures for the notes, never asserted.
    (logs / "rpi4.json").write_text(json.dumps(facts["seconds"]) + "\n")
    return facts


# U-Boot is the Pi's default chain and the one whose rename support is new: it boots v1
# and v2 (its rename proven by v2's LoaderBootCountPath); EDK2 takes over the same disk for
# v3's counted try and the fallback (arm64 boots are expensive: five in all).
def test_rpi4_image_updates_and_rolls_back(
        rpi4_builds: dict[str, appsdk.BuildResult], signing_key: keys.SigningKey,
        sb_keyset: secureboot.SecureBootKeys, rpi4_server: Path, tmp_path: Path,
        vm_logs: Path) -> None:
    facts = run_story(rpi4_builds, signing_key, sb_keyset, rpi4_server, tmp_path, vm_logs)
    v1, v2, back = facts["v1"], facts["v2"], facts["rolled_back"]
    assert v1["arch"] == "aarch64"
    assert FIRMWARE_VENDOR["virt-uboot"] in v1["firmware"], v1["firmware"]
    assert "i6300ESB" in v1["watchdog"], v1["watchdog"]
    assert v1["status"]["running"] == "1.0"
    assert facts["update_v2"]["status"] == 0, facts["update_v2"]["output"]
    # U-Boot renamed the UKI for systemd-boot (+1-0 -> +0-1) before booting it, the rename
    # boot counting needs (U-Boot >= 2025.07).
    assert FIRMWARE_VENDOR["virt-uboot"] in v2["firmware"], v2["firmware"]
    assert v2["count_path"] == "\\EFI\\Linux\\hello_2.0+0-1.efi", v2["count_path"]
    assert "hello_2.0.efi" in v2["esp"], v2["esp"]  # blessed by systemd-bless-boot
    assert v2["status"]["running"] == "2.0" and v2["status"]["blessed"] is True
    assert facts["boots"][:2] == ["1.0", "2.0"], facts["boots"]
    assert facts["update_v3"]["status"] == 0, facts["update_v3"]["output"]
    assert facts["boots"][2:] == ["3.0:reset", "2.0:up"], facts["boots"]
    assert FIRMWARE_VENDOR["virt-edk2-sb"] in back["firmware"], back["firmware"]
    assert back["status"]["running"] == "2.0" and back["status"]["installed"] == ["2.0", "3.0"]
    # The tampered entry (below) used its one try too: failed, never installed.
    assert back["status"]["failed"] == ["3.0", "9.0"], back["status"]
    # v3's file went from +1-0 to +0-1 at its boot: only systemd-boot renames it then,
    # through EDK2's file system (bless-boot in Linux never ran for v3).
    assert sorted(back["esp"]) == ["hello_2.0.efi", "hello_3.0+0-1.efi",
                                   "hello_9.0+0-1.efi"], back["esp"]
    # The refused entry's counter path outlives it (EDK2 ran systemd-boot twice in one
    # power-on); appsdk-bless-check sees it is not the running entry and blesses nothing.
    assert back["count_path"] == "\\EFI\\Linux\\hello_9.0+0-1.efi", back["count_path"]
    # Under EDK2 with the key set enrolled, Secure Boot was enforced on v3's try and on v2:
    # the signed chain from AAVMF to /usr. (U-Boot booted the same signed binaries and
    # checked nothing: its UEFI loader is built without signature checks.)
    assert back["secureboot"] == "01", back["secureboot"]
    for console in facts["edk2_consoles"]:
        assert "EFI stub: UEFI Secure Boot is enabled." in console
    # systemd-boot orders UKIs by their os-release version: the tampered copy (2.0 inside)
    # comes after v3 and before the blessed v2. So on the fallback boot AAVMF refused it
    # before any kernel ran, and in the same power-on the signed v2 booted.
    last = facts["edk2_consoles"][-1]
    refusal = r"Error loading \EFI\Linux\hello_9.0+0-1.efi: Access denied"
    assert refusal in last, last[:3000]
    assert last.index(refusal) < last.index("Linux version")
    assert "systemd.verity_usr_data=/dev/disk/by-partlabel/usr_2.0" in last
    assert refusal not in facts["edk2_consoles"][0]  # v3's try came first
    assert "appsdk: not blessing hello_9.0+0-1.efi" in last


def test_rpi4_image_carries_the_uboot_chain(rpi4_builds: dict[str, appsdk.BuildResult]) -> None:
    """The arm64 build's ESP, read back from the bare image: the Pi's firmware chain next
    to systemd-boot and the UKI, with the pinned versions on record."""
    from appsdk.image.inspect import inspect
    from appsdk.pipeline.rpi_boot import config_txt
    from appsdk.spec.firmware import load_manifests

    info = inspect(rpi4_builds["1.0"].image)
    assert (info["board"], info["firmware_chain"]) == ("rpi4", "rpi+uboot")
    files = {f["path"] for f in info["esp_files"]}
    assert files == {"EFI/BOOT/BOOTAA64.EFI", "EFI/systemd/systemd-bootaa64.efi",
                     "EFI/Linux/hello_1.0.efi", "loader/loader.conf", "config.txt",
                     "appsdk-firmware.txt", "start4.elf", "fixup4.dat", "u-boot.bin",
                     "bcm2711-rpi-4-b.dtb", "bcm2711-rpi-400.dtb", "bcm2711-rpi-cm4.dtb",
                     # signed for Secure Boot: the key set rides along, never enrolled here
                     "loader/keys/auto/PK.auth", "loader/keys/auto/KEK.auth",
                     "loader/keys/auto/db.auth"}
    assert info["secure_boot"]["signed"]["EFI/Linux/hello_1.0.efi"] == [
        "CN = Hello appliance Secure Boot db"]
    manifests = load_manifests()
    assert info["firmware"] == {n: {"version": manifests[n].version,
                                    "sha256": manifests[n].sha256}
                                for n in ("raspi-firmware", "u-boot-rpi")}
    assert "console=ttyS1,115200" in info["cmdline"]
    assert "usr-arm64" in {p["type"] for p in info["partitions"]}
    record = json.loads((rpi4_builds["1.0"].output / "build.json").read_text())
    assert record["board"]["firmware_chain"] == "rpi+uboot"
    sha = {f["path"]: f["sha256"] for f in info["esp_files"]}
    expected = config_txt(load_board("rpi4"), "rpi+uboot").encode()
    assert sha["config.txt"] == hashlib.sha256(expected).hexdigest()
