"""The Raspberry Pi part of an ESP, from board data: which firmware files go where for a
firmware chain, the generated config.txt, and a record of the firmware versions (read back
by `appsdk inspect`). No board names in here: everything comes from the board profile and
the pinned manifests."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from appsdk.contract.esprecord import FIRMWARE_RECORD, FirmwarePin, format_firmware_record
from appsdk.core.errors import BuildError
from appsdk.spec.boards import Board
from appsdk.spec.firmware import Manifest


@dataclass(frozen=True)
class FileSource:
    esp_path: str
    kind: str  # a firmware component name, or "dtb"
    path: str  # file within the component, or path under the kernel's dtb directory


def chain_files(board: Board, chain: str) -> tuple[FileSource, ...]:
    """What the ESP carries for `chain` besides systemd-boot and the UKI, by ESP path."""
    board.check_chain(chain)
    merged = dict(board.esp_files.get("common", ())) | dict(board.esp_files.get(chain, ()))
    return tuple(FileSource(dest, *merged[dest].split(":", 1)) for dest in sorted(merged))


def components(board: Board, chain: str) -> tuple[str, ...]:
    return tuple(sorted({f.kind for f in chain_files(board, chain) if f.kind != "dtb"}))


def config_txt(board: Board, chain: str) -> str:
    lines = [*board.config_txt.get("common", ()), *board.config_txt.get(chain, ())]
    if board.watchdog:
        # Armed by the firmware before U-Boot or EDK2 runs, so a hang there resets too;
        # the kernel's watchdog driver takes it over (firmware that lacks the option
        # ignores it).
        lines.append(f"kernel_watchdog_timeout={board.watchdog.max_timeout_s}")
    head = f"# appsdk: {board.name}, firmware chain {chain}. Generated; do not edit.\n"
    return head + "\n".join(lines) + "\n"


def resolve(board: Board, chain: str, unpacked: Mapping[str, Path],
            dtb_dir: Path) -> dict[str, Path]:
    """ESP path -> file on the host; `unpacked` maps components to their verified files
    (firmware.fetch), `dtb_dir` is the kernel package's dtb directory in the rootfs."""
    out = {}
    for f in chain_files(board, chain):
        if f.kind == "dtb":
            src = dtb_dir / f.path
        elif f.kind in unpacked:
            src = unpacked[f.kind] / f.path
        else:
            raise BuildError(f"firmware component {f.kind!r} (for {f.esp_path}) has no "
                             "pinned manifest", hint="add firmware/" + f.kind + ".yaml")
        if not src.is_file():
            raise BuildError(f"{f.esp_path}: {src} does not exist",
                             hint="check the board's esp_files and the kernel package")
        out[f.esp_path] = src
    return out


def firmware_record(board: Board, chain: str, manifests: Mapping[str, Manifest]) -> str:
    pins = (manifests[name] for name in components(board, chain))
    return format_firmware_record(board.name, chain,
                                  (FirmwarePin(m.name, m.version, m.sha256) for m in pins))


def esp_additions(board: Board, chain: str, unpacked: Mapping[str, Path], dtb_dir: Path,
                  manifests: Mapping[str, Manifest]) -> dict[str, Path | str]:
    """What the ESP carries for a firmware chain besides systemd-boot and the UKI: ESP path
    -> a host file to copy, or generated text. Empty for a board without firmware files
    (plain UEFI)."""
    out: dict[str, Path | str] = dict(resolve(board, chain, unpacked, dtb_dir))
    if board.config_txt:
        out["config.txt"] = config_txt(board, chain)
    if components(board, chain):
        out[FIRMWARE_RECORD] = firmware_record(board, chain, manifests)
    return out
