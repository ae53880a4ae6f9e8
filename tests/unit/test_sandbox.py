"""The bubblewrap command line is a contract: tree read-only, chosen paths bound in place."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from appsdk.core.errors import CommandFailed
from appsdk.core.runner import FakeRunner, Result
from appsdk.core.sandbox import Sandbox


@pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap not installed")
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
