"""Reading a bmap file, ours or bmaptool's, every field checked (formats: see
appsdk.image.bmap); any flaw is a ConfigError naming the file."""

from __future__ import annotations

import hashlib
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from appsdk.core.errors import ConfigError
from appsdk.core.inputfile import open_regular
from appsdk.image.bmap.model import (
    CHECKSUM_TYPES,
    HINT,
    MAX_BLOCK_SIZE,
    MAX_FILE,
    MAX_INT,
    MIN_BLOCK_SIZE,
    Bmap,
    Range,
)


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

