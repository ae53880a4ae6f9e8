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
"""

from __future__ import annotations

import contextlib
import hashlib
import mmap
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appsdk.core.digest import sha256_file
from appsdk.core.errors import AppsdkError, ConfigError, DeviceFailed, DeviceRefused, VerifyFailed
from appsdk.core.progress import Event, NullReporter, Reporter
from appsdk.deliver.blockdev import BlockDevice, probe, refuse_if_unsafe
from appsdk.image import bmap as bmapfile
from appsdk.image import gpt

MiB = 1024 * 1024
HEAD = 64 * 1024  # protective MBR, GPT header and entries, for 512- and 4096-byte sectors
TAIL = MiB  # the backup GPT lives in the last 33 sectors; clear generously
CHUNK = 8 * MiB
SYNC_EVERY = 32 * MiB  # also how far the verifier may lag behind the writer


@dataclass(frozen=True)
class Source:
    """An image to flash with its block map, and what its build says about it."""

    image: Path
    bmap: bmapfile.Bmap
    board: str | None  # None: a bare image without build.json (board cannot be checked)
    min_device_size: int
    bmap_file: Path | None = None  # None: the map was computed from the image's holes


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


def open_source(path: Path) -> Source:
    """A build directory (build.json names image, bmap and board) or an image file (its
    .bmap beside it if present, else one computed from the file's holes), with every input
    proven before any device is opened: the bmap is the one the build recorded and
    consistent, the image is as long as the bmap and its own GPT says, the bmap maps the
    GPT and every byte of data the image holds, and the image's mapped ranges hash to the
    bmap's checksums. A flaw is a ConfigError naming the image or the bmap."""
    from appsdk.contract.buildinfo import locate_image

    image, record = locate_image(path)
    size = image.stat().st_size
    beside = image.with_name(image.name + ".bmap")
    bmap_path = beside if beside.exists() else None
    if record:
        bmap_path = image.parent / record["artifacts"]["bmap"]["file"]
        _check_recorded(image, size, bmap_path, record["artifacts"])
    block_map = bmapfile.parse(bmap_path) if bmap_path else bmapfile.create(image)
    if block_map.image_size != size:
        raise ConfigError(f"bmap is for an image of {block_map.image_size} bytes, "
                          f"{image.name} has {size}", file=str(bmap_path),
                          hint="rebuild, or remove the stale .bmap")
    board = record["board"]["name"] if record else None
    min_size = (record.get("min_device_size") or 0) if record else 0
    source = Source(image, block_map, board, max(min_size, block_map.image_size), bmap_path)
    table = gpt.read(image) if record else gpt.disk_table(image)
    if bmap_path:  # a map computed from the image describes it by construction
        _check_covers(source, table)
        _check_image_ranges(source, recorded=record is not None)
    return source


def _check_recorded(image: Path, size: int, bmap_path: Path,
                    artifacts: dict[str, Any]) -> None:
    """The bmap is byte for byte the one build.json vouches for, the image as long as the
    build made it. (The image is not hashed whole: its mapped ranges are checked against
    the bmap and the rest against holding no data, which together prove the same.)"""
    if not bmap_path.is_file():
        raise ConfigError("build.json names this bmap, but it is missing",
                          file=str(bmap_path), hint="rebuild, or copy the build's .bmap "
                          "back beside the image")
    want = artifacts["bmap"]["sha256"]
    got = sha256_file(bmap_path)
    if got != want:
        raise ConfigError(f"not the bmap this build wrote: its sha256 is {got}, build.json "
                          f"records {want}", file=str(bmap_path),
                          hint="restore the build's own .bmap, or rebuild")
    recorded = artifacts["image"]["size"]
    if size != recorded:
        raise ConfigError(f"the image has {size} bytes, build.json records {recorded}: it "
                          "was changed or cut short after the build", file=str(image),
                          hint="rebuild, or copy the image again")


def _check_covers(source: Source, table: gpt.Gpt | None) -> None:
    """The bmap maps the image's partition table and every byte of data it holds."""
    name = source.bmap_file
    for what, offset, length in table.regions() if table else ():
        if not source.bmap.maps(offset, length):
            raise ConfigError(f"does not map {what} (bytes {offset}-{offset + length - 1}) "
                              f"of {source.image}: a flash would leave no valid partition "
                              "table", file=str(name), hint="the bmap was made for another "
                              "image: " + bmapfile.HINT)
    found = bmapfile.unmapped_data(source.image, source.bmap)
    if found is not None:
        part = table.partition_at(found) if table else None
        inside = f" (partition {part.number}, {part.label or part.type})" if part else ""
        raise ConfigError(f"{source.image} holds data at byte {found}{inside} that the bmap "
                          "does not map: the bmap was made for another image, or the image "
                          "was changed after it", file=str(name), hint=bmapfile.HINT)


def _check_image_ranges(source: Source, recorded: bool) -> None:
    """Every mapped range of the image hashes to the bmap's checksum, so that a read-back
    mismatch later can only be the device's doing."""
    bad = _changed_ranges(source, range(len(source.bmap.ranges)))
    if bad:
        cause = ("it was changed after the build (its bmap is the one build.json records)"
                 if recorded else "it was changed after its bmap was made, or the bmap "
                 "belongs to another image")
        raise ConfigError(f"{len(bad)} of {len(source.bmap.ranges)} mapped ranges differ "
                          f"from the bmap {source.bmap_file}: {_describe(source, bad)}; "
                          f"{cause}", file=str(source.image),
                          hint="rebuild, or restore the image; no device was touched")


def _changed_ranges(source: Source, indices: Iterable[int]) -> list[int]:
    """Of `indices`, the ranges whose bytes in the image differ from the bmap's checksums."""
    wanted = list(indices)
    try:
        fd = os.open(source.image, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:  # moved or removed since it was opened: not proven good
        raise ConfigError(f"cannot read the image: {exc.strerror}", file=str(source.image),
                          hint="keep the image in place while flashing") from None
    try:
        got = _hash_ranges(fd, str(source.image), source, wanted, 4096)
    finally:
        os.close(fd)
    return [i for i in wanted if got.get(i) != source.bmap.ranges[i].checksum]


def _describe(source: Source, indices: list[int]) -> str:
    bs = source.bmap.block_size
    spans = []
    for i in indices[:5]:
        r, e = source.bmap.ranges[i], _range_extent(source, i)
        spans.append(f"blocks {r.first}-{r.last} (bytes {r.first * bs}-"
                     f"{e.offset + e.length - 1})")
    return ", ".join(spans) + (" ..." if len(indices) > 5 else "")


@dataclass(frozen=True)
class Extent:
    offset: int
    length: int


def _extents(block_map: bmapfile.Bmap) -> list[Extent]:
    size, bs = block_map.image_size, block_map.block_size
    return [Extent(r.first * bs, min((r.last + 1) * bs, size) - r.first * bs)
            for r in block_map.ranges]


def _clip(extents: list[Extent], start: int, end: int) -> list[Extent]:
    out = []
    for e in extents:
        lo, hi = max(e.offset, start), min(e.offset + e.length, end)
        if hi > lo:
            out.append(Extent(lo, hi - lo))
    return out


def _split(extents: list[Extent], chunk: int = CHUNK) -> Iterator[Extent]:
    for e in extents:
        for off in range(e.offset, e.offset + e.length, chunk):
            yield Extent(off, min(chunk, e.offset + e.length - off))


def _round_up(n: int, align: int) -> int:
    return -(-n // align) * align


class _Meter:
    """Progress events at most twice a second: bytes, MB/s, ETA. Thread-safe: when a
    verifier reads behind the writer, both count here (`verified` of `verify_total`)."""

    def __init__(self, reporter: Reporter, stage: str, total: int,
                 verify_total: int = 0) -> None:
        self.reporter, self.stage, self.total = reporter, stage, total
        self.verify_total = verify_total
        self.done = self.verified = 0
        self.start = self.last = time.monotonic()
        self.lock = threading.Lock()

    def add(self, n: int) -> None:
        with self.lock:
            self.done += n
            self._maybe_emit()

    def add_verified(self, n: int) -> None:
        with self.lock:
            self.verified += n
            self._maybe_emit()

    def _maybe_emit(self) -> None:
        now = time.monotonic()
        finished = self.done >= self.total and self.verified >= self.verify_total
        if now - self.last < 0.5 and not finished:
            return
        self.last = now
        elapsed = max(now - self.start, 1e-6)
        rate = (self.done or self.verified) / elapsed
        left = self.total - self.done + self.verify_total - self.verified
        done_all = self.done + self.verified
        eta = left * elapsed / done_all if done_all else 0.0
        parts: list[str] = []
        data: dict[str, object] = {}
        if self.total:
            parts.append(f"written {self.done / MiB:.0f}/{self.total / MiB:.0f} MiB")
            data.update(done=self.done, total=self.total)
        if self.verify_total:
            parts.append(f"verified {self.verified / MiB:.0f}/{self.verify_total / MiB:.0f} MiB")
            data.update(verified=self.verified, verify_total=self.verify_total)
        text = ", ".join(parts)
        data.update(mb_per_s=round(rate / 1e6, 1), eta_s=round(eta, 1))
        self.reporter.emit(Event("progress", self.stage,
                                 f"{text} {rate / 1e6:.1f} MB/s ETA {eta:.0f}s", data=data))


class _Stopped(Exception):
    """The other side of a writer/verifier pair failed; its exception is the one to raise."""


class _Handoff:
    """What the writer has put on the device, for the verifier reading behind it. Body bytes
    (between the image's head and tail) below `flushed_to` are written and flushed; after
    `finish` everything is. Either side may `fail`, which stops the other."""

    def __init__(self, body_start: int, body_end: int) -> None:
        self.body_start, self.body_end = body_start, body_end
        self.flushed_to = body_start
        self.finished = False
        self.error: BaseException | None = None
        self.cond = threading.Condition()

    def flushed(self, offset: int) -> None:
        with self.cond:
            self.flushed_to = max(self.flushed_to, offset)
            self.cond.notify_all()

    def finish(self) -> None:
        with self.cond:
            self.finished = True
            self.cond.notify_all()

    def fail(self, exc: BaseException) -> None:
        with self.cond:
            if self.error is None:
                self.error = exc
            self.cond.notify_all()

    def check(self) -> None:
        if self.error is not None:
            raise _Stopped()

    def in_body(self, e: Extent) -> bool:
        return self.body_start <= e.offset and e.offset + e.length <= self.body_end

    def wait_written(self, c: Extent) -> None:
        """Block until chunk `c` is on the device (raises _Stopped if the writer failed)."""
        inside = self.in_body(c)
        with self.cond:
            while not (self.finished or (inside and c.offset + c.length <= self.flushed_to)):
                self.check()
                self.cond.wait()
            self.check()


def _read_ahead(fd: int, name: str, chunks: list[Extent], align: int, depth: int = 3,
                ready: Callable[[Extent], None] | None = None,
                ) -> Iterator[tuple[Extent, memoryview]]:
    """Read `chunks` of `fd` in a thread into aligned buffers (O_DIRECT-safe), `depth`
    buffers ahead of the consumer: reading overlaps with the consumer's writing or hashing
    (pread, pwrite and sha256 all release the GIL). Each view is valid until the next
    item is taken, and is zero-padded up to the alignment. `ready(chunk)`, if given, is
    called (in the reading thread) before each read and may block until it can be read."""
    free: queue.Queue[mmap.mmap] = queue.Queue()
    for _ in range(depth):
        free.put(mmap.mmap(-1, CHUNK + align))
    full: queue.Queue[tuple[Extent, mmap.mmap] | BaseException | None] = queue.Queue()
    stop = threading.Event()

    def reader() -> None:
        try:
            for c in chunks:
                buf = free.get()
                if stop.is_set():
                    return
                if ready is not None:
                    ready(c)
                padded = _round_up(c.length, align)
                view = memoryview(buf)
                got = 0
                while got < c.length:
                    try:
                        n = os.preadv(fd, [view[got:padded]], c.offset + got)
                    except OSError as exc:
                        raise _io_error("reading", name, c.offset + got, exc) from None
                    if n <= 0:
                        raise VerifyFailed(f"{name}: short read at byte {c.offset + got}")
                    got += n
                # Past the chunk (image end, alignment padding): zeros, never stale bytes.
                view[c.length:padded] = bytes(padded - c.length)
                view.release()
                full.put((c, buf))
            full.put(None)
        except BaseException as exc:  # handed to the consumer, which raises it
            full.put(exc)

    thread = threading.Thread(target=reader, name="read-ahead", daemon=True)
    thread.start()
    try:
        while (item := full.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            c, buf = item
            view = memoryview(buf)[:_round_up(c.length, align)]
            yield c, view
            view.release()
            free.put(buf)
    finally:
        stop.set()
        for _ in range(depth):
            free.put(mmap.mmap(-1, 1))  # unblock a reader waiting for a buffer
        thread.join(timeout=5)


def _io_error(doing: str, name: str, offset: int, exc: OSError) -> DeviceFailed:
    return DeviceFailed(f"{doing} {name} failed at byte {offset}: {exc.strerror or exc}",
                        hint="the card or reader may be failing, or was removed; a flash "
                        "cut short leaves no valid partition table. Try another card.")


class _Writer:
    """pwrite of image chunks to an O_DIRECT fd, the image read ahead in a thread. Each
    flush tells `handoff` how far the image's data is on the device; a failed verifier
    stops the writer."""

    def __init__(self, fd: int, name: str, image: Path, align: int, meter: _Meter,
                 handoff: _Handoff) -> None:
        self.fd, self.name, self.image, self.align, self.meter = fd, name, image, align, meter
        self.handoff = handoff
        self.written = 0
        self.since_sync = 0
        self.end = 0  # end of the last chunk written

    def write_zeros(self, offset: int, length: int) -> None:
        buf = mmap.mmap(-1, _round_up(length, self.align))
        self._pwrite(memoryview(buf), offset)

    def write_extents(self, extents: list[Extent]) -> None:
        src = os.open(self.image, os.O_RDONLY | os.O_CLOEXEC)
        try:
            for c, view in _read_ahead(src, str(self.image), list(_split(extents)),
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
                raise _io_error("writing", self.name, offset + done, exc) from None
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
            raise _io_error("flushing", self.name, self.end, exc) from None
        self.since_sync = 0
        self.handoff.flushed(self.end)


def _logical_block_size(dev: BlockDevice) -> int:
    path = Path(f"/sys/dev/block/{dev.devnum[0]}:{dev.devnum[1]}/queue/logical_block_size")
    try:
        return max(4096, int(path.read_text()))
    except (OSError, ValueError):
        return 4096


def _open_exclusive(dev: BlockDevice, flags: int) -> int:
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


def check_target(source: Source, device: str | Path, board: str | None,
                 allow_fixed: bool = False) -> BlockDevice:
    """Every refusal that can be decided before writing; returns the device to confirm."""
    if board and source.board and board != source.board:
        raise DeviceRefused(f"{source.image} was built for board {source.board}, not {board}; "
                            "nothing was written",
                            hint=f"flash a build for {board}, or pass --board {source.board}")
    dev = probe(device)
    refuse_if_unsafe(dev, allow_fixed, source.min_device_size)
    if dev.backed_by(source.image):
        raise DeviceRefused(f"refusing to write to {dev.path}: it is a loop device over the "
                            f"image itself ({source.image}). Nothing was written.",
                            hint="detach it (losetup -d) and flash another device",
                            device=dev.path)
    return dev


def flash(source: Source, device: str | Path, *, board: str | None = None,
          allow_fixed: bool = False, confirm: Callable[[BlockDevice], bool] | None = None,
          reporter: Reporter | None = None, verify: bool = True) -> FlashResult:
    """Check, confirm, write and verify. `confirm` sees the device's identity and returns
    False to abort (nothing written); None means confirmed (the caller asked already)."""
    reporter = reporter or NullReporter()
    dev = check_target(source, device, board, allow_fixed)
    if confirm is not None and not confirm(dev):
        raise DeviceRefused(f"not confirmed; nothing was written to {dev.path}")
    # Re-check right before opening: a card swapped during the prompt is another device.
    again = probe(device)
    if again.fingerprint != dev.fingerprint:
        raise DeviceRefused(f"{dev.path} is no longer the device you confirmed "
                            f"(now: {again.identity}); nothing was written")
    refuse_if_unsafe(again, allow_fixed, source.min_device_size)

    align = _logical_block_size(dev)
    extents = _extents(source.bmap)
    size = source.bmap.image_size
    tail_start = max(HEAD, (size - TAIL) // align * align)
    body = _clip(extents, HEAD, tail_start)
    tail = _clip(extents, tail_start, size)
    total = HEAD + sum(e.length for e in body + tail) + HEAD
    handoff = _Handoff(HEAD, tail_start)
    reporter.emit(Event("stage-start", "write", f"{source.image.name} -> {dev.identity}"
                        + (", verifying behind the writer" if verify else "")))
    start = time.monotonic()
    meter = _Meter(reporter, "write", total, source.bmap.mapped_bytes if verify else 0)
    fd = _open_exclusive(dev, os.O_WRONLY)
    try:
        w = _Writer(fd, dev.path, source.image, align, meter, handoff)
        verifier = _Verifier(source, dev, align, handoff, meter) if verify else None
        try:
            _write_in_order(w, dev.size, size, tail, body, reporter, verifier)
        except BaseException as exc:
            handoff.fail(exc)  # stops the verifier
            if verifier:
                verifier.join()
            if isinstance(exc, _Stopped) and handoff.error is not None:
                raise handoff.error from None  # the verifier's; the head is still zeros
            raise
        write_seconds = time.monotonic() - start
        reporter.emit(Event("stage-done", "write", f"{w.written / MiB:.0f} MiB",
                            write_seconds))
        digest, verify_seconds = "", 0.0
        if verifier:
            if verifier.thread.is_alive():
                reporter.emit(Event("stage-start", "verify", "reading back the last ranges"))
            try:
                digest = verifier.result()
            except AppsdkError:
                with contextlib.suppress(OSError):  # a device that failed a read may refuse
                    _invalidate(fd)  # the head is written by now
                raise
            verify_seconds = time.monotonic() - start - write_seconds
            reporter.emit(Event("stage-done", "verify", "all mapped ranges match",
                                verifier.seconds))
    finally:
        os.close(fd)
    return FlashResult(dev, source.image, w.written, write_seconds, verify_seconds, digest)


def _write_in_order(w: _Writer, device_size: int, size: int, tail: list[Extent],
                    body: list[Extent], reporter: Reporter, verifier: _Verifier | None) -> None:
    """The write order of the module docstring."""
    w.write_zeros(0, HEAD)
    if device_size - size >= TAIL:
        w.meter.total += TAIL
        w.write_zeros(device_size - TAIL, TAIL)
    w.sync()
    reporter.emit(Event("info", "write", "partition table cleared; writing data",
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


class _Verifier:
    """Reads the mapped ranges back in a thread, behind the writer (see `_Handoff`): the
    ranges inside the body first, in the writer's order, then those touching the head or
    the tail. A range that differs fails the handoff at once, which stops the writer."""

    def __init__(self, source: Source, dev: BlockDevice, align: int, handoff: _Handoff,
                 meter: _Meter) -> None:
        self.source, self.dev, self.align = source, dev, align
        self.handoff, self.meter = handoff, meter
        self.got: dict[int, str] = {}
        self.seconds = 0.0
        self.thread = threading.Thread(target=self._run, name="verify", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _order(self) -> list[int]:
        indices = range(len(self.source.bmap.ranges))
        inside = {i for i in indices if self.handoff.in_body(_range_extent(self.source, i))}
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
                self.got = _hash_ranges(fd, self.dev.path, self.source, self._order(),
                                        self.align, self.meter,
                                        ready=self.handoff.wait_written, check=self._check)
            finally:
                os.close(fd)
        except _Stopped:
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


def _invalidate(fd: int) -> None:
    """A device that failed verification must not look bootable: clear its head."""
    os.pwrite(fd, mmap.mmap(-1, HEAD), 0)
    os.fsync(fd)


def _range_extent(source: Source, index: int) -> Extent:
    r, bs = source.bmap.ranges[index], source.bmap.block_size
    return Extent(r.first * bs, min((r.last + 1) * bs, source.bmap.image_size) - r.first * bs)


def _hash_ranges(fd: int, name: str, source: Source, indices: list[int], align: int,
                 meter: _Meter | None = None,
                 ready: Callable[[Extent], None] | None = None,
                 check: Callable[[int, str], None] | None = None) -> dict[int, str]:
    """Each range's checksum (of the bmap's type) as read from `fd`, reading ahead across
    range boundaries. `ready` is passed to the read-ahead; `check(index, digest)` sees each
    range as soon as it is hashed."""
    chunks = [(i, c) for i in indices for c in _split([_range_extent(source, i)])]
    out: dict[int, str] = {}
    digest, current = hashlib.sha256(), None

    def close_range() -> None:
        if current is not None:
            out[current] = digest.hexdigest()
            if check is not None:
                check(current, out[current])

    reads = _read_ahead(fd, name, [c for _, c in chunks], align, ready=ready)
    for (i, _), (c, view) in zip(chunks, reads, strict=True):
        if i != current:
            close_range()
            digest, current = source.bmap.ranges[i].hasher(), i
        digest.update(view[:c.length])
        if meter:
            meter.add_verified(c.length)
    close_range()
    return out


def _judge(source: Source, dev: BlockDevice, got: dict[int, str],
           only: set[int] | None = None) -> str:
    """Raise VerifyFailed naming the ranges that differ (of `only`, if given: the ranges
    read so far); else the device digest. The medium is blamed only for ranges the image
    still holds as its bmap says (open_source proved that once; this re-reads the image's
    bad ranges, in case it was changed during the flash)."""
    ranges = source.bmap.ranges
    bad = [i for i, r in enumerate(ranges)
           if (only is None or i in only) and got.get(i) != r.checksum]
    if bad:
        changed = _changed_ranges(source, bad)
        if changed:
            raise ConfigError(f"changed while it was being read: {_describe(source, changed)} "
                              f"no longer match the bmap, so {dev.path} was not verified",
                              file=str(source.image), hint="leave the image alone during a "
                              "flash or verify, and run it again")
        raise VerifyFailed(
            f"verification FAILED on {dev.path}: {len(bad)} of {len(ranges)} "
            f"mapped ranges differ from the image: {_describe(source, bad)}",
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


def verify_device(source: Source, device: BlockDevice | str | Path,
                  reporter: Reporter | None = None) -> tuple[str, float]:
    """Read every mapped range back with O_DIRECT and compare with the bmap's checksums.
    Returns (digest, seconds): the digest is sha256 over the ranges' sha256s as read from
    the device, equal to `image_digest` when every range matches. Raises VerifyFailed
    naming the ranges that differ."""
    reporter = reporter or NullReporter()
    dev = device if isinstance(device, BlockDevice) else probe(device)
    align = _logical_block_size(dev)
    total = source.bmap.mapped_bytes
    reporter.emit(Event("stage-start", "verify", f"reading back {total / MiB:.0f} MiB"))
    start = time.monotonic()
    fd = _open_for_reading(dev)
    try:
        got = _hash_ranges(fd, dev.path, source, list(range(len(source.bmap.ranges))), align,
                           _Meter(reporter, "verify", 0, total))
    finally:
        os.close(fd)
    digest = _judge(source, dev, got)
    seconds = time.monotonic() - start
    reporter.emit(Event("stage-done", "verify", "all mapped ranges match", seconds))
    return digest, seconds


def image_digest(source: Source) -> str:
    """The digest verify_device reports for a device that matches the bmap."""
    whole = hashlib.sha256()
    for r in source.bmap.ranges:
        whole.update(bytes.fromhex(r.checksum))
    return whole.hexdigest()
