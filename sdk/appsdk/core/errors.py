"""One error root for the whole SDK. Each class carries its exit code; the CLI renders any
of them as text or, with --json, as the dict of `as_dict` (schema in docs/cli.md)."""

from __future__ import annotations

import errno
from typing import Any

# The exit status of a command that did its job; every other one is the exit_code of an
# error class below.
EXIT_OK = 0


class Option(str):
    """The name of an API argument (`port`, `update_url`) where an error's `field` is one,
    not a field of a file. The library names arguments so; the CLI shows the flag that set
    the argument instead (--port), so library messages never speak of flags."""


class AppsdkError(Exception):
    """Base of every error appsdk raises on purpose. `hint` says what to do about it;
    `file` and `device` name the offending input where one is known."""

    exit_code = 1
    file: str | None = None
    field: str | None = None
    line: int | None = None
    device: str | None = None
    remedy: Option | None = None  # the argument that would change the outcome (CLI: its flag)

    def __init__(self, message: str, hint: str | None = None, *, file: str | None = None,
                 device: str | None = None, option: Option | None = None,
                 remedy: Option | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        if file is not None:
            self.file = file
        if device is not None:
            self.device = device
        if option is not None:
            self.field = option
        if remedy is not None:
            self.remedy = remedy

    def __str__(self) -> str:
        return self.message

    def as_dict(self) -> dict[str, Any]:
        """The error as one JSON object: event, code, error, message, hint, and
        file/line/field/device where known."""
        out: dict[str, Any] = {"event": "error", "code": self.exit_code,
                               "error": type(self).__name__, "message": self.message,
                               "hint": self.hint}
        for key in ("file", "line", "field", "device"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        return out


class ConfigError(AppsdkError):
    """A user-supplied file (appliance.yaml, board profile) is invalid."""

    exit_code = 2

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        line: int | None = None,
        field: str | None = None,
        hint: str | None = None,
        remedy: Option | None = None,
    ) -> None:
        where = file or ""
        if file and line:
            where = f"{file}:{line}"
        if field:
            where = f"{where}: {field}" if where else field
        super().__init__(f"{where}: {message}" if where else message, hint, remedy=remedy)
        self.file = file
        self.line = line
        self.field = field


class ToolMissing(AppsdkError):
    """An external program is not available."""

    exit_code = 3


class CommandFailed(AppsdkError):
    """An external program exited non-zero; carries the command and its stderr."""

    exit_code = 4

    def __init__(self, argv: list[str], returncode: int, stderr: str) -> None:
        tail = "\n".join(stderr.strip().splitlines()[-25:])
        super().__init__(
            f"command failed (exit {returncode}): {' '.join(argv)}" + (f"\n{tail}" if tail else "")
        )
        self.argv = argv
        self.returncode = returncode
        self.stderr = stderr


class CommandTimeout(AppsdkError):
    exit_code = 5


class BuildError(AppsdkError):
    """A pipeline stage could not produce its output."""

    exit_code = 6


class DeviceRefused(AppsdkError):
    """A target device failed a safety check; nothing was written."""

    exit_code = 7


class VerifyFailed(AppsdkError):
    exit_code = 8


class DeviceFailed(AppsdkError):
    """A device failed an I/O request (a failing card, a reader pulled out mid-flash)."""

    exit_code = 11


class PushFailed(AppsdkError):
    """A file could not be pushed to a device intact; nothing was installed under its name."""

    exit_code = 9


class FirmwareMismatch(AppsdkError):
    """A firmware file differs from its pinned manifest (sha256, contents, ELF sanity)."""

    exit_code = 10


class PathError(AppsdkError):
    """A file or directory the user named cannot be read, created or written (permissions,
    a file where a directory belongs, a full or read-only file system)."""

    exit_code = 12

    @classmethod
    def from_oserror(cls, exc: OSError, doing: str = "",
                     option: Option | None = None) -> PathError:
        path = str(exc.filename) if exc.filename is not None else "?"
        reason = exc.strerror or str(exc)
        prefix = f"{doing}: " if doing else ""
        return cls(f"{path}: {prefix}{reason}", hint=_OS_HINTS.get(exc.errno or 0, _HINT),
                   file=path, option=option)


_HINT = "check the path and try again"
_OS_HINTS = {
    errno.EACCES: "check the permissions of the path, or choose one you may write to",
    errno.EPERM: "check the permissions of the path, or choose one you may write to",
    errno.EROFS: "the file system is read-only: choose a path on a writable one",
    errno.ENOSPC: "the file system is full: free space there, or choose another path",
    errno.EDQUOT: "your disk quota is used up: free space, or choose another path",
    errno.EISDIR: "this is a directory; give a file",
    errno.ENOTDIR: "a part of the path is a file, not a directory: choose another path",
    errno.EEXIST: "something is already there: remove it, or choose another path",
    errno.ENOENT: "it does not exist: check the path",
    errno.ELOOP: "too many symbolic links: check the path",
    errno.ENAMETOOLONG: "the path is too long",
}


class UsageError(AppsdkError):
    """The command line is wrong (argparse's exit status 2); `field` names the flag."""

    exit_code = 2

    def __init__(self, message: str, *, usage: str = "", flag: str | None = None,
                 hint: str | None = None) -> None:
        super().__init__(message, hint)
        self.usage = usage
        self.field = flag


class ProvisionFailed(AppsdkError):
    """Provisioning ran, but a device (or every device) failed; its report says why."""

    exit_code = 9


class Interrupted(AppsdkError):
    """Stopped by Ctrl-C (SIGINT); 128 + signal number, as shells report it."""

    exit_code = 130


class OutputClosed(AppsdkError):
    """The program reading appsdk's output closed it (a pipe into `head`): 128 + SIGPIPE."""

    exit_code = 141


class InternalError(AppsdkError):
    """A bug: an exception appsdk did not raise on purpose reached the CLI. Never raised by
    library code; tests treat it as a failure. `traceback` is where the traceback went."""

    exit_code = 70  # EX_SOFTWARE (sysexits.h)

    def __init__(self, message: str, traceback: str | None) -> None:
        where = f"the traceback is in {traceback}" if traceback else "no traceback was saved"
        super().__init__(message, hint=f"this is a bug in appsdk; {where}: please report it")
        self.traceback = traceback

    def as_dict(self) -> dict[str, Any]:
        return {**super().as_dict(), "traceback": self.traceback}
