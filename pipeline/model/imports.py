"""The user's own modules a model imports: found by reading import statements (nothing is
imported), so that the model's identity covers its helpers and a long-lived process re-imports
them as they are now.

A model's code is ``files`` (a model file, or the files defining the API's functions) and, for a
model file, its ``source`` text; modules inside the Python installation are not followed.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.machinery
import site
import sys
import sysconfig
from pathlib import Path


def digest_of(files: dict[str, str]) -> str:
    return hashlib.sha256(repr(sorted(files.items())).encode()).hexdigest()


def user_modules(files: list[str], source: str | None, name: str) -> dict[str, str]:
    """{file: sha256} of the modules the model's code imports, directly or through each other,
    that live outside the Python installation. Built-in models have none."""
    return {file: digest for file, (_, digest) in user_imports(files, source, name).items()}


def user_imports(files: list[str], source: str | None, name: str) -> dict[str, tuple[str, str]]:
    """{file: (module name as imported, sha256)} of the modules ``user_modules`` finds. ``source``:
    a model file's text (named ``name``); None where ``files`` are the code (the API's functions)."""
    if not files:
        return {}
    found: dict[str, tuple[str, str]] = {}
    if source is None:  # the files defining the functions are part of the model's code
        found.update({f: ("", hashlib.sha256(Path(f).read_bytes()).hexdigest()) for f in files if Path(f).is_file()})
        todo = [(Path(f).read_text(errors="replace"), f) for f in files if Path(f).is_file()]
    else:
        todo = [(source, name)]
    search = [str(Path(files[0]).parent), *sys.path]
    while todo:
        source, filename = todo.pop()
        for name, origin in _imported_files(source, filename, search):
            if origin in found or origin in files:
                continue
            data = Path(origin).read_bytes()
            found[origin] = (name, hashlib.sha256(data).hexdigest())
            if origin.endswith(".py"):
                todo.append((data.decode(errors="replace"), origin))
    return found


def _installation_roots() -> tuple[str, ...]:
    roots = {sys.prefix, sys.base_prefix, sys.exec_prefix, *sysconfig.get_paths().values()}
    try:
        roots.update(site.getsitepackages())
        roots.add(site.getusersitepackages())
    except AttributeError:  # some virtualenv layouts
        pass
    return tuple(str(Path(r).resolve()) for r in roots if r)


def _imported_files(source: str, filename: str, search: list[str]) -> list[tuple[str, str]]:
    try:
        tree = ast.parse(source, filename)
    except SyntaxError:
        return []
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _relative_base(filename, node.level) if node.level else ""
            module = ".".join(p for p in (base, node.module or "") if p)
            if module:
                names.append(module)
                names += [f"{module}.{alias.name}" for alias in node.names]
    roots = _installation_roots()
    files = []
    for name in names:
        if name.split(".")[0] in ("gradjob", "__future__"):
            continue
        origin = _find(name, [str(Path(filename).parent), *search] if "." not in name else search)
        if origin and Path(origin).is_file() and not _installed(Path(origin).resolve(), roots):
            files.append((name, str(Path(origin).resolve())))
    return files


def _installed(origin: Path, roots: tuple[str, ...]) -> bool:
    """Inside the Python installation, or in any site-packages/dist-packages folder on the path (a
    user site, a .pth or PYTHONPATH entry): such a module is a library, and forgetting a compiled
    one (numpy) from ``sys.modules`` would break its next import in this process."""
    return str(origin).startswith(roots) or any(part in ("site-packages", "dist-packages") for part in origin.parts)


def _relative_base(filename: str, level: int) -> str:
    """The dotted package a relative import in ``filename`` starts from (packages found by their
    __init__.py files up the folder tree)."""
    folder = Path(filename).parent
    parts = []
    while (folder / "__init__.py").exists():
        parts.insert(0, folder.name)
        folder = folder.parent
    return ".".join(parts[: len(parts) - (level - 1)] if level > 1 else parts)


def _find(name: str, search: list[str]) -> str | None:
    """Where ``name`` would be imported from, without importing anything."""
    locations, origin = search, None
    for part in name.split("."):
        if locations is None:
            return origin
        spec = importlib.machinery.PathFinder.find_spec(part, list(locations))
        if spec is None:
            return origin
        origin, locations = spec.origin, spec.submodule_search_locations
    return origin
