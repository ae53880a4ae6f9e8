"""The bubblewrap command line is a contract: tree read-only, chosen paths bound in place.
And a FakeRunner sees through it: it answers the sandboxed program, on any host."""

from __future__ import annotations

from pathlib import Path

import pytest

from appsdk.core.errors import CommandFailed, ToolMissing
from appsdk.core.runner import Call, FakeRunner, Result, Runner, creates, fails, prints, unwrap
from appsdk.core.sandbox import Sandbox


def test_sandbox_argv(tmp_path: Path) -> None:
    (tmp_path / "tree/usr").mkdir(parents=True)
    runner = FakeRunner()
    Sandbox(tmp_path / "tree", binds=(Path("/out"),), ro_binds=(Path("/in"),)).run(
        runner, ["mkfs.erofs", "x"])
    argv = runner.history[0].argv
    assert argv[0].endswith("bwrap")
    joined = " ".join(argv)
    assert f"--ro-bind {tmp_path}/tree/usr /usr" in joined
    assert f"--ro-bind {tmp_path}/tree/etc /etc" in joined
    assert "--ro-bind /in /in" in joined and "--bind /out /out" in joined
    assert argv[-3:] == ("--", "mkfs.erofs", "x")


def test_fake_runner_failure_carries_command_and_stderr() -> None:
    runner = FakeRunner(answers={"false": Result(("false",), 1, "", "it broke", 0.0)})
    with pytest.raises(CommandFailed, match=r"exit 1\): false\nit broke"):
        runner.run(["false"])


def test_without_bwrap_a_real_runner_says_what_to_install(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(ToolMissing, match="bwrap not found on PATH") as info:
        Sandbox(tmp_path).run(Runner(), ["true"])
    assert info.value.hint == "apt-get install bubblewrap"
    with pytest.raises(ToolMissing, match="bwrap not found on PATH"):
        Sandbox(tmp_path).wrap(["true"])
    # A FakeRunner needs no bwrap: the sandbox asks it for the path.
    runner = FakeRunner()
    Sandbox(tmp_path).run(runner, ["true"])
    assert runner.calls[0].argv == ("true",) and runner.history[0].argv[0] == "/fake/bin/bwrap"


def test_unwrap_reads_every_option_the_sandbox_writes(tmp_path: Path) -> None:
    (tmp_path / "tree/usr/lib64").mkdir(parents=True)  # adds the /lib64 link
    sandbox = Sandbox(tmp_path / "tree", binds=(Path("/out"), Path("/--")),
                      ro_binds=(Path("/in"),))
    argv = ["mkfs.erofs", "--", "-x", "/out/img"]
    wrapper, program = unwrap(sandbox.wrap(argv, "/usr/bin/bwrap"))
    assert program == tuple(argv) and wrapper[0] == "/usr/bin/bwrap"
    call = Call(program, wrapper)
    assert call.tree == tmp_path / "tree" and call.program == "mkfs.erofs"
    assert call.bound("--bind") == (Path("/out"), Path("/--"))
    assert call.bound("--ro-bind") == (Path("/in"),)
    assert call.writable(Path("/out/img")) and not call.writable(Path("/in/x"))
    assert call.readable(Path("/in/x")) and not call.readable(tmp_path / "tree/usr/bin/sh")
    assert unwrap(["cp", "-a", "x", "y"]) == ((), ("cp", "-a", "x", "y"))
    with pytest.raises(ValueError, match="--cap-add"):
        unwrap(["bwrap", "--cap-add", "ALL", "--", "sh"])
    with pytest.raises(ValueError, match="without a program"):
        unwrap(["bwrap", "--bind", "/a", "/a", "--"])


def test_a_fake_runner_answers_the_sandboxed_program(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    seen: list[Call] = []

    def veritysetup(call: Call) -> Result:
        seen.append(call)
        return creates(-1, b"tree", stdout="Root hash: " + "a" * 64)(call)

    runner = FakeRunner(answers={"veritysetup": veritysetup, "bwrap": fails("not me")})
    result = Sandbox(tmp_path, binds=(out,)).run(
        runner, ["veritysetup", "format", "data", str(out / "v")], env={"A": "1"}, timeout=5)
    assert result.stdout == "Root hash: " + "a" * 64 and (out / "v").read_bytes() == b"tree"
    assert result.argv == runner.history[0].argv and result.argv[0].endswith("bwrap")
    assert seen[0].env == {"A": "1"} and seen[0].timeout == 5 and seen[0] is runner.calls[0]
    # Outside every writable bind the tool fails as the real one would.
    with pytest.raises(CommandFailed, match="Read-only file system"):
        Sandbox(tmp_path).run(runner, ["veritysetup", "format", "d", str(out / "w")])
    assert not (out / "w").exists()


def test_a_fake_runner_writes_stdout_to_the_target_and_matches_paths_and_names(
        tmp_path: Path) -> None:
    runner = FakeRunner(answers={"xz": prints("packed"), "/opt/gpg": Result((), 2, "", "", 0)})
    target = tmp_path / "x.xz"
    target.write_bytes(b"old content")
    result = Sandbox(tmp_path).run(runner, ["/usr/bin/xz", "-c", "x"], stdout=target)
    assert target.read_bytes() == b"packed" and result.stdout == ""
    with pytest.raises(CommandFailed, match="exit 2"):
        runner.run(["/opt/gpg", "--version"])  # by path, as keys.py runs it
    assert runner.run(["/usr/bin/gpg"]).returncode == 0  # another gpg: not answered
    failed = runner.run(["/opt/gpg"], check=False)
    assert failed.returncode == 2 and [c.program for c in runner.calls][-1] == "gpg"


def test_a_handler_that_raises_is_recorded_as_called_not_as_done() -> None:
    def interrupted(call: Call) -> None:
        raise KeyboardInterrupt

    runner = FakeRunner(answers={"dracut": interrupted})
    with pytest.raises(KeyboardInterrupt):
        runner.run(["bwrap", "--dev", "/dev", "--", "dracut", "out"])
    assert [c.argv for c in runner.calls] == [("dracut", "out")] and runner.history == []
