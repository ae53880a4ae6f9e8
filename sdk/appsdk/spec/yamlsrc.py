"""YAML loading that remembers where every value came from, so errors can name file:line.

The loader is strict where PyYAML is lenient, so that a value never changes silently:
- files over MAX_BYTES are refused before parsing (a 50 MB file took minutes and GBs);
- the text must be UTF-8 without NUL or other control characters (YAML forbids them);
- a mapping key given twice is an error naming both lines (PyYAML keeps the last one);
- plain scalars resolve as in YAML 1.2's core schema, narrowed further: only null,
  true/false and decimal integers that print back as written (0, -5, 644). Everything
  else stays the string the user wrote: 0123, 0o17, 0x1f, 1_000, 1:20, 1.10, 2024-01-01,
  yes/no/on/off (YAML 1.1 would make them 83, 15, 31, 1000, 80, 1.1, a date, booleans);
- aliases (*name) are refused (no "billion laughs"), nesting is capped, and explicit tags
  other than the core ones (!!str, !!int, !!bool, !!null, !!seq, !!map) are refused.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import yaml
from yaml.composer import Composer, ComposerError
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.resolver import BaseResolver

from appsdk.core.errors import ConfigError
from appsdk.core.inputfile import open_regular

FieldPath = tuple[str | int, ...]

MAX_BYTES = 1024 * 1024  # appliance.yaml is a few KB; a plan for 10,000 devices fits
MAX_DEPTH = 64
# YAML's printable set (YAML 1.1 and 1.2, 5.1): tab, LF, CR, and no C0/C1 controls.
_NON_PRINTABLE = re.compile("[^\t\n\r\x20-\x7e\x85\xa0-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_INT = re.compile(r"0|-?[1-9][0-9]{0,17}")  # prints back as written; bounded size


@dataclass(frozen=True)
class Source:
    """A parsed YAML document plus the line of every field (1-based)."""

    path: Path
    data: Any
    lines: dict[FieldPath, int]

    def line(self, path: FieldPath) -> int | None:
        # Fall back to the nearest parent that exists (e.g. a missing key -> its mapping).
        for cut in range(len(path), -1, -1):
            if path[:cut] in self.lines:
                return self.lines[path[:cut]]
        return None

    def error(self, path: FieldPath, message: str, hint: str | None = None) -> ConfigError:
        return ConfigError(
            message, file=str(self.path), line=self.line(path), field=dotted(path), hint=hint
        )


def dotted(path: FieldPath) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


class _Resolver(BaseResolver):
    """Implicit types for plain scalars: null, true/false, canonical decimal integers."""


_Resolver.add_implicit_resolver(
    "tag:yaml.org,2002:null", re.compile(r"^(?:~|null|Null|NULL|)$"), ["~", "n", "N", ""])
_Resolver.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
    list("tTfF"))
_Resolver.add_implicit_resolver(
    "tag:yaml.org,2002:int", re.compile(rf"^(?:{_INT.pattern})$"), list("-0123456789"))


class _Constructor(SafeConstructor):
    def construct_strict_int(self, node: yaml.ScalarNode) -> int:
        text = self.construct_scalar(node)
        if not isinstance(text, str) or not _INT.fullmatch(text):
            raise ConstructorError(None, None, f"{text!r} is not a plain decimal integer",
                                   node.start_mark)
        return int(text)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                first = seen.get(key)
            except TypeError:
                continue  # unhashable: the base class reports it
            line = key_node.start_mark.line + 1
            if first is not None:
                raise _DuplicateKey(key, first, key_node.start_mark)
            seen[key] = line
        return super().construct_mapping(node, deep=deep)

    def construct_refused(self, node: yaml.Node) -> None:
        raise ConstructorError(None, None, f"the tag {node.tag!r} is not supported: write a "
                               "plain value", node.start_mark)


# Only the core types; every other tag (float, timestamp, binary, set, python/...) is refused.
_Constructor.yaml_constructors = {
    "tag:yaml.org,2002:null": SafeConstructor.construct_yaml_null,
    "tag:yaml.org,2002:bool": SafeConstructor.construct_yaml_bool,
    "tag:yaml.org,2002:int": _Constructor.construct_strict_int,
    "tag:yaml.org,2002:str": SafeConstructor.construct_yaml_str,
    "tag:yaml.org,2002:seq": SafeConstructor.construct_yaml_seq,
    "tag:yaml.org,2002:map": SafeConstructor.construct_yaml_map,
    None: _Constructor.construct_refused,
}


class _DuplicateKey(yaml.MarkedYAMLError):
    def __init__(self, key: Any, first: int, mark: Any) -> None:
        super().__init__(None, None, f"duplicate key {key!r} (also on line {first})", mark)


class _Composer(Composer):
    """Refuses aliases and nesting deeper than MAX_DEPTH (the composer recurses per level)."""

    _depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        event = cast(Any, self).peek_event()  # the parser half of the loader class
        mark: Any = event.start_mark
        if isinstance(event, yaml.AliasEvent):
            raise ComposerError(None, None, "aliases (*name) are not supported: write the "
                                "value out", mark)
        if getattr(event, "tag", None) == "!":
            # PyYAML and libyaml read a bare ! differently (! 1 is 1 in one, "1" in the other).
            raise ComposerError(None, None, "the tag ! is not supported: quote the value "
                                "instead", mark)
        if self._depth >= MAX_DEPTH:
            raise ComposerError(None, None, f"nested deeper than {MAX_DEPTH} levels", mark)
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


class _PyLoader(yaml.reader.Reader, yaml.scanner.Scanner, yaml.parser.Parser, _Composer,
                _Constructor, _Resolver):
    def __init__(self, text: str) -> None:
        yaml.reader.Reader.__init__(self, text)
        yaml.scanner.Scanner.__init__(self)
        yaml.parser.Parser.__init__(self)
        _Composer.__init__(self)
        _Constructor.__init__(self)
        _Resolver.__init__(self)


def _loader_class() -> type[Any]:
    """libyaml's event parser when present (twice as fast); our composer either way (the
    C composer has no depth limit: deep nesting crashes the interpreter)."""
    try:
        from yaml._yaml import CParser
    except ImportError:  # PyYAML built without libyaml
        return _PyLoader
    parser: Any = CParser

    def init(self: Any, text: str) -> None:
        parser.__init__(self, text)
        _Composer.__init__(self)
        _Constructor.__init__(self)
        _Resolver.__init__(self)

    return type("_CLoader", (_Composer, parser, _Constructor, _Resolver), {"__init__": init})


_LOADER = _loader_class()


def _walk(node: yaml.Node, path: FieldPath, lines: dict[FieldPath, int]) -> None:
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode):
                _walk(value, (*path, key.value), lines)
                lines[(*path, key.value)] = key.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _walk(item, (*path, index), lines)


def _read(path: Path) -> bytes:
    try:
        with open_regular(path, "YAML file") as file:
            raw = file.read(MAX_BYTES + 1)  # bounded: a huge file or /dev/zero stops here
    except FileNotFoundError:
        raise ConfigError("file not found", file=str(path)) from None
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror or exc}", file=str(path)) from None
    if len(raw) > MAX_BYTES:
        raise ConfigError(f"larger than {MAX_BYTES // 1024} KiB, the limit for a YAML file",
                          file=str(path), hint="is this the right file?")
    return raw


def decode(raw: bytes, file: str) -> str:
    """Strict UTF-8 without control characters YAML forbids; errors name line and byte."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise ConfigError(f"not UTF-8 text: byte 0x{raw[exc.start]:02x} at byte offset "
                          f"{exc.start}", file=file, line=line,
                          hint="save the file as UTF-8") from None
    bad = _NON_PRINTABLE.search(text)
    if bad:
        line = text.count("\n", 0, bad.start()) + 1
        char = bad.group()
        what = "a NUL byte" if char == "\0" else f"control character U+{ord(char):04X}"
        raise ConfigError(f"{what} at byte offset {len(text[:bad.start()].encode())}: YAML "
                          "allows none", file=file, line=line,
                          hint='write it as an escape in a double-quoted string ("\\t") or '
                          "remove it")
    return text


def parse(text: str, file: str) -> tuple[Any, dict[FieldPath, int]]:
    """(data, line map) of one YAML document, or a ConfigError naming file:line."""
    loader = _LOADER(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        raise ConfigError(f"not valid YAML: {exc.problem or exc.context}", file=file,
                          line=mark.line + 1 if mark else None) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"not valid YAML: {exc}", file=file) from None
    finally:
        loader.dispose()
    lines: dict[FieldPath, int] = {}
    if node is not None:
        _walk(node, (), lines)
    return data, lines


def load(path: Path) -> Source:
    data, lines = parse(decode(_read(path), str(path)), str(path))
    return Source(path=path, data=data, lines=lines)
