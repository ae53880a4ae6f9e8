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
