"""Careless and hostile inputs across commands, run in-process through cli.main: each ends in
an AppsdkError exit code (never the internal-error net, never a traceback), names the file,
field or flag at fault on stderr, and under --json prints exactly one JSON error object.

Nothing here may do real work: devices are paths that do not exist or are plain files, and
the entry points of real work (tools tree, QEMU, serial ports, udev, HTTP serving) are
replaced by a guard that fails the test if a case gets that far."""

from __future__ import annotations

import http.server
import json
import os
import re
import socket
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appsdk import cli
from appsdk.core.errors import AppsdkError, InternalError, Interrupted
from appsdk.spec.scaffold import init


def _codes() -> set[int]:
    found, todo = set(), [AppsdkError]
    while todo:
        cls = todo.pop()
        found.add(cls.exit_code)
        todo += cls.__subclasses__()
    return found - {InternalError.exit_code, Interrupted.exit_code}


ERROR_CODES = _codes()


class ReachedRealWork(Exception):
    """A hostile input got past validation into work that a unit test must not do."""


def _guard(what: str) -> Callable[..., None]:
    def refuse(*_args: object, **_kwargs: object) -> None:
        raise ReachedRealWork(f"{what} was reached: the input was not refused first")
    return refuse


@pytest.fixture
def sandbox(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    for var, sub in (("APPSDK_CACHE_DIR", "cache"), ("APPSDK_KEYS_DIR", "keys"),
                     ("XDG_CONFIG_HOME", "config"), ("TMPDIR", "tmp")):
        (tmp_path / sub).mkdir()
        monkeypatch.setenv(var, str(tmp_path / sub))
    monkeypatch.chdir(tmp_path)
    import appsdk.deliver.console
    import appsdk.deliver.provision_usb
    import appsdk.pipeline.builder
    monkeypatch.setattr(appsdk.pipeline.builder, "ensure_tools", _guard("the tools tree"))
    monkeypatch.setattr(appsdk.deliver.console.SerialConsole, "__init__", _guard("a serial port"))
    monkeypatch.setattr(appsdk.deliver.provision_usb.UdevWatcher, "__init__", _guard("udev"))
    monkeypatch.setattr(os, "execvp", _guard("QEMU"))
    monkeypatch.setattr(http.server.ThreadingHTTPServer, "serve_forever",
                        _guard("the HTTP server loop"))
    yield tmp_path


# --- inputs ------------------------------------------------------------------------------

def app(tmp: Path, yaml: bytes | None = None) -> Path:
    """An appliance directory: the scaffold (valid), or appliance.yaml with these bytes."""
    directory = tmp / "app"
    init(directory, "hostile")
    if yaml is not None:
        (directory / "appliance.yaml").write_bytes(yaml)
    return directory


def build_dir(tmp: Path, record: bytes) -> Path:
    directory = tmp / "build"
    directory.mkdir()
    (directory / "build.json").write_bytes(record)
    return directory


def image(tmp: Path, data: bytes) -> Path:
    path = tmp / "disk.img"
    path.write_bytes(data)
    return path


def _header(lba: int, backup: int, entries_lba: int, sectors: int, count: int,
            entry_size: int, entries_crc: int) -> bytes:
    header = bytearray(92)
    header[:8] = b"EFI PART"
    struct.pack_into("<IIIIQQQQ", header, 8, 0x10000, 92, 0, 0, lba, backup, 34, sectors - 34)
    header[56:72] = bytes(range(16))  # disk GUID
    struct.pack_into("<QIII", header, 72, entries_lba, count, entry_size, entries_crc)
    struct.pack_into("<I", header, 16, zlib.crc32(bytes(header)))
    return bytes(header)


def gpt(count: int, entry_size: int = 128, size: int = 1 << 20) -> bytes:
    """A disk with a GPT that is valid (both headers, CRCs, one partition) for a sane
    entry array, and whose header CRC is right even when `count` or `entry_size` is not."""
    sectors = size // 512
    disk = bytearray(size)
    sane = count * entry_size <= 32 * 512 and entry_size >= 128
    table = bytearray(count * entry_size if sane else 0)
    if sane:
        table[:16] = bytes.fromhex("af3dc60f838472478e793d69d8477de4")  # linux-generic
        table[16:32] = bytes(range(16, 32))
        struct.pack_into("<QQ", table, 32, 64, sectors - 35)
        table[56:64] = "data".encode("utf-16-le")
    crc = zlib.crc32(bytes(table))
    disk[510:512] = b"\x55\xaa"
    disk[446 + 4] = 0xEE  # protective MBR
    disk[512:604] = _header(1, sectors - 1, 2, sectors, count, entry_size, crc)
    disk[1024:1024 + len(table)] = table
    disk[(sectors - 33) * 512:(sectors - 33) * 512 + len(table)] = table
    disk[(sectors - 1) * 512:(sectors - 1) * 512 + 92] = _header(
        sectors - 1, 1, sectors - 33, sectors, count, entry_size, crc)
    return bytes(disk)


def file_in_the_way(tmp: Path) -> Path:
    path = tmp / "afile"
    path.write_text("not a directory\n")
    return path


def unwritable(tmp: Path, name: str) -> Path:
    """A directory path that cannot be created: sysfs refuses even root."""
    if os.geteuid() == 0:
        return Path("/sys") / f"appsdk-hostile-{name}"
    locked = tmp / "locked"
    locked.mkdir(mode=0o500)
    return locked / name


def port_in_use() -> tuple[socket.socket, int]:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    return listener, listener.getsockname()[1]


NODEV = "no-such-device"
BAD_JSON = {
    "garbage": b"\x89PNG this is not json {{{",
    "empty object": b"{}",
    "list": b"[]",
    "truncated": b'{"id": "hello", "version": "1.0", "artifacts": {"image": {"fi',
    "non-UTF-8": b'{"id": "h\xff\xfe", "artifacts": {}}',
    "NUL bytes": b'{"id": "hello\x00", "artifacts": {"image": {"file": "a\x00b"}}}',
    "wrong types": b'{"id": 5, "board": [], "artifacts": {"image": {"file": 7}}}',
}


@dataclass(frozen=True)
class Case:
    name: str
    argv: Callable[[Path], list[str]]
    names: tuple[str, ...]  # stderr names at least one of these ("{tmp}" is the sandbox)


def _build_json_cases() -> list[Case]:
    commands: list[tuple[str, Callable[[Path], list[str]]]] = [
        ("flash", lambda b: ["flash", str(b), NODEV, "--yes", "--json"]),
        ("verify", lambda b: ["verify", str(b), NODEV, "--json"]),
        ("inspect", lambda b: ["inspect", str(b), "--json"]),
        ("run", lambda b: ["run", str(b), "--print"]),
        ("release", lambda b: ["release", "out", str(b), "--json"]),
    ]
    cases = []
    for i, (label, content) in enumerate(BAD_JSON.items()):
        # Every kind of bad build.json, spread over the commands that read one.
        for command, argv in (commands[i % len(commands)], commands[(i + 2) % len(commands)]):
            cases.append(Case(f"{command}: {label} build.json",
                              lambda t, c=content, a=argv: a(build_dir(t, c)), ("build.json",)))
    return cases


CASES = [
    # appliance.yaml
    Case("build: non-UTF-8 appliance.yaml",
         lambda t: ["build", str(app(t, b"id: caf\xe9\nschema: 1\n")), "--json"],
         ("appliance.yaml",)),
    Case("build: NUL bytes in appliance.yaml",
         lambda t: ["build", str(app(t, b"schema: 1\nid: a\x00b\n"))], ("appliance.yaml",)),
    Case("build: empty appliance.yaml",
         lambda t: ["build", str(app(t, b"")), "--json"], ("appliance.yaml",)),
    Case("build: appliance.yaml is a list",
         lambda t: ["build", str(app(t, b"- 1\n- 2\n"))], ("appliance.yaml",)),
    Case("build: 2 MB appliance.yaml",
         lambda t: ["build", str(app(t, b"schema: 1\n" + b"# padding\n" * 200_000 + b"id: [\n")),
                    "--json"], ("appliance.yaml",)),
    Case("keys generate: appliance.yaml is a directory",
         lambda t: ["keys", "generate", str(_yaml_is_dir(t)), "--keys", str(t / "k"), "--json"],
         ("appliance.yaml",)),
    Case("build: appliance directory missing",
         lambda t: ["build", str(t / "nothing-here"), "--json"], ("nothing-here",)),
    # outputs
    Case("build --output is a file",
         lambda t: ["build", str(app(t)), "--output", str(file_in_the_way(t)), "--json"],
         ("afile", "--output")),
    Case("build --output inside a file",
         lambda t: ["build", str(app(t)), "--output", str(file_in_the_way(t) / "out")],
         ("afile",)),
    Case("build: output directory cannot be created",
         lambda t: ["build", str(app(t)), "--output", str(unwritable(t, "out")), "--json"],
         ("appsdk-hostile-out", "locked")),
    Case("keys generate into a directory that cannot be created",
         lambda t: ["keys", "generate", str(app(t)), "--keys", str(unwritable(t, "keys")),
                    "--json"], ("appsdk-hostile-keys", "locked")),
    Case("keys generate --keys inside a file",
         lambda t: ["keys", "generate", str(app(t)), "--keys", str(file_in_the_way(t) / "k")],
         ("afile",)),
    Case("release into a path that is a file",
         lambda t: ["release", str(file_in_the_way(t)), str(build_dir(t, b"{}")), "--json"],
         ("afile",)),
    Case("init inside a file",
         lambda t: ["init", str(file_in_the_way(t) / "new")], ("afile",)),
    # crafted images
    Case("inspect: random bytes",
         lambda t: ["inspect", str(image(t, os.urandom(64 * 1024))), "--json"], ("disk.img",)),
    Case("inspect: empty image", lambda t: ["inspect", str(image(t, b""))], ("disk.img",)),
    Case("inspect: GPT with 2**32-1 entries",
         lambda t: ["inspect", str(image(t, gpt(2**32 - 1))), "--json"], ("disk.img",)),
    Case("inspect: GPT with 16-byte entries",
         lambda t: ["inspect", str(image(t, gpt(4, entry_size=16)))], ("disk.img",)),
    Case("verify: GPT with 2**32-1 entries",
         lambda t: ["verify", str(image(t, gpt(2**32 - 1))), NODEV, "--json"],
         ("disk.img", NODEV)),
    Case("verify: random bytes",
         lambda t: ["verify", str(image(t, os.urandom(8192))), NODEV], ("disk.img", NODEV)),
    Case("flash: a plain file as the device",
         lambda t: ["flash", str(image(t, gpt(128))), str(file_in_the_way(t)), "--yes", "--json"],
         ("afile",)),
    Case("flash: a garbage .bmap beside the image",
         lambda t: ["flash", str(_with_bmap(t, b"<bmap \xff\x00")), NODEV, "--yes", "--json"],
         ("disk.img.bmap",)),
    # command-line values
    Case("run --forward abc",
         lambda t: ["run", str(image(t, gpt(128))), "--forward", "abc"], ("--forward",)),
    Case("run --forward 0:22",
         lambda t: ["run", str(image(t, gpt(128))), "--forward", "0:22"], ("--forward",)),
    Case("run --forward to a port in use",
         lambda t: ["run", str(image(t, gpt(128))), "--forward", f"{_busy_port(t)}:22"],
         ("--forward",)),
    Case("run --serial-port 99999",
         lambda t: ["run", str(image(t, gpt(128))), "--serial-port", "99999"],
         ("--serial-port",)),
    Case("run --disk-size 12Q",
         lambda t: ["run", str(image(t, gpt(128))), "--disk-size", "12Q"], ("--disk-size",)),
    Case("run --disk is a directory",
         lambda t: ["run", str(image(t, gpt(128))), "--disk", str(t)], ("--disk",)),
    Case("provision serial --baud -5",
         lambda t: ["provision", "serial", "socket://127.0.0.1:9", "--baud", "-5", "--json"],
         ("--baud",)),
    Case("provision serial --baud abc",
         lambda t: ["provision", "serial", "socket://127.0.0.1:9", "--baud", "abc"],
         ("--baud",)),
    Case("provision usb --count -1",
         lambda t: ["provision", "usb", str(image(t, gpt(128))), "--wait", "--count", "-1",
                    "--json"], ("--count",)),
    Case("provision usb --timeout nan",
         lambda t: ["provision", "usb", str(image(t, gpt(128))), "--wait", "--timeout", "nan"],
         ("--timeout",)),
    Case("provision serial --file with a bad mode",
         lambda t: ["provision", "serial", "socket://127.0.0.1:9", "--file",
                    f"{file_in_the_way(t)}:/etc/x:zz", "--json"], ("--file",)),
    Case("serve on a port in use",
         lambda t: ["serve", str(t), "--port", str(_busy_port(t))], ("port", "127.0.0.1")),
    Case("serve --port 70000", lambda t: ["serve", str(t), "--port", "70000"], ("--port",)),
    # nonexistent paths
    *(Case(f"{argv[0]}: nonexistent path", lambda t, a=argv: a, ("nowhere",)) for argv in (
        ["flash", "nowhere.img", NODEV, "--yes", "--json"],
        ["verify", "nowhere", NODEV],
        ["inspect", "nowhere/build", "--json"],
        ["run", "nowhere.img"],
        ["release", "out", "nowhere", "--json"],
        ["serve", "nowhere"],
        ["keys", "generate", "nowhere", "--json"],
        ["provision", "usb", "nowhere", "--wait"],
        ["provision", "serial", "socket://127.0.0.1:9", "nowhere.yaml", "--json"],
        ["firmware", "fetch", "--offline", "nowhere", "--json"],
    )),
    *_build_json_cases(),
]


def _yaml_is_dir(tmp: Path) -> Path:
    directory = app(tmp)
    (directory / "appliance.yaml").unlink()
    (directory / "appliance.yaml").mkdir()
    return directory


def _with_bmap(tmp: Path, bmap: bytes) -> Path:
    disk = image(tmp, gpt(128))
    disk.with_name(disk.name + ".bmap").write_bytes(bmap)
    return disk


_LISTENERS: list[socket.socket] = []  # kept open until the module's tests end


def _busy_port(_tmp: Path) -> int:
    listener, port = port_in_use()
    _LISTENERS.append(listener)
    return port


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def check(code: int, out: str, err: str, argv: list[str], names: tuple[str, ...]) -> None:
    saved = re.search(r"the traceback is in (\S+):", err)
    detail = Path(saved.group(1)).read_text() if saved else ""
    assert code in ERROR_CODES, f"exit {code}\n{err}\n{detail}"
    assert "Traceback" not in err, err
    assert any(n in err for n in names), f"stderr names none of {names}:\n{err}"
    if "--json" in argv:
        record = json.loads(out)  # exactly one object: two would not parse
        assert isinstance(record, dict), out
        assert record["event"] == "error" and record["code"] == code, record
        assert record["message"] and "hint" in record, record


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile_input(case: Case, sandbox: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = case.argv(sandbox)
    code, out, err = run_cli(argv, capsys)
    check(code, out, err, argv, tuple(n.replace("{tmp}", str(sandbox)) for n in case.names))


def test_enough_cases() -> None:
    assert len(CASES) >= 30


# --- random command lines -----------------------------------------------------------------

TOKENS = ["--json", "--yes", "--print", "--forward", "--serial-port", "--disk-size", "--baud",
          "--count", "--timeout", "--board", "--accel", "--wait", "--port", "-v", "--",
          "abc", "-5", "0", "1:2", "0:0", "99999", "65535:1", "6G", "12Q", "-1", "nan", "inf",
          "1e9", "x86-uefi", "rpi4", "kvm", "", " ", "é", "nowhere", "nowhere.img", "--help"]
COMMANDS = [["run"], ["inspect"], ["verify"], ["flash"], ["provision", "usb"],
            ["release"], ["bogus"], []]


@settings(max_examples=100, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(command=st.sampled_from(COMMANDS), tokens=st.lists(st.sampled_from(TOKENS), max_size=8))
def test_random_command_lines(command: list[str], tokens: list[str], sandbox: Path,
                              capsys: pytest.CaptureFixture[str]) -> None:
    # No token names an existing path (the sandbox is empty), so no command gets to work.
    argv = [*command, *tokens]
    try:
        code = cli.main(argv)
    except SystemExit as exc:  # --help, --version
        assert exc.code in (0, 2), argv
        capsys.readouterr()
        return
    out, err = capsys.readouterr()
    assert code in ERROR_CODES, f"{argv}: exit {code}\n{err}"
    if "--json" in argv and not any(t in ("--", "--help") for t in argv):
        assert json.loads(out)["code"] == code, (argv, out)
