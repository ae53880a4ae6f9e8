"""The block map of an image: its constants, `Range` (a run of mapped blocks with a
checksum) and `Bmap` (an image's size, block size and ranges)."""

from __future__ import annotations

import bisect
import hashlib
from dataclasses import dataclass

BLOCK_SIZE = 4096
MIN_BLOCK_SIZE, MAX_BLOCK_SIZE = 512, 1024 * 1024
MAX_FILE = 32 * 1024 * 1024  # ~300,000 ranges; a bmap is tiny beside its image
MAX_INT = 2**63 - 1  # sizes and block numbers beyond this describe no real image
# hashlib names with a fixed digest length that bmaptool can also compute.
CHECKSUM_TYPES = ("sha1", "sha224", "sha256", "sha384", "sha512")
HINT = ("regenerate it with `bmaptool create IMAGE -o IMAGE.bmap`, rebuild, or remove it "
        "(for an image without build.json appsdk then maps the image's holes itself)")


@dataclass(frozen=True)
class Range:
    first: int  # block numbers, inclusive
    last: int
    checksum: str  # lowercase hex digest of the range's bytes (clipped to the image)
    checksum_type: str = "sha256"

    @property
    def blocks(self) -> int:
        return self.last - self.first + 1

    def hasher(self) -> hashlib._Hash:
        return hashlib.new(self.checksum_type)


@dataclass(frozen=True)
class Bmap:
    image_size: int
    block_size: int
    ranges: tuple[Range, ...]
    checksum_type: str = "sha256"

    @property
    def blocks_count(self) -> int:
        return (self.image_size + self.block_size - 1) // self.block_size

    @property
    def mapped_blocks(self) -> int:
        return sum(r.blocks for r in self.ranges)

    @property
    def mapped_bytes(self) -> int:
        return min(self.mapped_blocks * self.block_size, self.image_size)

    def maps(self, offset: int, length: int) -> bool:
        """Whether every byte of [offset, offset + length) lies in a mapped block."""
        if length <= 0:
            return True
        first, last = offset // self.block_size, (offset + length - 1) // self.block_size
        i = bisect.bisect_right([r.first for r in self.ranges], first) - 1
        # Ranges may touch (first == previous last + 1): walk across them.
        while 0 <= i < len(self.ranges) and self.ranges[i].first <= first:
            if self.ranges[i].last >= last:
                return True
            first = self.ranges[i].last + 1
            i += 1
        return False
