"""YAML loading that remembers where every value came from, so errors can name file:line."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError

FieldPath = tuple[str | int, ...]


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


def _walk(node: yaml.Node, path: FieldPath, lines: dict[FieldPath, int]) -> None:
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode):
                lines[(*path, key.value)] = key.start_mark.line + 1
                _walk(value, (*path, key.value), lines)
                lines[(*path, key.value)] = key.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _walk(item, (*path, index), lines)


def load(path: Path) -> Source:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError("file not found", file=str(path)) from None
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", file=str(path)) from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        raise ConfigError(
            f"not valid YAML: {exc.problem}",
            file=str(path),
            line=mark.line + 1 if mark else None,
        ) from None
    lines: dict[FieldPath, int] = {}
    if node is not None:
        _walk(node, (), lines)
    return Source(path=path, data=data, lines=lines)
