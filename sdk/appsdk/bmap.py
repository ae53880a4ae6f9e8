"""bmap 2.0 files (the block map bmaptool reads): which 4 KiB blocks of an image carry
data, with a sha256 per range, so flashing writes and verifies only those."""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError

BLOCK_SIZE = 4096
_ZERO_SUM = "0" * 64


@dataclass(frozen=True)
class Range:
    first: int  # block numbers, inclusive
    last: int
    sha256: str

    @property
    def blocks(self) -> int:
        return self.last - self.first + 1


@dataclass(frozen=True)
class Bmap:
    image_size: int
    block_size: int
    ranges: tuple[Range, ...]

    @property
    def blocks_count(self) -> int:
        return (self.image_size + self.block_size - 1) // self.block_size

    @property
    def mapped_blocks(self) -> int:
        return sum(r.blocks for r in self.ranges)

    @property
    def mapped_bytes(self) -> int:
        return min(self.mapped_blocks * self.block_size, self.image_size)


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


def _read_range(f: object, first: int, last: int, block_size: int, image_size: int) -> str:
    import io

    assert isinstance(f, io.BufferedReader)
    digest = hashlib.sha256()
    f.seek(first * block_size)
    remaining = min((last + 1) * block_size, image_size) - first * block_size
    while remaining > 0:
        chunk = f.read(min(remaining, 4 * 1024 * 1024))
        if not chunk:
            break
        digest.update(chunk)
        remaining -= len(chunk)
    return digest.hexdigest()


def create(image: Path, block_size: int = BLOCK_SIZE) -> Bmap:
    size = image.stat().st_size
    ranges = []
    with image.open("rb") as f:
        for first, last in mapped_block_runs(image, block_size):
            ranges.append(Range(first, last, _read_range(f, first, last, block_size, size)))
    return Bmap(image_size=size, block_size=block_size, ranges=tuple(ranges))


def to_xml(bmap: Bmap) -> str:
    def render(checksum: str) -> str:
        lines = [
            '<?xml version="1.0" ?>',
            "<!-- Block map of an appsdk image: mapped block ranges with sha256 each. -->",
            '<bmap version="2.0">',
            f"    <ImageSize> {bmap.image_size} </ImageSize>",
            f"    <BlockSize> {bmap.block_size} </BlockSize>",
            f"    <BlocksCount> {bmap.blocks_count} </BlocksCount>",
            f"    <MappedBlocksCount> {bmap.mapped_blocks} </MappedBlocksCount>",
            "    <ChecksumType> sha256 </ChecksumType>",
            f"    <BmapFileChecksum> {checksum} </BmapFileChecksum>",
            "    <BlockMap>",
        ]
        for r in bmap.ranges:
            span = str(r.first) if r.first == r.last else f"{r.first}-{r.last}"
            lines.append(f'        <Range chksum="{r.sha256}"> {span} </Range>')
        lines += ["    </BlockMap>", "</bmap>", ""]
        return "\n".join(lines)

    # The file checksum covers the file with its own field zeroed (bmap 2.0).
    draft = render(_ZERO_SUM)
    return render(hashlib.sha256(draft.encode()).hexdigest())


def write(bmap: Bmap, path: Path) -> Path:
    path.write_text(to_xml(bmap))
    return path


_FIELD = re.compile(r"<(\w+)>\s*([^<]*?)\s*</\1>")
_RANGE = re.compile(r'<Range\s+chksum="([0-9a-fA-F]+)"\s*>\s*(\d+)(?:\s*-\s*(\d+))?\s*</Range>')


def parse(path: Path) -> Bmap:
    """Read a bmap 1.4 or 2.0 file (ours or bmaptool's); checks the file checksum."""
    text = path.read_text()
    fields = dict(_FIELD.findall(text))
    version = re.search(r'<bmap\s+version="([\d.]+)"', text)
    if not version or not version.group(1).startswith(("1.", "2.")):
        raise ConfigError("not a bmap file (or unsupported version)", file=str(path))
    try:
        image_size = int(fields["ImageSize"])
        block_size = int(fields["BlockSize"])
    except (KeyError, ValueError):
        raise ConfigError("bmap lacks ImageSize/BlockSize", file=str(path)) from None
    declared = fields.get("BmapFileChecksum")
    if declared and fields.get("ChecksumType", "sha256") == "sha256":
        zeroed = text.replace(declared, _ZERO_SUM, 1)
        if hashlib.sha256(zeroed.encode()).hexdigest() != declared:
            raise ConfigError("bmap file checksum mismatch: the file is corrupted", file=str(path))
    ranges = tuple(
        Range(int(first), int(last or first), chk.lower())
        for chk, first, last in _RANGE.findall(text)
    )
    return Bmap(image_size=image_size, block_size=block_size, ranges=ranges)
