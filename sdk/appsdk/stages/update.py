"""Stage update: the files systemd-sysupdate downloads (xz-compressed UKI, /usr image and
verity tree), their SHA256SUMS and its detached signature SHA256SUMS.gpg."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ..digest import sha256_file
from ..errors import ConfigError
from ..keys import SigningKey, sign
from ..runner import Runner
from ..tools import ToolsTree

SUMS = "SHA256SUMS"
# sha256sum's text ("  ") or binary (" *") mode; a name is a plain file name.
_SUMS_LINE = re.compile(r"(?P<sha256>[0-9a-f]{64}) [ *](?P<name>(?!\.\.?$)[^/\x00\n]+)")


@dataclass(frozen=True)
class UpdateFiles:
    files: tuple[Path, ...]
    sums: Path
    signature: Path | None


def update_names(app_id: str, version: str) -> dict[str, str]:
    """Artifact kind -> file name; the sysupdate.d source patterns match these."""
    return {"uki": f"{app_id}_{version}.efi.xz", "usr": f"{app_id}_{version}.usr.xz",
            "verity": f"{app_id}_{version}.verity.xz"}


def compress(source: Path, target: Path, tools: ToolsTree, runner: Runner) -> Path:
    # -T0 uses every core; xz output does not depend on the thread count for one block size.
    tools.sandbox(ro_binds=(source.parent,)).run(
        runner, ["xz", "-6", "-T0", "--block-size=16MiB", "-c", str(source)], stdout=target,
        timeout=3600)
    return target


def sha256sums(directory: Path, names: list[str]) -> str:
    return format_sums({name: sha256_file(directory / name) for name in names})


def format_sums(digests: Mapping[str, str]) -> str:
    """SHA256SUMS text (sha256sum's format, sorted by name) for name -> sha256."""
    return "".join(f"{digests[name]}  {name}\n" for name in sorted(digests))


def parse_sums(text: str, where: str) -> dict[str, str]:
    """name -> sha256 from SHA256SUMS text (format_sums's inverse); `where` names the file."""
    digests: dict[str, str] = {}
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()  # the last line's newline
    for number, line in enumerate(lines, 1):
        match = _SUMS_LINE.fullmatch(line)
        if match is None or match["name"] in digests:
            raise ConfigError("not a SHA256SUMS line (or a name listed twice)", file=where,
                              line=number, hint="SHA256SUMS lines are `<sha256>  <name>`")
        digests[match["name"]] = match["sha256"]
    return digests


def write_sums(directory: Path, names: list[str], key: SigningKey | None,
               runner: Runner) -> tuple[Path, Path | None]:
    sums = directory / SUMS
    sums.write_text(sha256sums(directory, names))
    signature = sign(key, sums, runner) if key else None
    if signature is None:
        (directory / f"{SUMS}.gpg").unlink(missing_ok=True)
    return sums, signature


def build_update_files(sources: dict[str, Path], app_id: str, version: str, out: Path,
                       key: SigningKey | None, tools: ToolsTree,
                       runner: Runner) -> UpdateFiles:
    names = update_names(app_id, version)
    files = tuple(compress(sources[kind], out / name, tools, runner)
                  for kind, name in names.items())
    sums, signature = write_sums(out, list(names.values()), key, runner)
    return UpdateFiles(files=files, sums=sums, signature=signature)
