"""Reader, the typed reader of one YAML mapping: it applies the field validators of
appsdk.spec.fields and turns their refusals into file:line errors, and refuses unknown keys."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, TypeVar

from appsdk.spec.fields import FieldError, _describe, _text, size
from appsdk.spec.yamlsrc import FieldPath, Source

T = TypeVar("T")
# Control characters other than tab and newline, refused in any text field.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


class Reader:
    """Reads one mapping of a Source; rejects unknown keys so typos never pass silently."""

    def __init__(self, src: Source, path: FieldPath, data: Any,
                 allowed: set[str] | None) -> None:
        # allowed=None: any key (a mapping of names such as credentials or vars).
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise src.error(path, f"must be a mapping, got {type(data).__name__}")
        for key in data:
            if allowed is not None and key not in allowed:
                near = ", ".join(sorted(str(a) for a in allowed))
                raise src.error((*path, str(key)), "unknown field", hint=f"known fields: {near}")
        self.src = src
        self.path = path
        self.data: dict[Any, Any] = data

    def has(self, key: str) -> bool:
        return key in self.data and self.data[key] is not None

    def raw(self, key: str) -> Any:
        return self.data.get(key)

    def check(self, key: str, validator: Callable[[Any, str], T], default: T | None = None) -> T:
        """The value of `key` through `validator`; a refusal names file:line and field."""
        value = self.data.get(key)
        place = (*self.path, key)
        if value is None:
            if default is None:
                raise self.src.error(place, "is required")
            return default
        try:
            return validator(value, key)
        except FieldError as exc:
            raise self.src.error(place, exc.reason, exc.hint) from None

    def text(self, key: str, default: str | None = None, *, pattern: str | None = None,
             what: str = "") -> str:
        if not self.has(key) and default is not None:
            return default
        value = self.check(key, _plain)
        if pattern and not re.fullmatch(pattern, value):
            raise self.src.error((*self.path, key), f"{value!r} is not {what or 'valid'}")
        return value

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

    def size(self, key: str, default: int, limits: tuple[int, int]) -> int:
        return self.check(key, lambda value, name: size(value, name, limits), default)

    def texts(self, key: str, *, pattern: str | None = None, what: str = "") -> tuple[str, ...]:
        value = self.data.get(key)
        if value is None:
            return ()
        if not isinstance(value, list):
            raise self.src.error((*self.path, key), "must be a list")
        out = []
        for index, item in enumerate(value):
            where = (*self.path, key, index)
            try:
                text = _plain(item, key)
            except FieldError as exc:
                raise self.src.error(where, exc.reason, exc.hint) from None
            if pattern and not re.fullmatch(pattern, text):
                raise self.src.error(where, f"{text!r} is not {what or 'valid'}")
            out.append(text)
        return tuple(out)

    def sub(self, key: str, allowed: set[str] | None) -> Reader:
        return Reader(self.src, (*self.path, key), self.data.get(key), allowed)


def _plain(value: object, field: str) -> str:
    """Any text field: a string (or plain YAML digits), without NUL or control characters
    other than tab and newline (double-quoted YAML escapes could put them there)."""
    text = _text(value, field, limit=65536, empty=True)
    bad = _CONTROL.search(text)
    if bad:
        raise FieldError(field, f"contains {_describe(bad.group())} at position {bad.start()}")
    return text
