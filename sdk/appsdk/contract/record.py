"""The build record (build.json) as types: what a build made and for which board, read by
flash, verify, inspect, release and run through one loader (contract.buildinfo), written
by the pipeline in one place. `schema` numbers the layout: records without it are schema
1 (appsdk 0.1.0 before the record was typed), which lack the board's emulator profiles."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from appsdk.contract.esprecord import FirmwarePin
from appsdk.spec.appliance import DEFAULT_COMPRESSION
from appsdk.spec.boards import ARCHES, Board, Emulator, firmware_ref, pick_emulator

SCHEMA = 2


@dataclass(frozen=True)
class ArtifactRecord:
    file: str  # a plain name in the build directory
    size: int
    sha256: str


@dataclass(frozen=True)
class PartitionInfo:
    label: str
    type: str
    uuid: str
    offset: int
    size: int


@dataclass(frozen=True)
class RecordedBoard:
    """The board as the build saw it: enough to flash, inspect and emulate the image
    without reading the board's profile again (it may have changed, or be absent)."""
    name: str
    arch: str | None
    firmware_chain: str | None
    console: str | None
    emulators: tuple[Emulator, ...] = ()  # the first is the default; () in schema 1
    source: Path = field(default=Path("build.json"), compare=False)  # for error messages

    @classmethod
    def of(cls, board: Board, chain: str) -> RecordedBoard:
        return cls(board.name, board.arch, chain, board.console, board.emulators, board.source)

    @property
    def debian_arch(self) -> str:
        return ARCHES[self.arch][0] if self.arch in ARCHES else "unknown"

    def emulator_named(self, name: str | None) -> Emulator:
        return pick_emulator(self.name, self.emulators, name)


@dataclass(frozen=True)
class UpdateRecord:
    url: str | None = None
    signed_by: str | None = None  # the signing key's fingerprint
    automatic: bool = False
    compression: str = DEFAULT_COMPRESSION  # of the update files (builds before it: xz)


@dataclass(frozen=True)
class SecureBootRecord:
    db_cert_sha256: str  # SHA-256 of the db certificate (DER) every EFI binary is signed for
    enroll: str  # loader.conf secure-boot-enroll on the ESP
    # "pkfp" of the PCR key the UKI's .pcrsig is by (SHA-256 of its RSAPublicKey DER); None: none
    pcr_key_sha256: str | None = None


@dataclass(frozen=True)
class BuildRecord:
    id: str
    version: str
    board: RecordedBoard
    artifacts: Mapping[str, ArtifactRecord]  # image and bmap always
    schema: int = SCHEMA
    appsdk: str | None = None  # the appsdk version that built it
    kernel: str | None = None
    cmdline: str | None = None
    esp_files: tuple[str, ...] = ()
    partitions: tuple[PartitionInfo, ...] = ()
    mapped_bytes: int | None = None
    image_size: int | None = None
    partition_sizes: Mapping[str, int] = field(default_factory=dict)
    min_device_size: int | None = None
    tools: Mapping[str, str] = field(default_factory=dict)
    seconds: float | None = None
    firmware: Mapping[str, FirmwarePin] = field(default_factory=dict)
    verity_roothash: str | None = None
    update: UpdateRecord = field(default_factory=UpdateRecord)
    secure_boot: SecureBootRecord | None = None  # None: EFI binaries are not signed
    file: Path | None = field(default=None, compare=False)  # where it was read from

    def path(self, kind: str) -> Path:
        """An artifact's path (records read from a file only)."""
        if self.file is None:
            raise ValueError("a record that was not read from a build directory")
        return self.file.parent / self.artifacts[kind].file

    def to_json(self) -> dict[str, Any]:
        board = {"name": self.board.name, "arch": self.board.arch,
                 "firmware_chain": self.board.firmware_chain, "console": self.board.console,
                 "emulators": [emulator_json(em) for em in self.board.emulators]}
        return {
            "schema": self.schema, "appsdk": self.appsdk, "id": self.id,
            "version": self.version, "board": board,
            "kernel": self.kernel, "cmdline": self.cmdline,
            "artifacts": {k: asdict(a) for k, a in self.artifacts.items()},
            "esp_files": list(self.esp_files),
            "partitions": [asdict(p) for p in self.partitions],
            "bmap": {"mapped_bytes": self.mapped_bytes, "image_size": self.image_size},
            "partition_sizes": dict(self.partition_sizes),
            "min_device_size": self.min_device_size, "tools": dict(self.tools),
            "seconds": self.seconds,
            "firmware": {name: {"version": p.version, "sha256": p.sha256}
                         for name, p in self.firmware.items()},
            "verity": {"roothash": self.verity_roothash},
            "update": asdict(self.update),
            "secure_boot": asdict(self.secure_boot) if self.secure_boot else None,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any], file: Path | None = None) -> BuildRecord:
        """A record from parsed build.json that contract.buildinfo.check_record accepted
        (so every field is of its type here)."""
        b = data["board"]
        board = RecordedBoard(
            b["name"], b.get("arch"), b.get("firmware_chain"), b.get("console"),
            tuple(emulator_from_json(e) for e in b.get("emulators") or ()),
            file or Path("build.json"))
        bmap = data.get("bmap") or {}
        update = data.get("update") or {}
        return cls(
            schema=data.get("schema") or 1, appsdk=data.get("appsdk"), id=data["id"],
            version=data["version"], board=board,
            artifacts={k: ArtifactRecord(a["file"], a["size"], a["sha256"])
                       for k, a in data["artifacts"].items()},
            kernel=data.get("kernel"), cmdline=data.get("cmdline"),
            esp_files=tuple(data.get("esp_files") or ()),
            partitions=tuple(PartitionInfo(**p) for p in data.get("partitions") or ()),
            mapped_bytes=bmap.get("mapped_bytes"), image_size=bmap.get("image_size"),
            partition_sizes=dict(data.get("partition_sizes") or {}),
            min_device_size=data.get("min_device_size"), tools=dict(data.get("tools") or {}),
            seconds=data.get("seconds"),
            firmware={name: FirmwarePin(name, p["version"], p["sha256"])
                      for name, p in (data.get("firmware") or {}).items()},
            verity_roothash=(data.get("verity") or {}).get("roothash"),
            update=UpdateRecord(update.get("url"), update.get("signed_by"),
                                bool(update.get("automatic", False)),
                                update.get("compression", DEFAULT_COMPRESSION)),
            secure_boot=SecureBootRecord(**data["secure_boot"]) if data.get("secure_boot")
            else None,
            file=file)


def emulator_json(em: Emulator) -> dict[str, Any]:
    out = asdict(em)
    for key in ("firmware_code", "firmware_vars", "extra_args"):
        out[key] = list(out[key])
    return out


def emulator_from_json(data: Mapping[str, Any]) -> Emulator:
    return Emulator(
        name=data["name"], qemu=data["qemu"], machine=data["machine"], cpu=data["cpu"],
        memory_mib=data["memory_mib"],
        firmware_code=tuple(map(firmware_ref, data.get("firmware_code") or ())),
        firmware_vars=tuple(map(firmware_ref, data.get("firmware_vars") or ())),
        bios=firmware_ref(data["bios"]) if data.get("bios") else None,
        watchdog=data.get("watchdog"), extra_args=tuple(data.get("extra_args") or ()),
        console=data.get("console"), tpm=data.get("tpm"))
