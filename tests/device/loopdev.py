"""Loop devices and small GPT images for the block-device tests."""

from __future__ import annotations

import contextlib
import json
import random
import subprocess
from collections.abc import Iterator
from pathlib import Path

from appsdk.core.digest import sha256_file
from appsdk.image import bmap

MiB = 1024 * 1024


@contextlib.contextmanager
def loop_device(backing: Path, size: int) -> Iterator[str]:
    """A direct-I/O loop device over a sparse file of `size` bytes."""
    with backing.open("wb") as f:
        f.truncate(size)
    dev = subprocess.run(["losetup", "--find", "--show", "--direct-io=on", str(backing)],
                         check=True, capture_output=True, text=True).stdout.strip()
    try:
        yield dev
    finally:
        subprocess.run(["losetup", "-d", dev], check=False)


def make_image(path: Path, size_mib: int = 160, seed: int = 7) -> Path:
    """A GPT disk image with two partitions of random data and holes around them."""
    with path.open("wb") as f:
        f.truncate(size_mib * MiB)
    subprocess.run(["sfdisk", "-q", str(path)], input="label: gpt\n,48M,L\n,48M,L\n",
                   text=True, check=True)
    rng = random.Random(seed)
    with path.open("r+b") as f:
        for start_mib, length_mib in ((2, 12), (60, 20), (100, 1)):
            f.seek(start_mib * MiB)
            f.write(rng.randbytes(length_mib * MiB))
    return path


def make_build_dir(directory: Path, board: str, image_mib: int = 160) -> Path:
    """A build directory as `appsdk build` leaves it, as far as flashing cares."""
    directory.mkdir(parents=True, exist_ok=True)
    image = make_image(directory / "demo_1.0.img", image_mib)
    block_map = bmap.write(bmap.create(image), directory / "demo_1.0.img.bmap")
    (directory / "build.json").write_text(json.dumps({
        "id": "demo", "version": "1.0", "board": {"name": board},
        "artifacts": {kind: {"file": path.name, "size": path.stat().st_size,
                             "sha256": sha256_file(path)}
                      for kind, path in (("image", image), ("bmap", block_map))},
        "min_device_size": 200 * MiB}))
    return directory


def sha256_of_device(dev: str) -> str:
    out = subprocess.run(["sha256sum", dev], check=True, capture_output=True, text=True)
    return out.stdout.split()[0]


def sparse_copy(source: Path, target: Path) -> Path:
    """A copy that keeps the holes (shutil would write them out as zeros)."""
    subprocess.run(["cp", "--sparse=always", str(source), str(target)], check=True)
    return target


def bmap_v13(block_map: bmap.Bmap) -> str:
    """A bmap in format 1.3 (sha1 ranges, BmapFileSHA1), as bmaptool 1.x wrote it."""
    lines = ['<?xml version="1.0" ?>', '<bmap version="1.3">',
             f"    <ImageSize> {block_map.image_size} </ImageSize>",
             f"    <BlockSize> {block_map.block_size} </BlockSize>",
             f"    <BlocksCount> {block_map.blocks_count} </BlocksCount>",
             f"    <MappedBlocksCount> {block_map.mapped_blocks} </MappedBlocksCount>",
             "    <BmapFileSHA1> 0 </BmapFileSHA1>", "    <BlockMap>"]
    lines += [f'        <Range sha1="{r.checksum}"> {r.first}-{r.last} </Range>'
              for r in block_map.ranges]
    lines += ["    </BlockMap>", "</bmap>", ""]
    return bmap.seal("\n".join(lines), "sha1")
