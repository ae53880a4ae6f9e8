"""A pretend device behind a serial line, for unit tests of the shell driver and file push:
it understands exactly the command shapes appsdk sends (marker-wrapped commands, raw-mode
chunk reads) and keeps files in a dict. `line` mangles bytes in both directions."""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable

Mangle = Callable[[bytes], bytes]

RUN = re.compile(r"printf '%s%s\\n' '(\w+)' '-B'; (.*); printf '%s%s:%d:\\n' '\1' '-E' \$\?$")
FEED = re.compile(r"s=\$\(stty -g\); stty raw -echo; printf '%s%s\\n' '(\w+)' '-R'; "
                  r"timeout ([\d.]+) head -c (\d+) > (\S+); stty \"\$s\"; "
                  r"echo '(\w+)  \S+' \| sha256sum -c --status && dd if=\S+ of=(\S+) bs=1M "
                  r"oflag=seek_bytes seek=(\d+) conv=notrunc status=none$")


class FakeDevice:
    def __init__(self, to_device: Mangle = bytes, to_host: Mangle = bytes) -> None:
        self.files: dict[str, bytes] = {}
        self.to_device, self.to_host = to_device, to_host
        self.out = bytearray()
        self.line = bytearray()
        self.raw: dict[str, object] | None = None  # a head -c N in progress
        self.commands: list[str] = []

    # Console protocol
    def write(self, data: bytes) -> None:
        for byte in self.to_device(data):
            if self.raw is not None:
                buf = self.raw["buf"]
                assert isinstance(buf, bytearray)
                buf.append(byte)
                if len(buf) == self.raw["n"]:
                    self._finish_feed()
                continue
            if byte in (0x0A, 0x0D):
                if self.line:
                    self._command(self.line.decode(errors="replace"))
                self.line.clear()
            elif byte == 0x03:
                self.line.clear()
            else:
                self.line.append(byte)

    def read(self, timeout: float) -> bytes:
        if self.raw is not None and time.monotonic() > float(self.raw["deadline"]):  # type: ignore[arg-type]
            self._finish_feed()  # `timeout` killed head: a short chunk
        if not self.out:
            time.sleep(min(timeout, 0.01))
        data, self.out = bytes(self.out), bytearray()
        return self.to_host(data)

    def close(self) -> None:
        pass

    # The device
    def _say(self, text: str) -> None:
        self.out += text.encode()

    def _command(self, line: str) -> None:
        self.commands.append(line)
        m = RUN.match(line)
        if not m:
            return  # garbage: a real shell prints an error, which nobody waits for
        token, body = m.groups()
        self._say(f"{token}-B\n")
        feed = FEED.match(body)
        if feed:
            _, wait, n, _, digest, part, offset = feed.groups()
            self._say(f"{token}-R\n")
            self.raw = {"token": token, "n": int(n), "buf": bytearray(), "digest": digest,
                        "part": part, "offset": int(offset),
                        "deadline": time.monotonic() + float(wait)}
            return
        status, output = self._shell(body)
        self._say(output + f"{token}-E:{status}:\n")

    def _finish_feed(self) -> None:
        raw, self.raw = self.raw, None
        assert raw is not None
        data = bytes(raw["buf"])  # type: ignore[arg-type]
        status = 1
        if hashlib.sha256(data).hexdigest() == raw["digest"]:
            part, offset = str(raw["part"]), int(raw["offset"])  # type: ignore[call-overload]
            old = self.files.get(part, b"")
            old = old.ljust(offset, b"\0")
            self.files[part] = old[:offset] + data + old[offset + len(data):]
            status = 0
        self._say(f"{raw['token']}-E:{status}:\n")

    def _shell(self, body: str) -> tuple[int, str]:
        if body in ("true", "stty sane -echo; true"):
            return 0, ""
        if m := re.fullmatch(r"mkdir -p \S+ && : > (\S+)", body):
            self.files[m.group(1)] = b""
            return 0, ""
        if m := re.fullmatch(r"sha256sum (\S+) 2>/dev/null \|\| echo missing", body):
            if m.group(1) not in self.files:
                return 0, "missing\n"
            return 0, f"{hashlib.sha256(self.files[m.group(1)]).hexdigest()}  {m.group(1)}\n"
        if m := re.fullmatch(r"chmod \d+ (\S+) && mv -f \S+ (\S+) && sync", body):
            self.files[m.group(2)] = self.files.pop(m.group(1))
            return 0, ""
        if m := re.fullmatch(r"rm -f (\S+)", body):
            self.files.pop(m.group(1), None)
            return 0, ""
        return 127, f"fake device: unknown command {body!r}\n"
