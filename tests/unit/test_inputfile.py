"""Input files given as a FIFO or a device are refused at once (they used to hang build,
keys, inspect, flash, verify, release, run and provision serial)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from test_adversarial import deadline

from appsdk.contract import buildinfo
from appsdk.core.errors import ConfigError
from appsdk.core.inputfile import open_regular
from appsdk.image import bmap
from appsdk.spec import yamlsrc

__all__ = ["deadline"]  # a fixture, imported for pytest


pytestmark = pytest.mark.usefixtures("deadline")  # fail, never hang


READERS: dict[str, Callable[[Path], object]] = {
    "YAML file": yamlsrc.load, "build.json": buildinfo.load_build, "bmap file": bmap.parse,
}


@pytest.mark.parametrize("what", list(READERS))
def test_a_fifo_is_refused_without_blocking(tmp_path: Path, what: str) -> None:
    fifo = tmp_path / "input"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match=f"is a FIFO, not {what}") as exc:
        READERS[what](fifo)
    assert str(fifo) in str(exc.value)


@pytest.mark.parametrize("what", list(READERS))
def test_a_device_is_refused(what: str) -> None:
    with pytest.raises(ConfigError, match=f"is a device, not {what}"):
        READERS[what](Path("/dev/zero"))


def test_a_regular_file_and_a_link_to_one_are_read(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"data")
    (tmp_path / "b").symlink_to("a")
    for name in ("a", "b"):
        with open_regular(tmp_path / name, "file") as f:
            assert f.read() == b"data"


def test_a_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is a directory"):
        open_regular(tmp_path, "bmap file")
