"""What to flash: resolve a build directory or an image file to a `Source` (image, bmap,
board, minimum device size) and prove every input before any device is opened."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from appsdk.contract.record import BuildRecord
from appsdk.core.digest import sha256_file
from appsdk.core.errors import ConfigError
from appsdk.deliver.verify import changed_ranges, describe
from appsdk.image import bmap as bmapfile
from appsdk.image import gpt


@dataclass(frozen=True)
class Source:
    """An image to flash with its block map, and what its build says about it."""

    image: Path
    bmap: bmapfile.Bmap
    board: str | None  # None: a bare image without build.json (board cannot be checked)
    min_device_size: int
    bmap_file: Path | None = None  # None: the map was computed from the image's holes


def open_source(path: Path) -> Source:
    """A build directory (build.json names image, bmap and board) or an image file (its
    .bmap beside it if present, else one computed from the file's holes), with every input
    proven before any device is opened: the bmap is the one the build recorded and
    consistent, the image is as long as the bmap and its own GPT says, the bmap maps the
    GPT and every byte of data the image holds, and the image's mapped ranges hash to the
    bmap's checksums. A flaw is a ConfigError naming the image or the bmap."""
    from appsdk.contract.buildinfo import locate_build

    image, record = locate_build(path)
    size = image.stat().st_size
    beside = image.with_name(image.name + ".bmap")
    bmap_path = beside if beside.exists() else None
    if record:
        bmap_path = record.path("bmap")
        _check_recorded(image, size, bmap_path, record)
    block_map = bmapfile.parse(bmap_path) if bmap_path else bmapfile.create(image)
    if block_map.image_size != size:
        raise ConfigError(f"bmap is for an image of {block_map.image_size} bytes, "
                          f"{image.name} has {size}", file=str(bmap_path),
                          hint="rebuild, or remove the stale .bmap")
    board = record.board.name if record else None
    min_size = (record.min_device_size or 0) if record else 0
    source = Source(image, block_map, board, max(min_size, block_map.image_size), bmap_path)
    table = gpt.read(image) if record else gpt.disk_table(image)
    if bmap_path:  # a map computed from the image describes it by construction
        _check_covers(source, table)
        _check_image_ranges(source, recorded=record is not None)
    return source


def _check_recorded(image: Path, size: int, bmap_path: Path, record: BuildRecord) -> None:
    """The bmap is byte for byte the one build.json vouches for, the image as long as the
    build made it. (The image is not hashed whole: its mapped ranges are checked against
    the bmap and the rest against holding no data, which together prove the same.)"""
    if not bmap_path.is_file():
        raise ConfigError("build.json names this bmap, but it is missing",
                          file=str(bmap_path), hint="rebuild, or copy the build's .bmap "
                          "back beside the image")
    want = record.artifacts["bmap"].sha256
    got = sha256_file(bmap_path)
    if got != want:
        raise ConfigError(f"not the bmap this build wrote: its sha256 is {got}, build.json "
                          f"records {want}", file=str(bmap_path),
                          hint="restore the build's own .bmap, or rebuild")
    recorded = record.artifacts["image"].size
    if size != recorded:
        raise ConfigError(f"the image has {size} bytes, build.json records {recorded}: it "
                          "was changed or cut short after the build", file=str(image),
                          hint="rebuild, or copy the image again")


def _check_covers(source: Source, table: gpt.Gpt | None) -> None:
    """The bmap maps the image's partition table and every byte of data it holds."""
    name = source.bmap_file
    for what, offset, length in table.regions() if table else ():
        if not source.bmap.maps(offset, length):
            raise ConfigError(f"does not map {what} (bytes {offset}-{offset + length - 1}) "
                              f"of {source.image}: a flash would leave no valid partition "
                              "table", file=str(name), hint="the bmap was made for another "
                              "image: " + bmapfile.HINT)
    found = bmapfile.unmapped_data(source.image, source.bmap)
    if found is not None:
        part = table.partition_at(found) if table else None
        inside = f" (partition {part.number}, {part.label or part.type})" if part else ""
        raise ConfigError(f"{source.image} holds data at byte {found}{inside} that the bmap "
                          "does not map: the bmap was made for another image, or the image "
                          "was changed after it", file=str(name), hint=bmapfile.HINT)


def _check_image_ranges(source: Source, recorded: bool) -> None:
    """Every mapped range of the image hashes to the bmap's checksum, so that a read-back
    mismatch later can only be the device's doing."""
    bad = changed_ranges(source.bmap, source.image, range(len(source.bmap.ranges)))
    if bad:
        cause = ("it was changed after the build (its bmap is the one build.json records)"
                 if recorded else "it was changed after its bmap was made, or the bmap "
                 "belongs to another image")
        raise ConfigError(f"{len(bad)} of {len(source.bmap.ranges)} mapped ranges differ "
                          f"from the bmap {source.bmap_file}: {describe(source.bmap, bad)}; "
                          f"{cause}", file=str(source.image),
                          hint="rebuild, or restore the image; no device was touched")
