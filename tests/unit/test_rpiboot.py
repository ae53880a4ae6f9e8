"""When the USB bench runs rpiboot: for a Compute Module's boot ROM appearing, from udev's
or the kernel's properties, once per module, and without stalling on a failure."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from appsdk.core.errors import CommandTimeout
from appsdk.core.progress import RecordingReporter
from appsdk.core.runner import FakeRunner, Result
from appsdk.deliver.provision_usb import RPIBOOT_TIMEOUT_S, maybe_rpiboot, usb_ids

# The same CM4, as udevd reports it and as the bare kernel uevent does.
UDEV = {"DEVTYPE": "usb_device", "ID_VENDOR_ID": "0a5c", "ID_MODEL_ID": "2711",
        "PRODUCT": "a5c/2711/0"}
KERNEL = {"DEVTYPE": "usb_device", "PRODUCT": "a5c/2711/0", "BUSNUM": "001"}


def usb_device(root: Path, name: str, vid: str, pid: str) -> Path:
    path = root / name
    path.mkdir(parents=True)
    (path / "idVendor").write_text(vid + "\n")
    (path / "idProduct").write_text(pid + "\n")
    return path


def test_ids_from_udev_or_from_the_kernel_alone() -> None:
    assert usb_ids(UDEV) == ("0a5c", "2711")
    assert usb_ids(KERNEL) == ("0a5c", "2711")
    assert usb_ids({"DEVTYPE": "usb_device", "PRODUCT": "2e8a/3/100"}) == ("2e8a", "0003")
    # The module's interfaces carry PRODUCT too: one rpiboot per device, not per interface.
    assert usb_ids({**KERNEL, "DEVTYPE": "usb_interface"}) is None
    assert usb_ids({"DEVTYPE": "usb_device", "PRODUCT": "garbage"}) is None


def test_rpiboot_runs_for_a_module_in_boot_mode(tmp_path: Path) -> None:
    runner, events = FakeRunner(), RecordingReporter()
    sys_path = usb_device(tmp_path, "1-1.3", "0a5c", "2711")
    directory = Path("/opt/usbboot/mass-storage-gadget64")
    assert maybe_rpiboot("add", KERNEL, sys_path, runner, directory, events)
    assert [r.argv for r in runner.history] == [("rpiboot", "-d", str(directory))]
    assert "1-1.3: running rpiboot" in events.events[0].message


def test_no_rpiboot_for_other_devices_removals_or_a_module_already_booted(
        tmp_path: Path) -> None:
    runner, events = FakeRunner(), RecordingReporter()
    module = usb_device(tmp_path, "1-1.3", "0a5c", "2711")
    keyboard = usb_device(tmp_path, "1-1.4", "046d", "c31c")
    assert not maybe_rpiboot("remove", KERNEL, module, runner, None, events)
    assert not maybe_rpiboot("add", {"DEVTYPE": "usb_device", "PRODUCT": "46d/c31c/0"},
                             keyboard, runner, None, events)
    # rpiboot's own second stage re-enumerates the module; by the time that queued "add"
    # is read, the module is a mass-storage gadget under another path: no second rpiboot.
    assert not maybe_rpiboot("add", KERNEL, tmp_path / "1-1.3-gone", runner, None, events)
    usb_device(tmp_path, "1-1.5", "0525", "a4a5")  # the gadget (Linux mass storage)
    assert not maybe_rpiboot("add", KERNEL, tmp_path / "1-1.5", runner, None, events)
    assert runner.history == [] and events.events == []


def test_failing_rpiboot_is_reported_and_the_bench_goes_on(tmp_path: Path) -> None:
    runner = FakeRunner(answers={"rpiboot": Result(("rpiboot",), 1, "",
                                                   "Failed to open the requested device", 0.1)})
    events = RecordingReporter()
    sys_path = usb_device(tmp_path, "2-1", "0a5c", "2712")
    assert not maybe_rpiboot("add", {**KERNEL, "PRODUCT": "a5c/2712/0"}, sys_path, runner,
                             None, events)
    last = events.events[-1].message
    assert "rpiboot FAILED for the module at 2-1" in last
    assert "Failed to open the requested device" in last and "nRPIBOOT" in last


def test_hanging_rpiboot_is_given_up_on(tmp_path: Path) -> None:
    class Hanging(FakeRunner):
        def run(self, argv: Sequence[str | os.PathLike[str]], **kwargs: object) -> Result:
            self.timeouts.append(kwargs.get("timeout"))
            raise CommandTimeout(f"command timed out after {kwargs.get('timeout')}s: rpiboot")

    runner, events = Hanging(), RecordingReporter()
    runner.timeouts = []
    sys_path = usb_device(tmp_path, "1-2", "0a5c", "2711")
    assert not maybe_rpiboot("add", UDEV, sys_path, runner, None, events)
    assert runner.timeouts == [RPIBOOT_TIMEOUT_S]
    assert "rpiboot FAILED" in events.events[-1].message
