"""appsdk flash / verify on real loop devices: content, GPT, bmap compatibility with
bmaptool in both directions, corruption, refusals that write nothing (bad devices and bad
inputs), interruption."""

from __future__ import annotations

import errno
import json
import mmap
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from loopdev import (
    MiB,
    bmap_v13,
    loop_device,
    make_build_dir,
    make_image,
    sha256_of_device,
    sparse_copy,
)

from appsdk.cli import main
from appsdk.core.errors import ConfigError, DeviceFailed, VerifyFailed
from appsdk.deliver.flash import flash, image_digest, open_source
from appsdk.deliver.provision_usb import provision_usb
from appsdk.image import bmap

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


# --- inputs that do not describe each other: refused before the device is opened -------

PART2_DATA = 60 * MiB  # make_image: random data inside partition 2 (49-97 MiB)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One sparse image and its bmap, copied (holes kept) by each case."""
    directory = tmp_path_factory.mktemp("pristine")
    image = make_image(directory / "disk.img")
    bmap.write(bmap.create(image), directory / "disk.img.bmap")
    return directory


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """A loop device full of stale data, and its sha256 (each case asserts it unchanged)."""
    backing = tmp_path_factory.mktemp("target") / "dev"
    with loop_device(backing, 256 * MiB) as dev:
        subprocess.run(["dd", "if=/dev/urandom", f"of={dev}", "bs=1M", "count=256",
                        "oflag=direct", "status=none"], check=True)
        yield dev, sha256_of_device(dev)


def bare_copy(pristine: Path, tmp_path: Path) -> tuple[Path, Path]:
    image = sparse_copy(pristine / "disk.img", tmp_path / "disk.img")
    return image, Path(shutil.copy(pristine / "disk.img.bmap", tmp_path / "disk.img.bmap"))


def reseal(path: Path, pattern: str, replacement: str) -> None:
    """Edit the bmap's text and give it a valid file checksum again: what is refused is
    then the content, not the corruption."""
    text = path.read_text()
    changed = re.sub(pattern, replacement, text, count=1, flags=re.S)
    assert changed != text, pattern
    path.write_text(bmap.seal(changed))


def drop_ranges(path: Path, keep: Callable[[bmap.Range], bool]) -> None:
    """Remove ranges from the bmap, with MappedBlocksCount and the checksum made to agree."""
    old = bmap.parse(path)
    ranges = tuple(r for r in old.ranges if keep(r))
    assert len(ranges) < len(old.ranges)
    bmap.write(bmap.Bmap(old.image_size, old.block_size, ranges), path)


def case_empty_blockmap(image: Path, bmap_file: Path) -> None:
    reseal(bmap_file, r"<MappedBlocksCount> \d+ (.*)<BlockMap>.*</BlockMap>",
           r"<MappedBlocksCount> 0 \1<BlockMap></BlockMap>")


def case_truncated(image: Path, bmap_file: Path) -> None:
    text = bmap_file.read_text()
    bmap_file.write_text(text[:text.index("<BmapFileChecksum>")])


def case_no_file_checksum(image: Path, bmap_file: Path) -> None:
    bmap_file.write_text(re.sub(r"<BmapFileChecksum>.*</BmapFileChecksum>", "",
                                bmap_file.read_text()))


def case_changed_image(image: Path, bmap_file: Path) -> None:
    with image.open("r+b") as f:
        f.seek(PART2_DATA + 4321)
        byte = f.read(1)
        f.seek(PART2_DATA + 4321)
        f.write(bytes([byte[0] ^ 1]))


def case_wrong_range_checksum(image: Path, bmap_file: Path) -> None:
    reseal(bmap_file, r'(<Range chksum=")[0-9a-f](.*?)(">\s*15360)', r"\g<1>0\2\3"
           if 'chksum="0' not in bmap_file.read_text() else r"\g<1>1\2\3")


def case_reversed_range(image: Path, bmap_file: Path) -> None:
    reseal(bmap_file, r"> 15360-20479 <", "> 20479-15360 <")


def case_range_past_end(image: Path, bmap_file: Path) -> None:
    blocks = bmap.parse(bmap_file).blocks_count
    reseal(bmap_file, rf"-{blocks - 1} <", f"-{blocks} <")


def case_block_size_1(image: Path, bmap_file: Path) -> None:
    reseal(bmap_file, r"<BlockSize> 4096 </BlockSize>", "<BlockSize> 1 </BlockSize>")


def case_mapped_count_wrong(image: Path, bmap_file: Path) -> None:
    reseal(bmap_file, r"<MappedBlocksCount> (\d+)", r"<MappedBlocksCount> 1\1")


def case_partition_missing(image: Path, bmap_file: Path) -> None:
    drop_ranges(bmap_file, lambda r: not 49 * MiB <= r.first * 4096 < 97 * MiB)


def case_gpt_head_missing(image: Path, bmap_file: Path) -> None:
    drop_ranges(bmap_file, lambda r: r.first != 0)


def case_image_shorter_than_its_gpt(image: Path, bmap_file: Path) -> None:
    with image.open("r+b") as f:
        f.truncate(image.stat().st_size - MiB)
    bmap.write(bmap.create(image), bmap_file)  # a bmap that agrees with the short image


BARE_CASES: list[tuple[Callable[[Path, Path], None], str, str]] = [
    (case_empty_blockmap, "bmap", "the block map lists no ranges"),
    (case_truncated, "bmap", "not well-formed XML"),
    (case_no_file_checksum, "bmap", "no <BmapFileChecksum>: the bmap is incomplete"),
    (case_changed_image, "image", r"1 of \d+ mapped ranges differ from the bmap .*: blocks "
     r"15360-20479 .*changed after its bmap was made"),
    (case_wrong_range_checksum, "image", r"1 of \d+ mapped ranges differ"),
    (case_reversed_range, "bmap", "ends before it starts"),
    (case_range_past_end, "bmap", "lies past the image's end"),
    (case_block_size_1, "bmap", "BlockSize 1 is not a power of two"),
    (case_mapped_count_wrong, "bmap", "MappedBlocksCount 1\\d+ does not match its ranges"),
    (case_partition_missing, "bmap", f"holds data at byte {PART2_DATA} \\(partition 2, "
     "linux-generic\\) that the bmap does not map"),
    (case_gpt_head_missing, "bmap", "does not map the protective MBR and primary GPT header"),
    (case_image_shorter_than_its_gpt, "image", "shorter than its partition table"),
]


def refused_input(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    code = main(args)
    out, err = capsys.readouterr()
    assert code == ConfigError.exit_code, err
    assert "matches" not in out and "flashed" not in out
    return err


@pytest.mark.parametrize(("make", "blamed", "message"), BARE_CASES,
                         ids=[c[0].__name__.removeprefix("case_") for c in BARE_CASES])
def test_bad_inputs_are_refused_and_the_device_is_untouched(
        pristine: Path, target: tuple[str, str], tmp_path: Path,
        capsys: pytest.CaptureFixture[str], make: Callable[[Path, Path], None],
        blamed: str, message: str) -> None:
    dev, before = target
    image, bmap_file = bare_copy(pristine, tmp_path)
    make(image, bmap_file)
    named = str(bmap_file if blamed == "bmap" else image)
    for command in (["flash", str(image), dev, "--yes", "--allow-fixed"],
                    ["verify", str(image), dev]):
        err = refused_input(command, capsys)
        assert re.search(message, err), err
        assert f"appsdk: error: {named}: " in err, err
    with pytest.raises(ConfigError):
        open_source(image)  # (what provision usb calls first)
    assert sha256_of_device(dev) == before


def test_build_inputs_must_be_what_build_json_records(
        target: tuple[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dev, before = target
    build = make_build_dir(tmp_path / "build", "x86-uefi")
    image, bmap_file, record = (build / "demo_1.0.img", build / "demo_1.0.img.bmap",
                                build / "build.json")
    flash_it = ["flash", str(build), dev, "--yes", "--allow-fixed"]
    good = bmap_file.read_bytes()

    # A valid bmap of the same image, but not the one the build wrote (8 KiB blocks).
    bmap.write(bmap.create(image, block_size=8192), bmap_file)
    err = refused_input(flash_it, capsys)
    assert f"{bmap_file}: not the bmap this build wrote" in err
    bmap_file.unlink()
    err = refused_input(flash_it, capsys)
    assert f"{bmap_file}: build.json names this bmap, but it is missing" in err
    bmap_file.write_bytes(good)

    # The image cut short: build.json's size says so before anything else is read.
    size = image.stat().st_size
    with image.open("r+b") as f:
        f.seek(size - 4096)
        tail = f.read()
        f.truncate(size - 4096)
    err = refused_input(flash_it, capsys)
    assert f"{image}: the image has {size - 4096} bytes, build.json records {size}" in err
    with image.open("r+b") as f:
        f.seek(size - 4096)
        f.write(tail)
    assert open_source(build).bmap_file == bmap_file  # restored: accepted again

    # build.json itself: garbage, {}, and names that would leave the directory.
    original = record.read_bytes()
    for raw, message in ((b"\xff garbage", ": not UTF-8"), (b"garbage", ":1: not JSON"),
                         (b"{}", ": id: is missing"),
                         (original.replace(b'"demo_1.0.img.bmap"', b'"../../x"'),
                          ": artifacts.bmap.file: '../../x' is not a plain file name")):
        record.write_bytes(raw)
        err = refused_input(flash_it, capsys)
        assert f"{record}{message}" in err, err
    record.write_bytes(original)
    assert sha256_of_device(dev) == before


def test_bmap_1_3_with_sha1_flashes_as_bmaptool_does_and_verifies_sha1(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image = make_image(tmp_path / "disk.img")
    old = tmp_path / "disk.img.bmap"
    old.write_text(bmap_v13(bmap.create(image, checksum_type="sha1")))
    with loop_device(tmp_path / "a", 256 * MiB) as a, \
            loop_device(tmp_path / "b", 256 * MiB) as b:
        # The oracle copies with the 1.3 file (it checks the sha1s itself) ...
        subprocess.run(["bmaptool", "copy", "--bmap", str(old), str(image), a], check=True,
                       capture_output=True)
        # ... and so do we; the mapped ranges agree byte for byte with the image.
        assert main(["flash", str(image), b, "--yes", "--allow-fixed"]) == 0
        block_map = bmap.parse(old)
        assert block_map.checksum_type == "sha1"
        assert mapped_ranges_equal(image, b, block_map) == []
        assert mapped_ranges_equal(image, a, block_map) == []
        assert main(["verify", str(image), b]) == 0
        assert "matches" in capsys.readouterr().out
        with open(b, "r+b") as f:  # one flipped byte: the sha1 read-back must see it
            f.seek(PART2_DATA + 99)
            byte = f.read(1)
            f.seek(PART2_DATA + 99)
            f.write(bytes([byte[0] ^ 0xFF]))
        assert main(["verify", str(image), b]) == VerifyFailed.exit_code
        err = capsys.readouterr().err
        assert "verification FAILED" in err and f"bytes {PART2_DATA}-" in err


def test_an_image_changed_during_the_flash_is_blamed_not_the_card(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """open_source proved the image; if it changes afterwards, the read-back mismatch names
    the image (and the head is cleared), never 'the medium may be failing'."""
    image = make_image(tmp_path / "disk.img")
    source = open_source(image)
    with image.open("r+b") as f:
        f.seek(PART2_DATA + 5)
        f.write(b"changed")
    with loop_device(tmp_path / "dev", 256 * MiB) as dev:
        with pytest.raises(ConfigError, match="changed while it was being read") as e:
            flash(source, dev, allow_fixed=True)
        assert str(e.value).startswith(f"{image}: ") and "failing" not in str(e.value.hint)
        dump = subprocess.run(["sfdisk", "-d", dev], capture_output=True, text=True)
        assert dump.returncode != 0
