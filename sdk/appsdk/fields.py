"""Small typed readers for validated YAML documents: each names the field on error."""

from __future__ import annotations

import re
from typing import Any

from .units import parse_size
from .yamlsrc import FieldPath, Source


class Reader:
    """Reads one mapping of a Source; rejects unknown keys so typos never pass silently."""

    def __init__(self, src: Source, path: FieldPath, data: Any, allowed: set[str]) -> None:
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise src.error(path, f"must be a mapping, got {type(data).__name__}")
        for key in data:
            if key not in allowed:
                near = ", ".join(sorted(allowed))
                raise src.error((*path, str(key)), "unknown field", hint=f"known fields: {near}")
        self.src = src
        self.path = path
        self.data: dict[str, Any] = data

    def has(self, key: str) -> bool:
        return key in self.data and self.data[key] is not None

    def raw(self, key: str) -> Any:
        return self.data.get(key)

    def text(
        self,
        key: str,
        default: str | None = None,
        *,
        pattern: str | None = None,
        what: str = "",
    ) -> str:
        value = self.data.get(key)
        if value is None:
            if default is None:
                raise self.src.error((*self.path, key), "is required")
            return default
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise self.src.error((*self.path, key), f"must be a string, got {value!r}")
        text = str(value)
        if pattern and not re.fullmatch(pattern, text):
            raise self.src.error((*self.path, key), f"{text!r} is not {what or 'valid'}")
        return text

    def flag(self, key: str, default: bool) -> bool:
        value = self.data.get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise self.src.error((*self.path, key), f"must be true or false, got {value!r}")
        return value

    def integer(self, key: str, default: int | None = None, *, minimum: int = 0,
                maximum: int | None = None) -> int:
        value = self.data.get(key)
        if value is None:
            if default is None:
                raise self.src.error((*self.path, key), "is required")
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.src.error((*self.path, key), f"must be a whole number, got {value!r}")
        if value < minimum:
            raise self.src.error((*self.path, key), f"must be at least {minimum}")
        if maximum is not None and value > maximum:
            raise self.src.error((*self.path, key), f"must be at most {maximum}")
        return value

    def size(self, key: str, default: int) -> int:
        value = self.data.get(key)
        if value is None:
            return default
        try:
            return parse_size(value)
        except ValueError as exc:
            raise self.src.error((*self.path, key), str(exc)) from None

    def texts(self, key: str, *, pattern: str | None = None, what: str = "") -> tuple[str, ...]:
        value = self.data.get(key)
        if value is None:
            return ()
        if not isinstance(value, list):
            raise self.src.error((*self.path, key), "must be a list")
        out = []
        for index, item in enumerate(value):
            if isinstance(item, bool) or not isinstance(item, str | int | float):
                raise self.src.error((*self.path, key, index), f"must be a string, got {item!r}")
            text = str(item)
            if pattern and not re.fullmatch(pattern, text):
                raise self.src.error((*self.path, key, index), f"{text!r} is not {what or 'valid'}")
            out.append(text)
        return tuple(out)

    def sub(self, key: str, allowed: set[str]) -> Reader:
        return Reader(self.src, (*self.path, key), self.data.get(key), allowed)
