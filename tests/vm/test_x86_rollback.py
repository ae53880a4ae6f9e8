"""Boot confirmation, proven in QEMU: the device of the update story (update_story.py), on
v2, installs a bad v3 and gives it its 3 boot tries. v3 fails in a different way on each
try, chosen by the try systemd-boot counts (LoaderBootCountPath): on the first its health
check fails, on the second the kernel panics (panic=0: only the hardware watchdog resets
it), on the third it never confirms (a unit before boot-complete.target hangs: the boot
deadline resets it). Then systemd-boot falls back to v2 by itself, and appsdk-status on v2
reports v3 as failed. Each outcome is read off the console.

One build and one update for the three ways a trial boot fails: the failure modes are the
device's, not the build's. The update is the update story's last (no boot of its own)."""

from __future__ import annotations

import re
from typing import Any

import pytest
from update_story import DEADLINE, TRIES


@pytest.fixture(scope="module")
def rollback(update_and_rollback: dict[str, dict[str, Any]]) -> dict[str, Any]:
    facts = update_and_rollback["rollback"]
    install = facts["install"]
    assert install["status"] == 0, install["output"]
    return facts


def test_bad_update_uses_its_tries_then_v2_runs(rollback: dict[str, Any]) -> None:
    # v3 went into v1's slot, and v1's UKI made way for it (two instances at most).
    assert sorted(rollback["install"]["after"]["esp"]) == ["hello_2.0.efi",
                                                           f"hello_3.0+{TRIES}-0.efi"]
    # Exactly TRIES boots of v3, each ending in a reset, then systemd-boot picks v2 on its own.
    assert rollback["boots"] == [("3.0", "reset")] * TRIES + [("2.0", "up")], rollback["boots"]
    status = rollback["status"]
    assert status["running"] == "2.0" and status["blessed"] is True
    assert status["failed"] == ["3.0"]
    assert status["installed"] == ["2.0", "3.0"]
    assert sorted(rollback["esp"]) == ["hello_2.0.efi", f"hello_3.0+0-{TRIES}.efi"]
    assert "used up its boot tries" in rollback["journal"]


def test_every_try_and_the_fallback_open_the_sealed_var(
        rollback: dict[str, Any], update_and_rollback: dict[str, dict[str, Any]]) -> None:
    """/var is sealed to the TPM (update_story.py): v3's tries open it (the health check and
    the hang come after that, the panic too), and so does the v2 the device falls back to."""
    update = update_and_rollback["update"]
    assert rollback["var"] == update["var1"]  # the token v1 wrote, the same seal
    for console in rollback["consoles"]:
        assert "/var is locked" not in console and "Please enter passphrase" not in console
    assert all("appsdk: /var recovery key" not in c for c in rollback["consoles"])


def test_every_try_and_the_fallback_ran_under_secure_boot(rollback: dict[str, Any]) -> None:
    for console in rollback["consoles"]:
        assert "EFI stub: UEFI Secure Boot is enabled." in console


# Per try: the mode v3 chose, what its console must show, and what it must not. The last
# lines before a reset may be lost with the emulator (the console log ends where the process
# did), so the signs are what comes first: the check's verdict, the panic, the start of
# systemd-shutdown.
SHUTDOWN = "systemd-shutdown[1]:"
SIGNS = {
    "fail": ("health check failed on trial boot of 3.0", ["Kernel panic - not syncing"]),
    "panic": ("Kernel panic - not syncing: sysrq triggered crash",  # reset by the watchdog
              ["health check failed", SHUTDOWN]),
    "hang": (SHUTDOWN,  # reboot-force at the deadline
             ["health check failed", "Kernel panic - not syncing"]),
}
def shutdown_started(console: str) -> float:
    """The kernel's timestamp of the first systemd-shutdown line (seconds since boot)."""
    match = re.search(r"\[\s*(\d+\.\d+)\] systemd-shutdown\[1\]:", console)
    assert match, "no systemd-shutdown line"
    return float(match.group(1))


@pytest.mark.parametrize("attempt, mode", [(1, "fail"), (2, "panic"), (3, "hang")],
                         ids=["check-fails", "kernel-panics", "never-confirms"])
def test_each_try_fails_its_own_way_and_is_reset(rollback: dict[str, Any], attempt: int,
                                                 mode: str) -> None:
    """A failing check reboots at once, a panic is reset only by the watchdog, a boot that
    never confirms only by the deadline: each try's console shows its own cause and no
    other."""
    console = rollback["consoles"][attempt - 1]
    assert f"test-v3: try {attempt}: {mode}" in console
    sign, absent = SIGNS[mode]
    assert sign in console
    for other in absent:
        assert other not in console, (mode, other)
    if mode == "hang":  # nothing but the deadline asked for this reboot, and not before it
        assert shutdown_started(console) >= DEADLINE, shutdown_started(console)
