"""appsdk.build() end to end, with a FakeRunner playing every tool the build runs (in and
out of the bwrap sandbox) on small inputs: what a build publishes, and that a failing or
interrupted tool in any stage leaves the previous build as it was. No root, no network,
no real program: PATH holds only stubs that are never executed."""

from __future__ import annotations

import fcntl
import gzip
import hashlib
import json
import lzma
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from appsdk.contract.buildinfo import BUILD_JSON, load_build
from appsdk.contract.updatefiles import SUMS, parse_sums
from appsdk.core import foreign
from appsdk.core.errors import BuildError, CommandFailed, ConfigError
from appsdk.core.progress import RecordingReporter
from appsdk.core.runner import Answer, Call, FakeRunner, Result, creates, fails
from appsdk.pipeline.builder import BuildResult, build

HELLO = Path(__file__).resolve().parents[2] / "examples" / "hello"
KERNEL = "6.12.9+test-amd64"
FINGERPRINT = "0123456789ABCDEF0123456789ABCDEF01234567"
# What `build` publishes for examples/hello 1.0 (besides build.json), by artifact kind.
PUBLISHED = {
    "image": "hello_1.0.img", "bmap": "hello_1.0.img.bmap", "uki": "hello_1.0.efi",
    "usr": "hello_1.0.usr", "verity": "hello_1.0.verity", "sums": SUMS,
    "signature": f"{SUMS}.gpg", "update-uki": "hello_1.0.efi.xz",
    "update-usr": "hello_1.0.usr.xz", "update-verity": "hello_1.0.verity.xz",
}
UPDATE_FILES = {"hello_1.0.efi.xz", "hello_1.0.usr.xz", "hello_1.0.verity.xz"}


def positional(call: Call) -> list[str]:
    return [a for a in call.argv[1:] if not a.startswith("-")]


def write_tree(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)


@dataclass
class Tools:
    """Plays the build's programs as the real ones would, on tiny inputs. `tag` is in every
    file a tool writes, so a file a later build overwrote shows."""

    tag: str

    def answers(self) -> dict[str, Answer]:
        return {"mmdebstrap": self.mmdebstrap, "cp": self.cp, "dracut": self.dracut,
                "mkfs.erofs": self.mkfs_erofs, "veritysetup": self.veritysetup,
                "ukify": self.ukify, "systemd-repart": self.repart, "xz": self.xz,
                "gzip": self.gzip, "gpg": self.gpg}

    def data(self, what: str, size: int = 8192) -> bytes:
        return (f"{self.tag}:{what}:".encode() * size)[:size]

    def mmdebstrap(self, call: Call) -> None:
        target = Path(positional(call)[1])  # SUITE TARGET MIRROR [SOURCES...]
        write_tree(target, {"usr/lib/os-release": 'ID=debian\nVERSION_ID="13"\n',
                            "etc/hostname": "debian\n"})
        if call.option("--architectures") is None:
            return  # the tools tree
        write_tree(target, {
            f"boot/vmlinuz-{KERNEL}": self.tag,
            f"usr/lib/modules/{KERNEL}/kernel/sound/snd.ko": "module",
            f"usr/lib/modules/{KERNEL}/kernel/fs/erofs.ko": "module",
            "usr/lib/systemd/boot/efi/systemd-bootx64.efi": "systemd-boot",
            "usr/lib/systemd/boot/efi/linuxx64.efi.stub": "stub",
            "usr/lib/systemd/system/systemd-networkd.service": "[Service]\n",
            "usr/lib/systemd/system/apt-daily.timer": "[Timer]\n",
        })

    def cp(self, call: Call) -> Result | None:
        src, dst = call.argv[-2:]
        if call.argv[1:-2] != ("-a", "--reflink=auto") or os.path.exists(dst):
            return call.fail(f"cp: unexpected use: {call.argv}")
        shutil.copytree(src, dst, symlinks=True)
        return None

    def dracut(self, call: Call) -> Result:
        assert call.tree is not None and call.env.get("SOURCE_DATE_EPOCH") == "0"
        return creates(-1, self.data("initrd"))(call)

    def mkfs_erofs(self, call: Call) -> Result:
        source = Path(call.argv[-1])  # mkfs.erofs ... OUTPUT SOURCE_DIR
        if not call.readable(source) or not source.is_dir():
            return call.fail(f"mkfs.erofs: failed to open {source}")
        return creates(-2, self.data("erofs"))(call)

    def veritysetup(self, call: Call) -> Result:
        data = Path(call.argv[-2])
        if not call.readable(data) or not data.is_file():
            return call.fail(f"Cannot open device {data}.")
        roothash = hashlib.sha256(data.read_bytes()).hexdigest()
        return creates(-1, self.data("verity", 4096), stdout=(
            f"VERITY header information for {call.argv[-1]}\nHash type:       \t1\n"
            f"Data blocks:     \t2\nHash algorithm:  \tsha256\nRoot hash:      \t{roothash}\n"
        ))(call)

    def ukify(self, call: Call) -> Result:
        for option in ("--linux", "--initrd", "--stub"):
            if not call.readable(Path(call.arg(option))):
                return call.fail(f"ukify: {call.arg(option)}: No such file or directory")
        return creates("--output", self.data("uki"))(call)

    def repart(self, call: Call) -> Result:
        if "--version" in call.argv:
            return call.ok("systemd 257 (257.4-1)\n+PAM +AUDIT +SELINUX\n")
        image = Path(call.argv[-1])
        if not call.writable(image):
            return call.fail(f"Failed to open {image}: Read-only file system")
        with image.open("wb") as f:  # sparse, as repart writes it: data, a hole, data
            f.write(self.data("esp", 65536))
            f.seek(1 << 20)
            f.write(self.data("usr", 65536))
        rows = [{"type": "esp", "label": "esp", "uuid": "1" * 32, "offset": 0,
                 "raw_size": 65536},
                {"type": "usr", "label": "hello_1.0", "uuid": "2" * 32, "offset": 1 << 20,
                 "raw_size": 65536}]
        return call.ok(json.dumps(rows))

    def xz(self, call: Call) -> Result | None:
        source = Path(call.argv[-1])
        if call.stdout is None or not call.readable(source):
            return call.fail(f"xz: {source}: No such file or directory")
        call.stdout.write_bytes(lzma.compress(source.read_bytes()))
        return None

    def gzip(self, call: Call) -> Result | None:
        source = Path(call.argv[-1])
        if call.stdout is None or not call.readable(source) or "-n" not in call.argv:
            return call.fail(f"gzip: {source}: No such file or directory (or no -n)")
        call.stdout.write_bytes(gzip.compress(source.read_bytes(), mtime=0))
        return None

    def gpg(self, call: Call) -> Result | None:
        if "--list-secret-keys" in call.argv:
            return call.ok(f"sec:u:255:22:89ABCDEF01234567:1700000000:::u:::scESC:::+:::"
                           f"ed25519:::0:\nfpr:::::::::{FINGERPRINT}:\n")
        if "--detach-sign" in call.argv:
            return creates("--output", self.data("signature", 119))(call)
        return None


@dataclass
class Project:
    source: Path
    output: Path
    keys: Path
    root: Path
    monkeypatch: pytest.MonkeyPatch

    def build(self, tools: Tools | FakeRunner, cache: str = "cache",
              reporter: RecordingReporter | None = None) -> BuildResult:
        """One build with its own cache directory (a fresh one runs every stage)."""
        self.monkeypatch.setenv("APPSDK_CACHE_DIR", str(self.root / cache))
        runner = tools if isinstance(tools, FakeRunner) else FakeRunner(answers=tools.answers())
        return build(self.source, output=self.output, runner=runner, key_dir=self.keys,
                     reporter=reporter)


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Project:
    return make_project(tmp_path, monkeypatch)


def make_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Project:
    source = tmp_path / "hello"
    shutil.copytree(HELLO, source, symlinks=True)
    keys = tmp_path / "keys"
    keys.mkdir(mode=0o700)
    (keys / "pubring-export.gpg").write_bytes(b"public key")
    # Stages that call `require` directly (not runner.which) find these; nothing runs them.
    stubs = tmp_path / "bin"
    stubs.mkdir()
    for tool in ("gpg", "gpgconf", "mmdebstrap"):
        (stubs / tool).write_text("#!/bin/sh\nexit 127\n")
        (stubs / tool).chmod(0o755)
    monkeypatch.setenv("PATH", str(stubs))
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    # The fake tools run anywhere: no qemu-user needed whatever this host's architecture.
    monkeypatch.setattr(foreign, "needs_emulation", lambda arch, host=None: False)
    return Project(source, tmp_path / "out", keys, tmp_path, monkeypatch)


def published(output: Path) -> dict[str, bytes]:
    """Every file of the output directory but the staging area, with its bytes."""
    if not output.is_dir():
        return {}
    return {p.name: p.read_bytes() for p in output.iterdir() if p.name != ".work"}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def assert_consistent(output: Path) -> None:
    """No half-published build: a build.json there describes exactly the files there."""
    files = published(output)
    if BUILD_JSON not in files:
        return
    record = json.loads(files[BUILD_JSON])
    for kind, entry in record["artifacts"].items():
        data = files[entry["file"]]
        assert (len(data), sha256(data)) == (entry["size"], entry["sha256"]), kind
    sums = parse_sums(files[SUMS].decode(), SUMS)
    assert {name: sha256(files[name]) for name in sums} == sums


def test_a_build_publishes_every_artifact_and_build_json_and_nothing_else(
        project: Project) -> None:
    reporter = RecordingReporter()
    result = project.build(Tools("A"), reporter=reporter)

    files = published(project.output)
    assert sorted(os.listdir(project.output)) == sorted([*PUBLISHED.values(), BUILD_JSON])
    record = load_build(project.output)
    assert {k: a["file"] for k, a in record["artifacts"].items()} == PUBLISHED
    assert {k: a.path.name for k, a in result.artifacts.items()} == PUBLISHED
    assert_consistent(project.output)
    # SHA256SUMS lists exactly the update files, and each is the xz of its artifact.
    assert set(parse_sums(files[SUMS].decode(), SUMS)) == UPDATE_FILES
    for kind in ("uki", "usr", "verity"):
        packed = files[PUBLISHED[f"update-{kind}"]]
        assert lzma.decompress(packed) == files[PUBLISHED[kind]]
    # veritysetup's root hash (of the /usr image) pins /usr in the UKI's command line.
    roothash = sha256(files[PUBLISHED["usr"]])
    assert record["verity"]["roothash"] == roothash and f"usrhash={roothash}" in record["cmdline"]
    assert record["update"]["signed_by"] == FINGERPRINT
    assert record["tools"]["systemd"] == "systemd 257 (257.4-1)"
    assert [p["label"] for p in record["partitions"]] == ["esp", "hello_1.0"]
    assert record["kernel"] == KERNEL
    assert not any(e.kind == "stage-failed" for e in reporter.events)


def test_update_compression_gzip_names_records_and_packs_the_update_files(
        project: Project) -> None:
    config = project.source / "appliance.yaml"
    text = config.read_text()
    assert "\nupdate:\n" in text
    config.write_text(text.replace("\nupdate:\n", "\nupdate:\n  compression: gzip\n", 1))
    project.build(Tools("A"))
    files = published(project.output)
    record = load_build(project.output)
    assert record["update"]["compression"] == "gzip"
    assert set(parse_sums(files[SUMS].decode(), SUMS)) == {
        "hello_1.0.efi.gz", "hello_1.0.usr.gz", "hello_1.0.verity.gz"}
    for kind in ("uki", "usr", "verity"):
        packed = files[record["artifacts"][f"update-{kind}"]["file"]]
        assert gzip.decompress(packed) == files[PUBLISHED[kind]]
    assert_consistent(project.output)


def test_a_rebuild_replaces_the_previous_build(project: Project) -> None:
    project.build(Tools("A"))
    project.build(Tools("B"), cache="cache2")
    files = published(project.output)
    assert sorted(files) == sorted([*PUBLISHED.values(), BUILD_JSON])
    assert b"B:uki:" in files[PUBLISHED["uki"]] and b"A:" not in files[PUBLISHED["uki"]]
    assert_consistent(project.output)


# program -> the stage whose failure it makes (progress events name the stage)
FAILING = {
    "mmdebstrap": "tools", "cp": "customize", "systemctl": "customize",
    "depmod": "customize", "dracut": "initrd", "mkfs.erofs": "usr", "veritysetup": "usr",
    "ukify": "uki", "systemd-repart": "disk", "xz": "update",
}


@pytest.mark.parametrize("previous", [True, False], ids=["over-a-build", "first-build"])
@pytest.mark.parametrize("program", [*FAILING, "gpg"])
def test_a_failing_tool_leaves_the_previous_build_untouched(
        project: Project, program: str, previous: bool) -> None:
    if previous:
        project.build(Tools("A"))
    before = published(project.output)
    answers = Tools("B").answers()
    answers[program] = fails(f"{program}: something broke (B)", returncode=3)
    reporter = RecordingReporter()

    with pytest.raises(CommandFailed) as info:
        project.build(FakeRunner(answers=answers), cache="fresh", reporter=reporter)

    assert program in " ".join(info.value.argv) and info.value.returncode == 3
    assert f"{program}: something broke (B)" in str(info.value)
    assert published(project.output) == before
    assert (BUILD_JSON in before) == previous
    if program in FAILING:  # gpg first fails loading the key, before any stage
        failed = [e.stage for e in reporter.events if e.kind == "stage-failed"]
        assert failed == [FAILING[program]]


def test_veritysetup_without_a_root_hash_is_a_build_error(project: Project) -> None:
    project.build(Tools("A"))
    before = published(project.output)
    answers = Tools("B").answers()
    answers["veritysetup"] = creates(-1, b"tree", stdout="VERITY header information\n")
    with pytest.raises(BuildError, match="veritysetup printed no root hash"):
        project.build(FakeRunner(answers=answers))
    assert published(project.output) == before


def test_a_usr_image_over_the_slot_names_partitions_usr(project: Project) -> None:
    def huge_erofs(call: Call) -> None:
        with open(call.argv[-2], "wb") as f:
            f.truncate(2 << 30)  # sparse: larger than hello's 1G slot, costs nothing

    answers = Tools("A").answers()
    answers["mkfs.erofs"] = huge_erofs
    with pytest.raises(ConfigError) as info:
        project.build(FakeRunner(answers=answers))
    assert info.value.field == "partitions.usr"
    assert published(project.output) == {}


def interrupt(program: str, when: Callable[[Call], bool] = lambda call: True) -> Answer:
    def handler(call: Call) -> Result | None:
        if when(call):
            raise KeyboardInterrupt
        answer = Tools("B").answers()[program]
        return answer(call) if callable(answer) else answer
    return handler


@pytest.mark.parametrize("program", ["dracut", "mkfs.erofs", "ukify", "xz", "gpg"])
def test_an_interrupted_build_publishes_nothing(project: Project, program: str) -> None:
    project.build(Tools("A"))
    before = published(project.output)
    answers = Tools("B").answers()
    # (gpg: when it signs SHA256SUMS, not when the key is loaded before the first stage)
    answers[program] = interrupt(program, lambda call: "--list-secret-keys" not in call.argv)
    with pytest.raises(KeyboardInterrupt):
        project.build(FakeRunner(answers=answers), cache="fresh")
    assert published(project.output) == before
    assert_consistent(project.output)


def after_the_last_stage(call: Call) -> bool:
    return "--version" in call.argv  # build.json's tools.systemd


def test_an_interrupt_after_the_last_stage_leaves_no_stale_build_json(
        project: Project) -> None:
    project.build(Tools("A"))
    answers = Tools("B").answers()
    answers["systemd-repart"] = interrupt("systemd-repart", after_the_last_stage)
    with pytest.raises(KeyboardInterrupt):
        project.build(FakeRunner(answers=answers))
    assert_consistent(project.output)


def test_a_failure_after_the_last_stage_keeps_the_previous_build(project: Project) -> None:
    project.build(Tools("A"))
    before = published(project.output)
    answers = Tools("B").answers()
    answers["systemd-repart"] = interrupt("systemd-repart", after_the_last_stage)
    with pytest.raises(KeyboardInterrupt):
        project.build(FakeRunner(answers=answers))
    assert published(project.output) == before


def test_an_update_url_without_a_key_fails_before_any_command(project: Project) -> None:
    runner = FakeRunner(answers=Tools("A").answers())
    project.keys = project.root / "no-keys"
    with pytest.raises(ConfigError, match="no update-signing key"):
        project.build(runner)
    assert runner.calls == [] and published(project.output) == {}


def test_a_second_build_into_a_locked_output_is_refused(project: Project) -> None:
    project.build(Tools("A"))
    before = published(project.output)
    fd = os.open(project.output, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a running build holds it
        runner = FakeRunner(answers=Tools("B").answers())
        with pytest.raises(BuildError, match="another build is using this output"):
            project.build(runner)
    finally:
        os.close(fd)
    assert published(project.output) == before and runner.calls == []


def test_appliance_programs_run_in_a_copy_of_the_rootfs_and_tools_in_the_tools_tree(
        project: Project) -> None:
    runner = FakeRunner(answers=Tools("A").answers())
    project.build(runner)
    sandboxed = {c.program: c for c in runner.calls if c.wrapper}
    assert set(sandboxed) == {"systemctl", "depmod", "dracut", "mkfs.erofs", "veritysetup",
                              "ukify", "systemd-repart", "xz"}
    appliance = {c.tree for n, c in sandboxed.items() if n in ("systemctl", "dracut")}
    tools = {c.tree for n, c in sandboxed.items() if c.tree not in appliance}
    assert len(appliance) == 1 and len(tools) == 1
    (tree,), (tools_tree,), cache = appliance, tools, project.root / "cache"
    # The cached rootfs stays pristine: systemctl and depmod change a copy of it. depmod is
    # the tools tree's (native, whatever the image's architecture), writing into that copy.
    assert tree and tools_tree and tools_tree.is_relative_to(cache)
    assert sandboxed["depmod"].tree == tools_tree and str(tree) in sandboxed["depmod"].argv
    assert not tree.is_relative_to(cache)
    assert {c.program for c in runner.calls if not c.wrapper} >= {"mmdebstrap", "cp", "gpg"}


def calls_of(runner: FakeRunner, program: str) -> Iterator[Call]:
    return (c for c in runner.calls if c.program == program)


def test_repart_formats_the_esp_with_the_largest_clusters_fat32_allows(
        project: Project) -> None:
    runner = FakeRunner(answers=Tools("A").answers())
    project.build(runner)
    (repart,) = (c for c in calls_of(runner, "systemd-repart") if "--empty=create" in c.argv)
    # 256M: 2 KiB clusters (mkfs.fat's default there is 512 bytes; see esp_cluster_sectors)
    assert repart.env["SYSTEMD_REPART_MKFS_OPTIONS_VFAT"] == "-s 4"


def test_a_cached_rebuild_runs_no_mmdebstrap_or_dracut(project: Project) -> None:
    project.build(Tools("A"))
    runner = FakeRunner(answers=Tools("B").answers())
    project.build(runner)
    assert not list(calls_of(runner, "mmdebstrap")) and not list(calls_of(runner, "dracut"))
    assert_consistent(project.output)
