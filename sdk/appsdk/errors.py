"""One error root for the whole SDK; the CLI maps these to exit codes in one place."""

from __future__ import annotations


class AppsdkError(Exception):
    """Base of every error appsdk raises on purpose. `hint` says what to do about it."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


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
    ) -> None:
        where = file or ""
        if file and line:
            where = f"{file}:{line}"
        if field:
            where = f"{where}: {field}" if where else field
        super().__init__(f"{where}: {message}" if where else message, hint)
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
