"""GUID partition tables of image files. Every field is checked against the UEFI rules
and the file's size (both headers, both entry arrays, their CRCs, partition bounds), so
any bytes give a Gpt or a ConfigError naming the file, never another exception."""

from __future__ import annotations

import itertools
import struct
import uuid
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from appsdk.core.errors import ConfigError

SECTOR_SIZES = (512, 4096)
HEADER_MIN = 92
ENTRY_MIN = 128
MAX_ENTRIES = 1024  # UEFI's minimum array is 128 entries; no real table needs more
MAX_ARRAY = 1024 * 1024
SIGNATURE = b"EFI PART"
HINT = "the image's partition table is damaged or was not made for this image: rebuild it"
# Discoverable Partitions Specification type GUIDs appsdk images use.
PART_TYPES = {
    "c12a7328-f81f-11d2-ba4b-00a0c93ec93b": "esp",
    "8484680c-9521-48c6-9c11-b0720656f69e": "usr-x86-64",
    "77ff5f63-e7b6-4633-acf4-1565b864c0e6": "usr-x86-64-verity",
    "b0e01050-ee5f-4390-949a-9101b17104e9": "usr-arm64",
    "6e11a4e7-fbca-4ded-b9e9-e1a512bb664e": "usr-arm64-verity",
    "4d21b016-b534-45c2-a9fb-5c16e091fd2d": "var",
    "0fc63daf-8483-4772-8e79-3d69d8477de4": "linux-generic",
}


@dataclass(frozen=True)
class Partition:
    number: int  # 1-based index in the entry array
    type_guid: str
    uuid: str
    label: str
    offset: int  # bytes
    size: int

    @property
    def type(self) -> str:
        return PART_TYPES.get(self.type_guid, self.type_guid)


@dataclass(frozen=True)
class Header:
    lba: int
    backup_lba: int
    first_usable: int
    last_usable: int
    disk_guid: str
    entries_lba: int
    entry_count: int
    entry_size: int
    entries_crc: int

    @property
    def array_bytes(self) -> int:
        return self.entry_count * self.entry_size


@dataclass(frozen=True)
class Gpt:
    sector: int
    primary: Header
    backup: Header
    partitions: tuple[Partition, ...]

    @property
    def disk_guid(self) -> str:
        return self.primary.disk_guid

    def regions(self) -> tuple[tuple[str, int, int], ...]:
        """(what, offset, length) of the table's own structures: a disk carries this table
        only if all of them are written."""
        s, p, b = self.sector, self.primary, self.backup
        return (("the protective MBR and primary GPT header", 0, 2 * s),
                ("the primary partition entries", p.entries_lba * s, p.array_bytes),
                ("the backup partition entries", b.entries_lba * s, b.array_bytes),
                ("the backup GPT header", b.lba * s, s))

    def partition_at(self, offset: int) -> Partition | None:
        return next((p for p in self.partitions
                     if p.offset <= offset < p.offset + p.size), None)

    def as_dict(self) -> dict[str, Any]:
        return {"disk_guid": self.disk_guid, "partitions": [
            {"number": p.number, "label": p.label, "type": p.type, "uuid": p.uuid,
             "offset": p.offset, "size": p.size} for p in self.partitions]}


class NoGpt(ConfigError):
    """The image has no GPT at all (nor a protective MBR claiming one)."""


def _fail(image: Path, message: str) -> ConfigError:
    return ConfigError(message, file=str(image), hint=HINT)


def _read(f: BinaryIO, offset: int, length: int) -> bytes:
    f.seek(offset)
    return f.read(length)


def _guid(raw: bytes) -> str:
    return str(uuid.UUID(bytes_le=raw))


def _header(raw: bytes, lba: int, sector: int, sectors: int, image: Path,
            what: str) -> Header:
    """A header read from `lba`, checked on its own and against the file's `sectors`."""
    if len(raw) < sector or raw[:8] != SIGNATURE:
        raise _fail(image, f"no {what} GPT header at LBA {lba} (byte {lba * sector})")
    size, crc = struct.unpack_from("<II", raw, 12)
    if not HEADER_MIN <= size <= sector:
        raise _fail(image, f"{what} GPT header size {size} is outside {HEADER_MIN}..{sector}")
    check = bytearray(raw[:size])
    check[16:20] = bytes(4)
    if zlib.crc32(bytes(check)) != crc:
        raise _fail(image, f"{what} GPT header checksum mismatch")
    my_lba, alt, first, last = struct.unpack_from("<QQQQ", raw, 24)
    entries_lba, count, entry_size, entries_crc = struct.unpack_from("<QIII", raw, 72)
    h = Header(my_lba, alt, first, last, _guid(raw[56:72]), entries_lba, count, entry_size,
               entries_crc)
    if my_lba != lba:
        raise _fail(image, f"{what} GPT header at LBA {lba} says it is at LBA {my_lba}")
    if entry_size < ENTRY_MIN or entry_size % 8:
        raise _fail(image, f"{what} GPT entry size {entry_size} is not a multiple of 8 "
                    f"of at least {ENTRY_MIN}")
    if count > MAX_ENTRIES or h.array_bytes > MAX_ARRAY:
        raise _fail(image, f"{what} GPT declares {count} entries of {entry_size} bytes "
                    f"(appsdk reads at most {MAX_ENTRIES} entries, {MAX_ARRAY} bytes)")
    if not 2 <= first <= last:
        raise _fail(image, f"{what} GPT usable area (LBA {first}-{last}) is empty or "
                    "overlaps the headers")
    array_end = entries_lba + -(-h.array_bytes // sector)  # first LBA after the array
    primary = lba == 1
    # The primary array lies between its header and the usable area, the backup array
    # between the usable area and its header.
    placed = (entries_lba >= 2 and array_end <= first) if primary else \
        (last < entries_lba and array_end <= lba)
    if not placed:
        raise _fail(image, f"{what} GPT entries (LBA {entries_lba}-{array_end - 1}) overlap "
                    f"its header or the usable area (LBA {first}-{last})")
    backup_at = alt if primary else lba
    if backup_at <= last or backup_at >= sectors:
        raise _fail(image, f"the backup GPT header belongs at LBA {backup_at} (byte "
                    f"{backup_at * sector}), but the image has {sectors} sectors of {sector} "
                    "bytes: the image is shorter than its partition table (cut short?)")
    return h


def _partitions(table: bytes, h: Header, sector: int, image: Path) -> tuple[Partition, ...]:
    parts = []
    for i in range(h.entry_count):
        e = table[i * h.entry_size:(i + 1) * h.entry_size]
        if e[:16] == bytes(16):
            continue
        first, last = struct.unpack_from("<QQ", e, 32)
        if not h.first_usable <= first <= last <= h.last_usable:
            raise _fail(image, f"partition {i + 1} (LBA {first}-{last}) is not inside the "
                        f"usable area LBA {h.first_usable}-{h.last_usable}")
        label = e[56:128].decode("utf-16-le", errors="replace").split("\0", 1)[0]
        parts.append(Partition(i + 1, _guid(e[:16]), _guid(e[16:32]), label, first * sector,
                               (last - first + 1) * sector))
    ordered = sorted(parts, key=lambda p: p.offset)
    for a, b in itertools.pairwise(ordered):
        if b.offset < a.offset + a.size:
            raise _fail(image, f"partitions {a.number} and {b.number} overlap")
    return tuple(parts)


def _entries(f: BinaryIO, h: Header, sector: int, image: Path, what: str) -> bytes:
    table = _read(f, h.entries_lba * sector, h.array_bytes)
    if len(table) != h.array_bytes:
        raise _fail(image, f"the {what} GPT entries run past the end of the image")
    if zlib.crc32(table) != h.entries_crc:
        raise _fail(image, f"{what} GPT partition entries checksum mismatch")
    return table


def _sector_size(f: BinaryIO, image: Path) -> int:
    for sector in SECTOR_SIZES:
        if _read(f, sector, 8) == SIGNATURE:
            return sector
    mbr = _read(f, 0, 512)
    protective = len(mbr) == 512 and mbr[510:] == b"\x55\xaa" and any(
        mbr[446 + 16 * i + 4] == 0xEE for i in range(4))
    if protective:
        raise _fail(image, "a protective MBR announces a GPT, but there is no GPT header at "
                    "LBA 1")
    raise NoGpt("no GPT header at LBA 1 (not a disk image?)", file=str(image),
                hint="pass a disk image made by `appsdk build`")


def read(image: Path) -> Gpt:
    """Both GPTs of `image`, fully checked."""
    try:
        f = image.open("rb")
    except OSError as exc:
        raise ConfigError(f"cannot read the image: {exc.strerror or exc}",
                          file=str(image)) from None
    with f:
        sectors_bytes = f.seek(0, 2)
        sector = _sector_size(f, image)
        sectors = sectors_bytes // sector
        primary = _header(_read(f, sector, sector), 1, sector, sectors, image, "primary")
        table = _entries(f, primary, sector, image, "primary")
        backup = _header(_read(f, primary.backup_lba * sector, sector), primary.backup_lba,
                         sector, sectors, image, "backup")
        same = (backup.backup_lba, backup.first_usable, backup.last_usable, backup.disk_guid,
                backup.entry_count, backup.entry_size, backup.entries_crc) == (
            1, primary.first_usable, primary.last_usable, primary.disk_guid,
            primary.entry_count, primary.entry_size, primary.entries_crc)
        if not same:
            raise _fail(image, "the backup GPT header does not match the primary one")
        _entries(f, backup, sector, image, "backup")
    return Gpt(sector, primary, backup, _partitions(table, primary, sector, image))


def probe(image: Path) -> Gpt | None:
    """`read`, or None for an image without any GPT (an MBR or raw image)."""
    try:
        return read(image)
    except NoGpt:
        return None


def disk_table(image: Path) -> Gpt | None:
    """`probe`, but a file with no partition table at all (no GPT, no MBR boot signature:
    a build.json, a tarball, a text file) is refused: it is no disk image, and writing it
    to a card or booting it would only destroy or hide what is there."""
    table = probe(image)
    if table is None:
        try:
            with image.open("rb") as f:
                f.seek(510)
                mbr = f.read(2) == b"\x55\xaa"
        except OSError as exc:
            raise ConfigError(f"cannot read the image: {exc.strerror or exc}",
                              file=str(image)) from None
        if not mbr:
            raise ConfigError("not a disk image: no partition table (no GPT, no MBR)",
                              file=str(image), hint="pass the .img of a build, or its "
                              "build directory")
    return table
