"""A directory for private keys: made with mode 0700, or an existing one used only if it
is empty, ours and private. Never chmod-ed when it already existed (`--keys /tmp` must not
lock everyone else out of /tmp)."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

from appsdk.core.errors import ConfigError, Option


def _refuse(directory: Path, why: str, option: Option | None, hint: str = "choose a new key "
            "directory (appsdk creates it with mode 0700)") -> ConfigError:
    return ConfigError(why, file=str(directory), hint=hint, remedy=option)


def prepare_dir(directory: Path, *, markers: tuple[str, ...], what: str,
                option: Option | None, allow: tuple[str, ...] = ()) -> bool:
    """Make the key directory (True), or check that an existing one is fit (False).
    `markers`: names that mean `what` already exists there; `allow`: entries that may be
    present in an otherwise empty directory (another kind of key kept alongside)."""
    try:
        st = os.stat(directory)  # through a link: what counts is the directory used
    except FileNotFoundError:
        try:
            # A missing parent is made private too: it is the key directory a key set goes
            # into (DIR/secure-boot), where the update key may follow.
            directory.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.mkdir(directory, 0o700)
            fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
            try:
                os.fchmod(fd, 0o700)  # we made it: exactly 0700, whatever the umask
            finally:
                os.close(fd)
        except OSError as exc:
            raise _refuse(directory, f"cannot create the key directory: {exc.strerror}",
                          option, "choose a key directory in a place you can write to") from None
        return True
    except OSError as exc:
        raise _refuse(directory, f"cannot use the key directory: {exc.strerror}", option) from None
    if not stat.S_ISDIR(st.st_mode):
        raise _refuse(directory, "exists and is not a directory", option)
    if any((directory / m).exists() for m in markers):
        raise _refuse(directory, f"{what} already exists here; not overwriting", option,
                      "use it, or choose another key directory")
    if set(os.listdir(directory)) - set(allow):
        raise _refuse(directory, f"is not empty: {what} needs a directory of its own", option)
    if st.st_uid != os.geteuid():
        raise _refuse(directory, "belongs to another user", option)
    if stat.S_IMODE(st.st_mode) & 0o077:
        raise _refuse(directory, f"is open to other users (mode {stat.S_IMODE(st.st_mode):04o})"
                      "; appsdk does not change a directory it did not create", option,
                      "choose a new key directory (appsdk creates it with mode 0700), or "
                      "run chmod 700 on this one yourself")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise _refuse(directory, "is not writable", option)
    return False


def undo_dir(directory: Path, created: bool, keep: tuple[str, ...] = ()) -> None:
    """Take back what a failed key generation made: the directory if it made it, else
    everything in it but `keep` (it was empty apart from those)."""
    if created:
        shutil.rmtree(directory, ignore_errors=True)
        return
    for entry in directory.iterdir():
        if entry.name in keep:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
