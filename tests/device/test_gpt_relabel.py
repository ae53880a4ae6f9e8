"""gpt_set_label (appsdk-lib, the device's way to mark a damaged slot _empty) on a real
block device: a loop device with partitions, the real /sys, 512- and 4096-byte sectors."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

LIB = Path(str(resources.files("appsdk") / "data" / "device" / "appsdk-lib"))
MiB = 1024 * 1024
LABELS = ["esp", "usr_1.0", "usr_2.0", "verity_2.0"]


@contextlib.contextmanager
def gpt_loop(backing: Path, sector: int) -> Iterator[str]:
    """A loop device with a GPT of four partitions (sfdisk), each filled with its own bytes."""
    with backing.open("wb") as f:
        f.truncate(64 * MiB)
    dev = subprocess.run(["losetup", "--find", "--show", "--partscan", "--sector-size",
                          str(sector), str(backing)],
                         check=True, capture_output=True, text=True).stdout.strip()
    try:
        script = "label: gpt\n" + "".join(f"size=8M, name={n}\n" for n in LABELS)
        subprocess.run(["sfdisk", "-q", dev], input=script, text=True, check=True)
        # A kernel without a GPT parser (some containers) gets the partitions from partx.
        if not Path(f"{dev}p1").exists():
            subprocess.run(["partx", "-a", dev], check=True)
        for number in range(1, len(LABELS) + 1):
            with open(f"{dev}p{number}", "r+b") as part:
                part.write(bytes([number]) * MiB)
        yield dev
    finally:
        subprocess.run(["partx", "-d", dev], check=False, capture_output=True)
        subprocess.run(["losetup", "-d", dev], check=False)


def lib(*call: str) -> subprocess.CompletedProcess[str]:
    """One function of appsdk-lib, with the real /dev and /sys (no APPSDK_ROOT)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("APPSDK_")}
    env["APPSDK_CONSOLE"] = "/dev/null"
    return subprocess.run(["bash", "-c", f'. "{LIB}"; "$@"', "lib", *call], env=env,
                          capture_output=True, text=True, timeout=60, check=False)


def set_label(disk: str, number: str, label: str) -> subprocess.CompletedProcess[str]:
    return lib("gpt_set_label", disk, number, label)


def table(dev: str) -> list[dict[str, Any]]:
    check = subprocess.run(["sfdisk", "--verify", dev], capture_output=True, text=True,
                           check=False)
    assert check.returncode == 0 and "No errors" in check.stdout, check.stdout + check.stderr
    out = subprocess.run(["sfdisk", "-J", dev], check=True, capture_output=True, text=True)
    parts: list[dict[str, Any]] = json.loads(out.stdout)["partitiontable"]["partitions"]
    return parts


def partition_name(part: str) -> str:
    """The name as udev's blkid reads it for /dev/disk/by-partlabel (from the disk, now)."""
    out = subprocess.run(["blkid", "-p", "-s", "PART_ENTRY_NAME", "-o", "value", part],
                         capture_output=True, text=True, check=False)
    return out.stdout.strip()


def digests(dev: str) -> list[str]:
    out = []
    for number in range(1, len(LABELS) + 1):
        with open(f"{dev}p{number}", "rb") as part:
            out.append(hashlib.sha256(part.read()).hexdigest())
    return out


@pytest.mark.parametrize("sector", [512, 4096])
def test_relabel_a_partition_of_a_block_device(tmp_path: Path, sector: int) -> None:
    with gpt_loop(tmp_path / "disk", sector) as dev:
        sysfs = Path("/sys/class/block") / Path(dev).name / "queue/logical_block_size"
        assert sysfs.read_text().strip() == str(sector)
        before, data = table(dev), digests(dev)
        # appsdk-update finds the disk and number of a slot this way, from sysfs.
        assert lib("partition_of", f"{dev}p2").stdout == f"{dev} 2\n"
        result = set_label(dev, "2", "_empty")
        assert result.returncode == 0, result.stderr
        after = table(dev)
        assert [p.get("name") for p in after] == ["esp", "_empty", "usr_2.0", "verity_2.0"]
        assert [{**p, "name": None} for p in after] == [{**p, "name": None} for p in before]
        assert [partition_name(f"{dev}p{n}") for n in (1, 2, 3)] == ["esp", "_empty", "usr_2.0"]
        assert digests(dev) == data


def test_refusal_leaves_the_block_device_as_it_was(tmp_path: Path) -> None:
    with gpt_loop(tmp_path / "disk", 512) as dev:
        with open(dev, "r+b") as disk:
            disk.seek(512 + 60)  # a byte of the primary header's disk GUID: its CRC is wrong
            byte = disk.read(1)
            disk.seek(512 + 60)
            disk.write(bytes([byte[0] ^ 1]))
        with open(dev, "rb") as disk:
            image = disk.read()
        result = set_label(dev, "2", "_empty")
        assert result.returncode == 1
        assert "does not match its CRC32" in result.stderr
        with open(dev, "rb") as disk:
            assert disk.read() == image
