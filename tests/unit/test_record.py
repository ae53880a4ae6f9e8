"""The typed build record: written in one place, read through one loader; a record round
trips; the emulator profiles a build records cannot make `appsdk run` start another program
or reach the host; any build.json gives a BuildRecord or a ConfigError, never another
exception."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_buildinfo import JSON, edited
from test_buildinfo import record as v1_record

from appsdk.contract.buildinfo import locate_build, parse_record, write_record
from appsdk.contract.esprecord import FirmwarePin
from appsdk.contract.record import (
    SCHEMA,
    ArtifactRecord,
    BuildRecord,
    PartitionInfo,
    RecordedBoard,
    UpdateRecord,
)
from appsdk.core.errors import ConfigError
from appsdk.spec.boards import list_boards, load_board

FILE = Path("out/build.json")
SUM = "cd" * 32


def full_record(board: str = "rpi4", chain: str = "rpi+uboot") -> BuildRecord:
    return BuildRecord(
        id="demo", version="1.0", board=RecordedBoard.of(load_board(board), chain),
        artifacts={"image": ArtifactRecord("demo_1.0.img", 4096, SUM),
                   "bmap": ArtifactRecord("demo_1.0.img.bmap", 900, SUM)},
        appsdk="0.1.0", kernel="6.12.1", cmdline="root=tmpfs console=ttyAMA0",
        esp_files=("EFI/BOOT/BOOTAA64.EFI",),
        partitions=(PartitionInfo("esp", "esp", "U-1", 1048576, 268435456),),
        mapped_bytes=2048, image_size=4096, partition_sizes={"esp": 1, "usr": 2},
        min_device_size=1 << 30, tools={"systemd": "systemd 257"}, seconds=12.5,
        firmware={"u-boot": FirmwarePin("u-boot", "2026.10", SUM)},
        verity_roothash="ef" * 32, update=UpdateRecord("http://u/", "ABCD", True))


def reread(rec: BuildRecord, directory: Path) -> BuildRecord:
    write_record(rec, directory)
    (directory / rec.artifacts["image"].file).write_bytes(b"x")
    image, back = locate_build(directory)
    assert back is not None and image == directory / "demo_1.0.img"
    return back


def test_every_shipped_board_round_trips_with_its_emulators(tmp_path: Path) -> None:
    for board in list_boards():
        rec = full_record(board.name, board.firmware_chain)
        back = reread(rec, tmp_path)
        assert back == rec and back.schema == SCHEMA
        assert back.board.emulators == board.emulators
        assert back.path("bmap") == tmp_path / "demo_1.0.img.bmap"
    assert not list(tmp_path.glob(".*.tmp")), "the atomic write left its temporary file"


def test_a_schema_1_record_reads_with_what_it_has(tmp_path: Path) -> None:
    (tmp_path / "build.json").write_text(json.dumps(v1_record()))
    (tmp_path / "demo_1.0.img").write_bytes(b"x")
    _, rec = locate_build(tmp_path / "demo_1.0.img")
    assert rec is not None and rec.schema == 1 and rec.board.emulators == ()
    assert rec.board.name == "x86-uefi" and rec.min_device_size == 1 << 30
    assert rec.update == UpdateRecord(None, None, True)
    with pytest.raises(ConfigError, match="has no emulator profile"):
        rec.board.emulator_named(None)


def as_json(rec: BuildRecord) -> dict[str, Any]:
    return json.loads(json.dumps(rec.to_json()))


def test_a_newer_schema_is_refused() -> None:
    data = as_json(full_record())
    data["schema"] = SCHEMA + 1
    with pytest.raises(ConfigError, match=r"schema 3: written by another appsdk") as e:
        parse_record(json.dumps(data).encode(), FILE)
    assert e.value.field == "schema"


@pytest.mark.parametrize(("key", "value", "message"), [
    ("qemu", "/bin/sh", "qemu"),
    ("qemu", "qemu-system-x86_64 -plugin x", "qemu"),
    ("machine", "q35 -drive file=/etc/shadow", "machine"),
    ("firmware_code", ["/etc/shadow"], r"firmware_code\[0\]"),
    ("firmware_code", ["/usr/share/../../etc/shadow"], r"firmware_code\[0\]"),
    ("bios", "u-boot-qemu:../../../etc/shadow", "bios"),
    ("extra_args", ["-plugin", "evil.so"], r"extra_args\[0\]"),
    ("extra_args", ["-device", "loader,file=/etc/shadow"], "is not valid"),
    ("extra_args", ["-device", "loader,file=shadow"], "reaches the host"),
    ("extra_args", ["-global", "driver=cfi.pflash01,property=secure,value=on",
                    "-device", "virtio-serial,chardev=c0"], "reaches the host"),
    ("memory_mib", 1 << 40, "memory_mib"),
    ("console", "ttyS0 init=/bin/sh", "console"),
    ("launcher", "x", "unknown key 'launcher'"),
])
def test_recorded_emulators_cannot_reach_the_host(key: str, value: Any, message: str) -> None:
    data = as_json(full_record("x86-uefi", "uefi"))
    data["board"]["emulators"][0][key] = value
    with pytest.raises(ConfigError, match=message) as e:
        parse_record(json.dumps(data).encode(), FILE)
    assert str(e.value).startswith(str(FILE))


def test_guest_only_qemu_options_pass() -> None:
    data = as_json(full_record("x86-uefi", "uefi"))
    data["board"]["emulators"][0]["extra_args"] = [
        "-global", "driver=cfi.pflash01,property=secure,value=on", "-smp", "4"]
    rec = BuildRecord.from_json(parse_record(json.dumps(data).encode(), FILE), FILE)
    assert rec.board.emulator_named("q35-ovmf").extra_args[-1] == "4"


FIELDS = ["schema", "appsdk", "kernel", "esp_files", "partitions", "partitions.0",
          "partitions.0.offset", "bmap", "bmap.mapped_bytes", "partition_sizes",
          "partition_sizes.esp", "tools", "tools.systemd", "seconds", "firmware",
          "firmware.u-boot", "firmware.u-boot.sha256", "verity", "verity.roothash",
          "update.automatic", "update.compression", "board.emulators", "board.emulators.0",
          "board.emulators.0.memory_mib", "board.emulators.0.firmware_code",
          "board.emulators.0.extra_args", "board.emulators.0.bios", "board.console"]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(FIELDS), JSON | st.just(...)), min_size=1,
                max_size=3))
def test_any_mutation_is_a_record_or_a_config_error(edits: list[tuple[str, Any]]) -> None:
    data = as_json(full_record())
    for field, value in edits:
        with contextlib.suppress(KeyError, TypeError, IndexError, ValueError):
            data = edited(field, value, data)
    try:
        rec = BuildRecord.from_json(parse_record(json.dumps(data).encode(), FILE), FILE)
    except ConfigError as exc:
        assert str(exc).startswith(str(FILE))
        return
    assert BuildRecord.from_json(as_json(rec), FILE) == rec


def test_firmware_refs_are_typed_once_and_stay_typed_through_the_record(tmp_path: Path) -> None:
    from appsdk.spec.boards import HostFile, PinnedFile, firmware_ref

    uboot = load_board("rpi4").emulator_named("virt-uboot").bios
    assert isinstance(uboot, PinnedFile) and (uboot.component, uboot.file) == (
        "u-boot-qemu", "qemu_arm64/u-boot.bin")
    ovmf = load_board("x86-uefi").emulator_named(None).firmware_code[0]
    assert isinstance(ovmf, HostFile) and ovmf.path == Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
    back = reread(full_record("rpi4"), tmp_path).board.emulator_named("virt-uboot")
    assert isinstance(back.bios, PinnedFile) and back.bios == uboot
    assert isinstance(firmware_ref("/x"), HostFile) and isinstance(firmware_ref("a:b"), PinnedFile)


def test_run_boots_a_build_as_recorded_without_reading_its_board_profile(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    from test_hostile_inputs import gpt

    from appsdk.cli import main
    from appsdk.spec import boards

    rec = full_record("x86-uefi", "uefi")
    write_record(rec, tmp_path)
    (tmp_path / "demo_1.0.img").write_bytes(gpt(128))

    def no_profiles(*args: object, **kwargs: object) -> None:
        raise AssertionError("appsdk run read a board profile")

    monkeypatch.setattr(boards, "load_board", no_profiles)
    monkeypatch.setattr(boards, "load_board_file", no_profiles)
    assert main(["run", str(tmp_path), "--print", "--accel", "tcg"]) == 0
    argv = capsys.readouterr().out.split()
    assert argv[:3] == ["qemu-system-x86_64", "-machine", "q35"]
    assert "file=/usr/share/OVMF/OVMF_CODE_4M.fd" in " ".join(argv)
