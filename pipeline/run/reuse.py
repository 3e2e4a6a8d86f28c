"""Whether a check's existing store is resumed, started afresh or refused: decided before the
store is touched, by reading it only.

A store is resumed only by the job that made it (its identity: code, modules, data, options),
and only if the code that runs now still computes the store's J(θ) and analytic gradient; a store
of code that changed in a way identity cannot see (a data file the backward reads) is started
afresh, or refused under ``--resume``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gradjob.errors import InputError
from gradjob.run import identity
from gradjob.run.plan import clamped_chunk_size
from gradjob.run.preflight import Prepared
from gradjob.storage import store, urls
from gradjob.types import StoreMeta


def existing_store(prepared: Prepared) -> tuple[list[str], bool]:
    """Refuse, reading only, a store this job may not resume or replace. Returns notes, and
    whether an existing store is to be replaced (``--overwrite``, or its code has changed)."""
    request, path = prepared.request, prepared.store
    if not urls.exists(path):
        if request.resume:
            raise InputError(f"--resume: there is no store at {path} to resume")
        return _other_code_note(prepared), False
    if request.overwrite:
        if not store.recognised(path):
            raise InputError(f"{path} exists and is not a gradjob store; --overwrite deletes only gradjob stores")
        return [], True
    if store.half_created(path):  # a full disk or a kill while it was being created
        if request.resume:
            raise InputError(f"--resume: store {path} was never fully created; submit without --resume to start afresh")
        return [f"store {path} was left half-created; starting afresh"], True
    group = store.open_existing(path, mode="r")  # refuses a store that is not intact
    meta = store.metadata(group)
    differing = identity.differences(meta.identity, prepared.identity)
    if differing:
        raise InputError(
            f"store {path} was made by another job ({', '.join(differing)} differ); "
            "choose another --store or pass --overwrite to start afresh"
        )
    asked = request.chunk_size and clamped_chunk_size(request.chunk_size, prepared.layout.n_parameters)
    if asked and asked != meta.chunk_size:
        raise InputError(
            f"store {path} is chunked by {meta.chunk_size}; resume with --chunk-size {meta.chunk_size} "
            "or pass --overwrite"
        )
    changed = _changed_results(prepared, group, meta)
    if changed:
        if request.resume:
            raise InputError(f"--resume: store {path} was made by other code ({changed}); "
                             "submit without --resume to start afresh")
        return [f"store {path} was made by other code ({changed}); starting afresh"], True
    return [], False


def _changed_results(prepared: Prepared, group, meta: StoreMeta) -> str | None:
    """How this run's J(θ) and analytic gradient differ from the store's, beyond round-off."""
    eps = float(np.finfo(prepared.theta.dtype).eps)
    if abs(meta.cost - prepared.cost) > 64 * eps * max(1.0, abs(meta.cost)):
        return f"J(θ) is now {prepared.cost!r}, the store has {meta.cost!r}"
    for start in range(0, prepared.layout.n_parameters, store.READ_BLOCK):
        stop = min(prepared.layout.n_parameters, start + store.READ_BLOCK)
        old, new = store.read_range(group, "grad", start, stop), prepared.grad[start:stop]
        bad = np.flatnonzero(np.abs(old - new) > 64 * eps * np.maximum(np.abs(old), np.abs(new)) + 1e-300)
        if bad.size:
            i = start + int(bad[0])
            return (f"the analytic gradient at {prepared.layout.describe(i)} is now {new[bad[0]]:.9g}, "
                    f"the store has {old[bad[0]]:.9g}")
    return None


def _other_code_note(prepared: Prepared) -> list[str]:
    """For a new default store: does a store of the same model and case exist for other code?"""
    request = prepared.request
    if request.store is not None or urls.is_url(prepared.store):
        return []
    label = identity.store_label(prepared.spec, prepared.case_name)
    for other in sorted(Path(request.store_dir).glob(f"{label}-*.zarr"), key=lambda p: p.stat().st_mtime,
                        reverse=True):
        try:
            meta = store.metadata(store.open_existing(str(other)))
        except InputError:
            continue
        differing = identity.differences(meta.identity, prepared.identity)
        same_functions = meta.model == prepared.spec.describe()  # another --backward is not a code change
        if differing and set(differing) <= {"model", "modules"} and same_functions:
            return [f"the {identity.describe(differing)} changed since {other} was checked; checking the new code "
                    "in a new store"]
    return []


