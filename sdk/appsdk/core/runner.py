"""The one way appsdk runs external programs: logged, timed, errors carry argv + stderr.
FakeRunner is its test double: it plays the programs (seeing through the bwrap sandbox of
core/sandbox.py) and never runs one."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeAlias

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

    def which(self, tool: str, hint: str | None = None) -> str:
        """Path of a host tool this runner will run (ToolMissing if there is none); a
        FakeRunner needs none, so code that asks here runs in tests on any host."""
        return require(tool, hint)

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


# What a FakeRunner needs to know of bwrap's command line (core/sandbox.py writes it): each
# option's number of arguments, to find the program after "--" without guessing.
BWRAP_OPTIONS = {
    "--die-with-parent": 0, "--unshare-ipc": 0, "--unshare-uts": 0, "--unshare-net": 0,
    "--unshare-all": 0, "--new-session": 0, "--dev": 1, "--proc": 1, "--tmpfs": 1,
    "--dir": 1, "--chdir": 1, "--unsetenv": 1, "--ro-bind": 2, "--bind": 2, "--dev-bind": 2,
    "--ro-bind-try": 2, "--bind-try": 2, "--symlink": 2, "--setenv": 2,
}


def _bwrap_options(args: Sequence[str]) -> Iterator[tuple[str, tuple[str, ...]]]:
    """(option, its arguments) of a bwrap command line, up to its "--"."""
    i = 1
    while i < len(args) and args[i] != "--":
        count = BWRAP_OPTIONS.get(args[i])
        if count is None:
            raise ValueError(f"FakeRunner does not know the bwrap option {args[i]!r}; "
                             "add it to BWRAP_OPTIONS")
        yield args[i], tuple(args[i + 1:i + 1 + count])
        i += 1 + count


def unwrap(args: Sequence[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(bwrap part, program argv) of a sandboxed command; ((), args) of any other."""
    if not args or os.path.basename(args[0]) != "bwrap":
        return (), tuple(args)
    end = 1 + sum(1 + len(a) for _, a in _bwrap_options(args))
    if end >= len(args) - 1 or args[end] != "--":
        raise ValueError(f"bwrap command without a program after '--': {list(args)}")
    return tuple(args[:end]), tuple(args[end + 1:])


@dataclass(frozen=True)
class Call:
    """One command as a FakeRunner saw it. Sandboxed, `argv` is the program's own argv
    (after bwrap's "--") and `wrapper` the bwrap part; else `wrapper` is empty."""

    argv: tuple[str, ...]
    wrapper: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    input: str | None = None
    timeout: float | None = None
    stdout: Path | None = None

    @property
    def program(self) -> str:
        return os.path.basename(self.argv[0])

    @property
    def tree(self) -> Path | None:
        """The OS tree the program runs from (the one whose /usr is mounted)."""
        return next((Path(a[0]).parent for o, a in _bwrap_options(self.wrapper)
                     if o == "--ro-bind" and a[1] == "/usr"), None)

    def bound(self, option: str) -> tuple[Path, ...]:
        """Host paths bound in place by `option` ("--bind": writable, "--ro-bind")."""
        return tuple(Path(a[0]) for o, a in _bwrap_options(self.wrapper)
                     if o == option and a[0] == a[1])

    def writable(self, path: Path) -> bool:
        """Whether the program could write `path` on the host (inside a sandbox: only
        below a writable bind)."""
        return not self.wrapper or any(path.is_relative_to(b) for b in self.bound("--bind"))

    def readable(self, path: Path) -> bool:
        """Whether the program sees host file `path` where the host has it."""
        return not self.wrapper or any(path.is_relative_to(b) for b in
                                       (*self.bound("--bind"), *self.bound("--ro-bind")))

    def option(self, name: str) -> str | None:
        """Value of `name` given as `name=VALUE` or `name VALUE`; None if absent."""
        for i, arg in enumerate(self.argv):
            if arg.startswith(f"{name}="):
                return arg.split("=", 1)[1]
            if arg == name and i + 1 < len(self.argv):
                return self.argv[i + 1]
        return None

    def arg(self, where: int | str) -> str:
        """argv[where], or the value of option `where` (KeyError if it is not given)."""
        value = self.argv[where] if isinstance(where, int) else self.option(where)
        if value is None:
            raise KeyError(f"{self.program} was run without {where}: {self.argv}")
        return value

    def ok(self, stdout: str = "", stderr: str = "") -> Result:
        return Result(self.argv, 0, stdout, stderr, 0.0)

    def fail(self, stderr: str, returncode: int = 1) -> Result:
        return Result(self.argv, returncode, "", stderr, 0.0)


# A handler plays a tool: it may create files as the tool would and returns its Result
# (None: success, no output). A canned Result answers without looking at the command.
Handler: TypeAlias = Callable[[Call], "Result | None"]
Answer: TypeAlias = "Result | Handler"


def creates(where: int | str, data: bytes = b"\0" * 4096,
            stdout: str = "") -> Callable[[Call], Result]:
    """A tool that writes `data` to the file its argv names at `where` (an index, or an
    option like "--output") and prints `stdout`. Inside a sandbox a file outside every
    writable bind fails as it would for the real tool (read-only file system)."""
    def handler(call: Call) -> Result:
        target = Path(call.arg(where))
        if not call.writable(target):
            return call.fail(f"{call.program}: {target}: Read-only file system")
        target.write_bytes(data)
        return call.ok(stdout)
    return handler


def prints(stdout: str) -> Callable[[Call], Result]:
    """A tool that only prints `stdout` (with stdout=FILE, the runner writes it there)."""
    return lambda call: call.ok(stdout)


def fails(stderr: str, returncode: int = 1) -> Callable[[Call], Result]:
    return lambda call: call.fail(stderr, returncode)


@dataclass
class FakeRunner(Runner):
    """Never runs anything. Records each command (`history`: the argv as run; `calls`: the
    program's argv, unwrapped from bwrap) and answers from `answers`, keyed by the program's
    path or name (inside a sandbox: the program after "--"): a canned Result, or a Handler
    that plays the tool, so the caller's own checks run on realistic results. Unknown
    programs succeed silently. With stdout=FILE, the answer's stdout goes to FILE."""

    answers: dict[str, Answer] = field(default_factory=dict)
    calls: list[Call] = field(default_factory=list)

    def which(self, tool: str, hint: str | None = None) -> str:
        return f"/fake/bin/{tool}"  # never run, so it need not exist

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
        wrapper, program = unwrap(args)
        call = Call(program, wrapper, dict(env or {}), cwd, input, timeout, stdout)
        self.calls.append(call)
        if stdout:
            stdout.write_bytes(b"")  # the real runner opens it before the program starts
        answer = self.answers.get(program[0], self.answers.get(call.program))
        result = answer(call) if callable(answer) else answer
        out = result.stdout if result else ""
        if stdout and out:
            with stdout.open("ab") as f:
                f.write(out.encode())
            out = ""
        done = Result(args, result.returncode if result else 0, out,
                      result.stderr if result else "", 0.0)
        self.history.append(done)
        if check and done.returncode != 0:
            raise CommandFailed(list(args), done.returncode, done.stderr or done.stdout)
        return done
