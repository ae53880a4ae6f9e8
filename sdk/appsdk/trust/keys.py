"""The project's update-signing key: an OpenPGP key in its own GnuPG home, outside the
image. Devices get only the public key (as systemd's import keyring); gpg does the crypto."""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from appsdk.core.errors import (
    AppsdkError,
    CommandFailed,
    ConfigError,
    Option,
    ToolMissing,
    VerifyFailed,
)
from appsdk.core.runner import Runner, require
from appsdk.spec import fields
from appsdk.spec.appliance import Appliance
from appsdk.trust.keydir import prepare_dir, undo_dir

SECURE_BOOT_SUBDIR = "secure-boot"  # trust.secureboot.SUBDIR; may exist before the gpg key
PUBRING = "pubring-export.gpg"  # binary public key, a valid keyring for `gpg --keyring`


@dataclass(frozen=True)
class SigningKey:
    home: Path
    fingerprint: str

    @property
    def public_keyring(self) -> Path:
        return self.home / PUBRING


def default_dir(app_id: str) -> Path:
    env = os.environ.get("APPSDK_KEYS_DIR")
    if env:
        return Path(env) / app_id
    from appsdk.core.datadirs import config_home

    return config_home() / "keys" / app_id


def home_for(app: Appliance, override: Path | None = None) -> Path:
    """The key's GnuPG home for `app`: `override`, else update.key, else the
    per-user default. Whichever it is, never inside the overlay (fields.key_dir): the
    overlay is copied into the image, the private key with it."""
    if override is not None:
        return fields.key_dir(str(override), Option("keys"), base=Path.cwd(),
                              overlay=app.overlay)
    if app.update.key is not None:
        return app.update.key  # checked where appliance.yaml was read
    origin = "APPSDK_KEYS_DIR" if os.environ.get("APPSDK_KEYS_DIR") else "the default key dir"
    return fields.key_dir(str(default_dir(app.id)), origin, base=Path.cwd(),
                          overlay=app.overlay)


def _path(path: Path) -> str:
    # Absolute, so that no path (" x", "-x", "--homedir=...") can read as a gpg option.
    return os.path.abspath(path)


def _gpg(home: Path, *args: str) -> list[str]:
    return [require("gpg"), "--homedir", _path(home), "--batch", "--no-tty",
            "--pinentry-mode", "loopback", "--passphrase", "", *args]


def _stop_agent(home: Path, runner: Runner) -> None:
    # gpg starts an agent per home; do not leave one behind per build or test.
    runner.run(["gpgconf", "--homedir", _path(home), "--kill", "all"], check=False)


def generate(directory: Path, uid: str, runner: Runner) -> SigningKey:
    """A new key in a GnuPG home of its own. The directory is made here with mode 0700; an
    existing one is used only if it is empty, ours and private, and is never chmod-ed
    (`--keys /tmp` must not lock everyone else out of /tmp)."""
    if not uid or any(ord(c) < 32 for c in uid):
        raise ConfigError(f"{uid!r} cannot be a key's user id (empty or control characters)",
                          field="name", hint="give the appliance a one-line name")
    try:
        require("gpg")
        require("gpgconf")
    except ToolMissing as exc:
        raise ToolMissing(f"cannot create a key in {directory}: {exc}", hint=exc.hint) from None
    created = prepare_dir(directory, markers=(PUBRING, "private-keys-v1.d"),
                          what="a signing key", option=Option("keys"), allow=(SECURE_BOOT_SUBDIR,))
    try:
        try:
            runner.run(_gpg(directory, "--quick-gen-key", "--", uid, "ed25519", "sign",
                            "never"))
            key = load(directory, runner, need_pubring=False)
            runner.run(_gpg(directory, "--output", _path(directory / PUBRING), "--export",
                            "--", key.fingerprint))
        finally:
            _stop_agent(directory, runner)
    except BaseException as exc:
        # A half-made home would read as "a key already exists".
        undo_dir(directory, created, keep=(SECURE_BOOT_SUBDIR,))
        if isinstance(exc, CommandFailed):
            raise AppsdkError(f"gpg could not create a key in {directory}:\n{exc.stderr.strip()}",
                              hint="check that gpg works (gpg --version) and that the "
                              "directory is on a local, writable filesystem") from None
        raise
    return key


def load(directory: Path, runner: Runner | None = None,
         need_pubring: bool = True) -> SigningKey:
    """The update-signing key in a GnuPG home (`appsdk keys generate` made it)."""
    runner = runner or Runner()
    if not directory.is_dir():
        raise ConfigError("no update-signing key", file=str(directory),
                          hint="create one with `appsdk keys generate`, or give the "
                          "directory of an existing one", remedy=Option("keys"))
    out = runner.run(_gpg(directory, "--with-colons", "--list-secret-keys")).stdout
    match = re.search(r"^fpr:+([0-9A-F]{40,64}):", out, re.M)
    if not match:
        raise ConfigError("no secret key in this GnuPG home", file=str(directory),
                          hint="create one with `appsdk keys generate`")
    key = SigningKey(directory, match.group(1))
    if need_pubring and not key.public_keyring.exists():
        raise ConfigError(f"{PUBRING} missing", file=str(directory))
    return key


def sign(key: SigningKey, file: Path, runner: Runner) -> Path:
    """Detached binary signature FILE.gpg (what systemd-sysupdate/systemd-pull verify)."""
    signature = file.with_name(file.name + ".gpg")
    signature.unlink(missing_ok=True)
    try:
        runner.run(_gpg(key.home, "--yes", "--local-user", key.fingerprint, "--detach-sign",
                        "--output", _path(signature), "--", _path(file)))
    finally:
        _stop_agent(key.home, runner)
    return signature


def verify(public_keyring: Path, file: Path, signature: Path, runner: Runner) -> None:
    """Check a signature with nothing but the public key, as a device does."""
    with tempfile.TemporaryDirectory(prefix="appsdk-gpg-") as home:
        result = runner.run(_gpg(Path(home), "--no-default-keyring", "--keyring",
                                 _path(public_keyring), "--trust-model", "always",
                                 "--verify", "--", _path(signature), _path(file)), check=False)
        _stop_agent(Path(home), runner)
    if result.returncode != 0:
        raise VerifyFailed(f"bad signature on {file}:\n{result.stderr.strip()}")
