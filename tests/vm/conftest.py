"""Shared, session-scoped artifacts for VM tests: each image is built once per session
(the rootfs, tools tree and initrd are cached across sessions in ~/.cache/appsdk)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest

import appsdk
from appsdk.core.runner import Runner
from appsdk.trust import keys, secureboot

sys.path.insert(0, str(Path(__file__).parent))
import update_story
from vmlib import build_hello, free_port, sealed_hello, signed_hello


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
def root_required() -> None:
    if os.geteuid() != 0:
        pytest.skip("VM tests build images and need root")


@pytest.fixture(scope="session")
def signing_key(tmp_path_factory: pytest.TempPathFactory) -> keys.SigningKey:
    return keys.generate(tmp_path_factory.mktemp("keys") / "hello", "hello test key", Runner())


@pytest.fixture(scope="session")
def update_port() -> int:
    """The release server's port; baked into the images' update URL (QEMU's host is
    10.0.2.2 as seen from the guest, and forwards to the host's 127.0.0.1)."""
    return free_port()


@pytest.fixture(scope="session")
def sb_keyset(tmp_path_factory: pytest.TempPathFactory) -> secureboot.SecureBootKeys:
    """The Secure Boot key set the shared x86 images are signed with."""
    return secureboot.generate(tmp_path_factory.mktemp("sb-keys") / "secure-boot",
                               "Hello appliance", "hello", Runner())


@pytest.fixture(scope="session")
def hello_app(tmp_path_factory: pytest.TempPathFactory,
              sb_keyset: secureboot.SecureBootKeys) -> Path:
    return signed_hello(tmp_path_factory.mktemp("hello-src") / "hello", sb_keyset)


@pytest.fixture(scope="session")
def hello_v1(root_required: None, tmp_path_factory: pytest.TempPathFactory, hello_app: Path,
             signing_key: keys.SigningKey, update_port: int) -> appsdk.BuildResult:
    return build_hello(hello_app, "1.0", tmp_path_factory.mktemp("hello-x86-v1"), signing_key,
                       update_port)


@pytest.fixture(scope="session")
def hello_v2(root_required: None, tmp_path_factory: pytest.TempPathFactory, hello_app: Path,
             signing_key: keys.SigningKey, update_port: int) -> appsdk.BuildResult:
    return build_hello(hello_app, "2.0", tmp_path_factory.mktemp("hello-x86-v2"), signing_key,
                       update_port)


@pytest.fixture(scope="session")
def sealed_app(tmp_path_factory: pytest.TempPathFactory, hello_app: Path) -> Path:
    """hello_app with /var sealed to the TPM (var.encrypt: tpm2): its devices need one."""
    return sealed_hello(tmp_path_factory.mktemp("sealed-src") / "hello", hello_app)


@pytest.fixture(scope="session")
def sealed_v1(root_required: None, tmp_path_factory: pytest.TempPathFactory, sealed_app: Path,
              signing_key: keys.SigningKey, update_port: int) -> appsdk.BuildResult:
    return build_hello(sealed_app, "1.0", tmp_path_factory.mktemp("sealed-x86-v1"),
                       signing_key, update_port)


@pytest.fixture(scope="session")
def sealed_v2(root_required: None, tmp_path_factory: pytest.TempPathFactory, sealed_app: Path,
              signing_key: keys.SigningKey, update_port: int) -> appsdk.BuildResult:
    return build_hello(sealed_app, "2.0", tmp_path_factory.mktemp("sealed-x86-v2"),
                       signing_key, update_port)


@pytest.fixture(scope="session")
def update_and_rollback(sealed_v1: appsdk.BuildResult, sealed_v2: appsdk.BuildResult,
                        sealed_app: Path, signing_key: keys.SigningKey,
                        sb_keyset: secureboot.SecureBootKeys, update_port: int,
                        tmp_path_factory: pytest.TempPathFactory,
                        vm_logs: Path) -> dict[str, dict[str, Any]]:
    """One device's updates and rollback (update_story.py), for the update and rollback
    modules: whichever runs first pays for it. Its /var is sealed to its TPM, so every
    version it boots (v2 as sysupdate installed it, each try of v3, the fallback to v2) shows
    that a UKI the team signed opens it."""
    return update_story.run(sealed_v1, sealed_v2, sealed_app, signing_key, sb_keyset,
                            update_port, tmp_path_factory.mktemp("x86-update"), vm_logs)
