"""appsdk: build, flash, provision and update immutable appliances.

Library first: the CLI is a thin layer over these functions, which return typed results
and raise AppsdkError subclasses. Names are imported on first use, so `appsdk flash`
does not pay for the build pipeline's imports.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from appsdk.core.version import __version__

if TYPE_CHECKING:
    from appsdk.contract.buildinfo import load_build, load_record
    from appsdk.contract.record import BuildRecord
    from appsdk.core.errors import AppsdkError, ConfigError
    from appsdk.deliver.flash import FlashResult, flash, open_source, verify_device
    from appsdk.pipeline.builder import BuildResult, build
    from appsdk.spec.appliance import Appliance, load_appliance
    from appsdk.spec.boards import Board, list_boards, load_board
    from appsdk.trust.keys import SigningKey
    from appsdk.trust.keys import load as load_key
    from appsdk.update.release import Release, release

# The top-level API: name -> the module that defines it (imported on first use).
_WHERE = {
    "Board": "spec.boards", "list_boards": "spec.boards", "load_board": "spec.boards",
    "Appliance": "spec.appliance", "load_appliance": "spec.appliance",
    "AppsdkError": "core.errors", "ConfigError": "core.errors",
    "FlashResult": "deliver.flash", "flash": "deliver.flash", "open_source": "deliver.flash",
    "verify_device": "deliver.flash",
    "BuildResult": "pipeline.builder", "build": "pipeline.builder",
    "load_build": "contract.buildinfo", "load_record": "contract.buildinfo",
    "BuildRecord": "contract.record",
    "SigningKey": "trust.keys", "load_key": "trust.keys:load",
    "Release": "update.release", "release": "update.release",
}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'appsdk' has no attribute {name!r}")
    module, _, attribute = _WHERE[name].partition(":")
    return getattr(importlib.import_module(f".{module}", __name__), attribute or name)


__all__ = [
    "Appliance", "AppsdkError", "Board", "BuildRecord", "BuildResult", "ConfigError",
    "FlashResult", "Release", "SigningKey", "__version__", "build", "flash", "list_boards",
    "load_appliance", "load_board", "load_build", "load_key", "load_record", "open_source",
    "release", "verify_device",
]
