"""`appsdk release`: a publishable update directory from one or more builds, as systemd-
sysupdate reads it (url-file source): the xz artifacts of every version side by side, one
SHA256SUMS over all of them, and its signature."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from .buildinfo import load_build
from .digest import sha256_file
from .errors import ConfigError, VerifyFailed
from .keys import SigningKey
from .runner import Runner
from .stages.update import SUMS, write_sums

UPDATE_KINDS = ("update-uki", "update-usr", "update-verity")


@dataclass(frozen=True)
class Release:
    directory: Path
    versions: tuple[str, ...]
    files: tuple[str, ...]
    signature: Path


def release(out: Path, builds: list[Path], key: SigningKey, runner: Runner) -> Release:
    if not builds:
        raise ConfigError("no builds given", hint="appsdk release OUT BUILD_DIR...")
    records = [(b, load_build(b)) for b in builds]
    ids = {r["id"] for _, r in records}
    if len(ids) != 1:
        raise ConfigError(f"builds of different appliances cannot share a release: {ids}")
    for build_dir, record in records:
        signer = (record.get("update") or {}).get("signed_by")
        if signer and signer != key.fingerprint:
            raise ConfigError(f"{build_dir} was built for key {signer}, not {key.fingerprint}",
                              hint="devices only accept the key baked into their image")
    out.mkdir(parents=True, exist_ok=True)
    for build_dir, record in records:
        for kind in UPDATE_KINDS:
            entry = record["artifacts"].get(kind)
            if entry is None:
                raise ConfigError(f"{build_dir} has no {kind} artifact (built by an old appsdk?)")
            source = build_dir / entry["file"]
            if sha256_file(source) != entry["sha256"]:
                raise VerifyFailed(f"{source} does not match its sha256 in build.json",
                                   hint="rebuild; the file was changed after the build")
            target = out / entry["file"]
            tmp = target.with_name(f".{target.name}.tmp")
            shutil.copyfile(source, tmp)
            os.replace(tmp, target)
    # One SHA256SUMS for everything published here (older versions included).
    names = sorted(p.name for p in out.iterdir() if p.is_file() and p.name.endswith(".xz"))
    _, signature = write_sums(out, names, key, runner)
    assert signature is not None
    versions = tuple(sorted({r["version"] for _, r in records}))
    return Release(directory=out, versions=versions, files=(*names, SUMS, signature.name),
                   signature=signature)
