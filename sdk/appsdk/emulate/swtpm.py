"""A software TPM 2.0 (swtpm) for an emulated machine. Its state directory is the device's
TPM: kept across boots it holds what the TPM sealed, a new one is another device (or a
cleared TPM). QEMU reaches it through a control socket inside that directory."""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from appsdk.core.errors import AppsdkError, PathError, ToolMissing
from appsdk.core.runner import Runner

SOCKET = "swtpm.sock"
START_S = 10.0


def socket_of(state: Path) -> Path:
    return state / SOCKET


def argv(swtpm: str, state: Path, daemon: bool) -> list[str]:
    """swtpm in socket mode for QEMU's `-tpmdev emulator`: TPM 2.0, state in `state`, the
    control channel on its socket (QEMU sends the init and the data over it). `daemon`: it
    goes to the background and ends when QEMU disconnects (for `appsdk run`, which becomes
    QEMU)."""
    out = [swtpm, "socket", "--tpm2", "--tpmstate", f"dir={state}",
           "--ctrl", f"type=unixio,path={socket_of(state)}",
           "--log", f"file={state / 'swtpm.log'},level=1"]
    return [*out, "--daemon", "--terminate"] if daemon else out


def prepare(state: Path) -> Path:
    """The state directory, made private if new; refused if it is not a directory."""
    if state.exists() and not state.is_dir():
        raise PathError(f"{state}: not a directory (a TPM state directory)",
                        hint="name a directory for the emulated TPM's state")
    state.mkdir(mode=0o700, parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        socket_of(state).unlink()  # a stale socket from a TPM that went away
    return state


def find(runner: Runner) -> str:
    try:
        return runner.which("swtpm")
    except ToolMissing:
        raise ToolMissing("swtpm not found (the emulated machine's TPM)",
                          hint="apt-get install swtpm swtpm-tools") from None


def wait_for_socket(state: Path, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + START_S
    while not socket_of(state).exists():
        if proc is not None and proc.poll() is not None:
            raise AppsdkError(f"swtpm exited with status {proc.returncode} before it listened",
                              hint=f"see {state / 'swtpm.log'}")
        if time.monotonic() > deadline:
            raise AppsdkError(f"swtpm did not open {socket_of(state)} in {START_S:.0f}s",
                              hint=f"see {state / 'swtpm.log'}")
        time.sleep(0.05)


def start_daemon(state: Path, runner: Runner) -> Path:
    """Start swtpm in the background for one QEMU run; returns its socket."""
    runner.run(argv(find(runner), prepare(state), daemon=True), timeout=30)
    wait_for_socket(state)
    return socket_of(state)


@contextlib.contextmanager
def running(state: Path, runner: Runner | None = None) -> Iterator[Path]:
    """swtpm for the duration of the block (one boot); yields its socket."""
    swtpm = find(runner or Runner())
    proc = subprocess.Popen(argv(swtpm, prepare(state), daemon=False),
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for_socket(state, proc)
        yield socket_of(state)
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
                proc.wait()
