"""Boot confirmation, proven in QEMU: a v1 device updates to a bad v2 and gives it its 3
boot tries. v2 fails in a different way on each try, chosen by the try systemd-boot counts
(LoaderBootCountPath): on the first its health check fails, on the second the kernel
panics (panic=0: only the hardware watchdog resets it), on the third it never confirms (a
unit before boot-complete.target hangs: the boot deadline resets it). Then systemd-boot
falls back to v1 by itself, and appsdk-status on v1 reports v2 as failed. Each outcome is
read off the console.

One build and one update for the three ways a trial boot fails (three builds and three
updates before): the failure modes are the device's, not the build's."""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from vmlib import SB_EMULATOR, disk_copy, sb_vars, sysupdate_update, vm_boot, watch_boot

import appsdk
from appsdk.core.runner import Runner
from appsdk.trust import keys, secureboot
from appsdk.update.release import release
from appsdk.update.serve import serve_in_thread

GiB = 1024**3
V1_UP = r"appsdk: IMAGE_ID=hello IMAGE_VERSION=1\.0 booted"
TRIES = 3  # the shared v1's default

# Which way this trial boot of v2 fails, from the try systemd-boot counted for it: the UKI
# it booted is named hello_2.0+LEFT-DONE.efi (DONE = 1 on the first try).
MODE = """#!/bin/bash
# efivarfs files cannot seek: read through a pipe, past the 4 attribute bytes.
var=/sys/firmware/efi/efivars/LoaderBootCountPath-4a67b082-0a4c-41cf-b6c7-440b29bb8c4f
path=$(cat "$var" | tail -c +5 | tr -d '\\0')
try=${path##*-}; try=${try%.efi}
case $try in 1) mode=fail ;; 2) mode=panic ;; *) mode=hang ;; esac
echo "test-v2: try $try: $mode" > /dev/console
echo "$mode"
"""

# The health check fails only in mode fail (its 5 s of retries run out); otherwise it passes
# and what stops the boot is the unit below.
CHECK = """#!/bin/bash
[ "$(/usr/libexec/test-v2-mode)" != fail ]
"""

BLOCK = """#!/bin/bash
case $(/usr/libexec/test-v2-mode) in
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
ExecStart=/usr/libexec/test-v2-block

[Install]
WantedBy=multi-user.target
"""


def bad_v2(tmp: Path, base: Path) -> Path:
    """A v2 of `base` (hello, signed for Secure Boot) that fails each of its boot tries."""
    app = tmp / "bad-v2"
    shutil.copytree(base, app, ignore=shutil.ignore_patterns("build"))
    config = yaml.safe_load((app / "appliance.yaml").read_text())
    config["kernel"]["cmdline"] = "panic=0"
    config["services"] = [*config["services"], "test-block.service"]
    config["health"] = [{"name": "by-try", "command": "/usr/libexec/test-v2-check",
                         "timeout": 5}]
    config["boot"] = {"deadline": 120}
    (app / "appliance.yaml").write_text(yaml.safe_dump(config))
    for rel, text, mode in (("usr/libexec/test-v2-mode", MODE, 0o755),
                            ("usr/libexec/test-v2-check", CHECK, 0o755),
                            ("usr/libexec/test-v2-block", BLOCK, 0o755),
                            ("usr/lib/systemd/system/test-block.service", BLOCK_UNIT, 0o644)):
        path = app / "overlay" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        path.chmod(mode)
    return app


@pytest.fixture(scope="module")
def rollback(hello_v1: appsdk.BuildResult, hello_app: Path, signing_key: keys.SigningKey,
             sb_keyset: secureboot.SecureBootKeys, update_port: int,
             tmp_path_factory: pytest.TempPathFactory, vm_logs: Path) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("rollback")
    bad = appsdk.build(bad_v2(tmp, hello_app), board="x86-uefi", version="2.0",
                       output=tmp / "build",
                       key_dir=signing_key.home, update_url=f"http://10.0.2.2:{update_port}/")
    srv = tmp / "srv"
    release(srv, [hello_v1.output, bad.output], signing_key, Runner())
    httpd = serve_in_thread(srv, port=update_port)
    try:
        return run(hello_v1, sb_keyset, tmp, vm_logs)
    finally:
        httpd.shutdown()


def run(v1: appsdk.BuildResult, keyset: secureboot.SecureBootKeys, tmp: Path,
        logs: Path) -> dict[str, Any]:
    disk = disk_copy(v1.image, tmp / "disk.img", 6 * GiB)
    # Under Secure Boot (the firmware checks v1 and every try of the signed bad v2).
    vars_fd = sb_vars(tmp, keyset)
    result: dict[str, Any] = {"boots": [], "consoles": []}
    timings: list[dict[str, Any]] = []
    with vm_boot(disk, vars_fd, logs, "rollback-0", emulator=SB_EMULATOR) as vm:
        vm.shell.expect(V1_UP, 300)
        vm.shell.login()
        vm.shell.run("/usr/lib/systemd/systemd-networkd-wait-online --timeout=90", timeout=120)
        status, out = sysupdate_update(vm.shell)
        assert status == 0, out
        vm.shell.send("sync; systemctl poweroff")
        vm.wait_exit(120)

    for attempt in range(1, 9):
        started = time.monotonic()
        name = f"rollback-{attempt}"
        with vm_boot(disk, vars_fd, logs, name, emulator=SB_EMULATOR) as vm:
            version, outcome = watch_boot(vm, V1_UP, timeout=900)
            if outcome == "early-panic":
                # QEMU 7.2's TCG race (FIELD-NOTES), before the initrd: on a trial boot of
                # v2, systemd-boot has already counted the try, and the boot did not come
                # up: for the device that is a reset. On v1 nothing was counted: boot again.
                print(f"{name}: emulator panic before the initrd")
                if version == "1.0":
                    continue
                outcome = "reset"
            result["boots"].append((version, outcome))
            # Figures for the notes, never asserted.
            timings.append({"version": version, "outcome": outcome,
                            "seconds": round(time.monotonic() - started, 1)})
            (logs / "rollback.json").write_text(json.dumps(timings) + "\n")
            if outcome == "up" and version == "1.0":
                vm.shell.login()
                result["status"] = json.loads(vm.shell.output("appsdk-status --json"))
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


def test_bad_update_uses_its_tries_then_v1_runs(rollback: dict[str, Any]) -> None:
    # Exactly TRIES boots of v2, each ending in a reset, then systemd-boot picks v1 on its own.
    assert rollback["boots"] == [("2.0", "reset")] * TRIES + [("1.0", "up")], rollback["boots"]
    status = rollback["status"]
    assert status["running"] == "1.0" and status["blessed"] is True
    assert status["failed"] == ["2.0"]
    assert status["installed"] == ["1.0", "2.0"]
    assert sorted(rollback["esp"]) == ["hello_1.0.efi", f"hello_2.0+0-{TRIES}.efi"]
    assert "used up its boot tries" in rollback["journal"]


def test_every_try_and_the_fallback_ran_under_secure_boot(rollback: dict[str, Any]) -> None:
    for console in rollback["consoles"]:
        assert "EFI stub: UEFI Secure Boot is enabled." in console


# Per try: the mode v2 chose, what its console must show, and what it must not. The last
# lines before a reset may be lost with the emulator (the console log ends where the process
# did), so the signs are what comes first: the check's verdict, the panic, the start of
# systemd-shutdown.
SHUTDOWN = "systemd-shutdown[1]:"
SIGNS = {
    "fail": ("health check failed on trial boot of 2.0", ["Kernel panic - not syncing"]),
    "panic": ("Kernel panic - not syncing: sysrq triggered crash",  # reset by the watchdog
              ["health check failed", SHUTDOWN]),
    "hang": (SHUTDOWN,  # reboot-force at the deadline
             ["health check failed", "Kernel panic - not syncing"]),
}
DEADLINE = 120  # s, bad_v2's boot.deadline


def shutdown_started(console: str) -> float:
    """The kernel's timestamp of the first systemd-shutdown line (seconds since boot)."""
    match = re.search(r"\[\s*(\d+\.\d+)\] systemd-shutdown\[1\]:", console)
    assert match, "no systemd-shutdown line"
    return float(match.group(1))


@pytest.mark.parametrize("attempt, mode", [(1, "fail"), (2, "panic"), (3, "hang")],
                         ids=["check-fails", "kernel-panics", "never-confirms"])
def test_each_try_fails_its_own_way_and_is_reset(rollback: dict[str, Any], attempt: int,
                                                 mode: str) -> None:
    """A failing check reboots at once, a panic is reset only by the watchdog, a boot that
    never confirms only by the deadline: each try's console shows its own cause and no
    other."""
    console = rollback["consoles"][attempt - 1]
    assert f"test-v2: try {attempt}: {mode}" in console
    sign, absent = SIGNS[mode]
    assert sign in console
    for other in absent:
        assert other not in console, (mode, other)
    if mode == "hang":  # nothing but the deadline asked for this reboot, and not before it
        assert shutdown_started(console) >= DEADLINE, shutdown_started(console)
