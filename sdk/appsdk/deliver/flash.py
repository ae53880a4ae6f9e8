"""Write an image to a disk: only the mapped blocks of its bmap, with large aligned direct
writes, ordered so that an interrupted flash never looks like a valid disk, then read every
mapped range back from the device (bypassing the page cache) against the bmap checksums.

Order of writes:
  1. zero the head of the device (protective MBR + primary GPT) and, on a larger device,
     its last MiB (a stale backup GPT): from here on the disk carries no partition table;
  2. every mapped range except the image's head and tail (its backup GPT);
  3. flush; the image's tail; flush; the image's head; flush.

Verification reads behind the writer: a range inside the body is read back (O_DIRECT, on a
second descriptor) and hashed as soon as a flush has covered it, so hashing overlaps with
the device's writing; ranges that touch the head or the tail are read after the last flush.
A range that differs stops the writer early (the head, written last, is still zeros); one
found after the head was written clears the head again.

This module is the writer and the facade; beside it: `source` (what to flash, its inputs
proven), `gate` (the refusals before writing), `blockio` (extents, meter, read-ahead) and
`verify` (the read-back).
"""

from __future__ import annotations

import contextlib
import mmap
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from appsdk.core.errors import AppsdkError, DeviceRefused
from appsdk.core.progress import Event, EventKind, NullReporter, Reporter
from appsdk.deliver.blockdev import BlockDevice
from appsdk.deliver.blockio import (
    HEAD,
    SYNC_EVERY,
    TAIL,
    Extent,
    Handoff,
    Meter,
    MiB,
    Stopped,
    bmap_extents,
    clip,
    io_error,
    logical_block_size,
    read_ahead,
    round_up,
    split,
)
from appsdk.deliver.gate import check_target, open_exclusive, recheck
from appsdk.deliver.source import Source, open_source
from appsdk.deliver.verify import Verifier, image_digest, invalidate, verify_device

# What callers import from here; the source, the gate and the verifier live beside it.
__all__ = ["FlashResult", "Source", "check_target", "flash", "image_digest", "open_source",
           "verify_device"]


@dataclass(frozen=True)
class FlashResult:
    device: BlockDevice
    image: Path
    written: int  # bytes written, zeroing included
    write_seconds: float
    verify_seconds: float  # read-back time after the last write (it runs behind the writer)
    digest: str  # sha256 over the mapped ranges as read back from the device

    @property
    def seconds(self) -> float:
        return self.write_seconds + self.verify_seconds


def flash(source: Source, device: str | Path, *, board: str | None = None,
          allow_fixed: bool = False, confirm: Callable[[BlockDevice], bool] | None = None,
          reporter: Reporter | None = None, verify: bool = True) -> FlashResult:
    """Check, confirm, write and verify. `confirm` sees the device's identity and returns
    False to abort (nothing written); None means confirmed (the caller asked already)."""
    reporter = reporter or NullReporter()
    dev = check_target(source, device, board, allow_fixed)
    if confirm is not None and not confirm(dev):
        raise DeviceRefused(f"not confirmed; nothing was written to {dev.path}")
    recheck(source, device, dev, allow_fixed)

    align = logical_block_size(dev)
    extents = bmap_extents(source.bmap)
    size = source.bmap.image_size
    tail_start = max(HEAD, (size - TAIL) // align * align)
    body = clip(extents, HEAD, tail_start)
    tail = clip(extents, tail_start, size)
    total = HEAD + sum(e.length for e in body + tail) + HEAD
    handoff = Handoff(HEAD, tail_start)
    reporter.emit(Event(EventKind.STAGE_START, "write", f"{source.image.name} -> {dev.identity}"
                        + (", verifying behind the writer" if verify else "")))
    start = time.monotonic()
    meter = Meter(reporter, "write", total, source.bmap.mapped_bytes if verify else 0)
    fd = open_exclusive(dev, os.O_WRONLY)
    try:
        w = _Writer(fd, dev.path, source.image, align, meter, handoff)
        verifier = Verifier(source, dev, align, handoff, meter) if verify else None
        try:
            _write_in_order(w, dev.size, size, tail, body, reporter, verifier)
        except BaseException as exc:
            handoff.fail(exc)  # stops the verifier
            if verifier:
                verifier.join()
            if isinstance(exc, Stopped) and handoff.error is not None:
                raise handoff.error from None  # the verifier's; the head is still zeros
            raise
        write_seconds = time.monotonic() - start
        reporter.emit(Event(EventKind.STAGE_DONE, "write", f"{w.written / MiB:.0f} MiB",
                            write_seconds))
        digest, verify_seconds = "", 0.0
        if verifier:
            if verifier.thread.is_alive():
                reporter.emit(Event(EventKind.STAGE_START, "verify",
                                    "reading back the last ranges"))
            try:
                digest = verifier.result()
            except AppsdkError:
                with contextlib.suppress(OSError):  # a device that failed a read may refuse
                    invalidate(fd)  # the head is written by now
                raise
            verify_seconds = time.monotonic() - start - write_seconds
            reporter.emit(Event(EventKind.STAGE_DONE, "verify", "all mapped ranges match",
                                verifier.seconds))
    finally:
        os.close(fd)
    return FlashResult(dev, source.image, w.written, write_seconds, verify_seconds, digest)


def _write_in_order(w: _Writer, device_size: int, size: int, tail: list[Extent],
                    body: list[Extent], reporter: Reporter, verifier: Verifier | None) -> None:
    """The write order of the module docstring."""
    w.write_zeros(0, HEAD)
    if device_size - size >= TAIL:
        w.meter.total += TAIL
        w.write_zeros(device_size - TAIL, TAIL)
    w.sync()
    reporter.emit(Event(EventKind.INFO, "write", "partition table cleared; writing data",
                        data={"phase": "data"}))
    if verifier:
        verifier.start()
    w.write_extents(body)
    w.sync()
    w.write_extents(tail)
    w.sync()
    # The head covers its whole 64 KiB (holes read as zeros): no stale bytes survive.
    w.write_extents([Extent(0, min(HEAD, size))])
    w.sync()
    w.handoff.finish()


class _Writer:
    """pwrite of image chunks to an O_DIRECT fd, the image read ahead in a thread. Each
    flush tells `handoff` how far the image's data is on the device; a failed verifier
    stops the writer."""

    def __init__(self, fd: int, name: str, image: Path, align: int, meter: Meter,
                 handoff: Handoff) -> None:
        self.fd, self.name, self.image, self.align, self.meter = fd, name, image, align, meter
        self.handoff = handoff
        self.written = 0
        self.since_sync = 0
        self.end = 0  # end of the last chunk written

    def write_zeros(self, offset: int, length: int) -> None:
        buf = mmap.mmap(-1, round_up(length, self.align))
        self._pwrite(memoryview(buf), offset)

    def write_extents(self, extents: list[Extent]) -> None:
        src = os.open(self.image, os.O_RDONLY | os.O_CLOEXEC)
        try:
            for c, view in read_ahead(src, str(self.image), list(split(extents)),
                                      self.align):
                self.handoff.check()
                self._pwrite(view, c.offset, data_end=c.offset + c.length)
        finally:
            os.close(src)

    def _pwrite(self, view: memoryview, offset: int, data_end: int | None = None) -> None:
        length = len(view)
        done = 0
        while done < length:
            try:
                done += os.pwrite(self.fd, view[done:], offset + done)
            except OSError as exc:
                raise io_error("writing", self.name, offset + done, exc) from None
        if data_end is not None:  # image data, not zeros: the verifier may read up to here
            self.end = data_end
        self.written += length
        self.since_sync += length
        self.meter.add(length)
        if self.since_sync >= SYNC_EVERY:
            self.sync()

    def sync(self) -> None:
        try:
            os.fsync(self.fd)
        except OSError as exc:
            raise io_error("flushing", self.name, self.end, exc) from None
        self.since_sync = 0
        self.handoff.flushed(self.end)
