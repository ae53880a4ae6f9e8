"""The x86 update story, shared by test_x86_update.py and test_x86_rollback.py: one device
(under Secure Boot) refuses bad releases, installs v2, repairs it, boots it, then
installs a v3 that fails each of its boot tries in its own way and falls back to v2 by
itself. One story instead of two saves the rollback's own v1 boot and update, and the
fallback boot is also the one that shows a blessed v2 stays the default (two boots and an
update run fewer: about 6 minutes under TCG here). The two test modules assert its facts."""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from pathlib import Path
from typing import Any

import yaml
from vmlib import (
    SB_EMULATOR,
    Vm,
    disk_copy,
    efi_global,
    sb_vars,
    sysupdate_update,
    vm_boot,
    watch_boot,
)

import appsdk
from appsdk.contract.updatefiles import SUMS, sha256sums
from appsdk.core.runner import Runner
from appsdk.trust import keys, secureboot
from appsdk.update.release import release
from appsdk.update.serve import serve_in_thread

GiB = 1024**3
SYSUPDATE = "appsdk-update --no-pager"
V2_UP = r"appsdk: IMAGE_ID=hello IMAGE_VERSION=2\.0 booted"
TRIES = 3  # the shared images' default (boot.tries)
DEADLINE = 120  # s, bad_v3's boot.deadline


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


def make_releases(v1: appsdk.BuildResult, v2: appsdk.BuildResult, v3: appsdk.BuildResult,
                  signing_key: keys.SigningKey, base: Path) -> dict[str, Path]:
    """The good release (v1, v2), four bad variants of it, and v2 with the bad v3."""
    runner = Runner()
    good = release(base / "good", [v1.output, v2.output], signing_key,
                   runner).directory

    def variant(name: str) -> Path:
        path = base / name
        shutil.copytree(good, path)
        return path

    # The verity file is the first transfer (40-verity): its wrong hash stops the update
    # before the 100 MB /usr is downloaded, and every file's hash is checked the same way.
    bad_hash = variant("bad-hash")
    lines = (bad_hash / SUMS).read_text().splitlines(keepends=True)
    lines = [("0" * 64 + line[64:]) if "hello_2.0.verity." in line else line
             for line in lines]
    (bad_hash / SUMS).write_text("".join(lines))
    keys.sign(signing_key, bad_hash / SUMS, runner)  # validly signed, wrong hash

    foreign = variant("foreign-key")
    other = keys.generate(base / "other-key", "someone else", runner)
    keys.sign(other, foreign / SUMS, runner)

    # A download cut short: the signed SHA256SUMS describes the whole file.
    truncated = variant("truncated")
    (usr,) = truncated.glob("hello_2.0.usr.*")  # .xz or .gz (update.compression)
    with usr.open("r+b") as f:
        f.truncate(usr.stat().st_size // 2)

    older = base / "older"
    older.mkdir()
    for kind in ("efi", "usr", "verity"):
        (v1_file,) = good.glob(f"hello_1.0.{kind}.*")
        shutil.copyfile(v1_file, older / v1_file.name.replace("_1.0.", "_0.9."))
    (older / SUMS).write_text(sha256sums(older, sorted(p.name for p in older.iterdir())))
    keys.sign(signing_key, older / SUMS, runner)
    bad_v3 = release(base / "bad-v3", [v2.output, v3.output], signing_key, runner).directory
    return {"good": good, "bad-hash": bad_hash, "foreign-key": foreign,
            "truncated": truncated, "older": older, "bad-v3": bad_v3}


def device_state(sh) -> dict[str, object]:  # type: ignore[no-untyped-def]
    sh.run("udevadm settle")  # partition labels reach lsblk through udev
    return {
        "version": sh.output(". /usr/lib/os-release; echo $IMAGE_VERSION"),
        "labels": sh.output("lsblk -lno PARTLABEL /dev/vda | sed '/^$/d'").split(),
        "esp": sh.output("ls /efi/EFI/Linux").split(),
    }


class Device:
    """The story's machine: its disk, its UEFI variable store and its TPM's state."""

    def __init__(self, image: Path, keyset: secureboot.SecureBootKeys, work: Path) -> None:
        self.disk = disk_copy(image, work / "disk.img", 6 * GiB)
        # Under Secure Boot: OVMF's secboot build, started from a store with the key set the
        # images are signed with, checks systemd-boot and every UKI, v2's as sysupdate put
        # it. The TPM (swtpm) is what /var is sealed to; it goes with the device.
        self.vars_fd = sb_vars(work, keyset)
        self.tpm = work / "tpm"

    def boot(self, logs: Path, name: str) -> contextlib.AbstractContextManager[Vm]:
        return vm_boot(self.disk, self.vars_fd, logs, name, emulator=SB_EMULATOR,
                       tpm=self.tpm)


def var_facts(sh) -> dict[str, object]:  # type: ignore[no-untyped-def]
    """/var as this boot opened it: the test token written on v1's first boot, what the
    device reports of the seal, and the mapping it is mounted from."""
    return {"token": sh.output("cat /var/lib/appsdk-test-token"),
            "source": sh.output("findmnt -no SOURCE /var"),
            "status": json.loads(sh.output("appsdk-status --json"))["var"]}


def update_story(v1: appsdk.BuildResult, releases: dict[str, Path], server: Publisher,
                 device: Device, vm_logs: Path) -> dict[str, object]:
    """v1 refuses the bad releases, installs v2 (and repairs its damaged slot), boots v2,
    then installs the bad v3. Returns the facts."""
    facts: dict[str, object] = {"attempts": {}}

    with device.boot(vm_logs, "x86-update-v1") as vm:
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
        facts["var1"] = var_facts(sh)
        sh.send("sync; systemctl poweroff")
        vm.wait_exit(120)

    with device.boot(vm_logs, "x86-update-v2") as vm:
        sh = vm.shell
        facts["banner2"] = sh.expect(r"appsdk: IMAGE_ID=(\S+) IMAGE_VERSION=(\S+) booted",
                                     300).groups()
        sh.login()
        facts["secureboot2"] = efi_global(sh, "SecureBoot")
        facts["console2"] = vm.console_log.read_text(errors="replace")
        facts["var2"] = var_facts(sh)
        # systemd-bless-boot renames the UKI once boot-complete.target is reached.
        facts["esp2"] = sh.output(
            "for i in $(seq 60); do ls /efi/EFI/Linux | grep -qx hello_2.0.efi && break; "
            "sleep 1; done; ls /efi/EFI/Linux").split()
        facts["after2"] = device_state(sh)
        facts["list_v2"] = sh.output(f"{SYSUPDATE} list 2>&1", timeout=300)
        facts["status2"] = json.loads(sh.output("appsdk-status --json"))
        # v1's slot, now the fallback, is checked too, found good and left alone.
        sh.run("/usr/lib/systemd/systemd-networkd-wait-online --timeout=90", timeout=120)
        status, output = sysupdate_update(sh)
        facts["recheck"] = {"status": status, "output": output, "after": device_state(sh)}
        # Then a v3 that cannot confirm itself (the rollback scenario's, below): its
        # fallback boot shows that the blessed v2 stays the default. (A boot of v2 of its
        # own for that before: one boot fewer.)
        server.publish(releases["bad-v3"])
        status, output = sysupdate_update(sh)
        facts["install_v3"] = {"status": status, "output": output, "after": device_state(sh)}
        sh.send("sync; systemctl poweroff")
        vm.wait_exit(120)
    return facts


# Which way this trial boot of v3 fails, from the try systemd-boot counted for it: the UKI
# it booted is named hello_3.0+LEFT-DONE.efi (DONE = 1 on the first try).
MODE = """#!/bin/bash
# efivarfs files cannot seek: read through a pipe, past the 4 attribute bytes.
var=/sys/firmware/efi/efivars/LoaderBootCountPath-4a67b082-0a4c-41cf-b6c7-440b29bb8c4f
path=$(cat "$var" | tail -c +5 | tr -d '\\0')
try=${path##*-}; try=${try%.efi}
case $try in 1) mode=fail ;; 2) mode=panic ;; *) mode=hang ;; esac
echo "test-v3: try $try: $mode" > /dev/console
echo "$mode"
"""

# The health check fails only in mode fail (its 5 s of retries run out); otherwise it passes
# and what stops the boot is the unit below.
CHECK = """#!/bin/bash
[ "$(/usr/libexec/test-v3-mode)" != fail ]
"""

BLOCK = """#!/bin/bash
case $(/usr/libexec/test-v3-mode) in
    panic) sleep 2; echo c > /proc/sysrq-trigger ;;  # panic=0: only the watchdog resets
    hang) exec sleep infinity ;;  # boot-complete.target never comes: the deadline resets
esac
exit 0
"""

BLOCK_UNIT = """[Unit]
Description=test: crash or hang before the boot is confirmed, as the boot try says
# A crash or hang after boot-complete.target would come after systemd-bless-boot: too late.
Before=boot-complete.target

[Service]
Type=oneshot
TimeoutStartSec=infinity
ExecStart=/usr/libexec/test-v3-block

[Install]
WantedBy=multi-user.target
"""


def bad_v3(tmp: Path, base: Path) -> Path:
    """A v3 of `base` (hello, signed for Secure Boot) that fails each of its boot tries."""
    app = tmp / "bad-v3"
    shutil.copytree(base, app, ignore=shutil.ignore_patterns("build"))
    config = yaml.safe_load((app / "appliance.yaml").read_text())
    config["kernel"]["cmdline"] = "panic=0"
    config["services"] = [*config["services"], "test-block.service"]
    config["health"] = [{"name": "by-try", "command": "/usr/libexec/test-v3-check",
                         "timeout": 5}]
    config["boot"] = {"deadline": DEADLINE}
    (app / "appliance.yaml").write_text(yaml.safe_dump(config))
    for rel, text, mode in (("usr/libexec/test-v3-mode", MODE, 0o755),
                            ("usr/libexec/test-v3-check", CHECK, 0o755),
                            ("usr/libexec/test-v3-block", BLOCK, 0o755),
                            ("usr/lib/systemd/system/test-block.service", BLOCK_UNIT, 0o644)):
        path = app / "overlay" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        path.chmod(mode)
    return app


def rollback_tries(device: Device, logs: Path) -> dict[str, Any]:
    """Boot the device that installed the bad v3 until it is back on v2."""
    result: dict[str, Any] = {"boots": [], "consoles": []}
    timings: list[dict[str, Any]] = []
    for attempt in range(1, 9):
        started = time.monotonic()
        name = f"rollback-{attempt}"
        with device.boot(logs, name) as vm:
            version, outcome = watch_boot(vm, V2_UP, timeout=900)
            if outcome == "early-panic":
                # QEMU 7.2's TCG race (FIELD-NOTES), before the initrd: on a trial boot of
                # v3, systemd-boot has already counted the try, and the boot did not come
                # up: for the device that is a reset. On v2 nothing was counted: boot again.
                print(f"{name}: emulator panic before the initrd")
                if version == "2.0":
                    continue
                outcome = "reset"
            result["boots"].append((version, outcome))
            # Figures for the notes, never asserted.
            timings.append({"version": version, "outcome": outcome,
                            "seconds": round(time.monotonic() - started, 1)})
            (logs / "rollback.json").write_text(json.dumps(timings) + "\n")
            if outcome == "up" and version == "2.0":
                vm.shell.login()
                result["status"] = json.loads(vm.shell.output("appsdk-status --json"))
                result["var"] = var_facts(vm.shell)
                result["esp"] = vm.shell.output("ls /efi/EFI/Linux").split()
                result["journal"] = vm.shell.output(
                    "journalctl -b -t appsdk --no-pager -o cat | tail -5")
                vm.shell.send("systemctl poweroff")
                vm.wait_exit(120)
                break
            vm.wait_exit(60)
        # vm.console_log: this boot's, or its retry's (see vmlib.start).
        result["consoles"].append(vm.console_log.read_text(errors="replace"))
    return result


def run(v1: appsdk.BuildResult, v2: appsdk.BuildResult, app: Path, signing_key: keys.SigningKey,
        keyset: secureboot.SecureBootKeys, port: int, work: Path,
        logs: Path) -> dict[str, dict[str, Any]]:
    """The whole story: {"update": its facts, "rollback": the tries' facts}. `app` is sealed
    (var.encrypt: tpm2), as v1 and v2 are: the device has a TPM."""
    v3 = appsdk.build(bad_v3(work, app), board="x86-uefi", version="3.0",
                      output=work / "build-v3", key_dir=signing_key.home,
                      update_url=f"http://10.0.2.2:{port}/")
    releases = make_releases(v1, v2, v3, signing_key, work / "releases")
    server = Publisher(work / "srv")
    httpd = serve_in_thread(server.root, port=port)
    device = Device(v1.image, keyset, work)
    try:
        facts = update_story(v1, releases, server, device, logs)
    finally:
        httpd.shutdown()
    install = facts["install_v3"]
    assert isinstance(install, dict)
    if install["status"] != 0:  # the tries would only show v2 booting
        return {"update": facts, "rollback": {"install": install}}
    return {"update": facts, "rollback": {"install": install,
                                          **rollback_tries(device, logs)}}
