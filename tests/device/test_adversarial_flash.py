"""Adversarial flash cases on loop devices (issue 12): a target that is the image itself."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from loopdev import make_build_dir

from appsdk.cli import main


@contextlib.contextmanager
def loop_over(path: Path) -> Iterator[str]:
    """A loop device over an existing file (loopdev.loop_device makes a new one)."""
    dev = subprocess.run(["losetup", "--find", "--show", str(path)], check=True,
                         capture_output=True, text=True).stdout.strip()
    try:
        yield dev
    finally:
        subprocess.run(["losetup", "-d", dev], check=False)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("backing", ["image", "hard link"])
def test_loop_device_over_the_image_is_refused(backing: str, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    # Was: the flash cleared the image's own GPT through the loop device, then blamed the
    # image ("changed while it was being read"): the image was destroyed.
    build = make_build_dir(tmp_path / "build", "x86-uefi", image_mib=160)
    record = json.loads((build / "build.json").read_text())
    del record["min_device_size"]  # the loop device is exactly as large as the image
    (build / "build.json").write_text(json.dumps(record))
    image = build / "demo_1.0.img"
    backing_file = image
    if backing == "hard link":
        backing_file = tmp_path / "other-name.img"
        os.link(image, backing_file)
    before = _digest(image)
    with loop_over(backing_file) as dev:
        for source in (image, build):
            code = main(["flash", str(source), dev, "--yes", "--allow-fixed", "--json"])
            out, err = capsys.readouterr()
            assert code == 7, err
            assert "the image itself" in err and dev in err
            assert '"device"' in out
    assert _digest(image) == before


def test_file_without_a_partition_table_leaves_the_card_untouched(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Was: `flash build/build.json /dev/sdX` cleared the card's GPT, wrote 1 MB and said
    # "verified", exit 0.
    build = make_build_dir(tmp_path / "build", "x86-uefi", image_mib=160)
    card = tmp_path / "card.img"
    card.write_bytes((build / "demo_1.0.img").read_bytes()[:4 << 20])  # a card with a GPT
    before = _digest(card)
    with loop_over(card) as dev:
        for source in (build / "build.json", build / "demo_1.0.img.bmap"):
            code = main(["flash", str(source), dev, "--yes", "--allow-fixed"])
            err = capsys.readouterr().err
            assert code == 2 and "no partition table" in err and source.name in err, err
    assert _digest(card) == before
