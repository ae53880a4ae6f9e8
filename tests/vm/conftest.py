"""Shared, session-scoped artifacts for VM tests: each image is built once per session
(the rootfs, tools tree and initrd are cached across sessions in ~/.cache/appsdk)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

import appsdk
from appsdk.progress import TextReporter

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).parent))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/vm" in str(item.fspath):
            item.add_marker(pytest.mark.vm)


@pytest.fixture(scope="session")
def vm_logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Console transcripts are kept for failure analysis (CI prints where they are).
    path = Path(os.environ.get("APPSDK_VM_LOGS", tmp_path_factory.mktemp("vm-logs")))
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def hello_v1(tmp_path_factory: pytest.TempPathFactory) -> appsdk.BuildResult:
    if os.geteuid() != 0:
        pytest.skip("VM tests build images and need root")
    out = tmp_path_factory.mktemp("hello-x86-v1")
    return appsdk.build(REPO / "examples/hello", board="x86-uefi", version="1.0", output=out,
                        reporter=TextReporter(sys.stderr))
