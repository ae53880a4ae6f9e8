"""Boot confirmation on the device: health checks gate boot-complete.target (so
systemd-bless-boot marks a boot good only when all pass), a deadline reboots a boot that
never gets there, and systemd's runtime watchdog resets a hung kernel or PID 1."""

from __future__ import annotations

from typing import assert_never

from appsdk.contract.ondevice import File, device_script
from appsdk.core.errors import ConfigError
from appsdk.spec.appliance import Appliance, CommandProbe, HealthCheck, UnitProbe, UrlProbe
from appsdk.spec.boards import Board

# appsdk-lib, which they all source, comes with ondevice.esp_files (every image has it).
DEVICE_TOOLS = ("appsdk-health-check", "appsdk-boot-failed", "appsdk-rollback-check",
                "appsdk-status", "appsdk-identity", "appsdk-bless-check")

BOOT_FAILED_UNIT = """[Unit]
Description=appsdk: a health check failed
DefaultDependencies=no

[Service]
Type=oneshot
ExecStart=/usr/lib/appsdk/appsdk-boot-failed
"""

ROLLBACK_UNIT = """[Unit]
Description=appsdk: record versions that used up their boot tries
RequiresMountsFor=/var/lib /efi
After=local-fs.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/lib/appsdk/appsdk-rollback-check

[Install]
WantedBy=multi-user.target
"""


def systemd_quote(text: str) -> str:
    """One argument for ExecStart=, arriving exactly as written: double-quoted (systemd
    C-unescapes the word first, so \\ and " are escaped and control characters written as
    \\xNN), then specifiers (%%) and variables ($$), which systemd expands after unquoting."""
    if "\0" in text:
        raise ConfigError("a health check command cannot hold a NUL character",
                          field="health", hint="remove the NUL from the command")
    out = []
    for char in text:
        if char in '\\"':
            out.append("\\" + char)
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\x{ord(char):02x}")
        else:
            out.append({"%": "%%", "$": "$$"}.get(char, char))
    return '"' + "".join(out) + '"'


def check_target(check: HealthCheck) -> tuple[str, str]:
    """appsdk-health-check's KIND and TARGET arguments for a check."""
    match check.probe:
        case CommandProbe(command=command):
            return "command", command
        case UnitProbe(unit=unit):
            return "unit", unit
        case UrlProbe(url=url):
            return "url", url
    assert_never(check.probe)


def health_unit_name(check: HealthCheck) -> str:
    return f"appsdk-health-{check.name}.service"


def health_unit(check: HealthCheck) -> str:
    kind, target = check_target(check)
    return f"""[Unit]
Description=appsdk health check: {check.name}
After=multi-user.target
Before=boot-complete.target
OnFailure=appsdk-boot-failed.service

[Service]
Type=oneshot
RemainAfterExit=yes
TimeoutStartSec={check.timeout + 30}
ExecStart=/usr/lib/appsdk/appsdk-health-check {kind} {systemd_quote(target)} {check.timeout}

[Install]
WantedBy=multi-user.target
RequiredBy=boot-complete.target
"""


def deadline_dropin(seconds: int) -> str:
    # Only counted (trial) boots pull boot-complete.target in (systemd-bless-boot needs it),
    # so a blessed system is never rebooted by this.
    return f"""# appsdk: a trial boot that is not confirmed within {seconds}s is reset.
[Unit]
JobTimeoutSec={seconds}
JobTimeoutAction=reboot-force
"""


def watchdog_seconds(app: Appliance, board: Board) -> int | None:
    if board.watchdog is None or app.boot.watchdog == 0:
        return None
    # A timeout above the hardware's maximum fails with EINVAL and leaves no watchdog at all.
    return min(app.boot.watchdog, board.watchdog.max_timeout_s)


def watchdog_conf(seconds: int) -> str:
    return f"""# appsdk: the hardware watchdog resets a hung kernel or PID 1.
[Manager]
RuntimeWatchdogSec={seconds}s
RebootWatchdogSec={max(seconds, 60)}s
"""


def confirmation_files(app: Appliance, board: Board) -> dict[str, File]:
    """Files under /usr for boot confirmation."""
    files: dict[str, File] = {}
    for name in DEVICE_TOOLS:
        files[f"lib/appsdk/{name}"] = File(device_script(name), 0o755)
    files["lib/systemd/system/appsdk-boot-failed.service"] = File(BOOT_FAILED_UNIT)
    files["lib/systemd/system/appsdk-rollback-check.service"] = File(ROLLBACK_UNIT)
    files["lib/systemd/system/boot-complete.target.d/appsdk-deadline.conf"] = File(
        deadline_dropin(app.boot.deadline))
    for check in app.health:
        files[f"lib/systemd/system/{health_unit_name(check)}"] = File(health_unit(check))
    seconds = watchdog_seconds(app, board)
    if seconds:
        files["lib/systemd/system.conf.d/appsdk-watchdog.conf"] = File(watchdog_conf(seconds))
    return files


def confirmation_units(app: Appliance) -> tuple[str, ...]:
    return ("appsdk-rollback-check.service", *(health_unit_name(c) for c in app.health))
