"""The project's update-signing key: an OpenPGP key in its own GnuPG home, outside the
image. Devices get only the public key (as systemd's import keyring); gpg does the crypto."""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError, VerifyFailed
from .runner import Runner, require

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
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "appsdk" / "keys" / app_id


def _gpg(home: Path, *args: str) -> list[str]:
    return [require("gpg"), "--homedir", str(home), "--batch", "--no-tty",
            "--pinentry-mode", "loopback", "--passphrase", "", *args]


def _stop_agent(home: Path, runner: Runner) -> None:
    # gpg starts an agent per home; do not leave one behind per build or test.
    runner.run(["gpgconf", "--homedir", str(home), "--kill", "all"], check=False)


def generate(directory: Path, uid: str, runner: Runner) -> SigningKey:
    if (directory / PUBRING).exists() or (directory / "private-keys-v1.d").exists():
        raise ConfigError("a signing key already exists here; not overwriting",
                          file=str(directory), hint="use it, or choose another --keys DIR")
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    try:
        runner.run(_gpg(directory, "--quick-gen-key", uid, "ed25519", "sign", "never"))
        key = load(directory, runner, need_pubring=False)
        runner.run(_gpg(directory, "--output", str(directory / PUBRING), "--export",
                        key.fingerprint))
    finally:
        _stop_agent(directory, runner)
    return key


def load(directory: Path, runner: Runner, need_pubring: bool = True) -> SigningKey:
    if not directory.is_dir():
        raise ConfigError("no update-signing key", file=str(directory),
                          hint="create one with `appsdk keys generate`, or point --keys at it")
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
                        "--output", str(signature), str(file)))
    finally:
        _stop_agent(key.home, runner)
    return signature


def verify(public_keyring: Path, file: Path, signature: Path, runner: Runner) -> None:
    """Check a signature with nothing but the public key, as a device does."""
    with tempfile.TemporaryDirectory(prefix="appsdk-gpg-") as home:
        result = runner.run(_gpg(Path(home), "--no-default-keyring", "--keyring",
                                 str(public_keyring.resolve()), "--trust-model", "always",
                                 "--verify", str(signature), str(file)), check=False)
        _stop_agent(Path(home), runner)
    if result.returncode != 0:
        raise VerifyFailed(f"bad signature on {file}:\n{result.stderr.strip()}")
