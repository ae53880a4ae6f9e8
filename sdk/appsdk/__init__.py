"""appsdk: build, flash, provision and update immutable appliances.

Library first: the CLI is a thin layer over these functions, which return typed results
and raise AppsdkError subclasses. Names are imported on first use, so `appsdk flash`
does not pay for the build pipeline's imports.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from .boards import Board, list_boards, load_board
    from .buildinfo import load_build
    from .config import Appliance, load_appliance
    from .errors import AppsdkError, ConfigError
    from .flash import FlashResult, open_source, verify_device
    from .pipeline import BuildResult, build

_WHERE = {
    "Board": "boards", "list_boards": "boards", "load_board": "boards",
    "Appliance": "config", "load_appliance": "config",
    "AppsdkError": "errors", "ConfigError": "errors",
    # Not `flash` itself: the name is the submodule (appsdk.flash.flash).
    "FlashResult": "flash", "open_source": "flash", "verify_device": "flash",
    "BuildResult": "pipeline", "build": "pipeline", "load_build": "buildinfo",
}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'appsdk' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)


__all__ = [
    "Appliance", "AppsdkError", "Board", "BuildResult", "ConfigError", "FlashResult",
    "__version__", "build", "list_boards", "load_appliance", "load_board", "load_build",
    "open_source", "verify_device",
]
