"""No module of unmask imports one that imports it back, directly or round a longer loop: each
file can be read, tested and changed with only the modules below it in mind.

The imports are read from the source (every `import` and `from ... import`, relative ones and
those inside functions included), not by importing the package, so a lazy import counts like
any other. One kind is left out: a package's `__init__` naming its own modules' contents
lazily, inside a function (PEP 562's `__getattr__`). Python loads a package before any module
in it, so such a front door always sits "above" the modules that read, say, its `__version__`.
"""
from __future__ import annotations

import ast
from collections import deque
from pathlib import Path

import unmask

PACKAGE_DIR = Path(unmask.__file__).parent


def module_files() -> dict[str, Path]:
    """Dotted module name -> source file, packages under their own name."""
    modules = {}
    for file in sorted(PACKAGE_DIR.rglob("*.py")):
        parts = file.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = file
    return modules


def imported_names(tree: ast.AST, package: str, front_door: bool = False) -> set[str]:
    """The dotted names the module imports (``unmask.check.Checker``), relative imports resolved.
    ``front_door``: the module is ``package``'s ``__init__``, whose imports of its own modules
    inside functions (lazy exports) are left out."""
    lazy = set()
    if front_door:
        for function in ast.walk(tree):
            if isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lazy.update(id(node) for node in ast.walk(function))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found = {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                module = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found = {f"{module}.{alias.name}" for alias in node.names}  # a submodule, or a name in `module`
        else:
            continue
        if id(node) in lazy:
            found = {name for name in found if not name.startswith(f"{package}.")}
        names |= found
    return names


def import_graph() -> dict[str, set[str]]:
    """module -> the modules of unmask it imports."""
    modules = module_files()
    graph = {}
    for name, file in modules.items():
        is_package = file.name == "__init__.py"
        package = name if is_package else name.rpartition(".")[0]
        reached = imported_names(ast.parse(file.read_text(encoding="utf-8")), package, front_door=is_package)
        owners = {_owning_module(dotted, modules) for dotted in reached}
        graph[name] = owners - {None, name}
    return graph


def _owning_module(name: str, modules: dict[str, Path]) -> str | None:
    """The module a dotted name lives in (``unmask.check.Checker`` -> ``unmask.check``); None outside unmask."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def shortest_loop(graph: dict[str, set[str]], start: str) -> list[str] | None:
    """The shortest chain of imports from ``start`` back to itself, or None."""
    came_from: dict[str, str] = {}
    queue = deque([start])
    while queue:
        module = queue.popleft()
        for target in sorted(graph[module]):
            if target == start:
                chain = [module]
                while chain[-1] != start:
                    chain.append(came_from[chain[-1]])
                return [start, *reversed(chain[:-1]), start]
            if target not in came_from:
                came_from[target] = module
                queue.append(target)
    return None


def import_loops(graph: dict[str, set[str]]) -> list[list[str]]:
    """One shortest loop for each group of modules that import each other."""
    loops, seen = [], set()
    for module in sorted(graph):
        if module in seen:
            continue
        loop = shortest_loop(graph, module)
        if loop:
            loops.append(loop)
            seen.update(loop)
    return loops


def test_the_graph_sees_every_kind_of_import():
    graph = import_graph()
    assert "unmask.check" in graph["unmask.report"]  # from unmask.check import ... at the top
    assert "unmask.faces.detectors" in graph["unmask.check"]  # inside Checker.__init__
    assert "unmask.faces.mtcnn_onnx" in graph["unmask.faces.detectors"]  # inside a registered builder
    assert "unmask" in graph["unmask.check"]  # from unmask import __version__
    assert "unmask.api" not in graph["unmask"]  # the package's lazy front door
    lazy = ast.parse("def __getattr__(name):\n    from unmask import api\n    import unmask.faces.crop\n    import numpy\n")
    assert imported_names(lazy, "unmask.faces", front_door=True) == {"unmask.api", "numpy"}
    tree = ast.parse("from . import crop\nfrom .. import config\nfrom .motion import x\n")
    assert imported_names(tree, "unmask.faces") == {
        "unmask.faces.crop", "unmask.config", "unmask.faces.motion.x"}


def test_the_loop_finder_finds_a_loop_of_any_length():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set()}
    assert import_loops(graph) == [["a", "b", "c", "a"]]
    assert import_loops({"a": {"b"}, "b": set()}) == []


def test_no_module_imports_one_that_imports_it_back():
    loops = import_loops(import_graph())
    assert loops == [], "import loops:\n" + "\n".join(" -> ".join(loop) for loop in loops)


FRONT = ("unmask.cli", "unmask.commands", "unmask.web")
"""The front: the command line (``cli`` and its ``commands``) and the web app. They print, exit and
answer requests; the library below them raises and returns, and never imports them."""


def test_nothing_below_the_front_imports_it():
    graph = import_graph()
    front = {module for module in graph if any(module == f or module.startswith(f"{f}.") for f in FRONT)}
    below = [f"{module} imports {target}" for module, targets in sorted(graph.items())
             if module not in front | {"unmask.__main__"} for target in sorted(targets & front)]
    assert below == [], "\n".join(below)
