"""The firmware record on a Raspberry Pi ESP: which board and firmware chain the image was
built for, and each pinned firmware component's version and sha256. The build writes it;
`appsdk inspect` reads it back, so a bare image (no build.json) still names its firmware."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

FIRMWARE_RECORD = "appsdk-firmware.txt"
_HEAD = re.compile(r"# appsdk: firmware on this ESP \(([\w.-]+), ([\w+.-]+)\)")


@dataclass(frozen=True)
class FirmwarePin:
    name: str
    version: str
    sha256: str


@dataclass(frozen=True)
class EspFirmware:
    board: str | None
    chain: str | None
    pins: tuple[FirmwarePin, ...] = field(default=())


def format_firmware_record(board: str, chain: str, pins: Iterable[FirmwarePin]) -> str:
    lines = [f"# appsdk: firmware on this ESP ({board}, {chain}): component version sha256"]
    lines += [f"{p.name} {p.version} {p.sha256}" for p in pins]
    return "\n".join(lines) + "\n"


def parse_firmware_record(text: str) -> EspFirmware:
    """The record as written by format_firmware_record; text from an image, so any bytes:
    lines that are not a record line are skipped."""
    head = _HEAD.match(text)
    pins = tuple(FirmwarePin(*parts) for parts in (line.split() for line in text.splitlines()
                                                   if not line.startswith("#"))
                 if len(parts) == 3)
    return EspFirmware(board=head.group(1) if head else None,
                       chain=head.group(2) if head else None, pins=pins)
