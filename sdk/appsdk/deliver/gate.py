"""The safety gate before a flash writes: every refusal that can be decided up front (wrong
board, unsafe or too small device, a loop device over the image itself), the re-probe after
the user confirmed, and the exclusive open that proves it is still the same device."""

from __future__ import annotations

import os
from pathlib import Path

from appsdk.core.errors import DeviceRefused, Option
from appsdk.deliver.blockdev import BlockDevice, probe, refuse_if_unsafe
from appsdk.deliver.source import Source


def check_target(source: Source, device: str | Path, board: str | None,
                 allow_fixed: bool = False) -> BlockDevice:
    """Every refusal that can be decided before writing; returns the device to confirm."""
    if board and source.board and board != source.board:
        raise DeviceRefused(f"{source.image} was built for board {source.board}, not {board}; "
                            "nothing was written",
                            hint=f"flash a build for {board}, or name the board {source.board}",
                            remedy=Option("board"))
    dev = probe(device)
    refuse_if_unsafe(dev, allow_fixed, source.min_device_size)
    if dev.backed_by(source.image):
        raise DeviceRefused(f"refusing to write to {dev.path}: it is a loop device over the "
                            f"image itself ({source.image}). Nothing was written.",
                            hint="detach it (losetup -d) and flash another device",
                            device=dev.path)
    return dev


def recheck(source: Source, device: str | Path, dev: BlockDevice,
            allow_fixed: bool = False) -> None:
    """Re-check right before opening: a card swapped during the prompt is another device."""
    again = probe(device)
    if again.fingerprint != dev.fingerprint:
        raise DeviceRefused(f"{dev.path} is no longer the device you confirmed "
                            f"(now: {again.identity}); nothing was written")
    refuse_if_unsafe(again, allow_fixed, source.min_device_size)


def open_exclusive(dev: BlockDevice, flags: int) -> int:
    """`dev` opened with O_EXCL | O_DIRECT, refused if in use or no longer that device."""
    try:
        fd = os.open(dev.path, flags | os.O_EXCL | os.O_DIRECT | os.O_CLOEXEC)
    except OSError as exc:
        raise DeviceRefused(f"cannot open {dev.path} exclusively: {exc.strerror}",
                            hint="something uses it (mounted, swap, device-mapper); "
                            "close it and retry. Nothing was written.") from None
    st = os.fstat(fd)
    if (os.major(st.st_rdev), os.minor(st.st_rdev)) != dev.devnum:
        os.close(fd)
        raise DeviceRefused(f"{dev.path} changed to another device while we looked at it; "
                            "nothing was written", hint="check `appsdk devices` and retry")
    return fd
