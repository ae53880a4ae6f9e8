"""The shell driver against recorded console transcripts: echo, ANSI escapes, kernel lines."""

from __future__ import annotations

import re

import pytest

from appsdk.core.errors import CommandTimeout
from appsdk.deliver.console import Shell, clean


class ScriptedConsole:
    """Answers each written command line using a responder; records what was written."""

    def __init__(self, respond) -> None:  # type: ignore[no-untyped-def]
        self.respond = respond
        self.written: list[bytes] = []
        self.pending = bytearray()

    def write(self, data: bytes) -> None:
        self.written.append(data)
        self.pending += self.respond(data.decode())

    def read(self, timeout: float) -> bytes:
        out, self.pending = bytes(self.pending), bytearray()
        return out

    def close(self) -> None:
        pass


def shell_like(line: str, output: bytes, status: int, noise: bytes = b"") -> bytes:
    """What a real console shows: the echoed line, escapes, kernel chatter, the output."""
    begin = re.search(r"printf '%s%s\\n' '(\w+)' '-B'", line)
    assert begin
    token = begin.group(1).encode()
    return (b"\x1b[?2004h" + line.encode().replace(b"\n", b"\r\n") + b"\r\n" + token +
            b"-B\r\n" + noise + output + b"\r\n[  12.3] random: crng init done\r\n"[:0] +
            token + b"-E:" + str(status).encode() + b":\r\n\x1b[?2004l")


def test_marker_parse_with_echo_escapes_and_kernel_noise() -> None:
    noise = b"[   31.44] audit: type=1101 msg='op=PAM'\r\n"
    console = ScriptedConsole(lambda line: shell_like(line, b"\x1b[0;32mhello\x1b[0m", 3, noise))
    status, output = Shell(console).run("echo hello")
    assert status == 3
    assert output.endswith("hello")


def test_echoed_command_does_not_end_early() -> None:
    # The typed line contains "'tok' '-E'" but never the joined marker "tok-E".
    console = ScriptedConsole(lambda line: shell_like(line, b"ok", 0))
    shell = Shell(console)
    assert shell.output("true") == "ok"
    assert b"-B'; true; printf" in console.written[0]


def test_timeout_reports_last_output() -> None:
    console = ScriptedConsole(lambda line: b"nothing useful\r\n")
    with pytest.raises(CommandTimeout, match="nothing useful"):
        Shell(console).run("sleep 100", timeout=0.3)


def test_clean_strips_ansi_and_cr() -> None:
    assert clean(b"\x1b[0;1;39mOK\x1b[0m\r\n\x1b[?2004h$ ") == "OK\n$ "


class LoginConsole:
    """A getty then a shell: login prompt, password prompt, then marker-wrapped commands
    answered with their echo and a kernel line in between (as a real serial console)."""

    def __init__(self, password: str = "pw") -> None:
        self.password = password
        self.state = "booting"
        self.pending = bytearray(b"[    3.1] systemd[1]: Started getty\r\n")
        self.sent: list[str] = []

    def write(self, data: bytes) -> None:
        text = data.decode()
        self.sent.append(text)
        if self.state == "booting" and text == "\r":
            self.state = "login"
            self.pending += b"\r\nhello login: "
        elif self.state == "login" and text == "admin\n":
            self.state = "password"
            self.pending += b"admin\r\nPassword: "
        elif self.state == "password":
            if text == self.password + "\n":
                self.state = "shell"
                self.pending += b"\r\n\x1b[?2004hadmin@hello:~$ "
            else:
                self.state = "login"
                self.pending += b"\r\nLogin incorrect\r\nhello login: "
        elif self.state == "shell" and "printf" in text:
            self.pending += shell_like(text.rstrip("\n"), b"", 0,
                                       b"[   12.3] random: crng init done\r\n")

    def read(self, timeout: float) -> bytes:
        out, self.pending = bytes(self.pending), bytearray()
        return out

    def close(self) -> None:
        pass


def test_attach_logs_in_through_getty_and_password() -> None:
    console = LoginConsole()
    shell = Shell(console, patience=0.1)
    shell.attach(user="admin", password="pw", timeout=30)
    assert console.state == "shell"
    assert "admin\n" in console.sent and "pw\n" in console.sent
    assert any("stty sane -echo" in s for s in console.sent)
    assert shell.run("true")[0] == 0


def test_attach_reports_a_wrong_password() -> None:
    from appsdk.core.errors import AppsdkError

    with pytest.raises(AppsdkError, match="login as 'admin' failed"):
        Shell(LoginConsole(), patience=0.1).attach(user="admin", password="nope", timeout=30)


def test_attach_without_password_when_asked_says_so() -> None:
    from appsdk.cli import shown
    from appsdk.core.errors import AppsdkError

    with pytest.raises(AppsdkError, match="asks for a password") as info:
        Shell(LoginConsole(), patience=0.1).attach(user="admin", timeout=30)
    assert shown(info.value)[1] == "give the password (--password)"


def test_expect_without_consuming_leaves_the_output_for_the_next_expect() -> None:
    console = ScriptedConsole(lambda line: b"")
    console.pending += b"Linux version 6.12\r\nKernel command line: usr_2.0 \r\nRun /init\r\n"
    shell = Shell(console)
    assert shell.expect(r"Run /init", 1, consume=False)
    assert shell.expect(r"usr_(\S+)\s", 1).group(1) == "2.0"
    assert shell.expect(r"Run /init", 1)
    with pytest.raises(CommandTimeout):
        shell.expect(r"usr_", 0.2)


def test_console_that_goes_away_says_what_was_awaited_and_last_output() -> None:
    # QEMU exiting (or a USB adapter unplugged) mid-boot: pyserial raises a bare
    # SerialException; the caller gets ConsoleClosed with the pattern and the tail.
    import socket
    import threading

    from appsdk.deliver.console import ConsoleClosed, SerialConsole

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)

    opened = threading.Event()  # pyserial drops what arrives while it opens

    def device() -> None:
        conn, _ = server.accept()
        opened.wait(10)
        conn.sendall(b"U-Boot 2025.01\r\n[    3.1] Kernel panic - not syncing: boom\r\n")
        conn.close()

    threading.Thread(target=device, daemon=True).start()
    console = SerialConsole(f"socket://127.0.0.1:{server.getsockname()[1]}", connect_timeout=5)
    opened.set()
    try:
        with pytest.raises(ConsoleClosed) as caught:
            Shell(console).expect("login:", 10)
    finally:
        console.close()
        server.close()
    message = str(caught.value)
    assert "went away" in message and "'login:'" in message, message
    assert "Kernel panic - not syncing: boom" in message, message
    with pytest.raises(ConsoleClosed):
        console.write(b"x")
