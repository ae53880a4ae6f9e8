"""The GPT parser against sfdisk and against crafted tables: any bytes give a Gpt or an
AppsdkError naming the file."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import uuid
import zlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appsdk.core.errors import AppsdkError, ConfigError
from appsdk.image import gpt

S = 512
ESP = uuid.UUID("c12a7328-f81f-11d2-ba4b-00a0c93ec93b")
DISK = uuid.UUID("11111111-2222-3333-4444-555555555555")


def header(lba: int, alt: int, first: int, last: int, entries_lba: int, count: int,
           entry_size: int, entries_crc: int, size: int = 92, sector: int = S) -> bytes:
    h = bytearray(sector)
    struct.pack_into("<8sIII", h, 0, b"EFI PART", 0x10000, size, 0)
    struct.pack_into("<QQQQ16sQIII", h, 24, lba, alt, first, last, DISK.bytes_le,
                     entries_lba, count, entry_size, entries_crc)
    struct.pack_into("<I", h, 16, zlib.crc32(bytes(h[:size])))
    return bytes(h)


def image(sectors: int = 128, parts: tuple[tuple[int, int, str], ...] = ((40, 59, "esp"),),
          sector: int = S, **primary: int) -> bytes:
    """A disk image with a primary and a backup GPT of 4 entries; `primary` overrides fields
    of the primary header only (its CRC is recomputed, so the field checks are tested)."""
    count, entry_size = 4, 128
    entries = bytearray(count * entry_size)
    for i, (first, last, label) in enumerate(parts):
        struct.pack_into("<16s16sQQQ", entries, i * entry_size, ESP.bytes_le,
                         uuid.UUID(int=i + 1).bytes_le, first, last, 0)
        name = label.encode("utf-16-le")[:72]
        entries[i * entry_size + 56:i * entry_size + 56 + len(name)] = name
    array_sectors = -(-len(entries) // sector)
    first_usable, last_usable = 2 + array_sectors, sectors - 2 - array_sectors
    crc = zlib.crc32(bytes(entries))
    fields = {"lba": 1, "alt": sectors - 1, "first": first_usable, "last": last_usable,
              "entries_lba": 2, "count": count, "entry_size": entry_size,
              "entries_crc": crc, **primary}
    disk = bytearray(sectors * sector)
    disk[446 + 4] = 0xEE  # protective MBR
    disk[510:512] = b"\x55\xaa"
    disk[sector:2 * sector] = header(**fields, sector=sector)
    disk[2 * sector:2 * sector + len(entries)] = entries
    backup_entries = sectors - 1 - array_sectors
    disk[backup_entries * sector:backup_entries * sector + len(entries)] = entries
    disk[(sectors - 1) * sector:] = header(sectors - 1, 1, first_usable, last_usable,
                                           backup_entries, count, entry_size, crc,
                                           sector=sector)
    return bytes(disk)


def write(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "disk.img"
    path.write_bytes(data)
    return path


def test_a_valid_table_reads_as_sfdisk_reads_it(tmp_path: Path) -> None:
    path = write(tmp_path, image(parts=((40, 59, "esp"), (60, 90, "usr_1.0"))))
    table = gpt.read(path)
    assert table.disk_guid == str(DISK)
    assert [(p.number, p.label, p.type, p.offset, p.size) for p in table.partitions] == [
        (1, "esp", "esp", 40 * S, 20 * S), (2, "usr_1.0", "esp", 60 * S, 31 * S)]
    assert table.partition_at(60 * S + 5) == table.partitions[1]
    assert table.partition_at(30 * S) is None
    if shutil.which("sfdisk"):
        check = subprocess.run(["sfdisk", "--verify", str(path)], capture_output=True,
                               text=True)
        assert check.returncode == 0, check.stdout + check.stderr
        dump = json.loads(subprocess.run(["sfdisk", "--json", str(path)], check=True,
                                         capture_output=True, text=True).stdout)
        assert [(p["start"], p["size"], p["name"]) for p in
                dump["partitiontable"]["partitions"]] == [(40, 20, "esp"), (60, 31, "usr_1.0")]


@pytest.mark.skipif(shutil.which("sfdisk") is None, reason="sfdisk not installed")
def test_sfdisk_images(tmp_path: Path) -> None:
    path = tmp_path / "sf.img"
    with path.open("wb") as f:
        f.truncate(8 * 1024 * 1024)
    subprocess.run(["sfdisk", "-q", str(path)], input="label: gpt\n,2M,U\n,2M,L\n",
                   text=True, check=True)
    table = gpt.read(path)
    assert [(p.type, p.offset, p.size) for p in table.partitions] == [
        ("esp", 1024 * 1024, 2 * 1024 * 1024),
        ("linux-generic", 3 * 1024 * 1024, 2 * 1024 * 1024)]
    assert dict(table.as_dict())["partitions"][0]["number"] == 1
    regions = {what: (offset, length) for what, offset, length in table.regions()}
    assert regions["the backup GPT header"] == (8 * 1024 * 1024 - S, S)

def test_4k_sectors(tmp_path: Path) -> None:
    table = gpt.read(write(tmp_path, image(sectors=64, parts=((10, 20, "esp"),),
                                           sector=4096)))
    assert table.sector == 4096
    assert (table.partitions[0].offset, table.partitions[0].size) == (40960, 11 * 4096)
    assert table.regions()[3] == ("the backup GPT header", 63 * 4096, 4096)


CRAFTED = [
    ("header size 91", {"size": 91}, "header size 91 is outside 92..512"),
    ("header size 513", {"size": 513}, "header size 513 is outside"),
    ("entry size 64", {"entry_size": 64}, "entry size 64 is not a multiple of 8 of at least"),
    ("entry size 130", {"entry_size": 130}, "entry size 130"),
    ("a million entries", {"count": 10**6}, "declares 1000000 entries"),
    ("2 GiB array", {"count": 1024, "entry_size": 2**21}, "appsdk reads at most"),
    ("entries past the end", {"entries_lba": 10**12}, "entries .* overlap"),
    ("entries in the usable area", {"entries_lba": 50}, "entries .* overlap"),
    ("first usable after last", {"first": 100, "last": 90}, "usable area .* is empty"),
    ("header at another LBA", {"lba": 7}, "says it is at LBA 7"),
    ("backup beyond the file", {"alt": 5000}, "shorter than its partition table"),
    ("backup inside usable area", {"alt": 70}, "backup GPT header belongs at LBA 70"),
    ("entries crc", {"entries_crc": 1}, "entries checksum mismatch"),
]


@pytest.mark.parametrize(("fields", "message"), [(f, m) for _, f, m in CRAFTED],
                         ids=[w for w, _, _ in CRAFTED])
def test_crafted_headers_are_refused_naming_the_file(
        tmp_path: Path, fields: dict[str, int], message: str) -> None:
    path = write(tmp_path, image(**fields))
    with pytest.raises(ConfigError, match=message) as e:
        gpt.read(path)
    assert str(e.value).startswith(f"{path}: ") and e.value.hint


@pytest.mark.parametrize(("parts", "message"), [
    (((60, 50, "x"),), "partition 1 .* not inside the usable area"),
    (((40, 10**9, "x"),), "partition 1 .* not inside"),
    (((1, 20, "x"),), "partition 1 .* not inside"),
    (((40, 70, "a"), (60, 80, "b")), "partitions 1 and 2 overlap"),
])
def test_crafted_partitions_are_refused(tmp_path: Path, parts: tuple[tuple[int, int, str], ...],
                                        message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        gpt.read(write(tmp_path, image(parts=parts)))


def test_short_images_and_backup_damage(tmp_path: Path) -> None:
    good = image()
    with pytest.raises(ConfigError, match="shorter than its partition table"):
        gpt.read(write(tmp_path, good[:-S]))
    with pytest.raises(ConfigError, match="no backup GPT header at LBA 127"):
        gpt.read(write(tmp_path, good[:-S] + bytes(S)))
    with pytest.raises(ConfigError, match="backup GPT partition entries checksum"):
        gpt.read(write(tmp_path, good[:-2 * S] + b"x" + good[-2 * S + 1:]))
    with pytest.raises(ConfigError, match="does not match the primary"):
        gpt.read(write(tmp_path, image(parts=((40, 59, "esp"),), last=100)))
    with pytest.raises(ConfigError, match="protective MBR announces a GPT"):
        gpt.read(write(tmp_path, good[:S] + bytes(len(good) - S)))
    with pytest.raises(gpt.NoGpt, match="no GPT header"):
        gpt.read(write(tmp_path, bytes(4096)))
    assert gpt.probe(write(tmp_path, b"")) is None
    with pytest.raises(ConfigError, match="cannot read"):
        gpt.read(tmp_path / "missing.img")


def test_labels_of_any_bytes(tmp_path: Path) -> None:
    raw = bytearray(image())
    raw[2 * S + 56:2 * S + 60] = b"\x00\xd8A\x00"  # a lone surrogate and "A" over "es"
    entries = bytes(raw[2 * S:3 * S])
    crc = zlib.crc32(entries)
    raw[S:2 * S] = header(1, 127, 3, 124, 2, 4, 128, crc)
    raw[126 * S:127 * S] = entries
    raw[127 * S:] = header(127, 1, 3, 124, 126, 4, 128, crc)
    assert gpt.read(write(tmp_path, bytes(raw))).partitions[0].label == "\ufffdAp"


PROPS = settings(max_examples=200, deadline=None,
                 suppress_health_check=[HealthCheck.function_scoped_fixture])


@PROPS
@given(st.binary(max_size=3 * S))
def test_arbitrary_bytes(tmp_path: Path, data: bytes) -> None:
    try:
        gpt.read(write(tmp_path, data))
    except AppsdkError as exc:
        assert str(tmp_path) in str(exc)


@PROPS
@given(st.lists(st.tuples(st.integers(0, 128 * S - 1), st.integers(0, 255)), max_size=8),
       st.fixed_dictionaries({}, optional={
           "size": st.integers(0, 2**32 - 1), "count": st.integers(0, 2**32 - 1),
           "entry_size": st.integers(0, 2**32 - 1), "entries_lba": st.integers(0, 2**64 - 1),
           "first": st.integers(0, 2**64 - 1), "last": st.integers(0, 2**64 - 1),
           "alt": st.integers(0, 2**64 - 1)}),
       st.lists(st.tuples(st.integers(0, 200), st.integers(0, 200)), max_size=4))
def test_mutated_tables(tmp_path: Path, edits: list[tuple[int, int]], fields: dict[str, int],
                        parts: list[tuple[int, int]]) -> None:
    raw = bytearray(image(parts=tuple((a, b, "p") for a, b in parts), **fields))
    for offset, value in edits:
        raw[offset] = value
    try:
        table = gpt.read(write(tmp_path, bytes(raw)))
    except AppsdkError:
        return
    for p in table.partitions:  # whatever passes lies inside the file
        assert p.offset > 0 and p.offset + p.size <= len(raw)
