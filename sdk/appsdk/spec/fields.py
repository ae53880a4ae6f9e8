"""One validator per field kind, shared by YAML readers (through appsdk.spec.reader),
plan readers, CLI flags and the Python API.

A validator takes the value and the name of the field it came from ("update.url",
"devices[0].hostname", or an API argument as core.errors.Option("update_url"), which the
CLI shows as its flag) and returns the normalized value or raises FieldError (a
ConfigError) naming that field. A validated value validates to itself."""

from __future__ import annotations

import argparse
import ipaddress
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from appsdk.core.errors import ConfigError
from appsdk.core.units import GiB, MiB, TiB, format_size, parse_size

T = TypeVar("T")

# An id ends up in file names (<id>_<ver>.efi) and sysupdate patterns, where "_" separates
# id and version; keep it to lowercase words.
ID_PATTERN = r"[a-z0-9][a-z0-9-]{0,30}"
# UAPI version format, minus "_" (field separator) and "+" (boot counting suffix in UKI names).
VERSION_PATTERN = r"[A-Za-z0-9][A-Za-z0-9.~^-]{0,27}"
BOARD_PATTERN = r"[a-z0-9][a-z0-9-]{0,62}"
CHECK_PATTERN = r"[a-z0-9][a-z0-9-]{0,62}"  # in the unit name appsdk-health-NAME.service
UNIT_PATTERN = (r"[A-Za-z0-9@_.:\\-]{1,240}\."
                r"(service|socket|timer|path|target|mount|automount|swap|device|slice|scope)")
# Linux's HOST_NAME_MAX: sethostname() and systemd refuse longer names.
HOSTNAME_MAX = 64
_LABEL = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
# RFC 3986 characters; anything else must be percent-encoded.
_URL_CHARS = re.compile(r"[A-Za-z0-9._~:/?#\[\]@!$&'()*+,;=%-]*")
SIZE_LIMITS = {"esp": (64 * MiB, 4 * GiB), "usr": (64 * MiB, 64 * GiB),
               "var_min": (64 * MiB, TiB)}


class FieldError(ConfigError):
    """A value a validator refused. `reason` is the message without the place, so a YAML
    reader can re-raise it with file:line."""

    def __init__(self, field: str, reason: str, hint: str | None = None) -> None:
        super().__init__(reason, field=field, hint=hint)
        self.reason = reason

    def as_dict(self) -> dict[str, Any]:
        # --json consumers see the documented class: a refused value is a ConfigError.
        return {**super().as_dict(), "error": "ConfigError"}


def _text(value: object, field: str, *, limit: int = 4096, empty: bool = False) -> str:
    # Integers come only from plain YAML digits that print back as written (yamlsrc).
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise FieldError(field, f"must be a string, got {value!r}")
    if not value and not empty:
        raise FieldError(field, "must not be empty")
    if len(value) > limit:
        raise FieldError(field, f"is {len(value)} characters long, more than {limit}")
    return value


def _line(value: object, field: str, *, limit: int = 4096) -> str:
    """One line of printable text (no newline, NUL or other control characters)."""
    text = _text(value, field, limit=limit)
    for index, char in enumerate(text):
        if not char.isprintable() and char != "\t":
            raise FieldError(field, f"contains {_describe(char)} at position {index}",
                             hint="write it on one line without control characters")
    return text


def _describe(char: str) -> str:
    return {"\n": "a newline", "\0": "a NUL character"}.get(char, f"character U+{ord(char):04X}")


def _pattern(value: object, field: str, pattern: str, what: str, hint: str | None = None) -> str:
    text = _text(value, field)
    if not re.fullmatch(pattern, text):
        raise FieldError(field, f"{text!r} is not {what}", hint)
    return text


def app_id(value: object, field: str = "id") -> str:
    return _pattern(value, field, ID_PATTERN, "a valid id (lowercase letters, digits, '-')")


def version(value: object, field: str = "version") -> str:
    return _pattern(value, field, VERSION_PATTERN,
                    "a valid version (letters, digits, . ~ ^ -; no '_' or '+')",
                    "use letters, digits and . ~ ^ - (no '_' or '+')")


def display_name(value: object, field: str = "name") -> str:
    """A human name: one line, and none of the characters os-release or /etc/issue
    would interpret (it is written into PRETTY_NAME="..." and the console banner)."""
    text = _line(value, field, limit=80)
    bad = sorted(set(text) & set('"\\`$'))
    if bad:
        raise FieldError(field, f"must not contain {' '.join(bad)}",
                         hint="these are special in os-release and /etc/issue")
    return text


def board_name(value: object, field: str = "board") -> str:
    """A board profile's name: never a path (profiles are looked up in boards/)."""
    return _pattern(value, field, BOARD_PATTERN,
                    "a board name (lowercase letters, digits, '-'; not a path)",
                    "see `appsdk boards`; a profile of your own goes in "
                    "~/.config/appsdk/boards or a directory named in APPSDK_BOARDS_PATH")


def hostname(value: object, field: str = "hostname") -> str:
    """RFC 1123 host name: labels of letters, digits and inner '-' (<= 63), joined by '.',
    at most HOSTNAME_MAX characters in all."""
    text = _text(value, field, limit=1024)
    if len(text) > HOSTNAME_MAX:
        raise FieldError(field, f"{text[:20]!r}... is {len(text)} characters long; Linux "
                         f"allows {HOSTNAME_MAX}")
    if not all(_LABEL.fullmatch(label) for label in text.split(".")):
        raise FieldError(field, f"{text!r} is not a valid hostname",
                         hint="use letters, digits and '-' (not first or last), labels "
                         "joined by '.'")
    return text


def _dns_name(host: str) -> bool:
    return len(host) <= 253 and all(_LABEL.fullmatch(label) for label in host.split("."))


def _ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _url(value: object, field: str, schemes: tuple[str, ...], *, query: bool) -> str:
    text = _text(value, field)
    for index, char in enumerate(text):
        if char.isspace() or not char.isprintable():
            raise FieldError(field, f"contains {_describe(char) if char != ' ' else 'a space'}"
                             f" at position {index}: a URL has no whitespace or control "
                             "characters", hint="percent-encode it (%20) or remove it")
    if not _URL_CHARS.fullmatch(text) or re.search(r"%(?![0-9A-Fa-f]{2})", text):
        raise FieldError(field, f"{text!r} has characters a URL cannot hold",
                         hint="percent-encode them (RFC 3986), e.g. %7C for |")
    try:
        parts = urlsplit(text)
    except ValueError:  # e.g. unbalanced [ ] around an IPv6 address
        raise FieldError(field, f"{text!r} is not a URL") from None
    if parts.scheme.lower() not in schemes:
        raise FieldError(field, f"{text!r} is not an {' or '.join(s + '://' for s in schemes)}"
                         " URL", hint="http:// is plain text: fine for a lab (what is fetched "
                         "is still signature-checked); use https:// for products")
    try:
        port = parts.port
        host = parts.hostname or ""
    except ValueError:
        raise FieldError(field, f"{text!r} has an invalid host or port") from None
    if not host or not (_dns_name(host) or _ip_literal(host)):
        raise FieldError(field, f"{text!r} has no valid host name")
    if port == 0:
        raise FieldError(field, f"{text!r}: port 0 is not a port")
    if parts.fragment or "#" in text or (not query and "?" in text):
        raise FieldError(field, f"{text!r} has a {'#fragment' if '#' in text else '?query'}",
                         hint="file names are appended to this URL: give a plain base URL")
    return parts.scheme.lower() + text[len(parts.scheme):]


def update_url(value: object, field: str = "update.url") -> str:
    """Where devices fetch updates (systemd-sysupdate url-file source)."""
    return _url(value, field, ("http", "https"), query=False)


def mirror_url(value: object, field: str = "base.mirror") -> str:
    """A Debian mirror: http(s)://..., or file:/ABSOLUTE/PATH for a local one."""
    text = _text(value, field)
    if text.startswith("file:"):
        path = text.removeprefix("file://").removeprefix("file:")
        if not path.startswith("/") or not _URL_CHARS.fullmatch(path):
            raise FieldError(field, f"{text!r} is not a file:/ABSOLUTE/PATH URL")
        return text
    return _url(value, field, ("http", "https"), query=False)


def health_url(value: object, field: str = "url") -> str:
    """What the on-device checker can fetch: plain HTTP to a name or IPv4 address."""
    text = _text(value, field)
    if text.lower().startswith("https://"):
        raise FieldError(field, "https:// health checks are not supported: the device's "
                         "checker speaks plain HTTP (bash's /dev/tcp, no TLS)",
                         hint="check the service's plain-HTTP port (e.g. http://127.0.0.1:8080/"
                         "health), or use a `command:` check with a client the image ships")
    text = _url(text, field, ("http",), query=True)
    parts = urlsplit(text)
    if "@" in parts.netloc or "[" in parts.netloc:
        raise FieldError(field, f"{text!r}: the checker takes http://HOST[:PORT]/PATH with "
                         "a host name or IPv4 address (no user@, no [IPv6])")
    return text


def credential_name(value: object, field: str = "credential") -> str:
    """A systemd credential name (LoadCredential=NAME): a file name, never a path."""
    text = _text(value, field, limit=255)
    if text in (".", "..") or not re.fullmatch(r"[A-Za-z0-9_.-]+", text):
        raise FieldError(field, f"{text!r} is not a credential name",
                         hint="use letters, digits, _ . - (a file name, not a path)")
    return text


def serial(value: object, field: str = "serial") -> str:
    """A device serial number: printable ASCII without '/' or whitespace, <= 64."""
    text = _text(value, field, limit=64)
    if text in (".", "..") or not re.fullmatch(r"[\x21-\x2e\x30-\x7e]+", text):
        raise FieldError(field, f"{text!r} is not a serial number",
                         hint="printable ASCII without spaces or '/'")
    return text


def device_path(value: object, field: str = "dest") -> str:
    """An absolute, normalized path on the device: no '..', no NUL/newline/control."""
    text = _line(value, field)
    if not text.startswith("/"):
        raise FieldError(field, f"{text!r} must be an absolute path on the device")
    raw = text.split("/")
    parts = [part for part in raw if part not in ("", ".")]
    if ".." in parts:
        raise FieldError(field, f"{text!r} contains '..'", hint="write the path it means")
    if not parts or raw[-1] in ("", "."):
        raise FieldError(field, f"{text!r} names a directory, not a file")
    if any(len(part.encode()) > 255 for part in parts):
        raise FieldError(field, "has a path component longer than 255 bytes")
    return "/" + "/".join(parts)


def file_mode(value: object, field: str = "mode") -> int:
    """A permission mode: an int (already the mode, e.g. 0o644 from Python), or its octal
    digits as text ("0644", "644", "0o644"). YAML readers pass the digits the user wrote."""
    if isinstance(value, int) and not isinstance(value, bool):
        if not 0 <= value <= 0o7777:
            raise FieldError(field, f"{value} is not a mode (0 to 0o7777)")
        return value
    text = _text(value, field, limit=16)
    match = re.fullmatch(r"(?:0o)?([0-7]{1,4})", text)
    if not match:
        raise FieldError(field, f"{text!r} is not an octal mode",
                         hint='write up to 4 octal digits, quoted, e.g. "0644"')
    return int(match.group(1), 8)


def size(value: object, field: str, limits: tuple[int, int]) -> int:
    """A partition size: a whole number of MiB between the limits."""
    minimum, maximum = limits
    try:
        number = parse_size(value)
    except ValueError as exc:
        raise FieldError(field, str(exc)) from None
    if number < minimum or number % MiB:
        raise FieldError(field, f"must be a whole number of MiB >= {format_size(minimum)}")
    if number > maximum:
        raise FieldError(field, f"{format_size(number)} is more than {format_size(maximum)}, "
                         "the limit for this partition", hint="check the unit (M, G, T)")
    return number


def check_name(value: object, field: str = "name") -> str:
    return _pattern(value, field, CHECK_PATTERN,
                    "a valid name (lowercase letters, digits, '-')")


def health_command(value: object, field: str = "command") -> str:
    """A shell command line run by bash -c on the device: one line, no NUL."""
    return _line(value, field)


def unit_name(value: object, field: str = "unit") -> str:
    return _pattern(value, field, UNIT_PATTERN, "a unit name (e.g. name.service)")


def user_name(value: object, field: str = "user") -> str:
    return _pattern(value, field, r"[A-Za-z_][A-Za-z0-9_.-]{0,31}", "a login name")


def password(value: object, field: str = "password") -> str:
    # Typed on the console: a newline or control character would end or garble the line.
    return _line(value, field, limit=256)


def key_dir(value: object, field: str = "update.key", *, base: Path,
            overlay: Path | None) -> Path:
    """The signing key's GnuPG home (relative to `base`): never inside the overlay, which
    is copied into the image (the private key would ship on every device)."""
    text = _line(value, field)
    try:
        key = (base / Path(text).expanduser()).resolve()
        inside = overlay is not None and key.is_relative_to(overlay.resolve())
    except (RuntimeError, OSError) as exc:  # ~unknown-user, a symlink loop
        raise FieldError(field, f"{text!r} cannot be resolved: {exc}") from None
    if inside:
        raise FieldError(field, f"{key} is inside the overlay ({overlay}): everything there "
                         "is copied into the image, the private signing key with it",
                         hint="keep the key outside the appliance's overlay, e.g. "
                         "update.key: ../keys (default: ~/.config/appsdk/keys/ID)")
    return key


_PUBLIC_KEY = re.compile(r"(?:.+ )?(?:ssh-[a-z0-9-]+|ecdsa-sha2-[a-z0-9-]+|sk-[a-z0-9@.-]+)"
                         r"(?:@openssh\.com)? [A-Za-z0-9+/]+={0,3}(?: .*)?")


def authorized_key_file(value: object, field: str = "authorized_keys") -> Path:
    """A file of OpenSSH public keys (authorized_keys lines). A private key given by mistake
    (id_ed25519 for id_ed25519.pub) must never be pushed to devices, nor garbage that
    would lock root out."""
    path = Path(_line(value, field))
    try:
        with path.open("rb") as f:
            data = f.read(65537)
    except OSError as exc:
        raise FieldError(field, f"{str(path)!r} cannot be read: {exc.strerror or exc}") from None
    if b"PRIVATE KEY" in data:
        raise FieldError(field, f"{path} is a PRIVATE key", hint="give the public key "
                         f"({path.name}.pub); never copy a private key to devices")
    try:
        lines = data.decode("utf-8").splitlines()
    except UnicodeDecodeError:
        lines = ["\x00"]
    bad = [n for n, line in enumerate(lines, 1) if line.strip()
           and not line.startswith("#") and not _PUBLIC_KEY.fullmatch(line.strip())]
    if len(data) > 65536 or bad or not any(line.strip() for line in lines):
        where = f" (line {bad[0]})" if bad else ""
        raise FieldError(field, f"{path} is not an OpenSSH public key file{where}",
                         hint="give a .pub file: lines like 'ssh-ed25519 AAAA... comment'")
    return path


def argtype(validator: Callable[[object, str], T], flag: str) -> Callable[[str], T]:
    """An argparse type= that applies `validator` with the flag as the field name."""
    def convert(text: str) -> T:
        try:
            return validator(text, flag)
        except FieldError as exc:
            raise argparse.ArgumentTypeError(exc.reason) from None
    return convert
