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


def sections(path: Path) -> dict[str, Section]:
    """The section table; any file that is not a well-formed PE is VerifyFailed."""
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
        f.seek(pe_offset + 24 + optional_size)
        table = f.read(40 * count)
    if len(table) < 40 * count:
        raise VerifyFailed(f"{path}: PE section table cut short ({count} sections declared)")
    out = {}
    for index in range(count):
        entry = table[index * 40:(index + 1) * 40]
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
