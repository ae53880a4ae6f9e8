from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appsdk.core.errors import ConfigError
from appsdk.image import bmap

MiB = 1024 * 1024


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


def v13(block_map: bmap.Bmap) -> str:
    """The bmap in format 1.3 (sha1 ranges, BmapFileSHA1), as bmaptool 1.x wrote it."""
    assert block_map.checksum_type == "sha1"
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


def test_create_maps_only_data(tmp_path: Path) -> None:
    image = sparse_image(tmp_path / "i.img")
    result = bmap.create(image)
    spans = [(r.first, r.last) for r in result.ranges]
    assert spans == [(0, 1), (256, 256), (2047, 2047)]
    data = image.read_bytes()
    second = data[1024 * 1024:1024 * 1024 + 4096]
    assert result.ranges[1].checksum == hashlib.sha256(second).hexdigest()
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


@pytest.mark.skipif(shutil.which("bmaptool") is None, reason="bmap-tools not installed")
def test_format_1_3_is_read_with_sha1_as_bmaptool_reads_it(tmp_path: Path) -> None:
    image = sparse_image(tmp_path / "i.img")
    old = tmp_path / "old.bmap"
    old.write_text(v13(bmap.create(image, checksum_type="sha1")))
    out = tmp_path / "copy.img"
    subprocess.run(["bmaptool", "copy", "--bmap", str(old), str(image), str(out)],
                   check=True, capture_output=True)  # the oracle takes our 1.3 file
    parsed = bmap.parse(old)
    assert parsed.checksum_type == "sha1"
    assert all(r.checksum_type == "sha1" and len(r.checksum) == 40 for r in parsed.ranges)
    assert parsed == bmap.create(image, checksum_type="sha1")
    # Written back, it is a 2.0 file with ChecksumType sha1, which bmaptool reads too.
    again = bmap.write(parsed, tmp_path / "again.bmap")
    assert bmap.parse(again) == parsed
    subprocess.run(["bmaptool", "copy", "--bmap", str(again), str(image), str(out)],
                   check=True, capture_output=True)


def test_bmaptool_without_checksums_is_refused_clearly(tmp_path: Path) -> None:
    path = tmp_path / "n.bmap"
    text = bmap.to_xml(bmap.create(sparse_image(tmp_path / "i.img")))
    path.write_text(bmap.seal(re.sub(r' chksum="\w+"', "", text)))
    with pytest.raises(ConfigError, match=r"range 1 .* no chksum= checksum") as e:
        bmap.parse(path)
    assert str(path) in str(e.value) and "--no-checksum" in (e.value.hint or "")


def good_text(tmp_path: Path) -> str:
    return bmap.to_xml(bmap.create(sparse_image(tmp_path / "i.img")))


def sealed(text: str, old: str, new: str) -> str:
    assert old in text
    return bmap.seal(text.replace(old, new))


BAD_EDITS = [
    # (what is changed, (old, new) on the text of the good bmap, message expected)
    ("empty BlockMap", (r"<BlockMap>.*</BlockMap>", "<BlockMap>\n    </BlockMap>"),
     "MappedBlocksCount 4 does not match|lists no ranges"),
    ("empty BlockMap, counts fixed", (r"<MappedBlocksCount> 4 </MappedBlocksCount>(.*)"
                                      r"<BlockMap>.*</BlockMap>",
                                      r"<MappedBlocksCount> 0 </MappedBlocksCount>\1"
                                      "<BlockMap></BlockMap>"), "lists no ranges"),
    ("no BlockMap", (r"<BlockMap>.*</BlockMap>", ""), "no <BlockMap>"),
    ("no file checksum", (r"<BmapFileChecksum>.*</BmapFileChecksum>", ""),
     "no <BmapFileChecksum>"),
    ("reversed range", (r"> 256 <", "> 257-256 <"), "ends before it starts"),
    ("ranges out of order", (r"> 0-1 <(.*)> 256 <", r"> 256 <\1> 0-1 <"),
     "out of order or overlaps"),
    ("overlapping ranges", (r"> 256 <", "> 1-256 <"), "out of order or overlaps"),
    ("range past the end", (r"> 2047 <", "> 2048 <"), "past the image's end"),
    ("BlockSize 1", (r"<BlockSize> 4096 </BlockSize>", "<BlockSize> 1 </BlockSize>"),
     "BlockSize 1 is not a power of two"),
    ("BlockSize 3000", (r"<BlockSize> 4096 </BlockSize>", "<BlockSize> 3000 </BlockSize>"),
     "BlockSize 3000"),
    ("MappedBlocksCount wrong", (r"<MappedBlocksCount> 4 <", "<MappedBlocksCount> 3 <"),
     "MappedBlocksCount 3 does not match"),
    ("BlocksCount wrong", (r"<BlocksCount> 2048 <", "<BlocksCount> 9 <"),
     "BlocksCount 9 does not match"),
    ("ImageSize 0", (r"<ImageSize> \d+ <", "<ImageSize> 0 <"), "BlocksCount|ImageSize is 0"),
    ("ImageSize negative", (r"<ImageSize> \d+ <", "<ImageSize> -5 <"), "not a whole number"),
    ("ImageSize twice", (r"(<ImageSize> \d+ </ImageSize>)", r"\1\1"), "appears 2 times"),
    ("short range checksum", (r'chksum="(\w{60})\w{4}"', r'chksum="\1"'),
     "is not a sha256 digest"),
    ("ChecksumType md5", (r"<ChecksumType> sha256 <", "<ChecksumType> md5 <"),
     "ChecksumType 'md5' is not one"),
    ("format 3.0", (r'version="2.0"', 'version="3.0"'), "newer than appsdk reads"),
    ("format 1.2", (r'version="2.0"', 'version="1.2"'), "carries no checksums"),
    ("format garbage", (r'version="2.0"', 'version="two"'), "is not MAJOR.MINOR"),
    ("not a bmap", (r"<bmap (.*)</bmap>", r"<map \1</map>"), "not <bmap>"),
    ("a DTD", (r"<bmap ", '<!DOCTYPE bmap [<!ENTITY a "b">]>\n<bmap '), "DTD"),
]


@pytest.mark.parametrize(("edit", "message"), [(e, m) for _, e, m in BAD_EDITS],
                         ids=[w for w, _, _ in BAD_EDITS])
def test_inconsistent_bmaps_are_refused_naming_the_file(
        tmp_path: Path, edit: tuple[str, str], message: str) -> None:
    text = good_text(tmp_path)
    changed = re.sub(edit[0], edit[1], text, count=1, flags=re.S)
    assert changed != text
    path = tmp_path / "bad.bmap"
    path.write_text(bmap.seal(changed))  # a valid file checksum: the content is refused
    with pytest.raises(ConfigError, match=message) as e:
        bmap.parse(path)
    assert str(e.value).startswith(str(path)) and e.value.hint


def test_every_truncation_is_refused(tmp_path: Path) -> None:
    raw = good_text(tmp_path).encode()
    path = tmp_path / "cut.bmap"
    for end in range(0, len(raw) - 2, 7):  # ("</bmap>\n" minus its newline still parses)
        path.write_bytes(raw[:end])
        with pytest.raises(ConfigError):
            bmap.parse(path)


@pytest.mark.parametrize(("raw", "message"), [
    (b"<bmap>\0</bmap>", "NUL byte at offset 6"),
    (b'<bmap version="2.0">\xff\xfe</bmap>', r"not UTF-8 text \(byte offset 20\)"),
    (b"", "not well-formed"),
    (b"\xef\xbb\xbf<a/>", "not <bmap>"),
])
def test_bytes_that_are_no_bmap(tmp_path: Path, raw: bytes, message: str) -> None:
    path = tmp_path / "x.bmap"
    path.write_bytes(raw)
    with pytest.raises(ConfigError, match=message):
        bmap.parse(path)


def test_huge_file_is_refused_before_parsing(tmp_path: Path) -> None:
    path = tmp_path / "huge.bmap"
    with path.open("wb") as f:
        f.truncate(bmap.MAX_FILE + 1)
    with pytest.raises(ConfigError, match="larger than 32 MiB"):
        bmap.parse(path)


def test_maps_and_unmapped_data(tmp_path: Path) -> None:
    image = sparse_image(tmp_path / "i.img")
    block_map = bmap.create(image)
    assert block_map.maps(0, 8192) and block_map.maps(MiB, 4096)
    assert not block_map.maps(0, 8193) and not block_map.maps(MiB - 1, 2)
    assert block_map.maps(5, 0)
    touching = bmap.Bmap(block_map.image_size, 4096, (bmap.Range(0, 1, "0" * 64),
                                                      bmap.Range(2, 5, "0" * 64)))
    assert touching.maps(4000, 20000) and not touching.maps(4000, 30000)
    assert bmap.unmapped_data(image, block_map) is None
    without_middle = bmap.Bmap(block_map.image_size, 4096,
                               (block_map.ranges[0], block_map.ranges[2]))
    assert bmap.unmapped_data(image, without_middle) == MiB
    # Zeros outside the ranges are no data (a copy that lost its holes is fine).
    with image.open("r+b") as f:
        f.seek(3 * MiB)
        f.write(bytes(MiB))
        f.seek(5 * MiB + 77)
        f.write(b"x")
    assert bmap.unmapped_data(image, block_map) == 5 * MiB + 77


# --- properties ------------------------------------------------------------------------

PROPS = settings(max_examples=200, deadline=None)


@st.composite
def bmaps(draw: st.DrawFn) -> bmap.Bmap:
    kind = draw(st.sampled_from(bmap.CHECKSUM_TYPES))
    block_size = 2 ** draw(st.integers(9, 20))
    size = hashlib.new(kind).digest_size
    hexdigits = st.binary(min_size=size, max_size=size).map(bytes.hex)
    ranges, block = [], 0
    for gap, length in draw(st.lists(st.tuples(st.integers(0, 50), st.integers(1, 50)),
                                     min_size=1, max_size=20)):
        first = block + gap
        ranges.append(bmap.Range(first, first + length - 1, draw(hexdigits), kind))
        block = first + length
    blocks = block + draw(st.integers(0, 10))
    image_size = (blocks - 1) * block_size + draw(st.integers(1, block_size))
    return bmap.Bmap(image_size, block_size, tuple(ranges), kind)


@PROPS
@given(bmaps())
def test_roundtrip_property(block_map: bmap.Bmap) -> None:
    assert bmap.parse_bytes(bmap.to_xml(block_map).encode(), Path("p.bmap")) == block_map


@PROPS
@given(st.text(max_size=400) | st.binary(max_size=400).map(
    lambda b: b.decode("latin-1")))
def test_arbitrary_text_gives_a_bmap_or_config_error(text: str) -> None:
    path = Path("a.bmap")
    try:
        bmap.parse_bytes(text.encode("utf-8", "surrogatepass"), path)
    except ConfigError as exc:
        assert str(exc).startswith("a.bmap: ")


@PROPS
@given(bmaps(), st.lists(st.tuples(st.integers(0, 10**6), st.sampled_from(
    ["", "-", "0", "9", "<", ">", '"', " ", "a", "Range", "&", "\n", "99999999999999999999"])),
    min_size=1, max_size=6), st.booleans())
def test_mutated_bmaps_give_a_bmap_or_config_error(
        block_map: bmap.Bmap, edits: list[tuple[int, str]], reseal: bool) -> None:
    text = bmap.to_xml(block_map)
    for pos, piece in edits:
        pos %= len(text)
        text = text[:pos] + piece + text[pos + 1:]
    if reseal:  # past the file checksum: the content checks must hold on their own
        text = bmap.seal(text, block_map.checksum_type)
    path = Path("m.bmap")
    try:
        parsed = bmap.parse_bytes(text.encode(), path)
    except ConfigError:
        return
    bmap.check(parsed, path)  # whatever passes is consistent
