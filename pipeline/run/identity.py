"""A check's identity: what makes two runs the same job, so that a store is resumed only by the
code, data and options that made it, and the default store is named by it.

The model's identity is its file's source *and* the source of every module it imports from
outside the Python installation (helpers beside it, the team's own package), found by reading
import statements, so editing a helper module gives a new job instead of a replayed verdict.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from gradjob.model.spec import ModelSpec
from gradjob.storage import urls

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
    return urls.join(folder, f"{store_label(spec, case_name)}-{digest(identity)[:10]}.zarr")


def store_label(spec: ModelSpec, case_name: str) -> str:
    stem = Path(spec.name).stem if not spec.is_builtin else spec.name
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{stem}-{Path(case_name).name}")
