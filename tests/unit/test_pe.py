from __future__ import annotations

import struct
from pathlib import Path

import pytest

from appsdk.errors import VerifyFailed
from appsdk.pe import read_text, sections


def tiny_pe(path: Path, named: dict[str, bytes]) -> Path:
    """A minimal PE32+ image: DOS stub, COFF header, empty optional header, sections."""
    pe_offset = 0x80
    header = bytearray(0x200)
    header[:2] = b"MZ"
    struct.pack_into("<I", header, 0x3C, pe_offset)
    header[pe_offset:pe_offset + 4] = b"PE\0\0"
    struct.pack_into("<HHIIIHH", header, pe_offset + 4, 0x8664, len(named), 0, 0, 0, 0, 0)
    body = bytearray()
    table = pe_offset + 24
    for index, (name, data) in enumerate(named.items()):
        offset = len(header) + len(body)
        entry = name.encode().ljust(8, b"\0") + struct.pack("<IIII", len(data), 0,
                                                            (len(data) + 511) // 512 * 512,
                                                            offset)
        header[table + 40 * index: table + 40 * index + 24] = entry
        body += data.ljust((len(data) + 511) // 512 * 512, b"\0")
    path.write_bytes(bytes(header) + bytes(body))
    return path


def test_reads_uki_sections(tmp_path: Path) -> None:
    pe = tiny_pe(tmp_path / "u.efi", {".osrel": b"IMAGE_ID=x\n", ".cmdline": b"root=tmpfs\0",
                                      ".linux": b"K" * 700})
    assert set(sections(pe)) == {".osrel", ".cmdline", ".linux"}
    assert read_text(pe, ".cmdline") == "root=tmpfs"
    assert read_text(pe, ".osrel") == "IMAGE_ID=x\n"
    assert sections(pe)[".linux"].size == 700


def test_not_pe(tmp_path: Path) -> None:
    (tmp_path / "x").write_bytes(b"hello")
    with pytest.raises(VerifyFailed, match="not a PE"):
        sections(tmp_path / "x")
