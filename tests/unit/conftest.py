"""Unit tests see only the shipped and checkout data: a developer's own boards
(~/.config/appsdk/boards, APPSDK_BOARDS_PATH) never change what they find."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _no_user_data_dirs(tmp_path_factory: pytest.TempPathFactory,
                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path_factory.getbasetemp() / "xdg-config"))
    for name in ("APPSDK_BOARDS_PATH", "APPSDK_BOARDS_DIR", "APPSDK_FIRMWARE_PATH"):
        monkeypatch.delenv(name, raising=False)
    Path(tmp_path_factory.getbasetemp() / "xdg-config").mkdir(exist_ok=True)
