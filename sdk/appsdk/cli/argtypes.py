"""Values argparse checks before any command runs: ports, counts, seconds, baud rates, sizes
and paths. Each raises ArgumentTypeError with a message argparse prefixes with the flag
("argument --baud: ...")."""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

from appsdk.core.errors import AppsdkError
from appsdk.core.units import parse_size
from appsdk.trust.pkcs11 import Pkcs11Key, is_uri, parse_uri

# termios rates Linux serial drivers accept (pyserial refuses others on many adapters).
BAUD_RATES = (50, 75, 110, 134, 150, 200, 300, 600, 1200, 1800, 2400, 4800, 9600, 19200,
              38400, 57600, 115200, 230400, 460800, 500000, 576000, 921600, 1000000, 1152000,
              1500000, 2000000, 2500000, 3000000, 3500000, 4000000)


def int_in(text: str, what: str, low: int, high: int | None = None) -> int:
    try:
        value = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number ({what})") from None
    if value < low or (high is not None and value > high):
        bounds = f"from {low} to {high}" if high is not None else f"at least {low}"
        raise argparse.ArgumentTypeError(f"{text!r}: must be {bounds} ({what})")
    return value


def port(text: str) -> int:
    return int_in(text, "a TCP port", 1, 65535)


def count(text: str) -> int:
    return int_in(text, "a count, 0 for no limit", 0)


def seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: seconds must be 0 or more")
    return value


def baud(text: str) -> int:
    value = int_in(text, "a baud rate", 1)
    if value not in BAUD_RATES:
        raise argparse.ArgumentTypeError(
            f"{value} is not a standard baud rate (e.g. 9600, 115200, 921600, 1500000)")
    return value


def forward(text: str) -> tuple[int, int]:
    host, sep, guest = text.partition(":")
    if not sep:
        raise argparse.ArgumentTypeError(f"{text!r}: use HOST:GUEST, two TCP ports (8080:80)")
    return port(host), port(guest)


def size(text: str) -> int:
    try:
        value = parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: the size must be more than 0")
    return value


def existing(text: str) -> Path:
    if not os.path.lexists(text):
        raise argparse.ArgumentTypeError(f"{text}: no such file or directory")
    return Path(text)


def key_source(text: str) -> Path | Pkcs11Key:
    """A private key: a PKCS#11 URI (a key in an HSM), or an existing file."""
    if is_uri(text):
        try:
            return parse_uri(text)
        except AppsdkError as exc:
            raise argparse.ArgumentTypeError(exc.message) from None
    return existing(text)


def new_dir(text: str) -> Path:
    """A directory, or a path where one can be made: no existing part of it is a file."""
    path = Path(text)
    for part in (path, *path.parents):
        if os.path.lexists(part):
            if not part.is_dir():
                where = f"{text} exists and" if part == path else f"{text}: {part}"
                raise argparse.ArgumentTypeError(f"{where} is not a directory")
            break
    return path


def new_file(text: str) -> Path:
    """A file to write: not a directory, and no existing part of its directory a file."""
    if os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"{text} is a directory, not a file")
    new_dir(os.path.dirname(text) or ".")
    return Path(text)
