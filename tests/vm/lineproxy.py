"""A TCP proxy between pyserial and QEMU's serial socket that behaves like a real serial
line: a rate limit (115200 baud 8N1 = 11520 bytes/s) and, when asked, bytes dropped and
bits flipped at a set rate, in both directions. Rates can change while it runs. It counts
what it forwards towards the device, so a test can check the line ran at the rate it
claims."""

from __future__ import annotations

import contextlib
import random
import socket
import threading
import time

UART_RATE = 115200 / 10  # bytes/s: 8N1 spends 10 bit times per byte


class LineProxy:
    def __init__(self, upstream_port: int, seed: int = 1, rate: float = UART_RATE) -> None:
        self.upstream_port = upstream_port
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(1)
        self.port = int(self.listener.getsockname()[1])
        self.rate = rate  # bytes per second each way; 0 = unlimited
        self.drop = 0.0  # probability per byte
        self.flip = 0.0  # probability per byte
        self.rng = random.Random(seed)
        self.dropped = self.flipped = 0
        self.sent = 0  # bytes forwarded towards the device
        self.sending = 0.0  # seconds spent forwarding them, pacing included
        self.closed = False
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = self._connect()
            pair = [client, upstream]
            for a, b, down in ((client, upstream, True), (upstream, client, False)):
                threading.Thread(target=self._pump, args=(a, b, pair, down),
                                 daemon=True).start()

    def _connect(self) -> socket.socket:
        deadline = time.monotonic() + 30
        while True:
            try:
                return socket.create_connection(("127.0.0.1", self.upstream_port), timeout=5)
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def _mangle(self, data: bytes) -> bytes:
        if not (self.drop or self.flip):
            return data
        out = bytearray()
        for byte in data:
            r = self.rng.random()
            if r < self.drop:
                self.dropped += 1
                continue
            if r < self.drop + self.flip:
                self.flipped += 1
                byte ^= 1 << self.rng.randrange(8)
            out.append(byte)
        return bytes(out)

    def _pump(self, src: socket.socket, dst: socket.socket, pair: list[socket.socket],
              down: bool) -> None:
        src.settimeout(None)
        try:
            while True:
                # Small reads so the rate limit paces bytes like a UART does.
                data = src.recv(256 if self.rate else 65536)
                if not data:
                    break
                began = time.monotonic()
                if self.rate:
                    time.sleep(len(data) / self.rate)
                dst.sendall(self._mangle(data))
                if down:
                    self.sent += len(data)
                    self.sending += time.monotonic() - began
        except OSError:
            pass
        finally:
            # shutdown() first: close() alone neither wakes the other pump's recv() nor
            # sends QEMU a FIN, and QEMU accepts no new client until it sees one.
            for s in pair:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                with contextlib.suppress(OSError):
                    s.close()

    def close(self) -> None:
        self.closed = True
        self.listener.close()
