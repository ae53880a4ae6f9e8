"""Block-device tests: real loop devices, real O_DIRECT I/O, umockdev for disks we do not
have (USB sticks, SATA disks). They need root and /dev/loop-control; no network.
Helpers live in loopdev.py: test modules import them from there, never from conftest
(with tests/vm collected too, `conftest` may name the other directory's)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/device" in str(item.fspath):
            item.add_marker(pytest.mark.device)


@pytest.fixture(autouse=True)
def _needs_root() -> None:
    if os.geteuid() != 0 or not Path("/dev/loop-control").exists():
        pytest.skip("needs root and loop devices")
