"""Block I/O shared by the flash writer and the verifier: the byte extents a bmap maps and
how they are cut into chunks, the progress meter both count into, the handoff between a
writer and a verifier reading behind it, and the threaded read-ahead into aligned
(O_DIRECT-safe) buffers."""

from __future__ import annotations

import mmap
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from appsdk.core.errors import DeviceFailed, VerifyFailed
from appsdk.core.progress import Event, EventKind, Reporter
from appsdk.deliver.blockdev import BlockDevice
from appsdk.image import bmap as bmapfile

MiB = 1024 * 1024
HEAD = 64 * 1024  # protective MBR, GPT header and entries, for 512- and 4096-byte sectors
TAIL = MiB  # the backup GPT lives in the last 33 sectors; clear generously
CHUNK = 8 * MiB
SYNC_EVERY = 32 * MiB  # also how far the verifier may lag behind the writer


@dataclass(frozen=True)
class Extent:
    offset: int
    length: int


def bmap_extents(block_map: bmapfile.Bmap) -> list[Extent]:
    size, bs = block_map.image_size, block_map.block_size
    return [Extent(r.first * bs, min((r.last + 1) * bs, size) - r.first * bs)
            for r in block_map.ranges]


def clip(extents: list[Extent], start: int, end: int) -> list[Extent]:
    out = []
    for e in extents:
        lo, hi = max(e.offset, start), min(e.offset + e.length, end)
        if hi > lo:
            out.append(Extent(lo, hi - lo))
    return out


def split(extents: list[Extent], chunk: int = CHUNK) -> Iterator[Extent]:
    for e in extents:
        for off in range(e.offset, e.offset + e.length, chunk):
            yield Extent(off, min(chunk, e.offset + e.length - off))


def round_up(n: int, align: int) -> int:
    return -(-n // align) * align


class Meter:
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
        self.reporter.emit(Event(EventKind.PROGRESS, self.stage,
                                 f"{text} {rate / 1e6:.1f} MB/s ETA {eta:.0f}s", data=data))


class Stopped(Exception):
    """The other side of a writer/verifier pair failed; its exception is the one to raise."""


class Handoff:
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
            raise Stopped()

    def in_body(self, e: Extent) -> bool:
        return self.body_start <= e.offset and e.offset + e.length <= self.body_end

    def wait_written(self, c: Extent) -> None:
        """Block until chunk `c` is on the device (raises Stopped if the writer failed)."""
        inside = self.in_body(c)
        with self.cond:
            while not (self.finished or (inside and c.offset + c.length <= self.flushed_to)):
                self.check()
                self.cond.wait()
            self.check()


def read_ahead(fd: int, name: str, chunks: list[Extent], align: int, depth: int = 3,
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
                padded = round_up(c.length, align)
                view = memoryview(buf)
                got = 0
                while got < c.length:
                    try:
                        n = os.preadv(fd, [view[got:padded]], c.offset + got)
                    except OSError as exc:
                        raise io_error("reading", name, c.offset + got, exc) from None
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
            view = memoryview(buf)[:round_up(c.length, align)]
            yield c, view
            view.release()
            free.put(buf)
    finally:
        stop.set()
        for _ in range(depth):
            free.put(mmap.mmap(-1, 1))  # unblock a reader waiting for a buffer
        thread.join(timeout=5)


def io_error(doing: str, name: str, offset: int, exc: OSError) -> DeviceFailed:
    return DeviceFailed(f"{doing} {name} failed at byte {offset}: {exc.strerror or exc}",
                        hint="the card or reader may be failing, or was removed; a flash "
                        "cut short leaves no valid partition table. Try another card.")


def logical_block_size(dev: BlockDevice) -> int:
    path = Path(f"/sys/dev/block/{dev.devnum[0]}:{dev.devnum[1]}/queue/logical_block_size")
    try:
        return max(4096, int(path.read_text()))
    except (OSError, ValueError):
        return 4096
