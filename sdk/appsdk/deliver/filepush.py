"""Push files to a device over its serial console, binary-safe and close to line rate.

Each chunk is one command: the terminal goes raw (every byte value passes unchanged), `head
-c N` reads exactly the chunk, the device checks its sha256 and only then writes it at its
offset into `DEST.appsdk-part` (so a retried chunk cannot be written twice). A chunk that
was dropped, corrupted or lost in a garbled command is sent again, smaller; after the last
chunk the whole file's sha256 is checked on the device, the file is renamed into place
(atomic) and its hash checked once more under its final name. Nothing but a file with the
right hash ever appears at DEST."""

from __future__ import annotations

import hashlib
import posixpath
import shlex
import time
from dataclasses import dataclass

from appsdk.core.errors import CommandTimeout, PushFailed
from appsdk.deliver.console import ConsoleClosed, Shell

CHUNK_MAX = 64 * 1024
CHUNK_MIN = 512
SCRATCH = "/run/appsdk-push.chunk"


@dataclass(frozen=True)
class PushResult:
    dest: str
    size: int
    sha256: str
    seconds: float
    chunks: int
    retries: int

    @property
    def bytes_per_second(self) -> float:
        return self.size / self.seconds if self.seconds else 0.0


def run_checked(shell: Shell, command: str, timeout: float = 30, attempts: int = 4) -> str:
    """An idempotent command, retried after a resync when the line garbles it."""
    last = ""
    for _ in range(attempts):
        try:
            status, out = shell.run(command, timeout=timeout * shell.patience)
        except CommandTimeout as exc:
            last = str(exc).splitlines()[0]
            _resync(shell, command)
            continue
        if status == 0:
            return out
        last = f"exit {status}: {out[-300:]}"
    raise PushFailed(f"on the device, `{command}` kept failing: {last}")


def _resync(shell: Shell, doing: str) -> None:
    try:
        shell.resync()
    except ConsoleClosed as exc:
        raise PushFailed(f"the console stopped answering during `{doing[:60]}`: {exc}") from None


def _remote_sha256(shell: Shell, path: str) -> str:
    out = run_checked(shell, f"sha256sum {shlex.quote(path)} 2>/dev/null || echo missing")
    words = out.split()
    return words[0] if words and len(words[0]) == 64 else ""


def push_bytes(shell: Shell, data: bytes, dest: str, mode: int = 0o644,
               line_rate: float = 11520.0, max_failures: int = 40,
               chunk_max: int = CHUNK_MAX) -> PushResult:
    """Write `data` to `dest` on the device. `line_rate` (bytes/s; 115200 baud = 11520)
    only sizes the per-chunk timeouts. Raises PushFailed after `max_failures` failed
    chunks; a partial file never appears under `dest`."""
    start = time.monotonic()
    want = hashlib.sha256(data).hexdigest()
    q = shlex.quote
    part = f"{dest}.appsdk-part"
    run_checked(shell, f"mkdir -p {q(posixpath.dirname(dest) or '/')} && : > {q(part)}")
    offset, size, failures, chunks = 0, min(chunk_max, 16 * 1024), 0, 0
    while offset < len(data):
        piece = data[offset:offset + size]
        digest = hashlib.sha256(piece).hexdigest()
        wait = 2 * shell.patience + 3 * len(piece) / line_rate
        reader = f"timeout {wait:.1f} head -c {len(piece)} > {SCRATCH}"
        after = (f"echo '{digest}  {SCRATCH}' | sha256sum -c --status && dd if={SCRATCH} "
                 f"of={q(part)} bs=1M oflag=seek_bytes seek={offset} conv=notrunc status=none")
        try:
            ok = shell.run_feeding(reader, piece, after,
                                   timeout=wait + 10 * shell.patience) == 0
        except CommandTimeout:
            ok = False
            _resync(shell, f"push {dest} at byte {offset}")
        if ok:
            offset += len(piece)
            chunks += 1
            size = min(size * 2, chunk_max)
            continue
        failures += 1
        size = max(size // 2, CHUNK_MIN)
        if failures >= max_failures:
            run_checked(shell, f"rm -f {q(part)}")
            raise PushFailed(f"{dest}: gave up after {failures} failed chunks at byte {offset} "
                             f"of {len(data)}; the line is too noisy (check cable, baud rate)")
    if _remote_sha256(shell, part) != want:
        run_checked(shell, f"rm -f {q(part)}")
        raise PushFailed(f"{dest}: the assembled file's sha256 differs from the source "
                         "(nothing was installed)")
    run_checked(shell, f"chmod {mode:o} {q(part)} && mv -f {q(part)} {q(dest)} && sync")
    if _remote_sha256(shell, dest) != want:
        raise PushFailed(f"{dest}: sha256 after the rename differs from the source")
    return PushResult(dest, len(data), want, time.monotonic() - start, chunks, failures)
