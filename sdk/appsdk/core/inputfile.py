"""Opening a file the user named as input (appliance.yaml, a plan, build.json, a bmap):
only a regular file. A FIFO would block the command forever and a device never ends."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import BinaryIO

from appsdk.core.errors import ConfigError


def open_regular(path: Path, what: str) -> BinaryIO:
    """Open PATH for reading if it is a regular file (symlinks to one are fine); raises
    OSError as open() does, and ConfigError naming the file for anything else."""
    # O_NONBLOCK: opening a FIFO with no writer would otherwise hang before fstat can tell.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = ("a directory" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode)
                    else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
                    else "a socket" if stat.S_ISSOCK(mode) else "not a regular file")
            raise ConfigError(f"is {kind}, not {what}", file=str(path),
                              hint=f"give the {what} itself (a regular file)")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
