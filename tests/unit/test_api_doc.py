"""docs/api.md stays true: every top-level name it shows exists, and every call in its
example matches the function's signature (so the example fails here, not for a reader)."""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

import appsdk

DOC = Path(__file__).resolve().parents[2] / "docs/api.md"


def example() -> ast.Module:
    code = re.search(r"```python\n(.*?)```", DOC.read_text(), re.S)
    assert code, "docs/api.md has no example"
    return ast.parse(code.group(1))


def test_every_name_in_the_doc_is_top_level_api() -> None:
    named = set(re.findall(r"`appsdk\.(\w+)[`(]", DOC.read_text()))
    assert named and named <= set(appsdk.__all__), sorted(named - set(appsdk.__all__))
    # and the table covers the whole top-level API
    assert set(appsdk.__all__) - named <= {"BuildResult", "FlashResult", "Release",
                                           "SigningKey", "BuildRecord", "load_appliance",
                                           "Appliance", "Board", "list_boards", "load_board",
                                           "AppsdkError", "ConfigError", "__version__"}


def test_the_example_calls_match_the_signatures() -> None:
    calls = [n for n in ast.walk(example()) if isinstance(n, ast.Call)
             and isinstance(n.func, ast.Attribute) and isinstance(n.func.value, ast.Name)
             and n.func.value.id == "appsdk"]
    assert {c.func.attr for c in calls} >= {"build", "release", "flash", "open_source",  # type: ignore[attr-defined]
                                            "load_record", "load_key"}
    for call in calls:
        function = getattr(appsdk, call.func.attr)  # type: ignore[attr-defined]
        inspect.signature(function).bind(*[None] * len(call.args),
                                         **{k.arg: None for k in call.keywords if k.arg})
