"""The package's import graph: no cycles, and imports at the top of modules.

Importing ``a.b.c`` runs ``a/__init__`` and ``a/b/__init__`` first, so the graph has an edge
from every importer to each package on the way as well as to the module itself. Imports under
``if TYPE_CHECKING:`` are for type hints only and do not count.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "locodiff"
# optional or heavy dependencies that a module may import where it needs them
LAZY_ALLOWED = {"diffusers", "matplotlib", "bpy", "mathutils"}  # mathutils comes with bpy
# locodiff's own packages that need an optional dependency (the diffusers extra): the command line
# imports them where a verb needs them, so that locodiff runs without the extra
OPTIONAL_PACKAGES = {"locodiff.export"}


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _targets(node: ast.AST, importer: str, is_package: bool) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    assert isinstance(node, ast.ImportFrom)
    if node.level:
        base = importer.split(".") if is_package else importer.split(".")[:-1]
        base = base[: len(base) - node.level + 1]
        module = ".".join(base + ([node.module] if node.module else []))
    else:
        module = node.module or ""
    return [module] + [f"{module}.{a.name}" for a in node.names]


def _type_checking_nodes(tree: ast.Module) -> set[ast.AST]:
    nodes: set[ast.AST] = set()
    for stmt in tree.body:
        if isinstance(stmt, ast.If) and "TYPE_CHECKING" in ast.dump(stmt.test):
            nodes.update(ast.walk(stmt))
    return nodes


def import_graph() -> tuple[dict[str, set[str]], list[tuple[str, int, str]]]:
    """Edges between locodiff modules, and every import not at a module's top level."""
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in files}
    nested: list[tuple[str, int, str]] = []
    for name, path in files.items():
        tree = ast.parse(path.read_text())
        top = set(tree.body) | {n for s in tree.body if isinstance(s, (ast.If, ast.Try)) for n in ast.walk(s)}
        skip = _type_checking_nodes(tree)
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Import, ast.ImportFrom)) or node in skip:
                continue
            targets = _targets(node, name, path.name == "__init__.py")
            optional = targets[0].split(".")[0] in LAZY_ALLOWED or targets[0] in OPTIONAL_PACKAGES
            if node not in top and not optional:
                nested.append((name, node.lineno, targets[0]))
            for target in targets:
                parts = target.split(".")
                for i in range(1, len(parts) + 1):  # every package on the way runs its __init__
                    prefix = ".".join(parts[:i])
                    if prefix in files and prefix != name and not name.startswith(prefix + "."):
                        graph[name].add(prefix)
    return graph, nested


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycle():
    cycle = find_cycle(import_graph()[0])
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def room(module: str) -> str:
    """The subpackage (or top-level module) a module belongs to: ``locodiff.locality.probe`` ->
    ``locality``; the package's own ``__init__`` is ``locodiff``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def package_graph() -> dict[str, set[str]]:
    """The import graph with subpackages (and top-level modules) as nodes."""
    graph: dict[str, set[str]] = {}
    for module, targets in import_graph()[0].items():
        edges = graph.setdefault(room(module), set())
        edges.update(room(t) for t in targets if room(t) != room(module))
    graph["locodiff"] = set()  # the package's __init__ re-exports its stages; nothing imports it
    return graph


def test_no_cycle_between_subpackages():
    """A stage may use the ones below it and never the ones above: the subpackages form a
    layered graph, so each can be read (and replaced) without the ones that use it."""
    cycle = find_cycle(package_graph())
    assert cycle is None, "cycle between subpackages: " + " -> ".join(cycle)


# What each library never imports: the libraries take Denoisers, tensors and typed options, and
# the stage layer above them (with the command line) is the only place that knows run folders
# and the study's config. "stages" and "cli" are the stage layer.
NEVER_IMPORTS = {
    "scenes": {"models", "train", "stages", "cli"},
    "diffusion": {"models", "train", "stages", "cli"},
    "models": {"train", "adapters", "stages", "cli"},
    "locality": {"train", "models", "intervene", "adapters", "evaluate", "report", "stages", "cli"},
    "evaluate": {"train", "stages", "cli"},
    "intervene": {"locality", "train", "stages", "cli"},
    "adapters": {"train", "evaluate", "intervene", "stages", "cli"},
    "report": {"train", "models", "adapters", "stages", "cli"},
    "train": {"stages", "cli"},
}


@pytest.mark.parametrize("library,forbidden", sorted(NEVER_IMPORTS.items()))
def test_layering_rules(library, forbidden):
    """A library never reads the layers above it, so it can be read, tested and replaced alone."""
    broken = package_graph()[library] & forbidden
    assert not broken, f"{library} imports {sorted(broken)}"


def test_analytic_references_are_not_a_stage():
    """The local score machine and the exact toys are for tests, benchmarks and examples."""
    assert not any("analytic" in edges for edges in package_graph().values())


def test_one_module_turns_folders_into_denoisers():
    """Only the stage layer's subjects module loads a run or intervention folder's denoiser (the
    export verb reads its own folder format)."""
    users = {m for m, targets in import_graph()[0].items()
             if "locodiff.train.run_folder" in targets and not m.startswith("locodiff.train")}
    assert users <= {"locodiff.stages.subjects", "locodiff.cli", "locodiff.export.folder"}, sorted(users)


def test_imports_at_module_top():
    nested = import_graph()[1]
    assert not nested, "imports inside functions: " + ", ".join(f"{m}:{line} ({t})" for m, line, t in nested)


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize("module", sorted(module_name(p) for p in PACKAGE.rglob("*.py")))
def test_every_module_imports(module):
    importlib.import_module(module)


def _script_imports() -> list[tuple[str, str, str]]:
    """(script, module, name) for every ``from locodiff... import name`` of the examples and benchmarks."""
    found = []
    root = SRC.parent
    for script in sorted([*root.glob("examples/*.py"), *root.glob("benchmarks/*.py")]):
        for node in ast.walk(ast.parse(script.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("locodiff"):
                found += [(script.name, node.module, a.name) for a in node.names]
    return found


@pytest.mark.parametrize("script,module,name", _script_imports())
def test_examples_and_benchmarks_import_what_exists(script, module, name):
    mod = importlib.import_module(module)
    assert hasattr(mod, name) or importlib.util.find_spec(f"{module}.{name}"), f"{script}: {module}.{name}"
