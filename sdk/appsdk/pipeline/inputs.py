"""What a build starts from, settled before any stage runs: the appliance with its
overrides, the board and firmware chain, the update URL, the signing key (by the key
policy) and the output directory. Bad input is refused here, with nothing made."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

from appsdk.core.errors import ConfigError, Option
from appsdk.core.progress import Event, EventKind, Reporter
from appsdk.core.runner import Runner
from appsdk.spec import fields
from appsdk.spec.appliance import Appliance, Var, load_appliance
from appsdk.spec.boards import Board, load_board
from appsdk.trust import keys, secureboot
from appsdk.trust.keys import SigningKey
from appsdk.trust.secureboot import SecureBootKeys


@dataclass(frozen=True)
class BuildInputs:
    app: Appliance
    board: Board
    chain: str  # the firmware chain, one of the board's options
    url: str | None  # where devices look for updates; None: they do not update
    output: Path  # absolute; not created yet
    epoch: int  # SOURCE_DATE_EPOCH for file times

    @property
    def base(self) -> str:
        return f"{self.app.id}_{self.app.version}"


def resolve_inputs(source: Path, *, board: str | None, version: str | None,
                   output: Path | None, update_url: str | None, firmware: str | None,
                   reporter: Reporter) -> BuildInputs:
    """Everything but the signing key, which `signing_key` loads once the output
    directory is claimed (so a build refused for its output never touches the key)."""
    app = load_appliance(source)
    # Overrides get the validators of the fields they replace; errors name the argument.
    if version is not None:
        app = app.with_version(version, Option("version"))
    url = (app.update.url if update_url is None
           else fields.update_url(update_url, Option("update_url")))
    brd = load_board(board or app.board)
    if not brd.complete:
        reporter.emit(Event(EventKind.INFO, "board",
                            f"warning: board {brd.name} is not complete yet (see its profile)"))
    chain = brd.check_chain(firmware or app.firmware or brd.firmware_chain,
                            file=None if firmware else str(app.source))
    app = var_for_board(app, brd, reporter)
    directory = Path(source if Path(source).is_dir() else Path(source).parent)
    target = (output or directory / "build" / brd.name).resolve()
    return BuildInputs(app, brd, chain, url, target,
                       int(os.environ.get("SOURCE_DATE_EPOCH", "0")))


def var_for_board(app: Appliance, board: Board, reporter: Reporter) -> Appliance:
    """var.encrypt: tpm2 on a board whose profile names no TPM: refused, or (without_tpm:
    plain) built with a plain /var, said as a warning. Everything after sees the result."""
    if not app.var.sealed or board.tpm_modules:
        return app
    if app.var.without_tpm != "plain":
        raise ConfigError(
            f"var.encrypt is tpm2 but board {board.name} has no TPM (its profile names no "
            "tpm_modules)", file=str(app.source), field="var.encrypt",
            hint="set var.without_tpm: plain to build a plain /var for this board, or use a "
                 "board profile with its TPM module (docs/boards.md: a Pi with an SPI TPM)")
    reporter.emit(Event(EventKind.INFO, "board",
                        f"warning: board {board.name} has no TPM: /var stays plain "
                        "(var.without_tpm: plain)"))
    return dataclasses.replace(app, var=Var(encrypt="none", without_tpm="plain"))


def check_var_encryption(app: Appliance, sb: SecureBootKeys | None) -> None:
    """A TPM-sealed /var needs the signed PCR 11 policy: without Secure Boot anything could
    extend PCR 11 to a signed UKI's values; without a PCR key there is no policy."""
    if not app.var.sealed:
        return
    if sb is None:
        raise ConfigError("var.encrypt: tpm2 needs secure_boot: the TPM policy trusts only "
                          "UKIs signed by the appliance's PCR key, and only Secure Boot makes "
                          "sure nothing else ran first", file=str(app.source),
                          field="var.encrypt", hint="turn secure_boot on (docs/tpm.md)")
    if not sb.has_pcr_key():
        raise ConfigError("var.encrypt: tpm2 needs a PCR key in the Secure Boot key set",
                          file=str(sb.directory), field="var.encrypt",
                          hint="add one with appsdk keys secure-boot (docs/tpm.md)")


def signing_key(app: Appliance, key_dir: Path | None, url: str | None,
                runner: Runner) -> SigningKey | None:
    """The key policy. A device that updates must carry the public key, so a build with an
    update URL and no key is an error; without a URL, sign if a key happens to exist."""
    home = keys.home_for(app, key_dir)  # never inside the overlay (it would be imaged)
    return keys.load(home, runner) if url or home.is_dir() else None


def secure_boot_keys(app: Appliance, key_dir: Path | None,
                     override: Path | None) -> SecureBootKeys | None:
    """The Secure Boot key set if appliance.yaml enables secure_boot: `override`, else
    secure_boot.keys, else `secure-boot/` in the update key's directory."""
    if app.secure_boot is None:
        if override is not None:  # a key set given for an image that would not use it
            raise ConfigError("a Secure Boot key set was given, but appliance.yaml does not "
                              "enable secure_boot", file=str(app.source), field="secure_boot",
                              remedy=Option("secure_boot_keys"),
                              hint="add `secure_boot: true` to appliance.yaml, or leave out "
                              "the key set")
        return None
    return secureboot.load(secureboot.directory_for(app, key_dir, override))
