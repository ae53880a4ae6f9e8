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

from __future__ import annotations

import bisect
import hashlib
import os
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from appsdk.core.errors import ConfigError
from appsdk.core.inputfile import open_regular

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


# --- reading -------------------------------------------------------------------------


@dataclass(frozen=True)
class _Format:
    checksum_type: str
    range_attr: str  # the Range attribute holding its checksum
    file_field: str  # the element holding the file checksum


def _fail(path: Path, message: str, hint: str = HINT) -> ConfigError:
    return ConfigError(message, file=str(path), hint=hint)


def _read(path: Path) -> bytes:
    try:
        with open_regular(path, "bmap file") as f:
            return f.read(MAX_FILE + 1)
    except OSError as exc:
        raise _fail(path, f"cannot read the bmap: {exc.strerror or exc}") from None


def _check_text(raw: bytes, path: Path) -> None:
    """Refuse, before parsing, a file too large, not UTF-8, holding NUL or a DTD."""
    if len(raw) > MAX_FILE:
        raise _fail(path, f"larger than {MAX_FILE // 1024 // 1024} MiB: not a bmap file")
    if (nul := raw.find(0)) >= 0:
        raise _fail(path, f"NUL byte at offset {nul}: not a bmap file")
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _fail(path, f"not UTF-8 text (byte offset {exc.start}): not a bmap file") \
            from None
    # A bmap has no DTD; refusing one keeps entity expansion out of the XML parser.
    if b"<!DOCTYPE" in raw or b"<!ENTITY" in raw:
        raise _fail(path, "declares a DTD or entities, which bmap files never do")


def _root(raw: bytes, path: Path) -> ET.Element:
    try:
        root = ET.fromstring(raw)
    except ET.ParseError as exc:
        line, column = exc.position
        raise _fail(path, f"not well-formed XML at line {line}, column {column + 1} "
                    "(cut short or corrupted?)") from None
    if root.tag != "bmap":
        raise _fail(path, f"root element is <{root.tag}>, not <bmap>: not a bmap file")
    return root


def _format(root: ET.Element, path: Path) -> _Format:
    version = root.get("version", "")
    m = re.fullmatch(r"(\d{1,3})\.(\d{1,3})", version.strip())
    if not m:
        raise _fail(path, f"bmap version {version!r} is not MAJOR.MINOR")
    major, minor = int(m.group(1)), int(m.group(2))
    if major > 2:
        raise _fail(path, f"bmap format {version} is newer than appsdk reads (up to 2.x)",
                    hint="regenerate it with a bmaptool that writes format 2.0")
    if major == 2 or (major, minor) == (1, 4):
        kind = _text(root, "ChecksumType", path)
        if kind not in CHECKSUM_TYPES:
            raise _fail(path, f"ChecksumType {kind!r} is not one appsdk verifies "
                        f"({', '.join(CHECKSUM_TYPES)})")
        return _Format(kind, "chksum", "BmapFileChecksum")
    if (major, minor) == (1, 3):
        return _Format("sha1", "sha1", "BmapFileSHA1")
    raise _fail(path, f"bmap format {version} carries no checksums, so a flash could not be "
                "verified against it")


def _text(root: ET.Element, tag: str, path: Path) -> str:
    found = root.findall(tag)
    if not found:
        raise _fail(path, f"no <{tag}>: the bmap is incomplete (cut short?)")
    if len(found) > 1:
        raise _fail(path, f"<{tag}> appears {len(found)} times")
    return (found[0].text or "").strip()


def _number(root: ET.Element, tag: str, path: Path) -> int:
    text = _text(root, tag, path)
    if not re.fullmatch(r"\d{1,19}", text) or int(text) > MAX_INT:
        raise _fail(path, f"<{tag}> {text[:40]!r} is not a whole number of bytes/blocks")
    return int(text)


def _hex(text: str, kind: str) -> str | None:
    """`text` as a lowercase digest of type `kind`, or None if it is not one."""
    text = text.strip().lower()
    length = 2 * hashlib.new(kind).digest_size
    return text if re.fullmatch(f"[0-9a-f]{{{length}}}", text) else None


def _check_file_checksum(raw: bytes, root: ET.Element, fmt: _Format, path: Path) -> None:
    declared = _text(root, fmt.file_field, path)
    value = _hex(declared, fmt.checksum_type)
    if value is None:
        raise _fail(path, f"<{fmt.file_field}> {declared[:80]!r} is not a "
                    f"{fmt.checksum_type} digest")
    # As bmaptool does: zero the first occurrence of the declared value in the file.
    zeroed = raw.replace(declared.encode(), b"0" * len(value), 1)
    if hashlib.new(fmt.checksum_type, zeroed).hexdigest() != value:
        raise _fail(path, "bmap file checksum mismatch: the file was changed or corrupted "
                    "after it was written")


_SPAN = re.compile(r"\s*(\d{1,19})\s*(?:-\s*(\d{1,19})\s*)?")


def _ranges(root: ET.Element, fmt: _Format, path: Path) -> tuple[Range, ...]:
    maps = root.findall("BlockMap")
    if len(maps) != 1:
        raise _fail(path, "no <BlockMap>: the bmap is incomplete" if not maps
                    else "more than one <BlockMap>")
    out = []
    for n, element in enumerate(maps[0].findall("Range"), 1):
        span = element.text or ""
        m = _SPAN.fullmatch(span)
        if not m:
            raise _fail(path, f"range {n} {span.strip()[:40]!r} is not FIRST or FIRST-LAST")
        first, last = int(m.group(1)), int(m.group(2) or m.group(1))
        declared = element.get(fmt.range_attr)
        if declared is None:
            raise _fail(path, f"range {n} ({span.strip()}) has no {fmt.range_attr}= "
                        "checksum: appsdk verifies every range it writes",
                        hint="regenerate it with `bmaptool create` (without --no-checksum)")
        checksum = _hex(declared, fmt.checksum_type)
        if checksum is None:
            raise _fail(path, f"range {n} ({span.strip()}): {declared[:80]!r} is not a "
                        f"{fmt.checksum_type} digest")
        out.append(Range(first, last, checksum, fmt.checksum_type))
    return tuple(out)


def check(bmap: Bmap, path: Path, blocks_count: int | None = None,
          mapped_count: int | None = None) -> None:
    """Refuse a bmap that is not internally consistent (whoever made it)."""
    bs = bmap.block_size
    if not (MIN_BLOCK_SIZE <= bs <= MAX_BLOCK_SIZE and bs & (bs - 1) == 0):
        raise _fail(path, f"BlockSize {bs} is not a power of two from {MIN_BLOCK_SIZE} "
                    f"to {MAX_BLOCK_SIZE}")
    if bmap.image_size <= 0:
        raise _fail(path, "ImageSize is 0: no image to flash")
    if blocks_count is not None and blocks_count != bmap.blocks_count:
        raise _fail(path, f"BlocksCount {blocks_count} does not match ImageSize "
                    f"{bmap.image_size} in blocks of {bs} ({bmap.blocks_count})")
    if not bmap.ranges:
        raise _fail(path, "the block map lists no ranges: it does not describe any image")
    previous = -1
    for n, r in enumerate(bmap.ranges, 1):
        where = f"range {n} (blocks {r.first}-{r.last})"
        if r.first > r.last:
            raise _fail(path, f"{where} ends before it starts")
        if r.first <= previous:
            raise _fail(path, f"{where} is out of order or overlaps the range before it "
                        f"(which ends at block {previous})")
        if r.last >= bmap.blocks_count:
            raise _fail(path, f"{where} lies past the image's end (block "
                        f"{bmap.blocks_count - 1} is its last)")
        if r.checksum_type != bmap.checksum_type:
            raise _fail(path, f"{where} has a {r.checksum_type} checksum in a "
                        f"{bmap.checksum_type} bmap")
        previous = r.last
    if mapped_count is not None and mapped_count != bmap.mapped_blocks:
        raise _fail(path, f"MappedBlocksCount {mapped_count} does not match its ranges, "
                    f"which map {bmap.mapped_blocks} blocks")


def parse(path: Path) -> Bmap:
    """Read a bmap file (ours or bmaptool's, see the module docstring), every field checked.
    Any flaw is a ConfigError naming the file."""
    return parse_bytes(_read(path), path)


def parse_bytes(raw: bytes, path: Path) -> Bmap:
    """`parse` of a bmap file's contents; `path` names it in errors."""
    _check_text(raw, path)
    root = _root(raw, path)
    fmt = _format(root, path)
    _check_file_checksum(raw, root, fmt, path)
    image_size = _number(root, "ImageSize", path)
    block_size = _number(root, "BlockSize", path)
    blocks_count = _number(root, "BlocksCount", path)
    mapped_count = _number(root, "MappedBlocksCount", path)
    bmap = Bmap(image_size=image_size, block_size=block_size, ranges=_ranges(root, fmt, path),
                checksum_type=fmt.checksum_type)
    check(bmap, path, blocks_count, mapped_count)
    return bmap


# --- the image against its bmap --------------------------------------------------------


def _first_nonzero(f: object, start: int, end: int) -> int | None:
    import io

    assert isinstance(f, io.BufferedReader)
    f.seek(start)
    pos = start
    while pos < end:
        chunk = f.read(min(end - pos, 4 * 1024 * 1024))
        if not chunk:
            return None
        if chunk.count(0) != len(chunk):
            return pos + len(chunk) - len(chunk.lstrip(b"\0"))
        pos += len(chunk)
    return None


def _gaps(start: int, end: int, spans: list[tuple[int, int]], i: int
          ) -> tuple[list[tuple[int, int]], int]:
    """Parts of [start, end) outside the sorted byte spans, from index i on; and the index
    to resume at for a later, larger `start`."""
    out = []
    while i < len(spans) and spans[i][1] <= start:
        i += 1
    pos, j = start, i
    while pos < end and j < len(spans) and spans[j][0] < end:
        if spans[j][0] > pos:
            out.append((pos, spans[j][0]))
        pos = max(pos, spans[j][1])
        j += 1
    if pos < end:
        out.append((pos, end))
    return out, i


def unmapped_data(image: Path, bmap: Bmap) -> int | None:
    """Offset of the first non-zero byte of `image` that no range maps, or None. bmaptool
    and appsdk map every block that holds data, so such a byte means the bmap was made for
    another image. Reads only the image's data extents outside the ranges: nothing for the
    sparse image a build leaves, everything unmapped for a copy that lost its holes."""
    bs = bmap.block_size
    spans = [(r.first * bs, (r.last + 1) * bs) for r in bmap.ranges]
    i = 0
    with image.open("rb") as f:
        for start, end in data_extents(f.fileno(), min(bmap.image_size,
                                                        os.fstat(f.fileno()).st_size)):
            gaps, i = _gaps(start, end, spans, i)
            for lo, hi in gaps:
                found = _first_nonzero(f, lo, hi)
                if found is not None:
                    return found
    return None
