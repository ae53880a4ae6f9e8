"""`appsdk init DIR`: a new appliance directory that builds as it is."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
from pathlib import Path

from appsdk.core.errors import ConfigError, Option
from appsdk.spec.appliance import FILENAME, ID_PATTERN
from appsdk.spec.boards import DEFAULT_BOARD
from appsdk.spec.fields import BOARD_PATTERN

TEMPLATE = """\
# appliance.yaml: what this appliance is. Reference: docs/appliance-yaml.md
schema: 1
id: {id}
name: {id}
version: "0.1"
board: {board}

base:
  suite: trixie
  packages: []          # extra Debian packages

overlay: overlay        # files copied into the image: overlay/usr/... and overlay/etc/...
services: []            # units to enable, e.g. [myapp.service]

partitions:
  esp: 256M
  usr: 1G               # each of the two /usr slots
  var_min: 2G           # /var is made on first boot and grown to the end of the disk

console:
  autologin: false      # true: root shell on the serial console (development only)

health: []              # checks that gate boot confirmation (see docs)
update:
  automatic: false
"""

OVERLAY_DIRS = ("overlay/usr/lib/systemd/system", "overlay/etc")
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def init(directory: Path, app_id: str | None = None, board: str = DEFAULT_BOARD) -> Path:
    """Create DIR/appliance.yaml and DIR/overlay/. Nothing is written through a symlink:
    an existing appliance.yaml (even a dangling link) is never overwritten, and DIR itself
    may be a link only to a directory beside it."""
    app_id = app_id or directory.resolve().name.lower().replace("_", "-")
    if not re.fullmatch(ID_PATTERN, app_id):
        raise ConfigError(f"{app_id!r} is not a valid appliance id", field=Option("id"),
                          hint="lowercase letters, digits and '-', at most 31 characters")
    if not re.fullmatch(BOARD_PATTERN, board):
        raise ConfigError(f"{board!r} is not a board name", field=Option("board"),
                          hint="see `appsdk boards` for the names")
    config = directory / FILENAME
    fd = _open_directory(directory)
    try:
        if _exists(fd, FILENAME):
            raise ConfigError("already exists; not overwriting", file=str(config))
        for rel in OVERLAY_DIRS:
            _make_dirs(fd, rel, directory)
        _create(fd, FILENAME, TEMPLATE.format(id=app_id, board=board), config)
    finally:
        os.close(fd)
    return config


def _exists(fd: int, name: str) -> bool:
    try:
        os.stat(name, dir_fd=fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


def _check_link(directory: Path) -> None:
    """A DIR that is a link must lead to a directory beside it: a link out of its parent
    (say /tmp/x -> /etc, planted by someone else) is refused."""
    target = os.readlink(directory)
    real = directory.resolve()
    if not real.is_dir():
        raise ConfigError(f"is a symlink to {target}, which is not a directory",
                          file=str(directory), hint="remove the link, or choose a new name")
    if not real.is_relative_to(directory.parent.resolve()):
        raise ConfigError(f"is a symlink to {target}, outside the directory it is in",
                          file=str(directory), hint=f"give the real directory ({real}) if you "
                          "mean it")


def _open_directory(directory: Path) -> int:
    """fd of DIR, made (with its parents) if missing."""
    try:
        st: os.stat_result | None = directory.lstat()
    except FileNotFoundError:
        st = None
    except OSError as exc:
        raise ConfigError(f"cannot use this directory: {exc.strerror}", file=str(directory),
                          hint="choose a directory you can write to") from None
    if st is not None and stat.S_ISLNK(st.st_mode):
        _check_link(directory)
    elif st is not None and not stat.S_ISDIR(st.st_mode):
        raise ConfigError("exists and is not a directory", file=str(directory),
                          hint="choose a new directory name")
    try:
        if st is None:
            directory.mkdir(parents=True)
        return os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise ConfigError(f"cannot create or open this directory: {exc.strerror}",
                          file=str(directory),
                          hint="choose a directory you can write to") from None


def _make_dirs(root: int, rel: str, directory: Path) -> None:
    """root/rel as real directories (existing ones are fine), one component at a time and
    never through a symlink (an overlay -> /etc would otherwise get files made in /etc)."""
    fd = os.dup(root)
    done = directory
    try:
        for part in rel.split("/"):
            done = done / part
            with contextlib.suppress(FileExistsError):
                os.mkdir(part, 0o755, dir_fd=fd)
            child = os.open(part, _DIR, dir_fd=fd)
            os.close(fd)
            fd = child
    except OSError as exc:
        linked = exc.errno in (errno.ELOOP, errno.ENOTDIR)
        why = "it is a symlink or a file" if linked else exc.strerror
        raise ConfigError(f"cannot make this directory: {why}", file=str(done),
                          hint="remove it, or choose a new directory for `appsdk init`"
                          ) from None
    finally:
        os.close(fd)


def _create(root: int, name: str, text: str, path: Path) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(name, flags, 0o644, dir_fd=root)
    except FileExistsError:
        raise ConfigError("already exists; not overwriting", file=str(path)) from None
    except OSError as exc:
        raise ConfigError(f"cannot create it: {exc.strerror}", file=str(path),
                          hint="choose a directory you can write to") from None
    with os.fdopen(fd, "w") as f:
        f.write(text)
