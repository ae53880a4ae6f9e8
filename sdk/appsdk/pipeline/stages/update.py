"""Stage update: the files systemd-sysupdate downloads (the UKI, /usr image and verity
tree, compressed as appliance.yaml says), their SHA256SUMS and its detached signature
SHA256SUMS.gpg."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from appsdk.contract.updatefiles import SUMS, SUMS_SIGNATURE, sha256sums, update_names
from appsdk.core.runner import Runner
from appsdk.pipeline.tools import ToolsTree
from appsdk.spec.appliance import COMPRESSIONS
from appsdk.trust.keys import SigningKey, sign


@dataclass(frozen=True)
class UpdateFiles:
    files: tuple[Path, ...]
    sums: Path
    signature: Path | None


def compress(source: Path, target: Path, compression: str, tools: ToolsTree,
             runner: Runner) -> Path:
    tools.sandbox(ro_binds=(source.parent,)).run(
        runner, [*COMPRESSIONS[compression].argv, str(source)], stdout=target, timeout=3600)
    return target


def write_sums(directory: Path, names: list[str], key: SigningKey | None,
               runner: Runner) -> tuple[Path, Path | None]:
    sums = directory / SUMS
    sums.write_text(sha256sums(directory, names))
    signature = sign(key, sums, runner) if key else None
    if signature is None:
        (directory / SUMS_SIGNATURE).unlink(missing_ok=True)
    return sums, signature


def build_update_files(sources: dict[str, Path], app_id: str, version: str, compression: str,
                       out: Path, key: SigningKey | None, tools: ToolsTree,
                       runner: Runner) -> UpdateFiles:
    names = update_names(app_id, version, compression)
    files = tuple(compress(sources[kind], out / name, compression, tools, runner)
                  for kind, name in names.items())
    sums, signature = write_sums(out, list(names.values()), key, runner)
    return UpdateFiles(files=files, sums=sums, signature=signature)
