"""provision usb --wait: disks that appear one after the other are each flashed and
verified. Loop devices stand in for USB disks: the kernel announces them with the same
uevents, and the watcher's match function is the only thing the test replaces."""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path

from loopdev import MiB, make_image

from appsdk.deliver.blockdev import BlockDevice
from appsdk.deliver.flash import image_digest, open_source
from appsdk.deliver.provision_usb import DeviceReport, UdevWatcher, provision_usb


def test_two_disks_plugged_one_after_the_other(tmp_path: Path) -> None:
    image = make_image(tmp_path / "disk.img")
    source = open_source(image)
    backings = [tmp_path / f"stick{i}" for i in (1, 2)]
    for b in backings:
        b.write_bytes(b"")
        subprocess.run(["truncate", "-s", str(256 * MiB), str(b)], check=True)

    def ours(dev: BlockDevice) -> bool:
        return any(dev.model == f"loop over {b}" for b in backings)

    attached: list[str] = []

    def plug_in() -> None:
        for b in backings:
            time.sleep(1.5)
            attached.append(subprocess.run(
                ["losetup", "--find", "--show", "--direct-io=on", str(b)],
                check=True, capture_output=True, text=True).stdout.strip())

    watcher = UdevWatcher(match=ours)  # started before the disks exist
    plugger = threading.Thread(target=plug_in)
    plugger.start()
    seen: list[DeviceReport] = []
    try:
        reports = provision_usb(source, watcher, count=2, timeout=60, allow_fixed=True,
                                on_report=seen.append)
    finally:
        plugger.join()
        for dev in attached:
            subprocess.run(["losetup", "-d", dev], check=False)
    assert [r.device for r in reports] == attached
    assert seen == reports
    want = image_digest(source)
    for r in reports:
        assert r.ok, r.error
        assert r.sha256 == want
        assert r.line().startswith("OK ") and want in r.line()
    # What was written is the image, on both backing files.
    for b in backings:
        with b.open("rb") as f, image.open("rb") as img:
            assert f.read(2 * MiB) == img.read(2 * MiB)


def test_no_disk_times_out_with_no_reports(tmp_path: Path) -> None:
    source = open_source(make_image(tmp_path / "disk.img"))
    watcher = UdevWatcher(match=lambda dev: False)
    start = time.monotonic()
    assert provision_usb(source, watcher, count=1, timeout=1.5) == []
    assert 1.4 < time.monotonic() - start < 10
