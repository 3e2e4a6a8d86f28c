"""The package's shape, read from its source with ``ast`` (every import: top-level, in functions,
under ``if TYPE_CHECKING``): stages import downward only (no cycle between modules), no private
name crosses a subpackage (nor a module inside ``trace/``), every module reads in one sitting,
and README's layout section names every subpackage."""

import ast
import re
from pathlib import Path

import gradjob

ROOT = Path(gradjob.__file__).parent
README = Path(__file__).parents[1] / "README.md"
MAX_LINES = 400


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(("gradjob",) + (parts[:-1] if parts[-1] == "__init__" else parts))


MODULES = {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def owner(module: str) -> str:
    """The subpackage a module belongs to (``gradjob.run.job`` → ``gradjob.run``); a top-level
    module (``gradjob.types``) is its own."""
    parts = module.split(".")
    return ".".join(parts[:2])


def imports(module: str) -> list[tuple[str, str | None]]:
    """(imported gradjob module, name taken from it or None) for every import in ``module``."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.extend((a.name, None) for a in node.names if a.name.split(".")[0] == "gradjob")
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # from . import x, from ..run import job
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            if base.split(".")[0] != "gradjob":
                continue
            for a in node.names:
                sub = f"{base}.{a.name}"
                found.append((sub, None) if sub in MODULES else (base, a.name))
    return found


def graph() -> dict[str, set[str]]:
    return {m: {target for target, _ in imports(m) if target in MODULES and target != m} for m in MODULES}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as the modules along it (first repeated at the end), or None."""
    state: dict[str, str] = {}

    def visit(module: str, path: list[str]) -> list[str] | None:
        if state.get(module) == "done":
            return None
        if state.get(module) == "open":
            return path[path.index(module):] + [module]
        state[module] = "open"
        for target in sorted(edges.get(module, ())):
            cycle = visit(target, path + [module])
            if cycle:
                return cycle
        state[module] = "done"
        return None

    for module in sorted(edges):
        cycle = visit(module, [])
        if cycle:
            return cycle
    return None


def test_find_cycle_names_the_modules_along_it():
    """The checker itself: a cycle is found and printed in order, a chain is not a cycle."""
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycles():
    cycle = find_cycle(graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_imports_are_seen():
    """Lazy and type-only imports count: the known edges are in the graph."""
    edges = graph()
    assert "gradjob.types" in edges["gradjob.report.model"]
    assert "gradjob.run.job" in edges["gradjob.api"]


def test_no_private_names_cross_a_subpackage():
    crossing = [(m, target, name) for m in MODULES for target, name in imports(m)
                if name and name.startswith("_") and not name.startswith("__")
                and (owner(target) != owner(m) or owner(m) == "gradjob.trace" and target != m)]
    assert crossing == []


def test_no_module_over_400_lines():
    sizes = {str(path.relative_to(ROOT)): len(path.read_text().splitlines()) for path in MODULES.values()}
    assert {name: n for name, n in sizes.items() if n > MAX_LINES} == {}


def test_readme_layout_names_every_subpackage():
    section = re.search(r"^## Layout of the code\n(.*?)(?=^## |\Z)", README.read_text(), re.DOTALL | re.MULTILINE)
    assert section is not None
    subpackages = sorted(p.parent.name for p in ROOT.glob("*/__init__.py"))
    assert subpackages  # the glob finds them
    assert [s for s in subpackages if f"`{s}/`" not in section.group(1)] == []
