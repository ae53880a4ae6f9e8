"""Read-back verification: the mapped ranges of an image, read from a device with O_DIRECT
(bypassing the page cache), against the bmap's checksums. `Verifier` reads behind the flash
writer (see `Handoff`); `verify_device` reads a device written before. A mismatch is blamed
on the medium only for ranges the image itself still holds as its bmap says.

It needs of a source only its bmap and image (`Mapped`), never the whole Source."""

from __future__ import annotations

import hashlib
import mmap
import os
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Protocol

from appsdk.core.errors import AppsdkError, ConfigError, VerifyFailed
from appsdk.core.progress import Event, EventKind, NullReporter, Reporter
from appsdk.deliver.blockdev import BlockDevice, probe
from appsdk.deliver.blockio import (
    HEAD,
    Extent,
    Handoff,
    Meter,
    MiB,
    Stopped,
    logical_block_size,
    read_ahead,
    split,
)
from appsdk.image import bmap as bmapfile


class Mapped(Protocol):
    """What verification needs of a source: the block map and the image it describes."""

    @property
    def bmap(self) -> bmapfile.Bmap: ...

    @property
    def image(self) -> Path: ...


def changed_ranges(bmap: bmapfile.Bmap, image: Path, indices: Iterable[int]) -> list[int]:
    """Of `indices`, the ranges whose bytes in the image differ from the bmap's checksums."""
    wanted = list(indices)
    try:
        fd = os.open(image, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:  # moved or removed since it was opened: not proven good
        raise ConfigError(f"cannot read the image: {exc.strerror}", file=str(image),
                          hint="keep the image in place while flashing") from None
    try:
        got = _hash_ranges(fd, str(image), bmap, wanted, 4096)
    finally:
        os.close(fd)
    return [i for i in wanted if got.get(i) != bmap.ranges[i].checksum]


def describe(bmap: bmapfile.Bmap, indices: list[int]) -> str:
    bs = bmap.block_size
    spans = []
    for i in indices[:5]:
        r, e = bmap.ranges[i], _range_extent(bmap, i)
        spans.append(f"blocks {r.first}-{r.last} (bytes {r.first * bs}-"
                     f"{e.offset + e.length - 1})")
    return ", ".join(spans) + (" ..." if len(indices) > 5 else "")


class Verifier:
    """Reads the mapped ranges back in a thread, behind the writer (see `Handoff`): the
    ranges inside the body first, in the writer's order, then those touching the head or
    the tail. A range that differs fails the handoff at once, which stops the writer."""

    def __init__(self, source: Mapped, dev: BlockDevice, align: int, handoff: Handoff,
                 meter: Meter) -> None:
        self.source, self.dev, self.align = source, dev, align
        self.handoff, self.meter = handoff, meter
        self.got: dict[int, str] = {}
        self.seconds = 0.0
        self.thread = threading.Thread(target=self._run, name="verify", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _order(self) -> list[int]:
        bmap = self.source.bmap
        indices = range(len(bmap.ranges))
        inside = {i for i in indices if self.handoff.in_body(_range_extent(bmap, i))}
        return sorted(inside) + [i for i in indices if i not in inside]

    def _check(self, i: int, digest: str) -> None:
        if digest != self.source.bmap.ranges[i].checksum:
            try:
                _judge(self.source, self.dev, {i: digest}, only={i})
            except AppsdkError as exc:
                self.handoff.fail(exc)  # before raising: wakes our own read-ahead too
                raise

    def _run(self) -> None:
        start = time.monotonic()
        try:
            fd = _open_for_reading(self.dev)
            try:
                self.got = _hash_ranges(fd, self.dev.path, self.source.bmap, self._order(),
                                        self.align, self.meter,
                                        ready=self.handoff.wait_written, check=self._check)
            finally:
                os.close(fd)
        except Stopped:
            pass
        except BaseException as exc:
            self.handoff.fail(exc)
        finally:
            self.seconds = time.monotonic() - start

    def join(self) -> None:
        if self.thread.ident is not None:
            self.thread.join()

    def result(self) -> str:
        """Once the writer has finished: any failure is the verifier's own."""
        self.join()
        if self.handoff.error is not None:
            raise self.handoff.error
        return _judge(self.source, self.dev, self.got)


def invalidate(fd: int) -> None:
    """A device that failed verification must not look bootable: clear its head."""
    os.pwrite(fd, mmap.mmap(-1, HEAD), 0)
    os.fsync(fd)


def _range_extent(bmap: bmapfile.Bmap, index: int) -> Extent:
    r, bs = bmap.ranges[index], bmap.block_size
    return Extent(r.first * bs, min((r.last + 1) * bs, bmap.image_size) - r.first * bs)


def _hash_ranges(fd: int, name: str, bmap: bmapfile.Bmap, indices: list[int], align: int,
                 meter: Meter | None = None,
                 ready: Callable[[Extent], None] | None = None,
                 check: Callable[[int, str], None] | None = None) -> dict[int, str]:
    """Each range's checksum (of the bmap's type) as read from `fd`, reading ahead across
    range boundaries. `ready` is passed to the read-ahead; `check(index, digest)` sees each
    range as soon as it is hashed."""
    chunks = [(i, c) for i in indices for c in split([_range_extent(bmap, i)])]
    out: dict[int, str] = {}
    digest, current = hashlib.sha256(), None

    def close_range() -> None:
        if current is not None:
            out[current] = digest.hexdigest()
            if check is not None:
                check(current, out[current])

    reads = read_ahead(fd, name, [c for _, c in chunks], align, ready=ready)
    for (i, _), (c, view) in zip(chunks, reads, strict=True):
        if i != current:
            close_range()
            digest, current = bmap.ranges[i].hasher(), i
        digest.update(view[:c.length])
        if meter:
            meter.add_verified(c.length)
    close_range()
    return out


def _judge(source: Mapped, dev: BlockDevice, got: dict[int, str],
           only: set[int] | None = None) -> str:
    """Raise VerifyFailed naming the ranges that differ (of `only`, if given: the ranges
    read so far); else the device digest. The medium is blamed only for ranges the image
    still holds as its bmap says (open_source proved that once; this re-reads the image's
    bad ranges, in case it was changed during the flash)."""
    ranges = source.bmap.ranges
    bad = [i for i, r in enumerate(ranges)
           if (only is None or i in only) and got.get(i) != r.checksum]
    if bad:
        changed = changed_ranges(source.bmap, source.image, bad)
        if changed:
            raise ConfigError(f"changed while it was being read: "
                              f"{describe(source.bmap, changed)} "
                              f"no longer match the bmap, so {dev.path} was not verified",
                              file=str(source.image), hint="leave the image alone during a "
                              "flash or verify, and run it again")
        raise VerifyFailed(
            f"verification FAILED on {dev.path}: {len(bad)} of {len(ranges)} "
            f"mapped ranges differ from the image: {describe(source.bmap, bad)}",
            hint="the medium may be failing or counterfeit; try another card")
    whole = hashlib.sha256()
    for i in range(len(ranges)):
        whole.update(bytes.fromhex(got[i]))
    return whole.hexdigest()


def _open_for_reading(dev: BlockDevice) -> int:
    try:
        return os.open(dev.path, os.O_RDONLY | os.O_DIRECT | os.O_CLOEXEC)
    except OSError as exc:
        raise VerifyFailed(f"cannot open {dev.path} to verify: {exc.strerror}") from None


def verify_device(source: Mapped, device: BlockDevice | str | Path,
                  reporter: Reporter | None = None) -> tuple[str, float]:
    """Read every mapped range back with O_DIRECT and compare with the bmap's checksums.
    Returns (digest, seconds): the digest is sha256 over the ranges' sha256s as read from
    the device, equal to `image_digest` when every range matches. Raises VerifyFailed
    naming the ranges that differ."""
    reporter = reporter or NullReporter()
    dev = device if isinstance(device, BlockDevice) else probe(device)
    align = logical_block_size(dev)
    total = source.bmap.mapped_bytes
    reporter.emit(Event(EventKind.STAGE_START, "verify", f"reading back {total / MiB:.0f} MiB"))
    start = time.monotonic()
    fd = _open_for_reading(dev)
    try:
        got = _hash_ranges(fd, dev.path, source.bmap, list(range(len(source.bmap.ranges))),
                           align, Meter(reporter, "verify", 0, total))
    finally:
        os.close(fd)
    digest = _judge(source, dev, got)
    seconds = time.monotonic() - start
    reporter.emit(Event(EventKind.STAGE_DONE, "verify", "all mapped ranges match", seconds))
    return digest, seconds


def image_digest(source: Mapped) -> str:
    """The digest verify_device reports for a device that matches the bmap."""
    whole = hashlib.sha256()
    for r in source.bmap.ranges:
        whole.update(bytes.fromhex(r.checksum))
    return whole.hexdigest()
