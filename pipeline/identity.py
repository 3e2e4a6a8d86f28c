"""A check's identity: what makes two runs the same job, so that a store is resumed only by the
code, data and options that made it, and the default store is named by it.

The model's identity is its file's source *and* the source of every module it imports from
outside the Python installation (helpers beside it, the team's own package), found by reading
import statements, so editing a helper module gives a new job instead of a replayed verdict.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.machinery
import re
import site
import sys
import sysconfig
from pathlib import Path

from . import store
from .models import ModelSpec

LABELS = {"model": "model code", "modules": "modules the model imports", "case": "X and Y",
          "theta": "parameter values", "layout": "parameter names or shapes", "epsilon": "epsilon",
          "method": "method", "evaluator": "evaluator", "precision": "precision"}


def of(spec: ModelSpec, case_digest: str, theta_digest: str, layout_json: dict, epsilon, method: str,
       evaluator: str, checked_dtype: str) -> dict:
    return {
        "model": spec.digest(),
        "modules": spec.modules,
        "case": case_digest,
        "theta": theta_digest,
        "layout": hashlib.sha256(repr(layout_json).encode()).hexdigest(),
        "epsilon": epsilon if epsilon is not None else "auto",
        "method": method,
        "evaluator": evaluator,
        "precision": checked_dtype,
    }


def digest(identity: dict) -> str:
    return hashlib.sha256(repr(sorted(identity.items())).encode()).hexdigest()


def differences(stored: dict, current: dict) -> list[str]:
    """Keys whose values differ (a store made before a key existed differs in it)."""
    return [key for key, value in current.items() if stored.get(key) != value]


def describe(keys: list[str]) -> str:
    return ", ".join(LABELS.get(k, k) for k in keys)


def default_store_path(spec: ModelSpec, case_name: str, identity: dict, folder: str = "gradjob-stores") -> str:
    """``<folder>/<model>-<case>-<hash>.zarr``: the same job always finds its own store, and a job
    with other code, weights or options never collides with it."""
    return store.join(folder, f"{store_label(spec, case_name)}-{digest(identity)[:10]}.zarr")


def store_label(spec: ModelSpec, case_name: str) -> str:
    stem = Path(spec.name).stem if not spec.is_builtin else spec.name
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{stem}-{Path(case_name).name}")


def digest_of(files: dict[str, str]) -> str:
    return hashlib.sha256(repr(sorted(files.items())).encode()).hexdigest()


def user_modules(spec: ModelSpec) -> dict[str, str]:
    """{file: sha256} of the modules the model file imports, directly or through each other,
    that live outside the Python installation. Built-in models have none."""
    return {file: digest for file, (_, digest) in user_imports(spec).items()}


def user_imports(spec: ModelSpec) -> dict[str, tuple[str, str]]:
    """{file: (module name as imported, sha256)} of the modules ``user_modules`` finds."""
    files = spec.files
    if not files:
        return {}
    found: dict[str, tuple[str, str]] = {}
    if spec.functions is not None:  # the files defining the functions are part of the model's code
        found.update({f: ("", hashlib.sha256(Path(f).read_bytes()).hexdigest()) for f in files if Path(f).is_file()})
        todo = [(Path(f).read_text(errors="replace"), f) for f in files if Path(f).is_file()]
    else:
        todo = [(spec.source, spec.name)]
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
        if origin and Path(origin).is_file() and not str(Path(origin).resolve()).startswith(roots):
            files.append((name, str(Path(origin).resolve())))
    return files


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
