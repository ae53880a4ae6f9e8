"""`appsdk release`: atomic switch, only vouched-for files signed, one architecture per
directory. Real gpg signs and verifies; failures are injected by monkeypatching each step,
kills by SIGKILL of a release running in a subprocess."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appsdk.contract.updatefiles import SUMS, parse_sums, update_names
from appsdk.core.errors import AppsdkError, BuildError, CommandFailed, ConfigError, VerifyFailed
from appsdk.core.runner import Runner
from appsdk.trust import keys
from appsdk.trust.keys import SigningKey
from appsdk.update import release as rel
from appsdk.update.release import MANIFEST, release

REPO = Path(__file__).resolve().parents[2]
Snapshot = dict[str, tuple[int, bytes | None]]
needs_gpg = pytest.mark.skipif(shutil.which("gpg") is None, reason="gpg not installed")


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SigningKey]:
    if shutil.which("gpg") is None:
        pytest.skip("gpg not installed")
    home = tmp_path_factory.mktemp("release-key") / "key"
    yield keys.generate(home, "release test", Runner())
    subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"], check=False)


def make_build(directory: Path, version: str, *, arch: str = "x86-64", app_id: str = "hello",
               salt: str = "", signed_by: str | None = None,
               secure_boot_db: str | None = None, compression: str | None = None) -> Path:
    """A build directory as the pipeline leaves it, with small fake update artifacts
    (compression None: a build.json from before update.compression, i.e. xz)."""
    directory.mkdir(parents=True)
    artifacts = {}
    for kind, name in update_names(app_id, version, compression or "xz").items():
        data = f"{kind} {version} {arch} {salt}".encode() * 100
        (directory / name).write_bytes(data)
        artifacts[f"update-{kind}"] = {"file": name, "size": len(data),
                                       "sha256": hashlib.sha256(data).hexdigest()}
    for kind, name in (("image", f"{app_id}_{version}.img"), ("bmap", "x.img.bmap")):
        artifacts[kind] = {"file": name, "size": 0, "sha256": hashlib.sha256().hexdigest()}
    record = {"id": app_id, "version": version, "board": {"name": "x", "arch": arch},
              "artifacts": artifacts, "update": {"signed_by": signed_by,
                                                 **({"compression": compression}
                                                    if compression else {})},
              "secure_boot": {"db_cert_sha256": secure_boot_db, "enroll": "if-safe"}
              if secure_boot_db else None}
    (directory / "build.json").write_text(json.dumps(record))
    return directory


def snapshot(directory: Path) -> Snapshot:
    """Names, modes and bytes of a tree (the directory itself under "")."""
    if not directory.exists():
        return {}
    shot: Snapshot = {"": (directory.stat().st_mode, None)}
    for path in sorted(directory.rglob("*")):
        shot[str(path.relative_to(directory))] = (
            path.lstat().st_mode, path.read_bytes() if path.is_file() else None)
    return shot


def leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}."))


def check_release(out: Path, key: SigningKey, versions: set[str], clean: bool = True) -> None:
    """OUT is one complete signed release of exactly these versions."""
    keys.verify(key.public_keyring, out / SUMS, out / f"{SUMS}.gpg", Runner())
    listed = parse_sums((out / SUMS).read_text(), "SUMS")
    expected = {name for v in versions for name in update_names("hello", v).values()}
    assert set(listed) == expected | {MANIFEST}
    assert set(os.listdir(out)) == expected | {MANIFEST, SUMS, f"{SUMS}.gpg"}
    for name, sha in listed.items():
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == sha
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["arch"] == "x86-64" and set(manifest["files"]) == expected
    assert not clean or not leftovers(out)


@pytest.fixture
def v1_out(tmp_path: Path, key: SigningKey) -> Path:
    out = tmp_path / "www"
    release(out, [make_build(tmp_path / "b1", "1.0")], key, Runner())
    return out


@needs_gpg
def test_v1_then_v2_into_one_directory(tmp_path: Path, v1_out: Path, key: SigningKey) -> None:
    check_release(v1_out, key, {"1.0"})
    result = release(v1_out, [make_build(tmp_path / "b2", "2.0")], key, Runner())
    check_release(v1_out, key, {"1.0", "2.0"})
    assert result.versions == ("2.0",) and result.published == ("1.0", "2.0")
    assert result.arch == "x86-64" and result.signature == v1_out / "SHA256SUMS.gpg"
    assert set(result.files) == set(os.listdir(v1_out))
    # The same build again changes nothing that matters: same files, same bytes.
    before = {n: (v1_out / n).read_bytes() for n in os.listdir(v1_out) if n.endswith(".xz")}
    release(v1_out, [tmp_path / "b2"], key, Runner())
    assert before == {n: (v1_out / n).read_bytes() for n in before}
    check_release(v1_out, key, {"1.0", "2.0"})


@needs_gpg
def test_release_keeps_directory_mode_and_symlinked_out(tmp_path: Path, key: SigningKey
                                                        ) -> None:
    real = tmp_path / "srv" / "real"
    real.mkdir(parents=True)
    real.chmod(0o751)
    (tmp_path / "link").symlink_to(real)
    release(tmp_path / "link", [make_build(tmp_path / "b1", "1.0")], key, Runner())
    assert (tmp_path / "link").is_symlink() and (real / MANIFEST).is_file()
    assert real.stat().st_mode & 0o7777 == 0o751


def _fail_oserror(*args: Any, **kwargs: Any) -> None:
    raise OSError(errno.ENOSPC, "No space left on device")


def _fail_sign(*args: Any, **kwargs: Any) -> Path:
    raise CommandFailed(["gpg"], 2, "gpg: signing failed")


def _stage_verify_fails(real: Callable[..., None]) -> Callable[..., None]:
    def verify(public: Path, file: Path, signature: Path, runner: Runner) -> None:
        if ".appsdk-stage-" in str(file):
            raise VerifyFailed("bad signature")
        real(public, file, signature, runner)
    return verify


def _write_fails_on_sums(real: Callable[[Path, str], None]) -> Callable[[Path, str], None]:
    def write(path: Path, text: str) -> None:
        if path.name == SUMS:
            raise OSError(errno.EIO, "Input/output error")
        real(path, text)
    return write


STEPS: dict[str, Callable[[pytest.MonkeyPatch], None]] = {
    "copy": lambda mp: mp.setattr(rel, "_copy", _fail_oserror),
    "link": lambda mp: mp.setattr(rel, "_link_checked", _fail_oserror),
    "sums": lambda mp: mp.setattr(rel, "_write", _write_fails_on_sums(rel._write)),
    "sign": lambda mp: mp.setattr(keys, "sign", _fail_sign),
    "verify": lambda mp: mp.setattr(keys, "verify", _stage_verify_fails(keys.verify)),
    "chmod": lambda mp: mp.setattr(Path, "chmod", _fail_oserror),
    "switch": lambda mp: mp.setattr(rel, "_exchange", _fail_oserror),
}


@needs_gpg
@pytest.mark.parametrize("step", sorted(STEPS))
def test_failure_at_each_step_leaves_out_identical(step: str, tmp_path: Path, v1_out: Path,
                                                   key: SigningKey,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    build = make_build(tmp_path / "b2", "2.0")
    before = snapshot(v1_out)
    with monkeypatch.context() as mp:
        STEPS[step](mp)
        with pytest.raises(AppsdkError) as info:
            release(v1_out, [build], key, Runner())
    assert "OUT is unchanged" in (info.value.hint or "") or not isinstance(info.value,
                                                                          BuildError)
    assert snapshot(v1_out) == before and not leftovers(v1_out)
    release(v1_out, [build], key, Runner())
    check_release(v1_out, key, {"1.0", "2.0"})


@needs_gpg
def test_first_release_failure_leaves_nothing(tmp_path: Path, key: SigningKey,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(keys, "sign", _fail_sign)
    with pytest.raises(CommandFailed):
        release(tmp_path / "www", [make_build(tmp_path / "b1", "1.0")], key, Runner())
    assert sorted(os.listdir(tmp_path)) == ["b1"]


@needs_gpg
def test_fallback_to_two_renames(tmp_path: Path, v1_out: Path, key: SigningKey,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    def no_exchange(a: Path, b: Path) -> None:
        raise OSError(errno.EINVAL, "Invalid argument")
    monkeypatch.setattr(rel, "_exchange", no_exchange)
    build = make_build(tmp_path / "b2", "2.0")
    before = snapshot(v1_out)
    real_rename = os.rename
    calls: list[str] = []

    def second_rename_fails(a: Any, b: Any) -> None:
        calls.append(str(b))
        if len(calls) == 2:
            raise OSError(errno.EIO, "Input/output error")
        real_rename(a, b)
    with monkeypatch.context() as mp:
        mp.setattr(os, "rename", second_rename_fails)
        with pytest.raises(BuildError):
            release(v1_out, [build], key, Runner())
    assert snapshot(v1_out) == before and not leftovers(v1_out)
    release(v1_out, [build], key, Runner())
    check_release(v1_out, key, {"1.0", "2.0"})


@needs_gpg
def test_cut_between_fallback_renames_is_undone(tmp_path: Path, v1_out: Path,
                                                key: SigningKey) -> None:
    before = snapshot(v1_out)
    os.rename(v1_out, tmp_path / ".www.appsdk-old-x1")  # killed right after the first rename
    (tmp_path / ".www.appsdk-stage-x2").mkdir()  # and the new set, never published
    (tmp_path / ".www.appsdk-stage-x2" / "hello_9.usr.xz").write_bytes(b"unvouched")
    release(v1_out, [tmp_path / "b1"], key, Runner())
    after = snapshot(v1_out)
    assert {n: b for n, (_, b) in after.items() if n.endswith(".xz")} == {
        n: b for n, (_, b) in before.items() if n.endswith(".xz")}
    check_release(v1_out, key, {"1.0"})


KILL_SCRIPT = textwrap.dedent("""
    import subprocess, sys, time
    from pathlib import Path
    from appsdk.trust import keys
    from appsdk.update import release as rel
    from appsdk.core.runner import Runner
    out, marker, moment, home, *builds = sys.argv[1:]
    # Where to stop: (module, function, which call, run it first?)
    where = {"copy": (rel, "_copy", 2, False), "sign": (keys, "sign", 1, True),
             "verify": (keys, "verify", 2, False),  # the first checks OUT's signature
             "switch": (rel, "_switch", 1, False),
             "after-switch": (rel, "_sync", 5, True),  # the parent, once OUT is swapped
             "gpg": (keys, "sign", 0, False)}  # Runner.run is patched instead
    module, name, nth, first = where[moment]
    real = getattr(module, name)
    calls = []
    def pause(*args, **kwargs):
        calls.append(args)
        if len(calls) == nth:
            if first:
                real(*args, **kwargs)
            Path(marker).write_text(repr(args))
            time.sleep(60)
        return real(*args, **kwargs)
    def gpg_running(self, argv, **kwargs):  # killed while gpg signs, gpg and all
        if "--detach-sign" in argv:
            subprocess.Popen([str(a) for a in argv])
            Path(marker).write_text("gpg")
            time.sleep(60)
        return real(self, argv, **kwargs)
    if moment == "gpg":
        real, Runner.run = Runner.run, gpg_running
    else:
        setattr(module, name, pause)
    runner = Runner()
    rel.release(Path(out), [Path(b) for b in builds], keys.load(Path(home), runner), runner)
""")


@needs_gpg
@pytest.mark.parametrize("moment", ["copy", "gpg", "sign", "verify", "switch",
                                    "after-switch"])
def test_killed_release_leaves_out_identical(moment: str, tmp_path: Path, v1_out: Path,
                                             key: SigningKey) -> None:
    build = make_build(tmp_path / "b2", "2.0")
    before = snapshot(v1_out)
    marker = tmp_path / "marker"
    env = {**os.environ, "PYTHONPATH": str(REPO / "sdk")}
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(v1_out), str(marker),
                             moment, str(key.home), str(build)], env=env,
                            start_new_session=True, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 20
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)  # the whole group: gpg too, as a kill of the job
    _, stderr = proc.communicate()
    assert marker.exists(), stderr.decode()
    if moment == "after-switch":
        assert marker.read_text() == f"({v1_out.parent!r},)"
    if moment == "after-switch":  # past the switch: OUT is the whole new set
        check_release(v1_out, key, {"1.0", "2.0"}, clean=False)
    else:
        assert snapshot(v1_out) == before
    assert leftovers(v1_out)  # what the killed run left; the next run removes it
    release(v1_out, [build], key, Runner())
    check_release(v1_out, key, {"1.0", "2.0"})


@needs_gpg
def test_stray_files_are_refused_never_signed(tmp_path: Path, v1_out: Path,
                                              key: SigningKey) -> None:
    (v1_out / "hello_9.0.usr.xz").write_bytes(b"not from any build")
    before = snapshot(v1_out)
    with pytest.raises(ConfigError, match=r"no release vouches for: hello_9\.0\.usr\.xz") as info:
        release(v1_out, [make_build(tmp_path / "b2", "2.0")], key, Runner())
    assert info.value.hint and "move them out" in info.value.hint
    assert snapshot(v1_out) == before
    assert "hello_9.0.usr.xz" not in (v1_out / SUMS).read_text()


@needs_gpg
def test_directory_from_old_appsdk_is_refused(tmp_path: Path, key: SigningKey) -> None:
    out = tmp_path / "www"
    out.mkdir()
    (out / "hello_1.0.usr.xz").write_bytes(b"old")
    (out / SUMS).write_text("0" * 64 + "  hello_1.0.usr.xz\n")
    before = snapshot(out)
    with pytest.raises(ConfigError, match=r"no appsdk-release\.json") as info:
        release(out, [make_build(tmp_path / "b1", "1.0")], key, Runner())
    assert info.value.hint and "fresh directory" in info.value.hint
    assert snapshot(out) == before
    # An empty directory is a first release (what the VM tests' servers do).
    empty = tmp_path / "empty"
    empty.mkdir()
    release(empty, [tmp_path / "b1"], key, Runner())
    check_release(empty, key, {"1.0"})


@needs_gpg
def test_two_architectures_cannot_collide(tmp_path: Path, v1_out: Path, key: SigningKey
                                          ) -> None:
    arm = make_build(tmp_path / "arm", "2.0", arch="arm64")
    before = snapshot(v1_out)
    with pytest.raises(ConfigError, match="x86-64 release; these builds are for arm64") as i:
        release(v1_out, [arm], key, Runner())
    assert i.value.hint and "www/arm64" in i.value.hint
    for pair in ([tmp_path / "b1", arm], [make_build(tmp_path / "b2", "2.0"), arm]):
        with pytest.raises(ConfigError, match=r"x86-64 \(.*\) and arm64 \(.*\) cannot share"):
            release(tmp_path / "new", pair, key, Runner())
    assert snapshot(v1_out) == before and not (tmp_path / "new").exists()


@needs_gpg
def test_uki_signers_cannot_be_mixed(tmp_path: Path, v1_out: Path, key: SigningKey) -> None:
    """A device enforces one db: a release must not hand it a UKI its firmware refuses
    (the update would spend its boot tries at the firmware and stop at its boot menu)."""
    db_a, db_b = "a" * 64, "b" * 64
    signed = make_build(tmp_path / "s2", "2.0", secure_boot_db=db_a)
    before = snapshot(v1_out)
    with pytest.raises(ConfigError, match="signed for Secure Boot none: not signed; these "
                       "builds are signed for db aaaaaaaaaaaaaaaa"):
        release(v1_out, [signed], key, Runner())
    assert snapshot(v1_out) == before
    other = make_build(tmp_path / "s3", "3.0", secure_boot_db=db_b)
    with pytest.raises(ConfigError, match="signed for different Secure Boot keys"):
        release(tmp_path / "new", [signed, other], key, Runner())
    with pytest.raises(ConfigError, match="signed for different Secure Boot keys"):
        release(tmp_path / "new", [tmp_path / "b1", signed], key, Runner())
    assert not (tmp_path / "new").exists()
    out = tmp_path / "sb"
    release(out, [signed], key, Runner())
    assert json.loads((out / MANIFEST).read_text())["secure_boot_db"] == db_a
    release(out, [make_build(tmp_path / "s4", "4.0", secure_boot_db=db_a)], key, Runner())
    with pytest.raises(ConfigError, match="publishes UKIs signed for Secure Boot db a"):
        release(out, [other], key, Runner())


@needs_gpg
def test_compressions_cannot_be_mixed(tmp_path: Path, v1_out: Path, key: SigningKey) -> None:
    """A device looks only for its own version's suffix (.xz or .gz): a release that mixed
    them would hide every later version from the devices of the earlier one."""
    gz2 = make_build(tmp_path / "g2", "2.0", compression="gzip")
    before = snapshot(v1_out)  # published before the field: xz
    with pytest.raises(ConfigError, match="publishes xz update files; these builds' are gzip"):
        release(v1_out, [gz2], key, Runner())
    assert snapshot(v1_out) == before
    with pytest.raises(ConfigError, match=r"compress their update files differently "
                       r"\(xz and gzip\)"):
        release(tmp_path / "new", [tmp_path / "b1", gz2], key, Runner())
    assert not (tmp_path / "new").exists()
    # An explicit xz is the same as a build.json from before the field.
    release(v1_out, [make_build(tmp_path / "x2", "2.0", compression="xz")], key, Runner())
    out = tmp_path / "gz"
    release(out, [gz2], key, Runner())
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["compression"] == "gzip"
    assert sorted(manifest["files"]) == ["hello_2.0.efi.gz", "hello_2.0.usr.gz",
                                         "hello_2.0.verity.gz"]
    release(out, [make_build(tmp_path / "g3", "3.0", compression="gzip")], key, Runner())
    with pytest.raises(ConfigError, match="publishes gzip update files; these builds' are xz"):
        release(out, [make_build(tmp_path / "x4", "4.0")], key, Runner())


@needs_gpg
def test_changed_artifact_refused_before_anything_changes(tmp_path: Path, v1_out: Path,
                                                          key: SigningKey) -> None:
    build = make_build(tmp_path / "b2", "2.0")
    (build / "hello_2.0.usr.xz").write_bytes(b"changed after the build")
    before = snapshot(v1_out)
    with pytest.raises(VerifyFailed, match=r"hello_2\.0\.usr\.xz does not match its sha256"):
        release(v1_out, [build], key, Runner())
    assert snapshot(v1_out) == before and not leftovers(v1_out)


@needs_gpg
def test_same_version_with_other_bytes_refused(tmp_path: Path, v1_out: Path,
                                               key: SigningKey) -> None:
    other = make_build(tmp_path / "b1-again", "1.0", salt="rebuilt")
    before = snapshot(v1_out)
    with pytest.raises(ConfigError, match=r"1\.0 is already published with other bytes"):
        release(v1_out, [other], key, Runner())
    with pytest.raises(ConfigError, match=r"two different builds of version 1\.0"):
        release(tmp_path / "new", [tmp_path / "b1", other], key, Runner())
    assert snapshot(v1_out) == before


@needs_gpg
def test_tampered_release_directory_refused(tmp_path: Path, v1_out: Path,
                                            key: SigningKey) -> None:
    build = make_build(tmp_path / "b2", "2.0")
    published = v1_out / "hello_1.0.efi.xz"
    published.write_bytes(b"swapped on the server")
    before = snapshot(v1_out)
    with pytest.raises(VerifyFailed, match="no longer matches the sha256"):
        release(v1_out, [build], key, Runner())
    assert snapshot(v1_out) == before and not leftovers(v1_out)
    # A manifest edited to vouch for a stray file: it is not the signed one.
    manifest = json.loads((v1_out / MANIFEST).read_text())
    manifest["files"]["hello_1.0.efi.xz"]["sha256"] = hashlib.sha256(
        published.read_bytes()).hexdigest()
    (v1_out / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(VerifyFailed, match="does not match the signed SHA256SUMS"):
        release(v1_out, [build], key, Runner())


@needs_gpg
def test_build_json_names_outside_refused(tmp_path: Path, key: SigningKey) -> None:
    build = make_build(tmp_path / "deep" / "b1", "1.0")
    record = json.loads((build / "build.json").read_text())
    record["artifacts"]["update-usr"]["file"] = "../../x"
    (build / "build.json").write_text(json.dumps(record))
    with pytest.raises(ConfigError, match="not a plain file name"):
        release(tmp_path / "deep" / "www", [build], key, Runner())
    assert not (tmp_path / "x").exists() and not (tmp_path / "deep" / "www").exists()


@needs_gpg
def test_bad_out_and_concurrent_release(tmp_path: Path, key: SigningKey) -> None:
    build = make_build(tmp_path / "b1", "1.0")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="not a directory"):
        release(tmp_path / "file", [build], key, Runner())
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="dangling symlink"):
        release(tmp_path / "dangling", [build], key, Runner())
    assert not (tmp_path / "nowhere").exists()
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with pytest.raises(BuildError, match="another `appsdk release` is running"):
            release(tmp_path / "www", [build], key, Runner())
    finally:
        os.close(fd)
    with pytest.raises(ConfigError, match="was built for key"):
        release(tmp_path / "www", [make_build(tmp_path / "b2", "2.0", signed_by="AB" * 20)],
                key, Runner())


# --- any build.json or manifest: a value or a ConfigError, never another exception ------

JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=3)
                    | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)
FAKE_KEY = SigningKey(Path("/nonexistent"), "F" * 40)


def _mutated_record(data: st.DataObject, tmp: Path) -> Any:
    record = json.loads((tmp / "good" / "build.json").read_text())
    path = data.draw(st.sampled_from([(), ("id",), ("version",), ("board",), ("board", "arch"),
                                      ("artifacts",), ("artifacts", "update-usr"),
                                      ("artifacts", "update-usr", "file"),
                                      ("artifacts", "update-uki", "size"),
                                      ("artifacts", "update-verity", "sha256"), ("update",)]))
    value = data.draw(JSON)
    if not path:
        return value
    parent = record
    for part in path[:-1]:
        parent = parent[part]
    parent[path[-1]] = value
    return record


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_build_json_is_read_or_refused(tmp_path: Path, data: st.DataObject) -> None:
    if not (tmp_path / "good").exists():
        make_build(tmp_path / "good", "1.0")
    build = tmp_path / "try"
    build.mkdir(exist_ok=True)
    (build / "build.json").write_text(json.dumps(_mutated_record(data, tmp_path)))
    with contextlib.suppress(ConfigError):
        rel._read_builds([build], FAKE_KEY)


@settings(max_examples=100, deadline=None,  # four manifests an example
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=JSON, raw=st.binary(max_size=40))
def test_any_manifest_is_read_or_refused(tmp_path: Path, value: Any, raw: bytes) -> None:
    for content in (json.dumps(value).encode(), raw,
                    json.dumps({"format": 1, "id": "a", "arch": "b", "files": value}).encode(),
                    json.dumps({"format": 1, "id": "a", "arch": "b", "files": {},
                                "compression": value}).encode()):
        (tmp_path / MANIFEST).write_bytes(content)
        with contextlib.suppress(ConfigError):
            rel._load_manifest(tmp_path / MANIFEST)
