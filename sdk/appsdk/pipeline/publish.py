"""The build's output directory: created and locked before the stages run, a staging
directory inside it, and publishing: every artifact moved into place, build.json last
(it marks a finished build), so an interrupted build never leaves one that looks whole."""

from __future__ import annotations

import fcntl
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from appsdk.contract.buildinfo import BUILD_JSON
from appsdk.core.digest import sha256_file
from appsdk.core.errors import BuildError, ConfigError, Option, PathError

WORK = ".work"


@dataclass(frozen=True)
class Artifact:
    path: Path
    size: int
    sha256: str


def make_output_dir(output: Path) -> Path:
    """Create the output directory, or refuse clearly before any stage runs."""
    try:
        output.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise ConfigError("is a file or inside one; the build output must be a directory",
                          file=str(output), hint="choose another output directory, or "
                          "remove the file") from None
    except OSError as exc:
        raise PathError.from_oserror(exc, "cannot create the output directory") from None
    if not os.access(output, os.W_OK | os.X_OK):
        raise PathError(f"{output}: the output directory is not writable", file=str(output),
                        hint="choose a directory you may write to")
    return output


def claim_output(output: Path) -> int:
    """An exclusive lock on the output directory itself (no lock file to plant a link at):
    a second build there would delete this one's .work and publish over its artifacts.
    The lock goes with the returned descriptor."""
    fd = os.open(output, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise BuildError(f"{output}: another build is using this output directory",
                         file=str(output),
                         hint="wait for it to finish, or build into another output directory",
                         remedy=Option("output")) from None
    return fd


def fresh_work_dir(output: Path) -> Path:
    """An empty OUTPUT/.work, whatever an earlier run left there."""
    work = output / WORK
    if work.is_symlink() or work.is_file():
        work.unlink()  # never follow a link out of the output directory
    elif work.exists():
        shutil.rmtree(work)
    (work / "out").mkdir(parents=True)
    return work


def publish(staging: Path, output: Path, names: Mapping[str, str]) -> dict[str, Artifact]:
    """Move the staged artifacts (kind -> file name) into the output directory. The old
    build.json goes first: from here until the new one is written the directory holds no
    finished build."""
    (output / BUILD_JSON).unlink(missing_ok=True)
    artifacts: dict[str, Artifact] = {}
    for kind, name in names.items():
        final = output / name
        os.replace(staging / name, final)
        artifacts[kind] = Artifact(final, final.stat().st_size, sha256_file(final))
    return artifacts
