from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

import pytest

from appsdk import bmap
from appsdk.errors import ConfigError


def sparse_image(path: Path) -> Path:
    """8 MiB, data at 0 (5000 bytes), at 1 MiB (one block) and the very last bytes."""
    with path.open("wb") as f:
        f.truncate(8 * 1024 * 1024)
        f.write(b"A" * 5000)
        f.seek(1024 * 1024)
        f.write(b"B" * 4096)
        f.seek(8 * 1024 * 1024 - 10)
        f.write(b"C" * 10)
    return path


def test_create_maps_only_data(tmp_path: Path) -> None:
    image = sparse_image(tmp_path / "i.img")
    result = bmap.create(image)
    spans = [(r.first, r.last) for r in result.ranges]
    assert spans == [(0, 1), (256, 256), (2047, 2047)]
    data = image.read_bytes()
    second = data[1024 * 1024:1024 * 1024 + 4096]
    assert result.ranges[1].sha256 == hashlib.sha256(second).hexdigest()
    assert result.mapped_blocks == 4 and result.blocks_count == 2048


def test_roundtrip_and_file_checksum(tmp_path: Path) -> None:
    image = sparse_image(tmp_path / "i.img")
    path = bmap.write(bmap.create(image), tmp_path / "i.bmap")
    assert bmap.parse(path) == bmap.create(image)
    path.write_text(path.read_text().replace("<BlockSize> 4096", "<BlockSize> 4097"))
    with pytest.raises(ConfigError, match="checksum mismatch"):
        bmap.parse(path)


@pytest.mark.skipif(shutil.which("bmaptool") is None, reason="bmap-tools not installed")
def test_bmaptool_accepts_ours_and_we_accept_bmaptools(tmp_path: Path) -> None:
    image = sparse_image(tmp_path / "i.img")
    ours = bmap.write(bmap.create(image), tmp_path / "ours.bmap")
    out = tmp_path / "copy.img"
    subprocess.run(["bmaptool", "copy", "--bmap", str(ours), str(image), str(out)],
                   check=True, capture_output=True)
    assert out.read_bytes() == image.read_bytes()
    theirs = tmp_path / "theirs.bmap"
    subprocess.run(["bmaptool", "create", "-o", str(theirs), str(image)], check=True,
                   capture_output=True)
    parsed = bmap.parse(theirs)
    assert [(r.first, r.last) for r in parsed.ranges] == [(0, 1), (256, 256), (2047, 2047)]
    assert parsed.image_size == image.stat().st_size
