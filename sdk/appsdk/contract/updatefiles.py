"""The update files' contract: their names (which the device's sysupdate.d patterns match),
and SHA256SUMS, the list systemd-sysupdate checks every download against. Written by the
build, merged by release, checked by serial provisioning and the device."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from appsdk.core.digest import sha256_file
from appsdk.core.errors import ConfigError
from appsdk.spec.appliance import COMPRESSIONS, DEFAULT_COMPRESSION

SUMS = "SHA256SUMS"
SUMS_SIGNATURE = f"{SUMS}.gpg"  # detached OpenPGP signature of SUMS
# sha256sum's text ("  ") or binary (" *") mode; a name is a plain file name.
_SUMS_LINE = re.compile(r"(?P<sha256>[0-9a-f]{64}) [ *](?P<name>(?!\.\.?$)[^/\x00\n]+)")


def update_names(app_id: str, version: str,
                 compression: str = DEFAULT_COMPRESSION) -> dict[str, str]:
    """Artifact kind -> file name; the sysupdate.d source patterns match these."""
    suffix = COMPRESSIONS[compression].suffix
    return {"uki": f"{app_id}_{version}.efi{suffix}", "usr": f"{app_id}_{version}.usr{suffix}",
            "verity": f"{app_id}_{version}.verity{suffix}"}


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
