"""Progress as events: stages report, the CLI decides how to render (text, JSON, nothing)."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol, TextIO


class EventKind(StrEnum):
    """What an event reports; the values are what `--json` prints as "event"."""
    STAGE_START = "stage-start"
    STAGE_DONE = "stage-done"
    STAGE_FAILED = "stage-failed"
    INFO = "info"
    PROGRESS = "progress"  # data: done, total (bytes or items)


@dataclass(frozen=True)
class Event:
    kind: EventKind
    stage: str
    message: str = ""
    seconds: float | None = None
    data: dict[str, Any] = field(default_factory=dict)


class Reporter(Protocol):
    def emit(self, event: Event) -> None: ...


class NullReporter:
    def emit(self, event: Event) -> None:
        pass


class RecordingReporter:
    """Keeps events in memory (tests, and callers that want a summary)."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def emit(self, event: Event) -> None:
        self.events.append(event)


class TextReporter:
    """Lines for humans. Progress rewrites one line on a terminal and is thinned to one
    line every 10 s in a log."""

    def __init__(self, stream: TextIO = sys.stderr) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self._last_progress = 0.0
        self._open_line = False

    def emit(self, event: Event) -> None:
        if event.kind == EventKind.PROGRESS:
            if self.tty:
                print(f"\r    {event.message}\033[K", end="", file=self.stream, flush=True)
                self._open_line = True
            elif time.monotonic() - self._last_progress >= 10:
                self._last_progress = time.monotonic()
                print(f"    {event.message}", file=self.stream, flush=True)
            return
        if self._open_line:
            print(file=self.stream)
            self._open_line = False
        if event.kind == EventKind.STAGE_START:
            line = f"==> {event.stage}: {event.message}" if event.message else f"==> {event.stage}"
        elif event.kind == EventKind.STAGE_DONE:
            line = f"    {event.stage} done in {event.seconds:.1f}s {event.message}".rstrip()
        elif event.kind == EventKind.STAGE_FAILED:
            # The error itself is printed once, by the CLI.
            line = f"    {event.stage} failed after {event.seconds:.1f}s"
        else:
            line = f"    {event.message}"
        print(line, file=self.stream, flush=True)


class JsonReporter:
    def __init__(self, stream: TextIO = sys.stderr) -> None:
        self.stream = stream

    def emit(self, event: Event) -> None:
        record: dict[str, Any] = {"event": event.kind, "stage": event.stage}
        if event.message:
            record["message"] = event.message
        if event.seconds is not None:
            record["seconds"] = round(event.seconds, 3)
        record.update(event.data)
        print(json.dumps(record, sort_keys=True), file=self.stream, flush=True)


@contextmanager
def stage(reporter: Reporter, name: str, message: str = "") -> Iterator[dict[str, Any]]:
    """Time a stage; the body may put a short result message into the yielded dict. A stage
    that raises reports stage-failed (with the error's class) and re-raises."""
    reporter.emit(Event(EventKind.STAGE_START, name, message))
    start = time.monotonic()
    result: dict[str, Any] = {}
    try:
        yield result
    except BaseException as exc:
        reporter.emit(Event(EventKind.STAGE_FAILED, name, "", time.monotonic() - start,
                            {"error": type(exc).__name__}))
        raise
    reporter.emit(
        Event(EventKind.STAGE_DONE, name, str(result.get("message", "")), time.monotonic() - start)
    )
