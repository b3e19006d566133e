"""The package's rooms import one way: a lower room never imports a higher one."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "megacontext_plugin"

# room -> rooms it may import (besides itself)
ALLOWED: dict[str, set[str]] = {
    "config": set(),
    "hookspecs": set(),
    "tree": set(),
    "context": {"tree"},
    "focus": {"context", "tree"},
    "nets": {"config"},
    "data": set(),
    "telemetry": {"config"},
    "training": {"config", "tree", "context", "nets", "focus", "telemetry"},
    "nanochat_patch": set(),
    "demo": {"tree", "context", "focus"},
    "inference": {"config", "tree", "context", "focus", "nets", "training"},
    "plugin": {"config", "hookspecs", "tree", "context", "nets", "focus", "training", "telemetry", "inference",
               "evaluation"},
    "evaluation": {"config", "tree", "context", "focus", "nets", "training", "data", "telemetry"},
    "cli": {"config", "demo", "data", "nanochat_patch", "evaluation"},
}


def _room(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0].removesuffix(".py")


def _imported_rooms(path: Path) -> set[str]:
    rooms: set[str] = set()
    package_parts = path.relative_to(PACKAGE).parts[:-1]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the module's package
                base = list(package_parts[: len(package_parts) - (node.level - 1)])
                target = base + (node.module.split(".") if node.module else [])
                if target:
                    rooms.add(target[0])
                else:  # "from . import x" at the package root
                    rooms.update(alias.name for alias in node.names)
            elif node.module and node.module.startswith("megacontext_plugin."):
                rooms.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            rooms.update(a.name.split(".")[1] for a in node.names if a.name.startswith("megacontext_plugin."))
    return rooms


def test_every_module_belongs_to_a_known_room() -> None:
    rooms = {_room(p) for p in PACKAGE.rglob("*.py") if p.name != "__init__.py" or p.parent != PACKAGE}
    assert rooms <= set(ALLOWED) | {"__init__"}, rooms - set(ALLOWED)


def test_rooms_import_one_way() -> None:
    bad = []
    for path in PACKAGE.rglob("*.py"):
        room = _room(path)
        if room == "__init__":
            continue
        for other in _imported_rooms(path) - {room}:
            if other not in ALLOWED[room]:
                bad.append(f"{path.relative_to(PACKAGE)} imports {other}")
    assert not bad, bad
