"""appsdk flash / verify on real loop devices: content, GPT, bmap compatibility with
bmaptool in both directions, corruption, refusals that write nothing, interruption."""

from __future__ import annotations

import errno
import json
import mmap
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from loopdev import MiB, loop_device, make_build_dir, make_image, sha256_of_device

from appsdk import bmap
from appsdk.cli import main
from appsdk.errors import DeviceFailed, VerifyFailed
from appsdk.flash import flash, image_digest, open_source
from appsdk.provision_usb import provision_usb

APPSDK = [sys.executable, "-m", "appsdk.cli"]


def mapped_ranges_equal(image: Path, dev: str, block_map: bmap.Bmap) -> list[int]:
    """Block numbers of ranges whose bytes differ between image and device."""
    bad = []
    bs = block_map.block_size
    with image.open("rb") as a, open(dev, "rb") as b:
        for r in block_map.ranges:
            length = min((r.last + 1) * bs, block_map.image_size) - r.first * bs
            a.seek(r.first * bs)
            b.seek(r.first * bs)
            if a.read(length) != b.read(length):
                bad.append(r.first)
    return bad


def test_flash_writes_every_mapped_range_and_a_valid_gpt(tmp_path: Path) -> None:
    image = make_image(tmp_path / "disk.img")
    bmap.write(bmap.create(image), tmp_path / "disk.img.bmap")
    with loop_device(tmp_path / "dev", 256 * MiB) as dev:
        # Stale content everywhere first: flashing must not depend on a blank device.
        subprocess.run(["dd", "if=/dev/urandom", f"of={dev}", "bs=1M", "count=256",
                        "oflag=direct", "status=none"], check=True)
        assert main(["flash", str(image), dev, "--yes", "--allow-fixed"]) == 0
        block_map = bmap.parse(tmp_path / "disk.img.bmap")
        assert mapped_ranges_equal(image, dev, block_map) == []
        # sfdisk --verify reads the device's GPT (primary + backup at the image's end).
        check = subprocess.run(["sfdisk", "--verify", dev], capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr
        dump = subprocess.run(["sfdisk", "--json", dev], capture_output=True, text=True,
                              check=True)
        assert len(json.loads(dump.stdout)["partitiontable"]["partitions"]) == 2
        # The stale backup GPT area at the end of the larger device was cleared.
        with open(dev, "rb") as f:
            f.seek(256 * MiB - MiB)
            assert f.read(MiB) == bytes(MiB)


def test_bmaptool_accepts_our_bmap_and_we_accept_bmaptools(tmp_path: Path) -> None:
    image = make_image(tmp_path / "disk.img")
    ours = bmap.write(bmap.create(image), tmp_path / "ours.bmap")
    theirs = tmp_path / "theirs.bmap"
    subprocess.run(["bmaptool", "create", "-o", str(theirs), str(image)], check=True,
                   capture_output=True)
    assert bmap.parse(theirs).ranges == bmap.parse(ours).ranges
    with loop_device(tmp_path / "a", 256 * MiB) as a, loop_device(tmp_path / "b", 256 * MiB) as b:
        # bmaptool writes with our bmap (it verifies our checksums while copying) ...
        subprocess.run(["bmaptool", "copy", "--bmap", str(ours), str(image), a], check=True,
                       capture_output=True)
        # ... and we flash with bmaptool's (image without a sibling .bmap: pass it beside).
        shutil.copy(theirs, tmp_path / "disk.img.bmap")
        assert main(["flash", str(image), b, "--yes", "--allow-fixed"]) == 0
        assert sha256_of_device(a) == sha256_of_device(b)
        assert main(["verify", str(image), a]) == 0


def test_corrupted_block_fails_verification_loudly(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    image = make_image(tmp_path / "disk.img")
    with loop_device(tmp_path / "dev", 256 * MiB) as dev:
        assert main(["flash", str(image), dev, "--yes", "--allow-fixed"]) == 0
        capsys.readouterr()
        with open(dev, "r+b") as f:  # one byte in the second data region (61 MiB)
            f.seek(61 * MiB + 12345)
            byte = f.read(1)
            f.seek(61 * MiB + 12345)
            f.write(bytes([byte[0] ^ 0xFF]))
        assert main(["verify", str(image), dev]) == 8
        err = capsys.readouterr().err
        assert "verification FAILED" in err and f"bytes {60 * MiB}-" in err


def test_digest_matches_image(tmp_path: Path) -> None:
    image = make_image(tmp_path / "disk.img")
    with loop_device(tmp_path / "dev", 256 * MiB) as dev:
        out = subprocess.run([*APPSDK, "flash", str(image), dev, "--yes", "--allow-fixed",
                              "--json"], capture_output=True, text=True, check=True)
        result = json.loads(out.stdout.strip().splitlines()[-1])
        assert result["verified"] and result["sha256"] == image_digest(open_source(image))
        events = [json.loads(line) for line in out.stderr.splitlines()]
        assert any(e["event"] == "progress" and e["done"] == e["total"] for e in events)


def refused(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert main(args) == 7
    return capsys.readouterr().err


def test_refusals_write_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    build = make_build_dir(tmp_path / "rpi4-build", "rpi4")
    image = str(build / "demo_1.0.img")
    with loop_device(tmp_path / "small", 150 * MiB) as small, \
            loop_device(tmp_path / "dev", 256 * MiB) as dev:
        for d in (small, dev):
            subprocess.run(["dd", "if=/dev/urandom", f"of={d}", "bs=1M", "count=8",
                            "status=none"], check=True)
        before = {d: sha256_of_device(d) for d in (small, dev)}

        err = refused(["flash", image, small, "--yes", "--allow-fixed"], capsys)
        assert "too small" in err and "209715200" in err
        err = refused(["flash", str(build), dev, "--board", "x86-uefi", "--yes",
                       "--allow-fixed"], capsys)
        assert "built for board rpi4, not x86-uefi" in err
        err = refused(["flash", image, dev, "--yes"], capsys)
        assert "not removable" in err and "--allow-fixed" in err
        err = refused(["flash", image, str(tmp_path / "dev"), "--yes", "--allow-fixed"],
                      capsys)
        assert "is a regular file" in err
        # Not confirmed: stdin is no terminal and there is no --yes.
        err = refused(["flash", image, dev, "--allow-fixed"], capsys)
        assert "not confirmed" in err

        # Mounted: a filesystem on the device, mounted read-only (a rw mount writes itself).
        subprocess.run(["mkfs.ext4", "-q", "-F", dev], check=True)
        before[dev] = sha256_of_device(dev)
        mnt = tmp_path / "mnt"
        mnt.mkdir()
        subprocess.run(["mount", "-o", "ro,noload", dev, str(mnt)], check=True)
        try:
            err = refused(["flash", image, dev, "--yes", "--allow-fixed"], capsys)
            assert "mounted filesystems" in err and str(mnt) in err
        finally:
            subprocess.run(["umount", str(mnt)], check=True)
        assert {d: sha256_of_device(d) for d in (small, dev)} == before


def test_system_disk_is_refused_without_override(capsys: pytest.CaptureFixture[str],
                                                 tmp_path: Path) -> None:
    source = subprocess.run(["findmnt", "-nvo", "SOURCE", "/"], capture_output=True,
                            text=True).stdout.strip()
    if not source.startswith("/dev/"):
        pytest.skip(f"/ is not on a block device here ({source})")
    disk = subprocess.run(["lsblk", "-ndo", "PKNAME", source], capture_output=True,
                          text=True).stdout.strip()
    target = f"/dev/{disk}" if disk else source
    image = make_image(tmp_path / "disk.img")
    err = refused(["flash", str(image), target, "--yes", "--allow-fixed"], capsys)
    assert "holds the running system" in err


def test_fake_sata_disk_is_refused_and_usb_stick_is_a_candidate(tmp_path: Path) -> None:
    if not shutil.which("umockdev-run"):
        pytest.skip("umockdev not installed")
    devices = Path(__file__).with_name("disks.umockdev")
    image = make_image(tmp_path / "disk.img")
    listed = subprocess.run(["umockdev-run", "-d", str(devices), "--", *APPSDK, "devices",
                             "--all", "--json"], capture_output=True, text=True, check=True)
    by_name = {d["name"]: d for d in json.loads(listed.stdout)}
    assert by_name["sdb"]["candidate"] and by_name["sdb"]["bus"] == "usb"
    assert by_name["sdb"]["serial"] == "4C530001230105113172"
    assert not by_name["sda"]["candidate"]
    assert "not removable (bus ata)" in by_name["sda"]["refusals"][0]
    flash = subprocess.run(["umockdev-run", "-d", str(devices), "--", *APPSDK, "flash",
                            str(image), "/dev/sda", "--yes"], capture_output=True, text=True)
    assert flash.returncode == 7 and "Samsung SSD 870" in flash.stderr
    assert "Nothing was written" in flash.stderr


def large_image(tmp_path: Path) -> Path:
    """400 MiB with 280 MiB more data at 110 MiB: a flash long enough to act on mid-write."""
    image = make_image(tmp_path / "disk.img", 400)
    with image.open("r+b") as f:
        f.seek(110 * MiB)
        f.write(os.urandom(280 * MiB))
    return image


def test_interrupted_flash_leaves_no_partition_table(tmp_path: Path) -> None:
    image = large_image(tmp_path)
    with loop_device(tmp_path / "dev", 512 * MiB) as dev:
        # A first, complete flash: the device carries a valid GPT before the interruption.
        assert main(["flash", str(image), dev, "--yes", "--allow-fixed", "--no-verify"]) == 0
        assert subprocess.run(["sfdisk", "-d", dev], capture_output=True).returncode == 0
        proc = subprocess.Popen([*APPSDK, "flash", str(image), dev, "--yes", "--allow-fixed",
                                 "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        assert proc.stderr is not None
        for line in proc.stderr:
            if json.loads(line).get("phase") == "data":
                proc.kill()
                break
        assert proc.wait() == -9, "the flash finished before it could be interrupted"
        dump = subprocess.run(["sfdisk", "-d", dev], capture_output=True, text=True)
        assert dump.returncode != 0 and "does not contain a recognized partition table" in \
            dump.stderr
        probe = subprocess.run(["blkid", "-p", dev], capture_output=True, text=True)
        assert "PTTYPE" not in probe.stdout


def test_medium_losing_a_write_stops_the_flash_early(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A card that silently garbles one write: the read-back behind the writer catches it
    while the flash is still writing, the writer stops, and the device is left without a
    partition table (it had a valid one before)."""
    image = large_image(tmp_path)
    source = open_source(image)
    real_pwrite = os.pwrite
    offsets: list[int] = []

    def lossy(fd: int, data: Any, offset: int) -> int:
        offsets.append(offset)
        if offset == 2 * MiB:  # the first data range: one byte arrives flipped
            buf = mmap.mmap(-1, len(data))  # page-aligned, as O_DIRECT needs
            buf[:] = bytes(data)
            buf[100] ^= 0xFF
            return real_pwrite(fd, buf, offset)
        if offset > 2 * MiB:
            time.sleep(0.05)  # a card's pace: the verifier has time to catch up
        return real_pwrite(fd, data, offset)

    with loop_device(tmp_path / "dev", 512 * MiB) as dev:
        assert main(["flash", str(image), dev, "--yes", "--allow-fixed", "--no-verify"]) == 0
        assert subprocess.run(["sfdisk", "-d", dev], capture_output=True).returncode == 0
        monkeypatch.setattr(os, "pwrite", lossy)
        with pytest.raises(VerifyFailed, match=f"bytes {2 * MiB}-{14 * MiB - 1}"):
            flash(source, dev, allow_fixed=True)
        monkeypatch.undo()
        # (The device's tail was cleared before the data; count from the garbled write.)
        after = offsets[offsets.index(2 * MiB):]
        assert max(after) < 200 * MiB, f"the writer went on to byte {max(after)}"
        dump = subprocess.run(["sfdisk", "-d", dev], capture_output=True, text=True)
        assert dump.returncode != 0 and "does not contain a recognized partition table" in \
            dump.stderr


def test_card_failing_mid_flash_is_reported_and_the_bench_goes_on(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A write that returns EIO (a dying card, a reader pulled out): a clear error naming
    the device and the byte, no partition table left, and on the USB bench a FAILED line
    for that card instead of a crash that would stop the bench."""
    image = large_image(tmp_path)
    source = open_source(image)
    real_pwrite = os.pwrite

    def dying(fd: int, data: Any, offset: int) -> int:
        if 100 * MiB <= offset < 400 * MiB:  # (the device's tail is cleared first)
            raise OSError(errno.EIO, "Input/output error")
        return real_pwrite(fd, data, offset)

    class OneDisk:
        def __init__(self, path: str) -> None:
            self.paths = [path]

        def wait(self, timeout: float | None) -> str | None:
            return self.paths.pop() if self.paths else None

    with loop_device(tmp_path / "dev", 512 * MiB) as dev:
        assert main(["flash", str(image), dev, "--yes", "--allow-fixed", "--no-verify"]) == 0
        monkeypatch.setattr(os, "pwrite", dying)
        with pytest.raises(DeviceFailed,
                           match=f"writing {dev} failed at byte {100 * MiB}: Input/output"):
            flash(source, dev, allow_fixed=True)
        reports = provision_usb(source, OneDisk(dev), count=2, timeout=1, allow_fixed=True)
        monkeypatch.undo()
        assert len(reports) == 1 and not reports[0].ok
        assert reports[0].line().startswith(f"FAILED {dev}")
        assert "Input/output error" in reports[0].error
        dump = subprocess.run(["sfdisk", "-d", dev], capture_output=True, text=True)
        assert dump.returncode != 0 and "does not contain a recognized partition table" in \
            dump.stderr


def test_image_size_not_a_multiple_of_the_block_size(tmp_path: Path) -> None:
    """The last bmap range ends mid-block: padding is written as zeros and never hashed."""
    image = make_image(tmp_path / "disk.img", 120)
    with image.open("r+b") as f:
        f.truncate(120 * MiB + 1536)
    # The backup GPT moves into the final, partial block.
    subprocess.run(["sfdisk", "--relocate", "gpt-bak-std", str(image)], check=True,
                   capture_output=True)
    last = image.read_bytes()[120 * MiB:]
    assert len(last) == 1536 and last != bytes(1536)
    with loop_device(tmp_path / "dev", 256 * MiB) as dev:
        subprocess.run(["dd", "if=/dev/urandom", f"of={dev}", "bs=1M", "count=256",
                        "oflag=direct", "status=none"], check=True)
        assert main(["flash", str(image), dev, "--yes", "--allow-fixed"]) == 0
        assert main(["verify", str(image), dev]) == 0
        with open(dev, "rb") as d:
            d.seek(120 * MiB)
            tail = d.read(4096)
        assert tail[:1536] == last and tail[1536:] == bytes(4096 - 1536)
        assert subprocess.run(["sfdisk", "--verify", dev], capture_output=True).returncode == 0
