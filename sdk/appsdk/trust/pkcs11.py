"""Keys held in an HSM or token, named by a PKCS#11 URI (RFC 7512) and used through
OpenSSL's pkcs11 provider (Debian: pkcs11-provider) in the tools tree. The private key
never leaves the token: appsdk keeps only the URI.

The provider finds the token through p11-kit, which loads the PKCS#11 modules registered
in the tools tree (SoftHSM's among them), or the module named by $PKCS11_PROVIDER_MODULE.
Whatever else the module needs from the host (its token store, a PIN file, a daemon's
socket) is listed in $APPSDK_PKCS11_BIND (paths separated by ':'), and bound into the
signing sandbox at the same place; $SOFTHSM2_CONF and the pin-source file of the URI are
bound too."""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from appsdk.core.errors import ConfigError, Option

SCHEME = "pkcs11:"
MAX_URI = 2048
BIND_ENV = "APPSDK_PKCS11_BIND"
MODULE_ENV = "PKCS11_PROVIDER_MODULE"
# RFC 7512: attributes are pchar / "%" hex; no spaces, quotes, or control characters.
_URI_CHARS = re.compile(r"[A-Za-z0-9\-._~%!$&'()*+,;=:@/?]+")


# OpenSSL's configuration for the tools that use the provider: the default provider first
# (hashing, verification), then pkcs11. Without "no-deinit" the openssl CLI of trixie
# crashes (SIGSEGV) at exit after using SoftHSM's module, the signature already written.
OPENSSL_CONF = """openssl_conf = openssl_init
[openssl_init]
providers = provider_sect
[provider_sect]
default = default_sect
pkcs11 = pkcs11_sect
[default_sect]
activate = 1
[pkcs11_sect]
pkcs11-module-quirks = no-deinit
activate = 1
"""


@dataclass(frozen=True)
class ProviderEnv:
    """What a sandboxed tool needs to reach a key through the provider."""
    rw: tuple[Path, ...]  # bound read-write (the module's token store...)
    ro: tuple[Path, ...]  # bound read-only (the module, its config, the PIN file, OPENSSL_CONF)
    env: dict[str, str]


@contextlib.contextmanager
def provider_env(key: Pkcs11Key) -> Iterator[ProviderEnv]:
    """Binds and environment for tools using `key`, with an OpenSSL configuration that
    exists for the duration of the block."""
    rw, ro = sandbox_paths(key)
    with tempfile.TemporaryDirectory(prefix="appsdk-pkcs11-") as tmp:
        conf = Path(tmp) / "openssl-pkcs11.cnf"
        conf.write_text(OPENSSL_CONF)
        yield ProviderEnv(rw, (*ro, Path(tmp)), {"OPENSSL_CONF": str(conf)})


@dataclass(frozen=True)
class Pkcs11Key:
    uri: str
    pin_file: Path | None  # the URI's pin-source=file:..., if any

    def __str__(self) -> str:
        return self.redacted

    @property
    def redacted(self) -> str:
        """The URI without a pin-value: fit for messages and logs."""
        return re.sub(r"(pin-value=)[^&;]*", r"\1***", self.uri)


def is_uri(text: str) -> bool:
    return text.startswith(SCHEME)


DB_KEY = Option("db_key")


def parse_uri(text: str, field: str | Option = DB_KEY, file: str | None = None) -> Pkcs11Key:
    """A PKCS#11 URI that names one private key object; ConfigError for anything else."""
    def bad(why: str) -> ConfigError:
        shown = text if len(text) <= 80 else text[:77] + "..."
        return ConfigError(f"{why}: {shown!r}", field=field, file=file,
                           hint="a PKCS#11 URI looks like 'pkcs11:token=NAME;object=LABEL;"
                           "type=private' (p11tool --list-privkeys or pkcs11-tool -O shows "
                           "the objects of a token)")

    if not is_uri(text):
        raise bad("not a PKCS#11 URI (it starts with 'pkcs11:')")
    if len(text) > MAX_URI:
        raise bad(f"longer than {MAX_URI} characters")
    if not _URI_CHARS.fullmatch(text):
        raise bad("a PKCS#11 URI has no spaces, quotes or control characters "
                  "(percent-encode them)")
    path, _, query = text[len(SCHEME):].partition("?")
    attrs = _attributes(path, ";", bad)
    queries = _attributes(query, "&", bad)
    if not {"object", "id"} & attrs.keys():
        raise bad("the URI names no key (it needs object= or id=)")
    if attrs.get("type", "private") != "private":
        raise bad("the URI names a public object (type= must be private, or left out)")
    pin_file = None
    source = queries.get("pin-source")
    if source is not None:
        where = source.removeprefix("file:")
        if not where.startswith("/"):
            raise bad("pin-source must be file: and an absolute path")
        pin_file = Path(where)
    return Pkcs11Key(uri=text, pin_file=pin_file)


def _attributes(part: str, sep: str, bad: Callable[[str], ConfigError]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in filter(None, part.split(sep)):
        name, eq, value = item.partition("=")
        if not eq or not name:
            raise bad(f"attribute {item!r} has no name=value")
        if name in out:
            raise bad(f"attribute {name!r} given twice")
        try:
            out[name] = urllib.parse.unquote(value, errors="strict")
        except UnicodeDecodeError:
            raise bad(f"attribute {name!r} is not UTF-8 once decoded") from None
    return out


def sandbox_paths(key: Pkcs11Key) -> tuple[tuple[Path, ...], tuple[Path, ...]]:
    """(read-write, read-only) host paths the signing sandbox needs for `key`'s module."""
    rw = tuple(Path(p) for p in os.environ.get(BIND_ENV, "").split(":") if p)
    ro: list[Path] = []
    for name in (MODULE_ENV, "SOFTHSM2_CONF"):
        if os.environ.get(name):
            ro.append(Path(os.environ[name]))
    if key.pin_file is not None:
        ro.append(key.pin_file)
    for path in (*rw, *ro):
        if not path.is_absolute() or not os.path.lexists(path):
            raise ConfigError("no such file or directory for the PKCS#11 module",
                              file=str(path), hint=f"check ${BIND_ENV}, ${MODULE_ENV}, "
                              "$SOFTHSM2_CONF and the URI's pin-source")
    return rw, tuple(dict.fromkeys(ro))
