"""Provisioning over a serial console: per-device identity into /var, files pushed
binary-safe, status read back, optionally an update installed from pushed files. What
each device gets is a plan (deliver/serialplan.py); its names are re-exported here."""

from __future__ import annotations

import json
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appsdk.contract.updatefiles import SUMS, SUMS_SIGNATURE, parse_sums
from appsdk.core.errors import AppsdkError, ConfigError
from appsdk.core.progress import Event, EventKind, NullReporter, Reporter
from appsdk.deliver.console import SerialConsole, Shell
from appsdk.deliver.filepush import PushResult, push_bytes, run_checked
from appsdk.deliver.serialplan import (
    DevicePlan,
    FileSpec,
    Plan,
    apply_overrides,
    load_plan,
    parse_credential_spec,
    parse_file_spec,
    select_device,
)

IDENTITY = "/var/lib/appsdk/identity"
UPDATES = "/var/lib/appsdk/updates"


@dataclass
class ProvisionReport:
    port: str
    serial: str
    hostname: str
    ok: bool = False
    seconds: float = 0.0
    files: list[dict[str, Any]] = field(default_factory=list)
    status: dict[str, Any] = field(default_factory=dict)
    update: str = ""
    error: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"event": "device", "port": self.port, "serial": self.serial,
                "hostname": self.hostname, "result": "ok" if self.ok else "failed",
                "seconds": round(self.seconds, 1), "files": self.files,
                "status": self.status, "update": self.update, "error": self.error}


def _record(result: PushResult) -> dict[str, Any]:
    return {"dest": result.dest, "bytes": result.size, "sha256": result.sha256,
            "seconds": round(result.seconds, 2), "retries": result.retries}


def identity_files(plan: DevicePlan) -> dict[str, tuple[bytes, int]]:
    """{device path: (content, mode)} for the identity kept in /var."""
    out: dict[str, tuple[bytes, int]] = {}
    if plan.hostname:
        out[f"{IDENTITY}/hostname"] = (plan.hostname.encode() + b"\n", 0o644)
    if plan.serial:
        out[f"{IDENTITY}/serial"] = (plan.serial.encode() + b"\n", 0o644)
    if plan.update_url:
        out[f"{IDENTITY}/update-url"] = (plan.update_url.encode() + b"\n", 0o644)
    if plan.authorized_keys:
        keys = b"".join(k.read_bytes().rstrip(b"\n") + b"\n" for k in plan.authorized_keys)
        out[f"{IDENTITY}/authorized_keys"] = (keys, 0o600)
    for name, path in plan.credentials:
        out[f"{IDENTITY}/credentials/{name}"] = (path.read_bytes(), 0o600)
    return out


def read_status(shell: Shell) -> dict[str, Any]:
    out = run_checked(shell, "appsdk-status --json")
    try:
        status: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise AppsdkError(
            f"appsdk-status printed something that is not JSON: {out[-200:]}") from None
    return status


def update_files(update_dir: Path) -> list[Path]:
    """SHA256SUMS, its signature and every file it lists, from a release or build dir."""
    sums, signature = update_dir / SUMS, update_dir / SUMS_SIGNATURE
    if not sums.is_file() or not signature.is_file():
        raise ConfigError("not an update directory: needs SHA256SUMS and SHA256SUMS.gpg",
                          file=str(update_dir), hint="use a build or `appsdk release` output")
    try:
        text = sums.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"not UTF-8 (byte offset {exc.start})", file=str(sums),
                          hint="use a build or `appsdk release` output") from None
    # Names, never paths: a line naming /etc/shadow must not push the host's file.
    files = [update_dir / n for n in parse_sums(text, str(sums))]
    for path in files:
        if not path.is_file():
            raise ConfigError("is listed in SHA256SUMS but is not a file there",
                              file=str(path), hint="copy the whole update directory")
    return [*files, sums, signature]


def install_local_update(shell: Shell, directory: str = UPDATES) -> str:
    """Install the update whose SHA256SUMS, signature and artifacts are in `directory` on
    the device: the image's own transfer definitions, with file://DIRECTORY/ as source.
    systemd-pull reads file:// URLs like http:// ones, so SHA256SUMS.gpg is verified
    against the image's keyring exactly as for a download. appsdk-update runs sysupdate
    with the ESP writable and syncs before it reports success. Returns sysupdate's output."""
    defs = "/run/appsdk-local-update.d"
    # transfer_with_source (appsdk-lib) rewrites the source line without sed, so a
    # directory holding & | or % arrives as written; a subshell keeps the login shell clean.
    url = shlex.quote("file://" + directory.rstrip("/") + "/")
    command = (
        f"(rm -rf {defs} && mkdir -p {defs} && . /usr/lib/appsdk/appsdk-lib && "
        "for t in /usr/lib/sysupdate.d/*.transfer; do "
        f"transfer_with_source {url} < \"$t\" > {defs}/\"${{t##*/}}\" || exit 1; done && "
        f"/usr/bin/appsdk-update --no-pager --definitions={defs} update 2>&1)")
    return run_checked(shell, command, timeout=900, attempts=1)


def provision_serial(port: str, plan: DevicePlan, *, baud: int = 115200,
                     update_dir: Path | None = None, reporter: Reporter | None = None,
                     log: Path | None = None, shell: Shell | None = None,
                     line_rate: float | None = None) -> ProvisionReport:
    """Provision one device on `port` (anything pyserial opens). Never raises for a device
    problem: the report says what failed (ok=False, error=...)."""
    reporter = reporter or NullReporter()
    # Input faults are the caller's, found before a device is waited for or logged in on.
    updates = update_files(update_dir) if update_dir is not None else []
    report = ProvisionReport(port, plan.serial, plan.hostname)
    start = time.monotonic()
    rate = line_rate or baud / 10
    console = None
    try:
        if shell is None:
            console = SerialConsole(port, baud=baud)
            shell = Shell(console, log=log)
        reporter.emit(Event(EventKind.STAGE_START, "attach", f"waiting for a shell on {port}"))
        shell.attach(plan.user, plan.password)
        pushes: list[tuple[str, bytes, int]] = [
            (dest, data, mode) for dest, (data, mode) in identity_files(plan).items()]
        pushes += [(f.dest, f.src.read_bytes(), f.mode) for f in plan.files]
        pushes += [(f"{UPDATES}/{p.name}", p.read_bytes(), 0o644) for p in updates]
        total = sum(len(d) for _, d, _ in pushes)
        done = 0
        for dest, data, mode in pushes:
            reporter.emit(Event(EventKind.PROGRESS, "push", f"push {dest} ({len(data)} bytes)",
                                data={"done": done, "total": total, "file": dest}))
            report.files.append(_record(push_bytes(shell, data, dest, mode, line_rate=rate)))
            done += len(data)
        run_checked(shell, "/usr/lib/appsdk/appsdk-identity")
        if update_dir is not None:
            reporter.emit(Event(EventKind.STAGE_START, "update",
                                "systemd-sysupdate from pushed files"))
            report.update = install_local_update(shell)[-2000:]
            run_checked(shell, f"rm -rf {UPDATES}")
        report.status = read_status(shell)
        if plan.hostname and report.status.get("hostname") != plan.hostname:
            raise AppsdkError(f"hostname is {report.status.get('hostname')!r} after "
                              f"provisioning, not {plan.hostname!r}")
        report.ok = True
    except (AppsdkError, OSError) as exc:
        report.error = str(exc)
    finally:
        report.seconds = time.monotonic() - start
        if console is not None:
            console.close()
    return report


__all__ = ["IDENTITY", "UPDATES", "DevicePlan", "FileSpec", "Plan", "ProvisionReport",
           "apply_overrides", "identity_files", "install_local_update", "load_plan",
           "parse_credential_spec", "parse_file_spec", "provision_serial", "read_status",
           "select_device", "update_files"]
