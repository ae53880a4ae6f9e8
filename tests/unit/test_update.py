"""Update artifacts and the on-device sysupdate configuration, without a VM."""

from __future__ import annotations

import configparser
import dataclasses
import hashlib
import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appsdk.contract.layout import layout_for
from appsdk.contract.ondevice import sysupdate_transfers
from appsdk.contract.updatefiles import format_sums, parse_sums, sha256sums, update_names
from appsdk.core.errors import ConfigError, VerifyFailed
from appsdk.core.runner import Runner
from appsdk.spec.appliance import COMPRESSIONS, load_appliance
from appsdk.spec.boards import load_board
from appsdk.trust import keys

REPO = Path(__file__).resolve().parents[2]
needs_gpg = pytest.mark.skipif(shutil.which("gpg") is None, reason="gpg not installed")


def transfers(tries: int | None = None, board: str = "x86-uefi", compression: str = "xz"
              ) -> dict[str, configparser.ConfigParser]:
    app = load_appliance(REPO / "examples/hello")
    if tries is not None:
        app = dataclasses.replace(app, boot=dataclasses.replace(app.boot, tries=tries))
    app = dataclasses.replace(app, update=dataclasses.replace(app.update,
                                                              compression=compression))
    layout = layout_for(app, load_board(board))
    out = {}
    for name, text in sysupdate_transfers(app, layout, "https://updates.example.com/hello").items():
        parser = configparser.ConfigParser(interpolation=None)
        parser.optionxform = str  # type: ignore[assignment,method-assign]
        parser.read_string(text)
        out[name] = parser
    return out


def test_transfers_order_and_protection() -> None:
    files = transfers()
    # Verity and /usr go in before the UKI, so a boot entry never precedes its /usr.
    assert list(files) == ["40-verity.transfer", "50-usr.transfer", "90-uki.transfer"]
    for parser in files.values():
        assert parser["Transfer"]["ProtectVersion"] == "%A"
        assert parser["Transfer"]["Verify"] == "yes"
        assert parser["Source"]["Type"] == "url-file"
        assert parser["Source"]["Path"] == "https://updates.example.com/hello/"
        assert parser["Target"]["InstancesMax"] == "2"


def test_partition_targets() -> None:
    usr = transfers()["50-usr.transfer"]
    assert usr["Source"]["MatchPattern"] == "hello_@v.usr.xz"
    assert dict(usr["Target"]) == {
        "Type": "partition", "Path": "auto", "MatchPattern": "usr_@v",
        "MatchPartitionType": "usr-x86-64", "PartitionFlags": "0", "InstancesMax": "2"}
    verity = transfers()["40-verity.transfer"]
    assert verity["Target"]["MatchPattern"] == "verity_@v"
    assert verity["Target"]["MatchPartitionType"] == "usr-x86-64-verity"


def test_sources_match_the_compressions_suffix() -> None:
    """The device's patterns and the build's file names come from one place."""
    for compression, suffix in (("xz", ".xz"), ("gzip", ".gz")):
        files = transfers(compression=compression)
        names = update_names("hello", "@v", compression)
        assert [files[f"{n}.transfer"]["Source"]["MatchPattern"]
                for n in ("40-verity", "50-usr", "90-uki")] == [
            names["verity"], names["usr"], names["uki"]]
        assert names["usr"] == f"hello_@v.usr{suffix}"


@pytest.mark.parametrize("name", list(COMPRESSIONS))
def test_each_compressor_round_trips_and_is_reproducible(tmp_path: Path, name: str) -> None:
    """The build's exact argv, with the real tool: what comes out unpacks to the input, and
    the same input gives the same bytes (also at another thread count, and another mtime)."""
    codec = COMPRESSIONS[name]
    if shutil.which(codec.argv[0]) is None:
        pytest.skip(f"{codec.argv[0]} not installed")
    source = tmp_path / "usr"
    # Some of it compressible, some not, and more than one xz block (16 MiB) is not needed:
    # the block size is fixed, so the thread count cannot change the split.
    source.write_bytes((b"erofs " * 200_000) + hashlib.sha256(b"x").digest() * 40_000)

    def pack(argv: tuple[str, ...], mtime: int) -> bytes:
        import os
        os.utime(source, (mtime, mtime))
        return subprocess.run([*argv, str(source)], capture_output=True, check=True).stdout

    packed = pack(codec.argv, 1)
    unpacked = subprocess.run(codec.unpack, input=packed, capture_output=True, check=True)
    assert unpacked.stdout == source.read_bytes()
    assert len(packed) < source.stat().st_size
    assert pack(codec.argv, 2) == packed
    if name == "xz":
        # -T0 is multithreaded mode at any core count; -T+1 is that mode with one thread.
        assert pack(tuple(a.replace("-T0", "-T+1") for a in codec.argv), 3) == packed


def test_uki_target_counts_boots() -> None:
    target = transfers()["90-uki.transfer"]["Target"]
    assert target["MatchPattern"].split() == ["hello_@v+@l-@d.efi", "hello_@v+@l.efi",
                                              "hello_@v.efi"]
    assert (target["TriesLeft"], target["TriesDone"]) == ("3", "0")
    assert target["PathRelativeTo"] == "boot" and target["Path"] == "/EFI/Linux"
    # boot.tries in appliance.yaml sets the count new versions start with.
    assert transfers(tries=1)["90-uki.transfer"]["Target"]["TriesLeft"] == "1"


def test_arm64_targets_use_arm64_partition_types() -> None:
    usr = transfers(board="rpi4")["50-usr.transfer"]
    assert usr["Target"]["MatchPartitionType"] == "usr-arm64"


def test_update_names_match_source_patterns() -> None:
    names = update_names("hello", "2.0")
    assert names == {"uki": "hello_2.0.efi.xz", "usr": "hello_2.0.usr.xz",
                     "verity": "hello_2.0.verity.xz"}


def test_sha256sums_format(tmp_path: Path) -> None:
    (tmp_path / "b.xz").write_bytes(b"bbb")
    (tmp_path / "a.xz").write_bytes(b"aaa")
    text = sha256sums(tmp_path, ["b.xz", "a.xz"])
    assert text == (f"{hashlib.sha256(b'aaa').hexdigest()}  a.xz\n"
                    f"{hashlib.sha256(b'bbb').hexdigest()}  b.xz\n")


@needs_gpg
def test_sign_and_verify_with_public_key_only(tmp_path: Path) -> None:
    runner = Runner()
    key = keys.generate(tmp_path / "key", "test key", runner)
    assert keys.load(tmp_path / "key", runner).fingerprint == key.fingerprint
    sums = tmp_path / "SHA256SUMS"
    sums.write_text("0" * 64 + "  x.xz\n")
    signature = keys.sign(key, sums, runner)
    assert signature.name == "SHA256SUMS.gpg"
    keys.verify(key.public_keyring, sums, signature, runner)
    # The real oracle: plain gpg with nothing but the exported public key.
    home = tmp_path / "verifier"
    home.mkdir(mode=0o700)
    subprocess.run(["gpg", "--homedir", str(home), "--batch", "--import",
                    str(key.public_keyring)], check=True, capture_output=True)
    subprocess.run(["gpg", "--homedir", str(home), "--batch", "--verify", str(signature),
                    str(sums)], check=True, capture_output=True)
    subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"], check=False)

    sums.write_text("1" * 64 + "  x.xz\n")
    with pytest.raises(VerifyFailed, match="bad signature"):
        keys.verify(key.public_keyring, sums, signature, runner)
    other = keys.generate(tmp_path / "other", "other", runner)
    keys.sign(other, sums, runner)
    with pytest.raises(VerifyFailed):
        keys.verify(key.public_keyring, sums, signature, runner)


@needs_gpg
def test_generate_refuses_to_overwrite_and_load_explains(tmp_path: Path) -> None:
    runner = Runner()
    keys.generate(tmp_path / "key", "k", runner)
    with pytest.raises(ConfigError, match="already exists"):
        keys.generate(tmp_path / "key", "k", runner)
    with pytest.raises(ConfigError, match="no update-signing key") as info:
        keys.load(tmp_path / "missing", runner)
    assert info.value.hint and "appsdk keys generate" in info.value.hint


NAMES = st.text(st.characters(blacklist_characters="/\x00\n"), min_size=1, max_size=20).filter(
    lambda name: name not in (".", ".."))
DIGESTS = st.dictionaries(NAMES, st.text("0123456789abcdef", min_size=64, max_size=64),
                          max_size=6)


@settings(max_examples=200, deadline=None)
@given(digests=DIGESTS)
def test_sums_round_trip(digests: dict[str, str]) -> None:
    assert parse_sums(format_sums(digests), "SHA256SUMS") == digests


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=200) | DIGESTS.map(format_sums).map(lambda t: t.replace("a", "*")))
def test_any_sums_text_is_read_or_refused(text: str) -> None:
    try:
        digests = parse_sums(text, "SHA256SUMS")
    except ConfigError as exc:
        assert exc.message.startswith("SHA256SUMS:")
    else:
        assert all("/" not in name and name not in (".", "..") for name in digests)


def test_parse_sums_refuses_paths_and_duplicates() -> None:
    sha = "0" * 64
    assert parse_sums(f"{sha} *a.xz\n", "S") == {"a.xz": sha}  # sha256sum --binary
    for text in (f"{sha}  ../x\n", f"{sha}  ..\n", f"{sha}  a\n{sha}  a\n", "x  a\n"):
        with pytest.raises(ConfigError, match="not a SHA256SUMS line"):
            parse_sums(text, "S")
