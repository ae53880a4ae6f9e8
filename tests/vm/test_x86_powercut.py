"""Power cuts during and after an update (issue 12), on one device. A v1 device runs
sysupdate against a signed v2 release and QEMU is killed (SIGKILL: whatever the guest had
not written out is lost) twice: first 2 s into the UKI's download, then, on the next boot,
at the moment sysupdate reports success. After each cut the device comes up on a working
version, and it ends on v2 after at most one more update run.

Before issue 12 a cut 9-12 s after the UKI write began, when sysupdate had already exited
0, left the new UKI's directory entry without its clusters: the device booted v1 for good,
and the next update found nothing to do. (The two cuts ran on two devices before: five or
six boots where this takes three or four.)"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from vmlib import SYSUPDATE, Vm, disk_copy, ovmf_vars, sysupdate_update, vm_boot, watch_boot

import appsdk
from appsdk.core.runner import Runner
from appsdk.trust import keys
from appsdk.update.release import release
from appsdk.update.serve import serve_in_thread

GiB = 1024**3
UP = r"appsdk: IMAGE_ID=hello IMAGE_VERSION=\S+ booted"
UKI_ACQUIRE = r"Acquiring \S*hello_2\.0\.efi\.xz"
SUCCESS = r"Successfully installed update '2\.0'"
# Cuts 10 s (stop 11) and 30 s (stops 12-15) after success passed too; they are left out to
# keep the suite inside CI's time: a cut at the success line is the harder case (less
# written out), and the one that lost the UKI before issue 12.


@pytest.fixture(scope="module")
def server(hello_v2: appsdk.BuildResult, signing_key: keys.SigningKey, update_port: int,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    out = tmp_path_factory.mktemp("powercut-release") / "www"
    release(out, [hello_v2.output], signing_key, Runner())
    httpd = serve_in_thread(out, port=update_port)
    yield out
    httpd.shutdown()


def update_and_cut(vm: Vm, trigger: str, delay: float) -> None:
    """Start sysupdate on a booted device and cut its power `delay` s after `trigger`."""
    sh = vm.shell
    sh.login()
    sh.run("/usr/lib/systemd/systemd-networkd-wait-online --timeout=90", timeout=120)
    # The marker is computed on the device, so the echoed command line cannot match it.
    sh.send(f"{SYSUPDATE} update 2>&1; echo UPDATE-ENDED-$((6*7))")
    seen = sh.expect(f"{trigger}|UPDATE-ENDED-42", 900).group(0)
    assert seen != "UPDATE-ENDED-42", f"the update ended before the moment of the cut ({trigger})"
    time.sleep(delay)
    vm.proc.kill()  # the power cut
    vm.proc.wait(30)


@pytest.fixture(scope="module")
def cuts(hello_v1: appsdk.BuildResult, server: Path, tmp_path_factory: pytest.TempPathFactory,
         vm_logs: Path) -> dict[str, object]:
    work = tmp_path_factory.mktemp("powercut")
    disk = disk_copy(hello_v1.image, work / "disk.img", 6 * GiB)
    vars_fd = ovmf_vars(work)
    facts: dict[str, object] = {}
    with vm_boot(disk, vars_fd, vm_logs, "powercut-1") as vm:
        vm.shell.expect(UP, 300)
        update_and_cut(vm, UKI_ACQUIRE, 2.0)

    # Cut in the UKI's download: sysupdate had not reported anything installed.
    with vm_boot(disk, vars_fd, vm_logs, "powercut-2") as vm:
        facts["boot2"] = watch_boot(vm, UP, timeout=600)
        if facts["boot2"] != ("1.0", "up"):
            return facts
        # The second run starts from what the first left (a half-written slot), and is cut
        # the moment it reports success.
        update_and_cut(vm, SUCCESS, 0.0)

    with vm_boot(disk, vars_fd, vm_logs, "powercut-3") as vm:
        version, outcome = watch_boot(vm, UP, timeout=600)
        facts["boot3"] = (version, outcome)
        if outcome != "up":
            return facts
        sh = vm.shell
        sh.login()
        sh.run("/usr/lib/systemd/systemd-networkd-wait-online --timeout=90", timeout=120)
        # One more update run: it installs v2 if the cut lost it, and has nothing to do
        # if v2 is already there.
        facts["rerun"] = sysupdate_update(sh)
        if version == "2.0":  # already where it must end: no fourth boot needed
            facts["final"] = (version, outcome)
            facts["status"] = sh.output("appsdk-status")
            return facts
        sh.send("sync; systemctl poweroff")
        vm.wait_exit(120)

    with vm_boot(disk, vars_fd, vm_logs, "powercut-4") as vm:
        facts["final"] = watch_boot(vm, UP, timeout=600)
        if facts["final"][1] == "up":  # type: ignore[index]
            vm.shell.login()
            facts["status"] = vm.shell.output("appsdk-status")
            vm.shell.send("systemctl poweroff")
            vm.wait_exit(120)
    return facts


def test_a_cut_in_the_download_leaves_v1_running(cuts: dict[str, object]) -> None:
    # Nothing was reported installed: the half-downloaded v2 must not be what boots.
    assert cuts["boot2"] == ("1.0", "up"), cuts


def test_a_cut_at_success_still_boots_a_working_version(cuts: dict[str, object]) -> None:
    version, outcome = cuts["boot3"]  # type: ignore[misc]
    assert outcome == "up", f"after the cut the device did not come up ({version}): {cuts}"
    assert version in ("1.0", "2.0")


def test_one_more_update_run_ends_on_v2(cuts: dict[str, object]) -> None:
    status, output = cuts["rerun"]  # type: ignore[misc]
    assert status == 0, output
    if cuts["boot3"] == ("2.0", "up"):
        assert "No update needed" in output, output
    assert cuts["final"] == ("2.0", "up"), cuts
    assert "running:   2.0" in str(cuts["status"]), cuts["status"]
