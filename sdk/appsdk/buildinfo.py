"""build.json: what a build directory holds. Kept apart from the pipeline so that flash,
inspect and release read it without importing the build machinery."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import ConfigError

BUILD_JSON = "build.json"


def load_build(path: Path) -> dict[str, Any]:
    """Read build.json from a build directory (or the file itself)."""
    file = path / BUILD_JSON if path.is_dir() else path
    try:
        data: dict[str, Any] = json.loads(file.read_text())
    except FileNotFoundError:
        raise ConfigError("no build.json: not a finished build directory", file=str(file),
                          hint="run `appsdk build` first") from None
    return data


def locate_image(path: Path) -> tuple[Path, dict[str, Any] | None]:
    """(disk image, build record) for a build directory or an image file. An image's
    record is the build.json beside it, and only if that build.json names this image."""
    if path.is_dir():
        record = load_build(path)
        return path / record["artifacts"]["image"]["file"], record
    if not path.is_file():
        raise ConfigError("no such image or build directory", file=str(path))
    sibling = path.parent / BUILD_JSON
    if sibling.exists():
        record = load_build(sibling)
        if record["artifacts"]["image"]["file"] == path.name:
            return path, record
    return path, None
