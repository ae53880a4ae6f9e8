"""The package map holds: every import inside appsdk points down the layers (docs/
architecture.md), the three delivery-side packages do not import each other, no build
stage reads back what it wrote, and no module grows past about 400 lines."""

from __future__ import annotations

import ast
from pathlib import Path

import appsdk

PACKAGE = Path(appsdk.__file__).resolve().parent
# Bottom to top; a module may import its own package and any package of a lower layer.
LAYERS = {"core": 0, "spec": 1, "trust": 2, "contract": 3, "image": 4, "pipeline": 5,
          "deliver": 6, "update": 6, "emulate": 6, "app": 7}
MAX_LINES = 400
# Modules still over MAX_LINES, each to be split (issue 13, item 3); the list only shrinks.
TOO_LONG: set[str] = set()


def modules() -> dict[str, Path]:
    return {".".join(p.relative_to(PACKAGE).with_suffix("").parts): p
            for p in sorted(PACKAGE.rglob("*.py")) if "data" not in p.relative_to(PACKAGE).parts}


def package_of(module: str) -> str:
    """The layer package of a module path relative to appsdk ('' = the root)."""
    first = module.split(".")[0]
    return first if first in LAYERS else "app"


def imports(path: Path) -> set[str]:
    """appsdk modules a file imports (relative to appsdk), wherever the import stands:
    top level, in a function or under TYPE_CHECKING."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import (layers are read from absolute ones)"
            if node.module and node.module.startswith("appsdk."):
                found.add(node.module.removeprefix("appsdk."))
        elif isinstance(node, ast.Import):
            found |= {a.name.removeprefix("appsdk.") for a in node.names
                      if a.name.startswith("appsdk.")}
    return found


def edges() -> list[tuple[str, str]]:
    return [(module, target) for module, path in modules().items()
            for target in sorted(imports(path))]


def upward(found: list[tuple[str, str]]) -> list[str]:
    wrong = []
    for module, target in found:
        src, dst = package_of(module), package_of(target)
        if src != dst and LAYERS[dst] >= LAYERS[src]:
            wrong.append(f"{module} -> {target} ({src} may not import {dst})")
    return wrong


def test_every_import_points_down_the_layers() -> None:
    wrong = upward(edges())
    assert not wrong, "\n".join(wrong)


def test_the_layer_check_catches_upward_and_sideways_imports(tmp_path: Path) -> None:
    bad = tmp_path / "x.py"
    bad.write_text("from appsdk.pipeline.builder import build\n"
                   "def f():\n    import appsdk.deliver.flash\n")
    assert imports(bad) == {"pipeline.builder", "deliver.flash"}
    assert upward([("spec.boards", "pipeline.builder"), ("update.release", "deliver.flash"),
                   ("deliver.flash", "image.bmap"), ("cli", "deliver.flash")]) == [
        "spec.boards -> pipeline.builder (spec may not import pipeline)",
        "update.release -> deliver.flash (update may not import deliver)"]


def test_no_build_stage_reads_back_its_output() -> None:
    assert not [(m, t) for m, t in edges() if package_of(m) == "pipeline"
                and t == "image.inspect"]


def test_the_package_root_imports_only_the_version_at_load() -> None:
    # Everything else is imported on first use (appsdk.__getattr__): `appsdk flash` does
    # not pay for the build pipeline, and no module can cycle through the root.
    tree = ast.parse((PACKAGE / "__init__.py").read_text())
    top = [n.module for n in tree.body if isinstance(n, ast.ImportFrom) and n.module and
           n.module.startswith("appsdk")]
    assert top == ["appsdk.core.version"]
    assert not [m for m, t in edges() if t in ("", "__init__")]


def test_the_top_level_api_resolves() -> None:
    for name in appsdk.__all__:
        assert getattr(appsdk, name) is not None, name
    assert callable(appsdk.flash) and callable(appsdk.build)


def test_modules_stay_small() -> None:
    sizes = {p.relative_to(PACKAGE).as_posix(): len(p.read_text().splitlines())
             for p in modules().values()}
    too_long = {name for name, n in sizes.items() if n > MAX_LINES}
    assert too_long <= TOO_LONG, f"over {MAX_LINES} lines: {sorted(too_long - TOO_LONG)}"
    assert too_long == TOO_LONG, f"split, so drop from TOO_LONG: {sorted(TOO_LONG - too_long)}"
