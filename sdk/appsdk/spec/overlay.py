"""appliance.yaml's overlay: what may be copied into the image, checked when the file is
read (pipeline.treefs checks again while it copies)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from appsdk.core.errors import ConfigError


def check_overlay(overlay: Path) -> None:
    """Refuse overlay entries that would be lost or would pull build-host files into the
    image: a top (usr/, etc/) that is a symlink, device nodes, fifos, sockets, hard links to
    files outside the overlay (their other names may be host secrets; we cannot see where),
    unreadable entries. Symlinks below the tops are image paths, copied as links.
    customize checks again while it copies: the tree can change in between."""

    def refuse(path: Path | str, why: str, hint: str) -> ConfigError:
        return ConfigError(f"overlay entry {why}", file=str(path), hint=hint)

    unreadable = "make it readable by the user running appsdk, or remove it"
    try:
        tops = sorted(overlay.iterdir())
    except OSError as exc:
        raise refuse(overlay, f"cannot be read: {exc.strerror}", unreadable) from None
    stack: list[tuple[str, int]] = []
    for entry in tops:
        # / is a tmpfs and /var is per device: only /usr and /etc (kept as factory /etc) are
        # imaged.
        if entry.name not in ("usr", "etc"):
            raise ConfigError(
                f"overlay entry {entry.name!r} would be lost: only usr/ and etc/ are part of "
                "the image (/ is a tmpfs, /var is per device)",
                file=str(entry),
                hint="move it under usr/ (e.g. usr/lib/<id>/) or etc/",
            )
        if entry.is_symlink():
            raise refuse(entry, "is a symlink: the image would get what it points to on the "
                         "build host", f"make {entry.name}/ a real directory in the overlay")
        if not entry.is_dir():
            raise refuse(entry, "is not a directory", f"make {entry.name}/ a directory")
        stack.append((str(entry), 1))
    names: dict[tuple[int, int], int] = {}  # inode -> names seen in the overlay
    linked: dict[tuple[int, int], tuple[int, str]] = {}  # inode -> (link count, a name)
    while stack:
        directory, depth = stack.pop()
        if depth > 64:
            raise refuse(directory, "is nested too deep (more than 64 levels)",
                         "flatten the overlay")
        try:
            with os.scandir(directory) as scan:
                entries = [(e.path, e.stat(follow_symlinks=False)) for e in scan]
        except OSError as exc:
            raise refuse(directory, f"cannot be read: {exc.strerror}", unreadable) from None
        for path, st in entries:
            if stat.S_ISDIR(st.st_mode):
                stack.append((path, depth + 1))
            elif stat.S_ISREG(st.st_mode):
                if not os.access(path, os.R_OK):
                    raise refuse(path, "is not readable", unreadable)
                if st.st_nlink > 1:
                    inode = (st.st_dev, st.st_ino)
                    names[inode] = names.get(inode, 0) + 1
                    linked[inode] = (st.st_nlink, path)
            elif not stat.S_ISLNK(st.st_mode):
                raise refuse(path, "is a device node, fifo or socket: an image holds only "
                             "files, directories and symlinks", "remove it from the overlay")
    for inode, (nlink, path) in linked.items():
        if names[inode] < nlink:
            raise refuse(path, "is a hard link to a file outside the overlay",
                         "copy the file into the overlay instead of linking it")
