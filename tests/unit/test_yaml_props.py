"""The strict YAML loader (yamlsrc) and the readers on top of it: any bytes give data or a
ConfigError naming the file; values are never changed behind the user's back."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from test_provision_plan import PLAN

from appsdk.core.errors import ConfigError
from appsdk.deliver.provision_serial import load_plan
from appsdk.spec import yamlsrc
from appsdk.spec.appliance import load_appliance

REPO = Path(__file__).resolve().parents[2]
HELLO = (REPO / "examples/hello/appliance.yaml").read_text()


def parse(text: str) -> Any:
    return yamlsrc.parse(text, "f.yaml")[0]


# --- examples -----------------------------------------------------------------------------

@pytest.mark.parametrize("text, value", [
    ("0123", "0123"), ("0o17", "0o17"), ("0x1f", "0x1f"), ("1_000", "1_000"),
    ("1:20", "1:20"), ("1.10", "1.10"), ("1e3", "1e3"), (".inf", ".inf"), ("+5", "+5"),
    ("-0", "-0"), ("2024-01-01", "2024-01-01"), ("yes", "yes"), ("no", "no"), ("on", "on"),
    ("off", "off"), ("y", "y"), ("0644", "0644"),
    ("0", 0), ("644", 644), ("-5", -5), ("true", True), ("False", False), ("~", None),
    ("null", None), ("", None), ("1234567890123456789", "1234567890123456789"),
])
def test_plain_scalars_keep_what_was_written(text: str, value: object) -> None:
    assert parse(f"k: {text}\n") == {"k": value}


def test_duplicate_keys_name_both_lines() -> None:
    with pytest.raises(ConfigError, match=r"^f.yaml:4: not valid YAML: duplicate key 'b' "
                       r"\(also on line 2\)"):
        parse("a:\n  b: 1\n  c: 2\n  b: 3\n")
    with pytest.raises(ConfigError, match=r":2: .*duplicate key 'x' \(also on line 1\)"):
        parse("- {x: 1,\n   x: 2}\n")


@pytest.mark.parametrize("text, words", [
    ("a: &x [1, 2]\nb: *x\n", "aliases"),
    ("a: &a [*a]\n", "aliases"),
    ("[" * 100 + "]" * 100, "nested deeper than 64"),
    ("a: !!float 1.5\n", "not supported"),
    ("a: !!python/object/apply:os.system [ls]\n", "not supported"),
    ("a: !!binary aGk=\n", "not supported"),
    ("a: !!timestamp 2024-01-01\n", "not supported"),
    ("a: !!int 0x10\n", "not a plain decimal integer"),
    ("!!merge <<: {a: 1}\n", "not supported"),
    ("? [a]\n: 1\n", "unhashable"),
    ("a: 1\n--- \nb: 2\n", "another document"),
    ("a: [1\n", "not valid YAML"),
])
def test_refused_constructs(text: str, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        parse(text)


def test_billion_laughs_is_refused_fast() -> None:
    lines = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 10)]
    start = time.monotonic()
    with pytest.raises(ConfigError, match="aliases"):
        parse("\n".join(lines) + "\n")
    assert time.monotonic() - start < 1


def test_anchors_without_aliases_are_plain_values() -> None:
    assert parse("a: &x 1\n") == {"a": 1}


def test_both_loaders_agree_on_the_example() -> None:
    python = yamlsrc._PyLoader(HELLO)
    assert python.construct_document(python.get_single_node()) == parse(HELLO)


@pytest.mark.parametrize("raw, words, line", [
    (b"id: ok\nname: \xff\xfe\n", "not UTF-8 text: byte 0xff at byte offset 13", 2),
    (b"id: ok\nname: x\x00\n", "a NUL byte at byte offset 14", 2),
    (b"id: ok\n\x1b[31mname: x\n", r"control character U\+001B", 2),
    (b"\xff\xfei\x00d\x00", "not UTF-8", 1),  # UTF-16
    ("id: h\u00e9llo\n".encode(), "", 0),  # UTF-8 beyond ASCII is fine
])
def test_bad_bytes_name_file_line_and_offset(tmp_path: Path, raw: bytes, words: str,
                                             line: int) -> None:
    path = tmp_path / "appliance.yaml"
    path.write_bytes(raw)
    if not line:
        assert yamlsrc.load(path).data == {"id": "h\u00e9llo"}
        return
    with pytest.raises(ConfigError, match=words) as info:
        load_appliance(path)
    assert str(info.value).startswith(f"{path}:{line}: ")


def test_a_50_mb_file_is_refused_fast(tmp_path: Path) -> None:
    path = tmp_path / "appliance.yaml"
    with path.open("wb") as file:
        file.write(b"id: x\nversion: '1'\nbase:\n  packages:\n    - python3\n")
        file.truncate(50 * 1024 * 1024)  # sparse: quick to make, as big to read
    start = time.monotonic()
    with pytest.raises(ConfigError, match="larger than 1024 KiB") as info:
        load_appliance(path)
    assert time.monotonic() - start < 5  # it is refused by size, not parsed (minutes)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("make, words", [
    (lambda p: p.mkdir(), "is a directory, not YAML file"),
    (lambda p: None, "file not found"),
])
def test_unreadable_paths(tmp_path: Path, make: Any, words: str) -> None:
    path = tmp_path / "x.yaml"
    make(path)
    with pytest.raises(ConfigError, match=words):
        yamlsrc.load(path)


def test_lines_survive_for_errors() -> None:
    data, lines = yamlsrc.parse("a:\n  b:\n    - x\n    - y: 1\n", "f")
    assert data == {"a": {"b": ["x", {"y": 1}]}}
    assert lines[("a", "b", 1, "y")] == 4 and lines[("a", "b")] == 2


# --- properties ---------------------------------------------------------------------------

KEYS = st.text(alphabet="abcxyz_-0123456789 :#", min_size=1, max_size=6)
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-10**17, 10**17),
                    st.text(max_size=12).filter(lambda t: "\x85" not in t))
DATA = st.recursive(SCALARS, lambda kids: st.one_of(
    st.lists(kids, max_size=4), st.dictionaries(KEYS, kids, max_size=4)), max_leaves=8)


@settings(max_examples=100, deadline=None)
@given(data=DATA, flow=st.booleans())
def test_what_pyyaml_writes_reads_back_unchanged(data: Any, flow: bool) -> None:
    text = yaml.safe_dump(data, default_flow_style=flow, allow_unicode=True)
    try:
        back = parse(text)
    except ConfigError as exc:
        # Only characters YAML itself cannot hold raw may be refused.
        assert "control character" in str(exc) or "NUL" in str(exc), (text, exc)
        return
    assert back == data


YAMLISH = st.text(alphabet="ab01: -[]{},&*!|>'\"#\n\t?%@`~.", max_size=60)


@settings(max_examples=200, deadline=None)
@given(text=st.one_of(YAMLISH, st.text(max_size=60)))
def test_any_text_gives_data_or_a_config_error_in_both_loaders(text: str) -> None:
    results = []
    for loader in (yamlsrc._LOADER, yamlsrc._PyLoader):
        saved, yamlsrc._LOADER = yamlsrc._LOADER, loader
        try:
            results.append(("ok", yamlsrc.parse(yamlsrc.decode(text.encode(), "f"), "f")[0]))
        except ConfigError as exc:
            assert exc.file == "f"
            results.append(("error", None))
        finally:
            yamlsrc._LOADER = saved
    # libyaml and PyYAML's scanner disagree on some edge syntax (e.g. a trailing tab):
    # one may refuse what the other reads, but what both read must be the same data.
    if results[0][0] == results[1][0] == "ok":
        assert results[0] == results[1], (text, results)


INTERESTING = ["0123", "yes", "~", "[]", "{}", "!!float 1", "*a", "&a x", '"\\0"', "100T",
               "https://x/", "ftp://x", "../../x", '"a\\nb"', "0644", "-1", "1.10", "'",
               "{a: 1, a: 2}", "x" * 300, "\t", "[[[[[[", "http://x/?a", "0x1f"]


def mutate(draw: st.DrawFn, text: str) -> str:
    lines = text.splitlines(keepends=True)
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["delete", "duplicate", "swap", "value", "insert", "cut"]))
        i = draw(st.integers(0, max(len(lines) - 1, 0)))
        if not lines:
            break
        if op == "delete":
            del lines[i]
        elif op == "duplicate":
            lines.insert(i, lines[i])
        elif op == "swap":
            j = draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
        elif op == "value" and ":" in lines[i]:
            key = lines[i].split(":", 1)[0]
            lines[i] = f"{key}: {draw(st.sampled_from(INTERESTING))}\n"
        elif op == "insert":
            at = draw(st.integers(0, len(lines[i])))
            lines[i] = lines[i][:at] + draw(st.text(max_size=4)) + lines[i][at:]
        elif op == "cut":
            lines = lines[:i]
    return "".join(lines)


@pytest.fixture(scope="module")
def app_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("hello")
    shutil.copytree(REPO / "examples/hello/overlay", root / "overlay", symlinks=True)
    return root


@pytest.fixture(scope="module")
def plan_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("plan")
    (root / "k.pub").write_text("ssh-ed25519 AAAA key@x\n")
    (root / "blob").write_bytes(b"\x00\x01")
    (root / "tok").write_text("t0k")
    return root


@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_mutated_appliance_yaml_gives_an_appliance_or_a_config_error(
    app_dir: Path, data: st.DataObject,
) -> None:
    path = app_dir / "appliance.yaml"
    path.write_text(mutate(data.draw, HELLO))
    try:
        app = load_appliance(app_dir)
    except ConfigError as exc:
        assert str(exc).startswith(str(path)), exc
        return
    assert app.id and app.version and len({c.name for c in app.health}) == len(app.health)


@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_mutated_plan_gives_a_plan_or_a_config_error(plan_dir: Path,
                                                     data: st.DataObject) -> None:
    path = plan_dir / "plan.yaml"
    path.write_text(mutate(data.draw, PLAN))
    try:
        plan = load_plan(path)
    except ConfigError as exc:
        assert str(exc).startswith(str(path)), exc
        return
    for serial in plan.serials or ("",):
        device = plan.device(serial or None)
        assert all(f.dest.startswith("/") and ".." not in f.dest.split("/")
                   for f in device.files)
