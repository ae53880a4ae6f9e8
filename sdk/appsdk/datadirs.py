"""Where appsdk's data directories (boards/, firmware/) are: an environment override, the
source tree (editable installs, a checkout), or the copy installed with the package."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import ConfigError


def data_dir(name: str, env: str) -> Path:
    override = os.environ.get(env)
    if override:
        return Path(override)
    here = Path(__file__).resolve().parent
    for candidate in (here.parent.parent / name, here / "data" / name):
        if candidate.is_dir():
            return candidate
    raise ConfigError(f"no {name}/ directory found", hint=f"set {env}")
