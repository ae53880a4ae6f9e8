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

from appsdk.core.errors import AppsdkError, CommandTimeout, Option

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

        self.url = url
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
        import serial

        try:
            self._port.write(data)
            self._port.flush()
        except (serial.SerialException, OSError) as exc:
            raise ConsoleClosed(f"console {self.url} went away: {exc}") from None

    def read(self, timeout: float) -> bytes:
        import serial

        # The other end going away (an adapter unplugged, QEMU exiting) is the device's
        # story, not a pyserial traceback: callers get ConsoleClosed and say what they waited for.
        try:
            self._port.timeout = timeout
            first = self._port.read(1)
            if not first:
                return b""
            waiting = self._port.in_waiting
            return bytes(first + (self._port.read(waiting) if waiting else b""))
        except (serial.SerialException, OSError) as exc:
            raise ConsoleClosed(f"console {self.url} went away: {exc}") from None

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

    def __init__(self, console: Console, log: Path | None = None,
                 patience: float = 1.0) -> None:
        self.console = console
        # Scales the waits of recovery (resync) and of file-push chunks; tests against a
        # simulated device use a small value, a slow board over a bad cable a larger one.
        self.patience = patience
        self.transcript = Transcript(log)
        self._pos = 0  # how far expect() has consumed the transcript

    def _pump(self, timeout: float) -> bool:
        chunk = self.console.read(timeout)
        if chunk:
            self.transcript.add(chunk)
        return bool(chunk)

    def expect(self, pattern: str | re.Pattern[str], timeout: float,
               consume: bool = True) -> re.Match[str]:
        """Wait for `pattern` in new output (ANSI stripped); consumes up to the match unless
        `consume` is false (a look ahead: the next expect sees the same output)."""
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        while True:
            text = clean(bytes(self.transcript.data[self._pos:]))
            match = regex.search(text)
            if match:
                # Advance by the raw length of the matched prefix (clean() only drops bytes).
                if consume:
                    self._pos += len(clean_prefix(bytes(self.transcript.data[self._pos:]),
                                                  match.end()))
                return match
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise CommandTimeout(f"no {regex.pattern!r} on the console within {timeout:.0f}s;"
                                     f" last output:\n{text[-2000:]}")
            try:
                self._pump(min(remaining, 0.5))
            except ConsoleClosed as exc:
                raise ConsoleClosed(f"{exc} while waiting for {regex.pattern!r};"
                                    f" last output:\n{text[-2000:]}") from None

    def send(self, line: str) -> None:
        self.console.write(line.encode() + b"\n")

    def skip(self) -> None:
        """Forget output read so far (stale markers of an abandoned command)."""
        while self._pump(0.05):
            pass
        self._pos = len(self.transcript.data)

    def _tail(self, seconds: float) -> str:
        """Output that arrives within `seconds`, cleaned, from the current position."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self._pump(min(0.2, max(0.0, deadline - time.monotonic())))
        return clean(bytes(self.transcript.data[self._pos:]))

    def attach(self, user: str = "root", password: str | None = None,
               timeout: float = 300) -> None:
        """Reach a usable shell from whatever the console shows: a boot in progress, a
        login or password prompt, a shell prompt, or a shell we configured earlier (no
        prompt at all). Then make it machine-friendly, as login() does."""
        deadline = time.monotonic() + timeout
        sent_user = False
        poke = True
        while time.monotonic() < deadline:
            # A bare CR makes a getty or shell show its prompt again; never send one right
            # after a user name, or it would be taken as an empty password.
            if poke:
                self.console.write(b"\r")
            poke = True
            tail = self._tail(2.0 * self.patience).rstrip(" \t").splitlines()
            last = tail[-1] if tail else ""
            self._pos = len(self.transcript.data)
            if sent_user and any("Login incorrect" in line for line in tail):
                raise AppsdkError(f"login as {user!r} failed on the console (wrong password?)")
            if re.search(r"login: ?$", last):
                self.send(user)
                sent_user, poke = True, False
                continue
            if re.search(r"[Pp]assword: ?$", last):
                if password is None:
                    raise AppsdkError("the console asks for a password",
                                      hint="give the password", remedy=Option("password"))
                self.send(password)
                poke = False
                continue
            try:
                self._configure()
                return
            except CommandTimeout:
                self.console.write(b"\x03")  # cancel whatever half-typed line is there
        raise CommandTimeout(f"no shell on the console within {timeout:.0f}s")

    def _configure(self) -> None:
        self.send("stty sane -echo; export TERM=dumb PS1='' PS2='' PAGER=cat SYSTEMD_PAGER=cat "
                  "SYSTEMD_COLORS=0; dmesg -n 1")
        self.run("true", timeout=5)

    def resync(self, attempts: int = 6) -> None:
        """After a command was lost or garbled on a noisy line: cancel it, bring the
        terminal back to sane, and check that a fresh command round-trips."""
        for attempt in range(attempts):
            # ^C ends a half-typed line or a running command; the newline ends a line
            # that a raw-mode reader left behind.
            self.console.write(b"\x03")
            time.sleep(0.3 * self.patience)
            self.console.write(b"\n")
            self.skip()
            try:
                self.run("stty sane -echo; true", timeout=(3 + 2 * attempt) * self.patience)
                return
            except CommandTimeout:
                continue
        raise ConsoleClosed(f"the console did not answer after {attempts} attempts to resync")

    def login(self, prompt: str = r"root@[^\s:]+:[^\n]*# ?", timeout: float = 240) -> None:
        """Wait for a root prompt (autologin), then make the shell machine-friendly."""
        self.expect(prompt, timeout)
        # No echo, no colours, no kernel chatter on the console while we talk to it.
        self.send("stty -echo; export TERM=dumb PS1='' PS2='' PAGER=cat SYSTEMD_PAGER=cat "
                  "SYSTEMD_COLORS=0; dmesg -n 1")
        self.run("true", timeout=30)

    def run_feeding(self, reader: str, data: bytes, after: str, timeout: float) -> int:
        """Run `reader` with the terminal in raw mode and feed it `data` once it is
        reading, then `after` in the restored terminal; returns `after`'s exit status.
        Raw mode passes every byte value through unchanged (no echo, no ^C, no XON/XOFF,
        no CR/LF mapping), which is what makes a binary push run at line rate."""
        token = secrets.token_hex(4)
        self.send(f"printf '%s%s\\n' '{token}' '-B'; s=$(stty -g); stty raw -echo; "
                  f"printf '%s%s\\n' '{token}' '-R'; {reader}; stty \"$s\"; {after}; "
                  f"printf '%s%s:%d:\\n' '{token}' '-E' $?")
        self.expect(re.escape(f"{token}-B") + r"\n", timeout)
        # Bytes sent before raw mode is on would be edited and echoed by the line discipline.
        self.expect(re.escape(f"{token}-R") + r"\n", timeout)
        self.console.write(data)
        return int(self.expect(re.escape(f"{token}-E") + r":(\d+):", timeout).group(1))

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
