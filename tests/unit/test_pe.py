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


def signed_pe(path: Path, entries: list[tuple[int, bytes]], dirs: int = 16) -> Path:
    """tiny_pe with a PE32+ optional header whose security directory points at a table of
    WIN_CERTIFICATE entries (type, data), appended at the end as signing tools do."""
    tiny_pe(path, {".text": b"code"})
    blob = bytearray(path.read_bytes())
    optional = 0x80 + 24
    struct.pack_into("<H", blob, 0x80 + 20, 112 + 8 * dirs)  # SizeOfOptionalHeader
    # Moving the section table is not needed for signatures(): sections() reads it after
    # the optional header, so keep it there by re-writing the one section.
    table = bytearray()
    for kind, data in entries:
        entry = struct.pack("<IHH", 8 + len(data), 0x0200, kind) + data
        table += entry.ljust((len(entry) + 7) // 8 * 8, b"\0")
    offset = len(blob)
    header = bytearray(112 + 8 * dirs)
    struct.pack_into("<H", header, 0, 0x20B)
    struct.pack_into("<I", header, 108, dirs)
    if dirs > 4:
        struct.pack_into("<II", header, 112 + 8 * 4, offset, len(table))
    section = bytes(blob[optional:optional + 40])
    blob[optional:optional + len(header)] = header
    blob[optional + len(header):optional + len(header) + 40] = section
    path.write_bytes(bytes(blob) + bytes(table))
    return path


def test_signatures_are_read_from_the_security_directory(tmp_path: Path) -> None:
    two = signed_pe(tmp_path / "two.efi", [(2, b"\x30first"), (1, b"x509"), (2, b"\x30two")])
    assert pe.signatures(two) == [b"\x30first", b"\x30two"]
    assert pe.signatures(signed_pe(tmp_path / "none.efi", [])) == []
    assert pe.signatures(signed_pe(tmp_path / "old.efi", [(2, b"\x30")], dirs=4)) == []
    bad = signed_pe(tmp_path / "bad.efi", [(2, b"\x30" * 20)])
    data = bytearray(bad.read_bytes())
    struct.pack_into("<I", data, len(data) - 32, 4096)  # an entry longer than its table
    bad.write_bytes(bytes(data))
    with pytest.raises(VerifyFailed, match="does not fit"):
        pe.signatures(bad)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64), st.integers(0, 700), st.binary(min_size=1, max_size=8))
def test_any_signature_table_is_read_or_refused(tmp_path_factory: pytest.TempPathFactory,
                                                data: bytes, at: int, patch: bytes) -> None:
    path = signed_pe(tmp_path_factory.mktemp("sig") / "x.efi", [(2, b"\x30" + data)])
    blob = bytearray(path.read_bytes())
    blob[at:at + len(patch)] = patch
    path.write_bytes(bytes(blob))
    with contextlib.suppress(VerifyFailed):
        assert isinstance(pe.signatures(path), list)
