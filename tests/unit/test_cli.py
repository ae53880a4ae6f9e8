"""The CLI layer: value types, usage errors, error rendering (text and --json), the OSError
and last-resort nets, and exit codes kept on the error classes."""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import re
import socket
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appsdk import cli
from appsdk.core.errors import (
    AppsdkError,
    ConfigError,
    DeviceRefused,
    InternalError,
    OutputClosed,
    PathError,
    UsageError,
)
from appsdk.emulate.qemu import check_ports, prepare_disk

# Every module of the cli package (cli.__file__ is only its __init__.py).
CLI_SOURCE = "\n".join(p.read_text() for p in sorted(Path(cli.__file__).parent.glob("*.py")))


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APPSDK_CACHE_DIR", str(tmp_path / "cache"))


# --- value types --------------------------------------------------------------------------

@pytest.mark.parametrize(("kind", "text", "value"), [
    (cli._port, "22", 22), (cli._port, "65535", 65535),
    (cli._forward, "8080:80", (8080, 80)), (cli._baud, "115200", 115200),
    (cli._baud, "1500000", 1500000), (cli._count, "0", 0), (cli._seconds, "2.5", 2.5),
    (cli._size, "6G", 6 << 30), (cli._size, "4096", 4096),
])
def test_values_accepted(kind: object, text: str, value: object) -> None:
    assert kind(text) == value  # type: ignore[operator]


@pytest.mark.parametrize(("kind", "text", "says"), [
    (cli._port, "0", "from 1 to 65535 .a TCP port"), (cli._port, "65536", "from 1 to 65535"),
    (cli._port, "abc", "not a whole number"), (cli._port, "-1", "from 1 to 65535"),
    (cli._forward, "abc", "HOST:GUEST"), (cli._forward, "80:", "not a whole number"),
    (cli._forward, "1:2:3", "not a whole number"), (cli._baud, "-5", "at least 1"),
    (cli._baud, "115201", "standard baud rate"), (cli._count, "-1", "at least 0"),
    (cli._seconds, "-1", "0 or more"), (cli._seconds, "inf", "0 or more"),
    (cli._seconds, "nan", "0 or more"), (cli._seconds, "soon", "number of seconds"),
    (cli._size, "12Q", "size like"), (cli._size, "0", "more than 0"),
])
def test_values_refused(kind: object, text: str, says: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match=says):
        kind(text)  # type: ignore[operator]


def test_paths(tmp_path: Path) -> None:
    file = tmp_path / "f"
    file.write_text("x")
    assert cli._existing(str(file)) == file
    assert cli._new_dir(str(tmp_path / "new" / "deeper")) == tmp_path / "new" / "deeper"
    with pytest.raises(argparse.ArgumentTypeError, match="no such file"):
        cli._existing(str(tmp_path / "missing"))
    with pytest.raises(argparse.ArgumentTypeError, match=f"^{file} exists and is not a dir"):
        cli._new_dir(str(file))
    for inside in (file / "sub", file / "sub" / "more"):
        with pytest.raises(argparse.ArgumentTypeError, match=f"^{inside}: {file} is not a dir"):
            cli._new_dir(str(inside))


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=12))
def test_value_types_never_raise_anything_else(text: str) -> None:
    for kind in (cli._port, cli._forward, cli._baud, cli._count,
                 cli._seconds, cli._size):
        with contextlib.suppress(argparse.ArgumentTypeError):
            kind(text)


# --- rendering ----------------------------------------------------------------------------

def test_usage_error_text(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "x.img").write_bytes(b"")
    assert cli.main(["run", str(tmp_path / "x.img"), "--forward", "abc"]) == UsageError.exit_code
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("usage: appsdk run")
    assert "appsdk: error: argument --forward: 'abc': use HOST:GUEST" in err
    assert "appsdk: hint: see `appsdk run --help`" in err


def test_usage_error_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["provision", "serial", "socket://h:1", "--baud", "-5", "--json"]) == 2
    out, err = capsys.readouterr()
    record = json.loads(out)
    assert record == {"event": "error", "code": 2, "error": "UsageError", "field": "--baud",
                      "message": "argument --baud: '-5': must be at least 1 (a baud rate)",
                      "hint": "see `appsdk provision serial --help`"}
    assert "appsdk: error: argument --baud" in err  # the human text still goes to stderr


def test_library_error_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "disk.img").write_bytes(bytes(510) + b"\x55\xaa" + bytes(3584))  # an MBR
    code = cli.main(["verify", str(tmp_path / "disk.img"), str(tmp_path / "nodev"), "--json"])
    out, err = capsys.readouterr()
    record = json.loads(out)
    assert code == DeviceRefused.exit_code == record["code"]
    assert record["error"] == "DeviceRefused" and "nodev" in record["message"]
    assert "appsdk: error:" in err and "nodev" in err


def test_error_dict_fields() -> None:
    err = ConfigError("must be a string", file="a.yaml", line=3, field="id", hint="quote it")
    assert err.as_dict() == {"event": "error", "code": 2, "error": "ConfigError",
                             "message": "a.yaml:3: id: must be a string", "hint": "quote it",
                             "file": "a.yaml", "line": 3, "field": "id"}
    assert DeviceRefused("no", device="/dev/sdz").as_dict()["device"] == "/dev/sdz"
    assert AppsdkError("plain").as_dict() == {"event": "error", "code": 1,
                                              "error": "AppsdkError", "message": "plain",
                                              "hint": None}


def _boom(exc: BaseException) -> None:
    def command(_args: argparse.Namespace) -> int:
        raise exc
    cli.COMMANDS["boards"] = command


@pytest.fixture
def broken_boards(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(cli.COMMANDS, "boards", cli.COMMANDS["boards"])


def test_internal_error_net(broken_boards: None, tmp_path: Path,
                            capsys: pytest.CaptureFixture[str]) -> None:
    _boom(KeyError("artifacts"))
    assert cli.main(["boards", "--json"]) == InternalError.exit_code == 70
    out, err = capsys.readouterr()
    assert "appsdk: internal error: KeyError: 'artifacts'" in err
    saved = re.search(r"the traceback is in (\S+):", err)
    assert saved and Path(saved.group(1)).is_relative_to(tmp_path / "cache")
    assert "KeyError" in Path(saved.group(1)).read_text()
    record = json.loads(out)
    assert record["code"] == 70 and record["traceback"] == saved.group(1)


def test_oserror_with_a_path(broken_boards: None, capsys: pytest.CaptureFixture[str]) -> None:
    _boom(PermissionError(errno.EACCES, "Permission denied", "/srv/keys"))
    assert cli.main(["boards"]) == PathError.exit_code
    _, err = capsys.readouterr()
    assert "appsdk: error: /srv/keys: Permission denied" in err
    assert "permissions" in err


def test_oserror_without_a_path_is_a_bug(broken_boards: None,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    _boom(OSError(errno.EADDRINUSE, "Address already in use"))
    assert cli.main(["boards"]) == InternalError.exit_code
    assert "internal error: OSError" in capsys.readouterr().err


def test_interrupt(broken_boards: None, capsys: pytest.CaptureFixture[str]) -> None:
    _boom(KeyboardInterrupt())
    assert cli.main(["boards", "--json"]) == 130
    assert json.loads(capsys.readouterr().out)["error"] == "Interrupted"


def test_reader_gone(broken_boards: None, capsys: pytest.CaptureFixture[str]) -> None:
    _boom(BrokenPipeError(errno.EPIPE, "Broken pipe"))
    assert cli.main(["boards", "--json"]) == OutputClosed.exit_code
    out, err = capsys.readouterr()
    assert out == "" and err == ""


@pytest.mark.parametrize("code", sorted(set(errno.errorcode)))
def test_path_error_from_any_errno(code: int) -> None:
    err = PathError.from_oserror(OSError(code, "x", "/p"))
    assert err.file == "/p" and err.hint and err.message.startswith("/p: ")


def test_no_literal_exit_codes_in_cli() -> None:
    assert not re.findall(r"return [1-9]\d*\b|exit\([1-9]", CLI_SOURCE)


def test_exit_codes_are_documented() -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs/cli.md").read_text()
    classes, todo = [], [AppsdkError]
    while todo:
        cls = todo.pop()
        classes.append(cls)
        todo += cls.__subclasses__()
    for cls in classes:
        if "exit_code" in vars(cls):  # subclasses that keep their base's code need no row
            assert re.search(rf"\| {cls.exit_code} \|.*`{cls.__name__}`", doc), cls.__name__


# --- run: ports and the working copy ------------------------------------------------------

def test_ports_in_use_or_twice() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(ConfigError, match=f"forward: 127.0.0.1:{port} cannot be used") as e:
            check_ports(None, [(port, 22)])
        assert cli.shown(e.value)[0].startswith(f"--forward: 127.0.0.1:{port} cannot be used")
        with pytest.raises(ConfigError, match="serial_port") as e:
            check_ports(port, [])
        assert cli.shown(e.value)[0].startswith("--serial-port: ")
    with pytest.raises(ConfigError, match="used twice"):
        check_ports(port, [(port, 80)])
    check_ports(None, [])


def test_prepare_disk(tmp_path: Path) -> None:
    image = tmp_path / "a.img"
    image.write_bytes(b"x" * 4096)
    disk = prepare_disk(image, tmp_path / "work" / "disk.img", 1 << 20)
    assert disk.stat().st_size == 1 << 20 and disk.read_bytes()[:4096] == b"x" * 4096
    with pytest.raises(ConfigError, match="not a regular file"):
        prepare_disk(image, tmp_path, None)
    with pytest.raises(PathError, match="working copy"):
        prepare_disk(image, image / "disk.img", None)


# --- build output and stage events --------------------------------------------------------

def test_output_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from appsdk.pipeline import builder as pipeline
    from appsdk.spec.scaffold import init

    file = tmp_path / "f"
    file.write_text("x")
    assert pipeline.make_output_dir(tmp_path / "a" / "b").is_dir()
    for bad in (file, file / "sub"):
        with pytest.raises(ConfigError, match="must be a directory"):
            pipeline.make_output_dir(bad)
    # The Python API refuses too, before any stage runs.
    monkeypatch.setattr(pipeline, "ensure_tools", lambda *a: pytest.fail("work was started"))
    init(tmp_path / "app", "demo")
    with pytest.raises(ConfigError, match="must be a directory"):
        pipeline.build(tmp_path / "app", output=file)


def test_failed_stage_is_reported() -> None:
    from appsdk.core.progress import RecordingReporter, stage

    reporter = RecordingReporter()
    with pytest.raises(ConfigError), stage(reporter, "usr", "erofs"):
        raise ConfigError("too big")
    kinds = [(e.kind, e.data.get("error")) for e in reporter.events]
    assert kinds == [("stage-start", None), ("stage-failed", "ConfigError")]


def test_library_errors_name_arguments_and_the_cli_shows_their_flags(
        capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 13: library messages never speak of flags; the command line turns the argument
    an error names (core.errors.Option) into the flag the user typed, in text and JSON."""
    from appsdk.deliver.serialplan import DevicePlan, apply_overrides

    with pytest.raises(ConfigError) as info:
        apply_overrides(DevicePlan(serial="A1"), update_url="ftp://x/")
    assert str(info.value).startswith("update_url: 'ftp://x/'")
    code = cli.main(["provision", "serial", "socket://127.0.0.1:9", "--update-url",
                     "ftp://x/", "--json"])
    out, err = capsys.readouterr()
    assert code == 2 and "appsdk: error: --update-url: 'ftp://x/'" in err
    reported = json.loads(out.splitlines()[-1])
    assert reported["field"] == "--update-url"
    assert reported["message"].startswith("--update-url: 'ftp://x/'")
    # A YAML field of the same name is not an argument: it keeps its name.
    plain = ConfigError("unknown board", file="appliance.yaml", line=3, field="board")
    assert cli.shown(plain)[0] == "appliance.yaml:3: board: unknown board"
