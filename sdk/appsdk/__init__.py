"""appsdk: build, flash, provision and update immutable appliances.

Library first: the CLI is a thin layer over these functions, which return typed results
and raise AppsdkError subclasses.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .boards import Board, list_boards, load_board
from .config import Appliance, load_appliance
from .errors import AppsdkError, ConfigError
from .pipeline import BuildResult, build, load_build

__all__ = [
    "Appliance",
    "AppsdkError",
    "Board",
    "BuildResult",
    "ConfigError",
    "__version__",
    "build",
    "list_boards",
    "load_appliance",
    "load_board",
    "load_build",
]
