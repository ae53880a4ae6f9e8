"""Consoles and a robust shell over them. A Console moves bytes (a serial port, a QEMU
serial socket, a fake); Shell runs commands on it with split random markers carrying the
exit status, so echoed input, ANSI escapes and kernel messages cannot fool it."""

from __future__ import annotations

import re
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from .errors import AppsdkError, CommandTimeout

ANSI = re.compile(rb"\x1b\[[0-9;?!]*[ -/]*[@-~]|\x1b[()][A-Z0-9]|\x1b[=>]|\r")


class Console(Protocol):
    def write(self, data: bytes) -> None: ...

    def read(self, timeout: float) -> bytes:
        """Whatever arrived within `timeout` seconds (may be empty)."""
        ...

    def close(self) -> None: ...


class SerialConsole:
    """Anything pyserial opens: /dev/ttyUSB0, socket://host:port, rfc2217://..."""

    def __init__(self, url: str, baud: int = 115200, connect_timeout: float = 30.0) -> None:
        import serial

        deadline = time.monotonic() + connect_timeout
        while True:
            try:
                self._port = serial.serial_for_url(url, baudrate=baud, timeout=0.1)
                break
            except (serial.SerialException, OSError) as exc:
                if time.monotonic() > deadline:
                    raise AppsdkError(f"cannot open console {url}: {exc}") from None
                time.sleep(0.5)

    def write(self, data: bytes) -> None:
        self._port.write(data)
        self._port.flush()

    def read(self, timeout: float) -> bytes:
        self._port.timeout = timeout
        first = self._port.read(1)
        if not first:
            return b""
        waiting = self._port.in_waiting
        return bytes(first + (self._port.read(waiting) if waiting else b""))

    def close(self) -> None:
        self._port.close()


class ConsoleClosed(AppsdkError):
    pass


@dataclass
class Transcript:
    """Everything read from a console, raw, optionally mirrored to a log file."""

    log: Path | None = None
    data: bytearray = field(default_factory=bytearray)

    def add(self, chunk: bytes) -> None:
        self.data += chunk
        if self.log:
            with self.log.open("ab") as f:
                f.write(chunk)


def clean(data: bytes) -> str:
    return ANSI.sub(b"", data).decode(errors="replace")


class Shell:
    """Drive a root shell on a console."""

    def __init__(self, console: Console, log: Path | None = None) -> None:
        self.console = console
        self.transcript = Transcript(log)
        self._pos = 0  # how far expect() has consumed the transcript

    def _pump(self, timeout: float) -> bool:
        chunk = self.console.read(timeout)
        if chunk:
            self.transcript.add(chunk)
        return bool(chunk)

    def expect(self, pattern: str | re.Pattern[str], timeout: float) -> re.Match[str]:
        """Wait for `pattern` in new output (ANSI stripped); consumes up to the match."""
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        while True:
            text = clean(bytes(self.transcript.data[self._pos:]))
            match = regex.search(text)
            if match:
                # Advance by the raw length of the matched prefix (clean() only drops bytes).
                consumed = len(clean_prefix(bytes(self.transcript.data[self._pos:]),
                                            match.end()))
                self._pos += consumed
                return match
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                tail = text[-2000:]
                raise CommandTimeout(f"no {regex.pattern!r} on the console within {timeout:.0f}s;"
                                     f" last output:\n{tail}")
            self._pump(min(remaining, 0.5))

    def send(self, line: str) -> None:
        self.console.write(line.encode() + b"\n")

    def login(self, prompt: str = r"root@[^\s:]+:[^\n]*# ?", timeout: float = 240) -> None:
        """Wait for a root prompt (autologin), then make the shell machine-friendly."""
        self.expect(prompt, timeout)
        # No echo, no colours, no kernel chatter on the console while we talk to it.
        self.send("stty -echo; export TERM=dumb PS1='' PS2='' PAGER=cat SYSTEMD_PAGER=cat "
                  "SYSTEMD_COLORS=0; dmesg -n 1")
        self.run("true", timeout=30)

    def run(self, command: str, timeout: float = 60, check: bool = False) -> tuple[int, str]:
        token = secrets.token_hex(4)
        begin, end = f"{token}-B", f"{token}-E"
        # The markers are printed from two pieces, so the typed command (if echoed) never
        # contains them; the exit status travels inside the end marker.
        # One line: a second line would get its own prompt printed before the end marker.
        self.send(f"printf '%s%s\\n' '{token}' '-B'; {command}; "
                  f"printf '%s%s:%d:\\n' '{token}' '-E' $?")
        self.expect(re.escape(begin) + r"\n", timeout)
        match = self.expect(re.escape(end) + r":(\d+):", timeout)
        output = match.string[: match.start()]
        status = int(match.group(1))
        if check and status != 0:
            raise AppsdkError(f"on the device, `{command}` exited {status}:\n{output}")
        return status, output.strip("\n")

    def output(self, command: str, timeout: float = 60) -> str:
        return self.run(command, timeout=timeout, check=True)[1].strip()


def clean_prefix(raw: bytes, clean_len: int) -> bytes:
    """The shortest prefix of `raw` whose cleaned text is `clean_len` characters long."""
    low, high = 0, len(raw)
    while low < high:
        mid = (low + high) // 2
        if len(clean(raw[:mid])) >= clean_len:
            high = mid
        else:
            low = mid + 1
    return raw[:low]
