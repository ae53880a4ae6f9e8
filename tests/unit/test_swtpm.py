"""The emulated machine's TPM: QEMU's options from the board data, swtpm itself (a real one:
it must open its socket and answer as a TPM 2.0), and `appsdk run --tpm`."""

from __future__ import annotations

import json
import socket
import struct
from pathlib import Path

import pytest

from appsdk import cli
from appsdk.contract.record import emulator_from_json, emulator_json
from appsdk.core.errors import AppsdkError, ConfigError, PathError
from appsdk.emulate import swtpm
from appsdk.emulate.qemu import VmSpec, qemu_argv
from appsdk.spec.boards import load_board

# TPM_CMD_GET_CAPABILITY on swtpm's control channel (swtpm's ioctl protocol over the socket):
# a 4-byte big-endian command code, answered by a result code and the capability bits.
PTM_GET_CAPABILITY = 1


def spec(tmp: Path, socket_path: Path | None, emulator: str | None = None) -> VmSpec:
    disk = tmp / "disk.img"
    disk.write_bytes(b"\0" * 1024)
    return VmSpec(board=load_board("x86-uefi"), disk=disk, vars_file=tmp / "vars.fd",
                  emulator=emulator, tpm_socket=socket_path)


def test_the_tpm_is_the_boards_device_behind_swtpms_socket(tmp_path: Path) -> None:
    argv = qemu_argv(spec(tmp_path, tmp_path / "tpm" / "swtpm.sock"))
    at = argv.index("-tpmdev")
    assert argv[at - 2:at + 4] == [
        "-chardev", f"socket,id=chrtpm,path={tmp_path}/tpm/swtpm.sock",
        "-tpmdev", "emulator,id=tpm0,chardev=chrtpm", "-device", "tpm-crb,tpmdev=tpm0"]
    assert "-tpmdev" not in qemu_argv(spec(tmp_path, None))  # only when asked for
    assert "tpm-crb,tpmdev=tpm0" in qemu_argv(spec(tmp_path, tmp_path / "s", "q35-ovmf-sb"))


def test_an_emulator_without_a_tpm_or_a_socket_path_qemu_would_split_is_refused(
        tmp_path: Path) -> None:
    from dataclasses import replace

    board = load_board("x86-uefi")
    bare = replace(board, emulators=tuple(replace(e, tpm=None) for e in board.emulators))
    with pytest.raises(ConfigError, match="has no TPM"):
        qemu_argv(replace(spec(tmp_path, tmp_path / "s"), board=bare))
    with pytest.raises(PathError, match="comma"):
        qemu_argv(spec(tmp_path, tmp_path / "a,b" / "swtpm.sock"))


def test_the_tpm_device_is_recorded_with_the_emulator(tmp_path: Path) -> None:
    em = load_board("x86-uefi").emulator_named("q35-ovmf")
    assert em.tpm == "tpm-crb"
    assert emulator_from_json(json.loads(json.dumps(emulator_json(em)))) == em


def test_build_json_may_name_only_a_tpm_device_model(tmp_path: Path) -> None:
    from appsdk.contract.buildinfo import _emulators

    em = emulator_json(load_board("x86-uefi").emulator_named("q35-ovmf"))
    _emulators({"emulators": [em]}, tmp_path / "build.json")
    for bad in ("tpm-crb,chardev=x", "-chardev", "../../x"):
        with pytest.raises(ConfigError, match="tpm"):
            _emulators({"emulators": [{**em, "tpm": bad}]}, tmp_path / "build.json")


def control(sock: Path, command: int) -> bytes:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(str(sock))
        s.sendall(struct.pack(">I", command))
        return s.recv(64)


def test_swtpm_runs_answers_and_keeps_its_state(tmp_path: Path) -> None:
    state = tmp_path / "tpm"
    with swtpm.running(state) as sock:
        assert sock == state / "swtpm.sock" and sock.is_socket()
        answer = control(sock, PTM_GET_CAPABILITY)
        assert len(answer) >= 8 and answer[:4] == b"\0\0\0\0", answer  # TPM_SUCCESS
    assert oct(state.stat().st_mode & 0o777) == "0o700"
    assert not (state / "swtpm.sock").exists() or not _listening(state / "swtpm.sock")
    with swtpm.running(state) as sock:  # the same state directory again: the same device
        assert control(sock, PTM_GET_CAPABILITY)[:4] == b"\0\0\0\0"


def _listening(sock: Path) -> bool:
    try:
        control(sock, PTM_GET_CAPABILITY)
    except OSError:
        return False
    return True


def test_a_state_path_that_is_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "tpm").write_text("not a directory")
    with pytest.raises(PathError, match="not a directory"):
        swtpm.prepare(tmp_path / "tpm")


def test_swtpm_that_dies_at_once_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                             ) -> None:
    monkeypatch.setattr(swtpm, "argv", lambda *a, **k: ["false"])
    with pytest.raises(AppsdkError, match="exited with status 1"), \
            swtpm.running(tmp_path / "tpm"):
        pass


def test_run_print_names_the_tpm_and_starts_nothing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from test_hostile_inputs import gpt

    disk = tmp_path / "disk.img"
    disk.write_bytes(gpt(128))
    assert cli.main(["run", str(disk), "--print", "--accel", "tcg", "--tpm",
                     str(tmp_path / "tpm")]) == 0
    out = capsys.readouterr().out
    assert f"path={tmp_path}/tpm/swtpm.sock" in out and "tpm-crb,tpmdev=tpm0" in out
    assert not (tmp_path / "tpm").exists()
