"""bmap files (the block map bmaptool reads): which blocks of an image carry data, with a
checksum per range, so flashing writes and verifies only those.

We write format 2.0 (sha256). We read what bmaptool 3.x reads, from its documented format:
  1.3        <Range sha1="..">, <BmapFileSHA1>, checksums are sha1;
  1.4, 2.x   <ChecksumType>, <Range chksum="..">, <BmapFileChecksum> (1.4 is 2.0 misnumbered);
  1.0-1.2    no checksums: refused (nothing to verify a flash against);
  3.0 and up refused (unknown format).
The file checksum is computed over the file with its own value replaced by zeros.
A bmap is used only if it is complete and consistent (`parse` checks every field): a
document is never read as zero ranges, and any flaw is a ConfigError naming the file.
"""

# model: constants, Range, Bmap; writer: create and write one; reader: parse and check one;
# coverage: an image's data that its bmap does not map. Callers use `bmap.X` for all.
from appsdk.image.bmap.coverage import unmapped_data
from appsdk.image.bmap.model import (
    BLOCK_SIZE,
    CHECKSUM_TYPES,
    HINT,
    MAX_BLOCK_SIZE,
    MAX_FILE,
    MAX_INT,
    MIN_BLOCK_SIZE,
    Bmap,
    Range,
)
from appsdk.image.bmap.reader import check, parse, parse_bytes
from appsdk.image.bmap.writer import create, data_extents, mapped_block_runs, seal, to_xml, write

__all__ = [
    "BLOCK_SIZE", "CHECKSUM_TYPES", "HINT", "MAX_BLOCK_SIZE", "MAX_FILE", "MAX_INT",
    "MIN_BLOCK_SIZE", "Bmap", "Range", "check", "create", "data_extents", "mapped_block_runs",
    "parse", "parse_bytes", "seal", "to_xml", "unmapped_data", "write",
]
