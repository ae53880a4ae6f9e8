"""Foreign-architecture builds: the binfmt check says what is missing and how to fix it."""

from __future__ import annotations

from pathlib import Path

import pytest

from appsdk.core.errors import ToolMissing
from appsdk.core.foreign import check_binfmt, needs_emulation

ENTRY = ("enabled\ninterpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P\nflags: {flags}\n"
         "offset 0\nmagic 7f454c46\n")


def test_native_builds_need_nothing(tmp_path: Path) -> None:
    assert not needs_emulation("amd64", host="x86_64")
    check_binfmt("amd64", tmp_path / "nothing-here", host="x86_64")
    check_binfmt("arm64", tmp_path / "nothing-here", host="aarch64")


def test_missing_handler_names_the_fix(tmp_path: Path) -> None:
    with pytest.raises(ToolMissing, match="cannot run arm64 binaries") as err:
        check_binfmt("arm64", tmp_path, host="x86_64")
    assert err.value.hint and "qemu-user-static" in err.value.hint
    assert "make binfmt" in err.value.hint


def test_handler_without_flag_f_is_refused(tmp_path: Path) -> None:
    (tmp_path / "qemu-aarch64").write_text(ENTRY.format(flags="OC"))
    with pytest.raises(ToolMissing, match="lacks flag F"):
        check_binfmt("arm64", tmp_path, host="x86_64")
    (tmp_path / "qemu-aarch64").write_text(ENTRY.format(flags="POF"))
    check_binfmt("arm64", tmp_path, host="x86_64")
    (tmp_path / "qemu-aarch64").write_text(ENTRY.format(flags="POF").replace("enabled",
                                                                             "disabled"))
    with pytest.raises(ToolMissing, match="disabled"):
        check_binfmt("arm64", tmp_path, host="x86_64")
