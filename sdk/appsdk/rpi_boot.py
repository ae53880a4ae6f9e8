"""The Raspberry Pi part of an ESP, from board data: which firmware files go where for a
firmware chain, the generated config.txt, and a record of the firmware versions (read back
by `appsdk inspect`). No board names in here: everything comes from the board profile and
the pinned manifests."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from .boards import Board
from .errors import BuildError, ConfigError
from .firmware import Manifest
from .inspect import FIRMWARE_RECORD


@dataclass(frozen=True)
class FileSource:
    esp_path: str
    kind: str  # a firmware component name, or "dtb"
    path: str  # file within the component, or path under the kernel's dtb directory


def chain_files(board: Board, chain: str) -> tuple[FileSource, ...]:
    """What the ESP carries for `chain` besides systemd-boot and the UKI, by ESP path."""
    if chain not in board.firmware_options:
        raise ConfigError(f"board {board.name} has no firmware chain {chain!r}",
                          hint="choose one of " + ", ".join(board.firmware_options))
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
    lines = [f"# appsdk: firmware on this ESP ({board.name}, {chain}): component version sha256"]
    for name in components(board, chain):
        m = manifests[name]
        lines.append(f"{m.name} {m.version} {m.sha256}")
    return "\n".join(lines) + "\n"


def write_rpi_files(board: Board, chain: str, files: Mapping[str, Path],
                    manifests: Mapping[str, Manifest], esp_root: Path) -> list[str]:
    """Copy the resolved files, config.txt and the firmware record into an ESP tree."""
    written = []
    for esp_path, src in files.items():
        dest = esp_root / esp_path
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(src.read_bytes())
        written.append(esp_path)
    (esp_root / "config.txt").write_text(config_txt(board, chain))
    (esp_root / FIRMWARE_RECORD).write_text(firmware_record(board, chain, manifests))
    return sorted([*written, "config.txt", FIRMWARE_RECORD])
