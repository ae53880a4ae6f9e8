"""Making a bmap from an image's data extents (SEEK_DATA/SEEK_HOLE), and writing it as a
format 2.0 (sha256) file with its file checksum sealed."""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterator
from pathlib import Path

from appsdk.image.bmap.model import BLOCK_SIZE, Bmap, Range


def data_extents(fd: int, size: int) -> Iterator[tuple[int, int]]:
    """(start, end) byte extents holding data, from SEEK_DATA/SEEK_HOLE."""
    pos = 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError:  # ENXIO: no data after pos
            return
        end = os.lseek(fd, start, os.SEEK_HOLE)
        yield start, min(end, size)
        pos = end


def mapped_block_runs(path: Path, block_size: int = BLOCK_SIZE) -> list[tuple[int, int]]:
    """Inclusive block runs that hold data, merged across touching extents."""
    size = path.stat().st_size
    runs: list[tuple[int, int]] = []
    with path.open("rb") as f:
        for start, end in data_extents(f.fileno(), size):
            first, last = start // block_size, (end - 1) // block_size
            if runs and first <= runs[-1][1] + 1:
                runs[-1] = (runs[-1][0], max(last, runs[-1][1]))
            else:
                runs.append((first, last))
    return runs


def _digest_range(f: object, first: int, last: int, block_size: int, image_size: int,
                  checksum_type: str) -> str:
    import io

    assert isinstance(f, io.BufferedReader)
    digest = hashlib.new(checksum_type)
    f.seek(first * block_size)
    remaining = min((last + 1) * block_size, image_size) - first * block_size
    while remaining > 0:
        chunk = f.read(min(remaining, 4 * 1024 * 1024))
        if not chunk:
            break
        digest.update(chunk)
        remaining -= len(chunk)
    return digest.hexdigest()


def create(image: Path, block_size: int = BLOCK_SIZE, checksum_type: str = "sha256") -> Bmap:
    size = image.stat().st_size
    ranges = []
    with image.open("rb") as f:
        for first, last in mapped_block_runs(image, block_size):
            digest = _digest_range(f, first, last, block_size, size, checksum_type)
            ranges.append(Range(first, last, digest, checksum_type))
    return Bmap(image_size=size, block_size=block_size, ranges=tuple(ranges),
                checksum_type=checksum_type)


_FILE_FIELD = re.compile(r"(<(BmapFileChecksum|BmapFileSHA1)>\s*)([^<]*?)(\s*</\2>)")


def seal(text: str, checksum_type: str = "sha256") -> str:
    """`text` with its file checksum field (BmapFileChecksum, or BmapFileSHA1 in 1.3) set:
    the digest of the file with that field's value replaced by zeros."""
    zeros = "0" * 2 * hashlib.new(checksum_type).digest_size
    draft = _FILE_FIELD.sub(lambda m: m.group(1) + zeros + m.group(4), text, count=1)
    digest = hashlib.new(checksum_type, draft.encode()).hexdigest()
    return _FILE_FIELD.sub(lambda m: m.group(1) + digest + m.group(4), text, count=1)


def to_xml(bmap: Bmap) -> str:
    lines = [
        '<?xml version="1.0" ?>',
        "<!-- Block map of an appsdk image: mapped block ranges with a checksum each. -->",
        '<bmap version="2.0">',
        f"    <ImageSize> {bmap.image_size} </ImageSize>",
        f"    <BlockSize> {bmap.block_size} </BlockSize>",
        f"    <BlocksCount> {bmap.blocks_count} </BlocksCount>",
        f"    <MappedBlocksCount> {bmap.mapped_blocks} </MappedBlocksCount>",
        f"    <ChecksumType> {bmap.checksum_type} </ChecksumType>",
        "    <BmapFileChecksum> 0 </BmapFileChecksum>",
        "    <BlockMap>",
    ]
    for r in bmap.ranges:
        span = str(r.first) if r.first == r.last else f"{r.first}-{r.last}"
        lines.append(f'        <Range chksum="{r.checksum}"> {span} </Range>')
    lines += ["    </BlockMap>", "</bmap>", ""]
    return seal("\n".join(lines), bmap.checksum_type)


def write(bmap: Bmap, path: Path) -> Path:
    path.write_text(to_xml(bmap))
    return path
