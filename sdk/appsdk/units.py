"""Byte sizes as people write them in config files ("256M", "1GiB", 4096)."""

from __future__ import annotations

import re

_SUFFIX = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
_SIZE = re.compile(r"^\s*(\d+)\s*([KMGT]?)(?:i?B)?\s*$", re.IGNORECASE)

MiB = 1024**2


def parse_size(value: object) -> int:
    """Parse a size; binary units (M = MiB). Raises ValueError with a readable message."""
    if isinstance(value, bool):
        raise ValueError(f"expected a size like 256M or 1G, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        match = _SIZE.match(value)
        if match:
            return int(match.group(1)) * _SUFFIX[match.group(2).upper()]
    raise ValueError(f"expected a size like 256M or 1G, got {value!r}")
