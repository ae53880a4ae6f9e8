"""Read the sections of a PE/COFF file (a UKI): what its .cmdline, .osrel, .uname say."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

from appsdk.core.errors import VerifyFailed


@dataclass(frozen=True)
class Section:
    name: str
    offset: int  # in the file
    size: int  # bytes of data in the file (trailing padding trimmed for text sections)


TEXT_MAX = 1024 * 1024  # a text section (.cmdline, .osrel, .uname, .sdmagic) is small


@dataclass(frozen=True)
class Headers:
    pe_offset: int
    count: int  # sections
    optional: bytes  # the optional header (magic, data directories)
    table: bytes  # the section table


def headers(path: Path) -> Headers:
    """The PE headers; any file that is not a well-formed PE is VerifyFailed."""
    with path.open("rb") as f:
        head = f.read(4096)
        if len(head) < 0x40 or head[:2] != b"MZ":
            raise VerifyFailed(f"{path}: not a PE file (no MZ header)")
        (pe_offset,) = struct.unpack_from("<I", head, 0x3C)
        f.seek(pe_offset)
        coff = f.read(24)
        if len(coff) < 24 or coff[:4] != b"PE\0\0":
            raise VerifyFailed(f"{path}: not a PE file (no PE signature)")
        _, count, _, _, _, optional_size, _ = struct.unpack_from("<HHIIIHH", coff, 4)
        optional = f.read(optional_size)
        table = f.read(40 * count)
    if len(table) < 40 * count:
        raise VerifyFailed(f"{path}: PE section table cut short ({count} sections declared)")
    return Headers(pe_offset, count, optional, table)


def sections(path: Path) -> dict[str, Section]:
    """The section table; any file that is not a well-formed PE is VerifyFailed."""
    found = headers(path)
    out = {}
    for index in range(found.count):
        entry = found.table[index * 40:(index + 1) * 40]
        name = entry[:8].rstrip(b"\0").decode(errors="replace")
        virtual_size, _, raw_size, raw_offset = struct.unpack_from("<IIII", entry, 8)
        out[name] = Section(name, raw_offset, min(virtual_size, raw_size) or raw_size)
    return out


def read_section(path: Path, name: str) -> bytes:
    section = sections(path).get(name)
    if section is None:
        raise VerifyFailed(f"{path}: no {name} section")
    with path.open("rb") as f:
        f.seek(section.offset)
        return f.read(section.size)


def read_text(path: Path, name: str) -> str:
    section = sections(path).get(name)
    if section is not None and section.size > TEXT_MAX:
        raise VerifyFailed(f"{path}: section {name} is {section.size} bytes, not text")
    data = read_section(path, name).rstrip(b"\0")
    try:
        return data.decode()
    except UnicodeDecodeError as exc:
        raise VerifyFailed(f"{path}: section {name} is not UTF-8 text (byte {exc.start})") from None


WIN_CERT_TYPE_PKCS_SIGNED_DATA = 0x0002
SECURITY_DIRECTORY = 4  # IMAGE_DIRECTORY_ENTRY_SECURITY: Authenticode signatures


def signatures(path: Path) -> list[bytes]:
    """The Authenticode signatures (DER PKCS#7 SignedData) in the PE's attribute certificate
    table: [] for an unsigned binary. A table that does not lie inside the file, or entries
    that do not add up, are VerifyFailed: firmware would refuse such a file."""
    optional = headers(path).optional
    if len(optional) < 2:
        raise VerifyFailed(f"{path}: PE optional header cut short")
    (magic,) = struct.unpack_from("<H", optional, 0)
    if magic not in (0x10B, 0x20B):
        raise VerifyFailed(f"{path}: unknown PE optional header (magic {magic:#x})")
    dirs = 96 if magic == 0x10B else 112
    if len(optional) < dirs:
        raise VerifyFailed(f"{path}: PE optional header cut short")
    (count,) = struct.unpack_from("<I", optional, dirs - 4)
    if count <= SECURITY_DIRECTORY:
        return []
    if len(optional) < dirs + 8 * (SECURITY_DIRECTORY + 1):
        raise VerifyFailed(f"{path}: PE data directories cut short")
    offset, size = struct.unpack_from("<II", optional, dirs + 8 * SECURITY_DIRECTORY)
    if size == 0:
        return []
    if offset + size > path.stat().st_size or size > 16 * 1024 * 1024:
        raise VerifyFailed(f"{path}: its signature table lies outside the file")
    with path.open("rb") as f:
        f.seek(offset)
        table = f.read(size)
    out, at = [], 0
    while at + 8 <= len(table):
        length, _, kind = struct.unpack_from("<IHH", table, at)
        if length < 8 or at + length > len(table):
            raise VerifyFailed(f"{path}: a signature entry does not fit its table")
        if kind == WIN_CERT_TYPE_PKCS_SIGNED_DATA:
            out.append(table[at + 8:at + length])
        at += (length + 7) & ~7  # entries are 8-byte aligned
    return out
