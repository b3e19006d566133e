"""The package's rooms import one way (a lower room never imports a higher one), and no module
imports itself back through others, inside a room or across rooms."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "megacontext_plugin"

# room -> rooms it may import (besides itself)
ALLOWED: dict[str, set[str]] = {
    "config": set(),
    "hookspecs": set(),
    "private_files": set(),
    "arg_errors": set(),
    "tree": {"private_files"},
    "context": {"tree"},
    # config: ``focus.focus_config``, the one place the knobs become the allocator's settings (training, evaluation
    # and inference all read them from there), and ``focus.budget``, the budget the knobs make a run train at
    # (training's curriculum, evaluation's validation budget); config imports nothing, as for nets and telemetry
    "focus": {"config", "context", "tree"},
    # context and checkpoint: the stand-in base model (``nets.tiny_gpt``) takes its rotary tables from
    # ``context.positions``, and its file (``nets.tiny_checkpoint``) is read by ``checkpoint.read_state``; both sit
    # here, below training (whose recipe trains the stand-in) and evaluation (which loads it). Neither context
    # nor checkpoint imports nets
    "nets": {"config", "context", "checkpoint"},
    "data": set(),
    "telemetry": {"config", "private_files"},
    # data and checkpoint: the stand-in's recipe (``tiny_recipe``) trains on seeded task documents and resumes
    # from its ``plain.pt``
    "training": {"config", "tree", "context", "nets", "focus", "telemetry", "data", "checkpoint"},
    "nanochat_patch": set(),
    "demo": {"tree", "context", "focus"},
    "checkpoint": {"config", "private_files"},
    # inference needs GistNet and LensNet (``nets.AuxNets``), never the training room's optimizer and state
    "inference": {"config", "tree", "context", "focus", "nets", "telemetry", "private_files"},
    "plugin": {"arg_errors", "config", "hookspecs", "tree", "context", "nets", "focus", "training", "telemetry",
               "inference", "evaluation", "checkpoint"},
    # checkpoint: the one loader of the plugin's files and its CheckpointError. Never training: the stand-in model
    # and its file are in nets, the curriculum's last budget in focus (test_evaluation_never_imports_training)
    "evaluation": {"config", "tree", "context", "focus", "nets", "data", "telemetry", "checkpoint"},
    # training: ``eval train-tiny`` is training's recipe (``training.tiny_recipe``), wired beside the evaluation's
    # commands
    "cli": {"arg_errors", "config", "demo", "data", "nanochat_patch", "evaluation", "training"},
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
            elif node.module == "megacontext_plugin":  # "from megacontext_plugin import room"
                rooms.update(alias.name for alias in node.names)
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


def test_inference_never_imports_training() -> None:
    """The chat stage holds the aux nets alone: building a training controller (optimizer, EMAs,
    layout thread) to borrow two networks is what this forbids."""
    assert "training" not in ALLOWED["inference"]
    inference = (PACKAGE / "inference").rglob("*.py")
    bad = [str(p.relative_to(PACKAGE)) for p in inference if "training" in _imported_rooms(p)]
    assert not bad, bad


def test_evaluation_never_imports_training() -> None:
    """Evaluation reads the aux nets through ``nets.AuxNets`` (the arms, the post-run validation, both
    checkpoint loaders), never a training controller; the stand-in's recipe, which trains with an
    ``MCController``, is training's (``training.tiny_recipe``)."""
    assert "training" not in ALLOWED["evaluation"]
    evaluation = (PACKAGE / "evaluation").rglob("*.py")
    bad = [str(p.relative_to(PACKAGE)) for p in evaluation if "training" in _imported_rooms(p)]
    assert not bad, bad


def test_the_rooms_graph_has_no_cycle() -> None:
    assert not _cycles({room: set(allowed) for room, allowed in ALLOWED.items()})


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str) -> bool:
    rel = Path(*name.split(".")[1:]) if "." in name else Path()
    return (PACKAGE / rel).with_suffix(".py").is_file() or (PACKAGE / rel / "__init__.py").is_file()


def _all_imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement, at module level or inside a function, class or ``try``: an import
    deferred into a function still ties the two modules together, it only hides the cycle until
    the function runs. Imports under ``if TYPE_CHECKING:`` are left out: they never run, so they
    serve annotations only (a module that names another's type is not one that needs it to run)."""
    found: list[ast.Import | ast.ImportFrom] = []
    todo: list[ast.AST] = [tree]
    while todo:
        node = todo.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        elif isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            todo.extend(node.orelse)
        else:
            todo.extend(ast.iter_child_nodes(node))
    return found


def _module_imports(path: Path) -> set[str]:
    """Package modules ``path`` imports, anywhere in it (``from pkg import mod`` counts as ``pkg.mod``)."""
    me = _module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    out: set[str] = set()
    for node in _all_imports(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith(PACKAGE.name + "."))
            continue
        if node.level:
            base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
            target = ".".join(base + (node.module.split(".") if node.module else []))
        else:
            target = node.module or ""
        if not target.startswith(PACKAGE.name):
            continue
        for alias in node.names:
            sub = f"{target}.{alias.name}"
            out.add(sub if _is_module(sub) else target)
    out.discard(me)
    return out


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in list(graph):
        if v not in index:
            visit(v)
    return found


def test_no_module_imports_itself_back() -> None:
    """A cycle of imports, inside a room or across rooms, at module level or inside a function, is an error."""
    graph = {_module_name(p): _module_imports(p) for p in PACKAGE.rglob("*.py")}
    assert not _cycles(graph), _cycles(graph)


def test_the_cycle_finder_sees_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
