"""Stage UKI: systemd-stub + kernel + initrd + command line + os-release, by ukify."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from appsdk.core.runner import Runner
from appsdk.pipeline.tools import ToolsTree
from appsdk.spec.boards import Board


@dataclass(frozen=True)
class Uki:
    path: Path
    cmdline: str


def build_uki(board: Board, tree: Path, kernel: Path, kernel_version: str, initrd: Path,
              cmdline: tuple[str, ...], output: Path, tools: ToolsTree,
              runner: Runner) -> Uki:
    stub = tree / f"usr/lib/systemd/boot/efi/linux{board.efi_arch}.efi.stub"
    text = " ".join(cmdline)
    output.unlink(missing_ok=True)
    tools.sandbox(binds=(output.parent,), ro_binds=(tree, kernel.parent, initrd.parent)).run(
        runner, [
            "ukify", "build",
            f"--linux={kernel}", f"--initrd={initrd}", f"--cmdline={text}",
            f"--os-release=@{tree / 'usr/lib/os-release'}", f"--uname={kernel_version}",
            f"--stub={stub}", f"--efi-arch={board.efi_arch}", f"--output={output}",
        ], env={"SOURCE_DATE_EPOCH": "0"}, timeout=600)
    return Uki(path=output, cmdline=text)
