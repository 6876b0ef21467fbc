"""The package layout is part of the design: the folder names tell the architecture.

- the process (cli, app factory, config, logs, clock, demo wiring) at the top of ``exporter/``;
- ``balance/`` watches balances, ``proxy/`` meters traffic, ``web/`` serves pages and the web
  config, ``simulator/`` is the fake DeepSeek API;
- no import cycle anywhere (imports inside functions and under TYPE_CHECKING count too);
- the halves and layers do not reach into each other: only the top level wires them together;
- no module is over 600 lines.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "exporter"
MAX_LINES = 600

# Which subpackage may import which (besides itself and the shared top-level modules below).
ALLOWED: dict[str, set[str]] = {
    "balance": set(),
    "proxy": set(),
    "web": set(),
    # The simulator charges with the proxy's price table and usage type, nothing else.
    "simulator": {"proxy"},
}
# Top-level modules any subpackage may use: no behaviour of their own, no imports of the halves.
SHARED = {"exporter", "exporter.config", "exporter.clock", "exporter.logs"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules that ``path`` imports, anywhere in the file."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from exporter.web import webconfig` imports the module exporter.web.webconfig.
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        for name in names:
            if name in modules:
                found.add(name)
    return found - {_module_name(path)}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(path, modules) for name, path in modules.items()}


def test_no_module_is_over_600_lines() -> None:
    long = {
        name: lines
        for name, path in _modules().items()
        if (lines := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert not long


def test_no_import_cycle() -> None:
    graph = _graph()
    # Depth-first search for a back edge; report the cycle itself.
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for child in sorted(graph[node]):
            if state.get(child) == 1:
                return [*stack[stack.index(child) :], child]
            if child not in state and (cycle := visit(child)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for module in sorted(graph):
        if module not in state:
            cycle = visit(module)
            assert cycle is None, " -> ".join(cycle)


def test_halves_and_layers_do_not_reach_into_each_other() -> None:
    wrong = []
    for module, imported in _graph().items():
        parts = module.split(".")
        if len(parts) < 2 or parts[1] not in ALLOWED:
            continue  # a top-level module: wiring is its job
        own = parts[1]
        for target in imported:
            if target in SHARED or target.split(".")[1] == own:
                continue
            if target.split(".")[1] not in ALLOWED[own]:
                wrong.append(f"{module} imports {target}")
    assert not wrong


def test_the_shared_top_level_modules_import_no_half() -> None:
    graph = _graph()
    for module in SHARED - {"exporter"}:
        assert graph[module] <= SHARED, f"{module} imports {graph[module] - SHARED}"


def test_every_subpackage_is_listed() -> None:
    subpackages = {p.parent.name for p in PACKAGE.glob("*/__init__.py")}
    assert subpackages == set(ALLOWED)
