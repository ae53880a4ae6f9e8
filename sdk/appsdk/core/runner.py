"""The one way appsdk runs external programs: logged, timed, errors carry argv + stderr."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from appsdk.core.errors import CommandFailed, CommandTimeout, ToolMissing

log = logging.getLogger("appsdk.run")

# Debian package that provides each host tool, for "missing tool" hints.
INSTALL_HINTS = {
    "mmdebstrap": "mmdebstrap",
    "bwrap": "bubblewrap",
    "qemu-system-x86_64": "qemu-system-x86",
    "qemu-system-aarch64": "qemu-system-arm",
    "sfdisk": "fdisk",
    "gpg": "gnupg",
    "bmaptool": "bmap-tools",
}


@dataclass(frozen=True)
class Result:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str
    seconds: float


def require(tool: str, hint: str | None = None) -> str:
    """Path of a host tool, or ToolMissing naming the package that provides it."""
    path = shutil.which(tool)
    if path is None:
        package = INSTALL_HINTS.get(tool, tool)
        raise ToolMissing(f"{tool} not found on PATH", hint=hint or f"apt-get install {package}")
    return path


@dataclass
class Runner:
    """Runs commands. Subclass or replace (see FakeRunner) to test code that runs tools."""

    env: Mapping[str, str] = field(default_factory=dict)
    history: list[Result] = field(default_factory=list)

    def run(
        self,
        argv: Sequence[str | os.PathLike[str]],
        *,
        check: bool = True,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
        input: str | None = None,
        timeout: float | None = None,
        stdout: Path | None = None,
    ) -> Result:
        args = tuple(str(a) for a in argv)
        merged = {**os.environ, **self.env, **(env or {})}
        log.debug("run: %s", " ".join(args))
        start = time.monotonic()
        out_file = stdout.open("wb") if stdout else None
        try:
            proc = subprocess.run(
                args,
                cwd=cwd,
                env=merged,
                input=input.encode() if input is not None else None,
                stdout=out_file or subprocess.PIPE,
                stderr=subprocess.PIPE,
                timeout=timeout,
                check=False,
            )
        except FileNotFoundError:
            package = INSTALL_HINTS.get(args[0], args[0])
            raise ToolMissing(f"{args[0]} not found", hint=f"apt-get install {package}") from None
        except subprocess.TimeoutExpired:
            raise CommandTimeout(f"command timed out after {timeout}s: {' '.join(args)}") from None
        finally:
            if out_file:
                out_file.close()
        result = Result(
            argv=args,
            returncode=proc.returncode,
            stdout=proc.stdout.decode(errors="replace") if proc.stdout is not None else "",
            stderr=proc.stderr.decode(errors="replace"),
            seconds=time.monotonic() - start,
        )
        self.history.append(result)
        log.debug("exit %d in %.1fs: %s", result.returncode, result.seconds, args[0])
        if check and result.returncode != 0:
            raise CommandFailed(list(args), result.returncode, result.stderr or result.stdout)
        return result


@dataclass
class FakeRunner(Runner):
    """Records argv and answers from a table of canned results; never runs anything."""

    answers: dict[str, Result] = field(default_factory=dict)

    def run(self, argv: Sequence[str | os.PathLike[str]], **kwargs: object) -> Result:
        args = tuple(str(a) for a in argv)
        result = self.answers.get(args[0], Result(args, 0, "", "", 0.0))
        self.history.append(Result(args, result.returncode, result.stdout, result.stderr, 0.0))
        if kwargs.get("check", True) and result.returncode != 0:
            raise CommandFailed(list(args), result.returncode, result.stderr)
        return result
