"""No import runs upward: each package imports only from the layers docs/architecture.md
lists above it."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "transfer_influence"
LAYERS = {
    **dict.fromkeys(("files", "names", "outputs", "config", "subsets", "provenance"), 0),
    "datasets": 1,
    "trainers": 2,
    "store": 3,
    "engines": 4,
    "estimation": 5,
    "analyses": 6,
    "clustering": 6,
    "words": 7,
    "report": 8,
    "experiments": 9,
    "cli": 10,
}


def _layer(parts):
    return LAYERS[parts[0]]


def test_no_import_runs_upward():
    upward = []
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts in (("__init__",), ("__main__",)):
            continue  # the public API and the entry point sit above every layer
        mine = _layer(parts)
        package = parts[:-1] if parts[-1] != "__init__" else parts[:-1]
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ImportFrom) or not node.level:
                continue
            base = list(package[: len(package) - node.level + 1])
            target = base + (node.module.split(".") if node.module else [])
            if not target:
                target = [alias.name for alias in node.names][:1]
            if target[0] in LAYERS and _layer(target) > mine:
                upward.append(f"{'/'.join(parts)} imports {'.'.join(target)}")
    assert not upward, upward
    assert set(LAYERS) >= {
        p.stem
        for p in PACKAGE.iterdir()
        if p.stem not in ("__init__", "__main__", "__pycache__")
        and not p.name.endswith(".egg-info")
    }
