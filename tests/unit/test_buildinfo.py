"""build.json: every field a reader uses is checked once, in load_build; any bytes give
the record or a ConfigError naming build.json and the field."""

from __future__ import annotations

import contextlib
import copy
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appsdk.contract.buildinfo import load_build, locate_image, parse_record, plain_name
from appsdk.core.errors import ConfigError

SUM = "ab" * 32
FILE = Path("out/build.json")


def record() -> dict[str, Any]:
    return {
        "id": "demo", "version": "1.0",
        "board": {"name": "x86-uefi", "arch": "x86-64", "firmware_chain": "uefi",
                  "console": "ttyS0"},
        "artifacts": {kind: {"file": name, "size": 10, "sha256": SUM} for kind, name in (
            ("image", "demo_1.0.img"), ("bmap", "demo_1.0.img.bmap"),
            ("update-usr", "demo_1.0.usr.xz"))},
        "min_device_size": 1 << 30, "cmdline": "root=tmpfs",
        "update": {"url": None, "signed_by": None, "automatic": True},
        "kernel": "6.12", "partitions": [],
    }


def parse(data: Any) -> dict[str, Any]:
    return parse_record(json.dumps(data).encode(), FILE)


def test_a_real_record_passes_unchanged() -> None:
    assert parse(record()) == record()


def test_load_build_from_a_directory_and_locate_image(tmp_path: Path) -> None:
    (tmp_path / "build.json").write_text(json.dumps(record()))
    assert load_build(tmp_path)["id"] == "demo"
    with pytest.raises(ConfigError, match=r"names the image demo_1\.0\.img, which is missing"):
        locate_image(tmp_path)
    (tmp_path / "demo_1.0.img").write_bytes(b"x")
    assert locate_image(tmp_path) == (tmp_path / "demo_1.0.img", record())
    assert locate_image(tmp_path / "demo_1.0.img")[1] == record()
    (tmp_path / "other.img").write_bytes(b"x")
    assert locate_image(tmp_path / "other.img") == (tmp_path / "other.img", None)
    with pytest.raises(ConfigError, match=r"no build\.json"):
        load_build(tmp_path / "nothing")


def edited(path: str, value: Any, data: dict[str, Any] | None = None) -> dict[str, Any]:
    """A copy of `data` (default record()) with the dotted field set to value (or removed,
    for ...)."""
    data = copy.deepcopy(record() if data is None else data)
    *parents, last = path.split(".")
    node = data
    for key in parents:
        node = node[key]
    if value is ...:
        del node[last]
    else:
        node[last] = value
    return data


@pytest.mark.parametrize(("field", "value", "message"), [
    ("id", ..., "id: is missing"),
    ("id", 5, "id: must be a string, got 5"),
    ("id", "../x", "id: '../x' is not valid"),
    ("version", "", "version: '' is not valid"),
    ("version", None, "version: is missing"),
    ("board", [], "board: must be an object"),
    ("board.name", ..., "board.name: is missing"),
    ("board.name", "../boards/x", "not a plain file name"),
    ("board.firmware_chain", 3, "board.firmware_chain: must be a string"),
    ("artifacts", ..., "artifacts: is missing"),
    ("artifacts.image", ..., "artifacts.image: is missing"),
    ("artifacts.bmap", "x", "artifacts.bmap: must be an object"),
    ("artifacts.image.file", "../../x", "artifacts.image.file: '../../x' is not a plain"),
    ("artifacts.image.file", "..", "is not a plain file name"),
    ("artifacts.image.file", ".", "is not a plain file name"),
    ("artifacts.image.file", "-rf", "is not a plain file name"),
    ("artifacts.image.file", "a\0b", "is not a plain file name"),
    ("artifacts.image.file", "a\nb", "is not a plain file name"),
    ("artifacts.image.file", "", "must be a file name"),
    ("artifacts.image.file", "x" * 256, "is not a plain file name"),
    ("artifacts.image.file", "demo_1.0.img.bmap", "names 'demo_1.0.img.bmap', as"),
    ("artifacts.update-usr.file", "/etc/shadow", "is not a plain file name"),
    ("artifacts.image.sha256", "AB" * 32, "artifacts.image.sha256: .* is not valid"),
    ("artifacts.image.sha256", ..., "artifacts.image.sha256: is missing"),
    ("artifacts.image.size", "10", "artifacts.image.size: must be an integer"),
    ("artifacts.image.size", True, "must be an integer, got true"),
    ("artifacts.image.size", -1, "is not a size in bytes"),
    ("artifacts.image.size", 10.5, "must be an integer"),
    ("min_device_size", "1G", "min_device_size: must be an integer"),
    ("cmdline", ["a"], "cmdline: must be a string"),
    ("update", "x", "update: must be an object"),
    ("update.signed_by", 1, "update.signed_by: must be a string"),
])
def test_bad_fields_name_the_field(field: str, value: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as e:
        parse(edited(field, value))
    assert str(e.value).startswith(f"{FILE}: ") and e.value.hint


@pytest.mark.parametrize(("raw", "message"), [
    (b"", "not JSON: Expecting value"),
    (b"{}", "id: is missing"),
    (b"[]", "must be a JSON object, got list"),
    (b"null", "must be a JSON object, got NoneType"),
    (b'{"id": 1,', "not JSON"),
    (b"\xff\xfe{}", r"not UTF-8 \(byte offset 0\)"),
    (b'{"id": "a\0"}', "NUL byte at offset 9"),
    (b'{"id": "a", "id": "b"}', "duplicate key 'id'"),
    (b"[" * 100000 + b"]" * 100000, "not a build record|not JSON"),
    (b'{"min_device_size": ' + b"9" * 5000 + b"}", "not a build record"),
], ids=["empty", "{}", "list", "null", "cut", "utf-16", "nul", "duplicate", "deep", "huge int"])
def test_bytes_that_are_no_record(raw: bytes, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as e:
        parse_record(raw, FILE)
    assert str(e.value).startswith(str(FILE))


def test_huge_and_unreadable_files(tmp_path: Path) -> None:
    big = tmp_path / "build.json"
    with big.open("wb") as f:
        f.truncate(5 * 1024 * 1024)
    with pytest.raises(ConfigError, match="larger than 4 MiB"):
        load_build(big)
    loop = tmp_path / "loop.json"
    loop.symlink_to(loop.name)
    with pytest.raises(ConfigError, match="cannot read: Too many levels of symbolic links"):
        load_build(loop)


def test_plain_name() -> None:
    assert plain_name("demo_1.0.efi.xz", FILE, "f") == "demo_1.0.efi.xz"
    for bad in ("a/b", "..", "-x", "a\x7fb", 3, None):
        with pytest.raises(ConfigError):
            plain_name(bad, FILE, "f")


PROPS = settings(max_examples=200, deadline=None)
JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
                    | st.text(max_size=20),
                    lambda children: st.lists(children, max_size=4)
                    | st.dictionaries(st.text(max_size=10), children, max_size=4),
                    max_leaves=8)


@PROPS
@given(JSON)
def test_arbitrary_json(value: Any) -> None:
    try:
        parse(value)
    except ConfigError as exc:
        assert str(exc).startswith(str(FILE))


FIELDS = ["id", "version", "board", "board.name", "board.arch", "artifacts",
          "artifacts.image", "artifacts.image.file", "artifacts.image.size",
          "artifacts.image.sha256", "artifacts.bmap.file", "min_device_size", "cmdline",
          "update", "update.url"]


@PROPS
@given(st.lists(st.tuples(st.sampled_from(FIELDS), JSON | st.just(...)), min_size=1,
                max_size=3))
def test_mutated_records(edits: list[tuple[str, Any]]) -> None:
    data = record()
    for field, value in edits:
        # (KeyError and the like: an earlier edit replaced or removed the parent)
        with contextlib.suppress(KeyError, TypeError, IndexError):
            data = edited(field, value, data)
    try:
        result = parse(data)
    except ConfigError:
        return
    # What passes is what readers index without guarding.
    assert isinstance(result["board"]["name"], str)
    for entry in result["artifacts"].values():
        assert "/" not in entry["file"] and isinstance(entry["size"], int)

