"""Byte sizes as people write them in config files ("256M", "1GiB", 4096)."""

from __future__ import annotations

import re

_SUFFIX = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
# Bounded digits: a size needs no more, and int() refuses very long digit strings anyway.
_SIZE = re.compile(r"^\s*(\d{1,20})\s*([KMGT]?)(?:i?B)?\s*$", re.IGNORECASE)

MiB = 1024**2
GiB = 1024**3
TiB = 1024**4


def parse_size(value: object) -> int:
    """Parse a size; binary units (M = MiB). Raises ValueError with a readable message."""
    if isinstance(value, bool):
        raise ValueError(f"expected a size like 256M or 1G, got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"a size cannot be negative, got {value}")
        return value
    if isinstance(value, str):
        match = _SIZE.match(value)
        if match:
            return int(match.group(1)) * _SUFFIX[match.group(2).upper()]
    raise ValueError(f"expected a size like 256M or 1G, got {value!r}")


def format_size(value: int) -> str:
    """The shortest exact form parse_size reads back: 4G, 256M, 4096."""
    for suffix in ("T", "G", "M", "K"):
        if value and value % _SUFFIX[suffix] == 0:
            return f"{value // _SUFFIX[suffix]}{suffix}"
    return str(value)
