"""The code's shape: three wings (the maths, one run, many runs) and no import circle."""
from __future__ import annotations

import ast
from pathlib import Path

import precond

ROOT = Path(precond.__file__).parent
#: precond's own Hydra plugins import the package and are imported by it (lazily): one graph for both
PLUGINS = ROOT.parent / "hydra_plugins"
OURS = ("precond", "hydra_plugins.precond_")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[str]]:
    """Module → the precond modules (and precond plugin modules) it imports (at any depth: a lazy import is still
    a dependency)."""
    graph = {}
    for path in [*ROOT.rglob("*.py"), *PLUGINS.glob("precond_*/*.py")]:
        name = _module_name(path)
        found = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(OURS):
                found.add(node.module)
                found.update(f"{node.module}.{a.name}" for a in node.names)
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names if a.name.startswith(OURS))
        graph[name] = {m for m in found if m != name}
    modules = set(graph)
    return {name: {m for m in deps if m in modules} for name, deps in graph.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str]:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                return stack[stack.index(dep):] + [dep]
            if dep not in state and (found := visit(dep)):
                return found
        stack.pop()
        state[node] = 2
        return []

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return []


def test_no_module_imports_in_a_circle():
    graph = {k: {d for d in v if d not in ("precond", "precond.run", "precond.sweep")} for k, v in _imports().items()
             if k not in ("precond", "precond.run", "precond.sweep", "precond.train")}
    assert _cycle(graph) == []


def test_the_plugins_are_in_the_graph_the_circle_test_reads():
    graph = _imports()
    assert "hydra_plugins.precond_optuna.guarded_optuna" in graph
    assert "precond.run.entry" in graph["hydra_plugins.precond_optuna.guarded_optuna"]


def test_the_maths_imports_neither_wing_and_one_run_knows_sweeps_only_for_an_interrupted_sweep():
    graph = _imports()
    maths = [m for m in graph if m.startswith("precond.") and m.count(".") == 1 and m != "precond.train"]
    assert maths and all(not d.startswith(("precond.run", "precond.sweep")) for m in maths for d in graph[m])
    run_to_sweep = {(m, d) for m in graph if m.startswith("precond.run.") for d in graph[m]
                    if d.startswith("precond.sweep")}
    assert run_to_sweep == {("precond.run.entry", "precond.sweep.callbacks")}


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def _hand_written_number_checks() -> list[str]:
    """``isinstance(x, int)`` / ``isinstance(x, (int, float))`` outside the schema: each is a number check that
    must also exclude bools (``True`` is an int to Python), which is what ``precond.settings.is_int`` /
    ``is_number`` / ``is_finite_number`` do once."""
    found = []
    for path in [*ROOT.rglob("*.py"), *PLUGINS.glob("precond_*/*.py")]:
        if path == ROOT / "settings.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "isinstance" and len(node.args) == 2:
                types = node.args[1].elts if isinstance(node.args[1], ast.Tuple) else [node.args[1]]
                if any(getattr(t, "id", None) == "int" for t in types):
                    found.append(f"{path.relative_to(ROOT.parent)}:{node.lineno}")
    return found


def test_number_checks_use_the_schemas_helpers():
    assert _hand_written_number_checks() == []
