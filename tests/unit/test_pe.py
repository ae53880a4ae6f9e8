from __future__ import annotations

import contextlib
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appsdk.core.errors import VerifyFailed
from appsdk.image import pe
from appsdk.image.pe import read_text, sections


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


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=600), st.integers(0, 599), st.binary(min_size=1, max_size=8))
def test_any_bytes_are_read_or_refused(tmp_path_factory: pytest.TempPathFactory, data: bytes,
                                       at: int, patch: bytes) -> None:
    """A crafted UKI on an ESP must give VerifyFailed, never a traceback in `inspect`."""
    blob = bytearray(b"MZ" + bytes(0x3A) + (0x40).to_bytes(4, "little") + b"PE\0\0" + data)
    blob[at:at + len(patch)] = patch
    path = tmp_path_factory.mktemp("pe") / "x.efi"
    path.write_bytes(bytes(blob))
    for name in (".cmdline", ".osrel"):
        with contextlib.suppress(VerifyFailed):
            pe.read_text(path, name)
