"""What a store's attributes must be before any stage reads them: a typed schema (pydantic) and
the arrays' real shapes. The attributes' checksum only tells an edit from damage when the editor
did not recompute it (it is unkeyed), so a crafted store is refused here, in one line, instead of
ending in a TypeError or in streaming 10¹⁰ parameters its arrays do not have."""

from __future__ import annotations

import json
import math
from typing import Annotated, Literal

import numpy as np
import pydantic
import zarr
from pydantic import Field

from gradjob.errors import InputError
from gradjob.types import Method, StoreMeta

Count = Annotated[int, Field(ge=0)]
Positive = Annotated[int, Field(ge=1)]
PositiveNumber = Annotated[float, Field(gt=0, allow_inf_nan=False)]
Finite = Annotated[float, Field(allow_inf_nan=False)]


class _Strict(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(strict=True, extra="forbid")


class _Layout(_Strict):
    dtype: str
    tensors: Annotated[list[tuple[str, list[Positive], Count]], Field(min_length=1)]
    gradient_shapes: dict[str, list[Count]] = {}  # the backward's shape where it differs from its tensor's
    gradient_dtype: str | None = None  # the backward's dtype where narrower than θ's


class _Precision(_Strict):
    checked: str
    model: str
    note: str | None = None


class _Calibration(_Strict):
    evaluations: Count
    tensors: list[tuple[str, float, float, Count, float]]


class _Meta(_Strict):
    identity: dict
    layout: _Layout
    chunk_size: Positive
    n_chunks: Positive
    epsilon: PositiveNumber | None
    method: Method
    threshold: PositiveNumber
    cost: Finite
    evaluator: Literal["incremental", "traced", "forward"]
    precision: _Precision
    calibration: _Calibration
    model: str
    case: str
    created: str
    versions: dict[str, str]
    format: int
    checksum: str


def validated(meta: object, group, path: str) -> StoreMeta:
    """The store's metadata, once it has the schema's types and describes the arrays it sits on."""
    try:
        model = _Meta.model_validate_json(json.dumps(meta))
    except pydantic.ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"])
        problem = f"{where}: {error['msg'][0].lower()}{error['msg'][1:]}" if where else error["msg"]
        raise _corrupted(path, f"has a wrong {problem}") from None
    problem = _shape_problem(model, group)
    if problem:
        raise _corrupted(path, problem)
    return StoreMeta.from_json(meta)


def _corrupted(path: str, problem: str) -> InputError:
    return InputError(f"store {path} is corrupted: its gradjob metadata {problem}; resubmit with --overwrite")


def _shape_problem(meta: _Meta, group) -> str | None:
    """How the metadata disagrees with the arrays (Python integers: a crafted shape cannot overflow)."""
    for dtype in (meta.layout.dtype, meta.precision.checked, meta.precision.model, meta.layout.gradient_dtype or "f8"):
        try:
            if np.dtype(dtype).kind != "f":
                raise TypeError
        except TypeError:
            return f"names {dtype!r} as a dtype; a float dtype is expected"
    n = 0
    for name, shape, offset in meta.layout.tensors:
        if offset != n:
            return f"puts tensor {name!r} at offset {offset}, not {n} after the tensors before it"
        n += math.prod(shape)
    names = [t[0] for t in meta.layout.tensors]
    if len(set(names)) != len(names):
        return "names a tensor twice"
    sizes = {name: math.prod(shape) for name, shape, _ in meta.layout.tensors}
    for name, shape in meta.layout.gradient_shapes.items():
        if sizes.get(name) != math.prod(shape):
            return f"gives a gradient shape {tuple(shape)} for {name!r}, which is not a tensor of that size"
    if [t[0] for t in meta.calibration.tensors] != names:
        return "calibrates other tensors than its layout has"
    arrays = {name: group.get(name) for name in ("theta", "grad", "gradapprox", "cost_plus", "cost_minus", "step",
                                                  "noise", "done", "case/X", "case/Y")}
    missing = [name for name, array in arrays.items() if not isinstance(array, zarr.Array)]
    if missing:
        return f"belongs to a store without the array {missing[0]}"
    wrong = [name for name in ("theta", "grad", "gradapprox", "cost_plus", "cost_minus", "step", "noise")
             if arrays[name].shape != (n,)]
    if wrong:
        return f"describes {n:,} parameters but its array {wrong[0]} holds {math.prod(arrays[wrong[0]].shape):,}"
    if arrays["gradapprox"].chunks != (meta.chunk_size,) or meta.n_chunks != -(-n // meta.chunk_size) \
            or arrays["done"].shape != (meta.n_chunks,):
        return (f"describes {meta.n_chunks} chunks of {meta.chunk_size} but its arrays are chunked by "
                f"{arrays['gradapprox'].chunks[0]}, with {arrays['done'].shape[0]} done flags")
    # each task writes whole Zarr chunks of every result array and its own done flag, and a resume
    # reads chunk k of each as job chunk k: all of them are chunked as the job is
    chunked = next((name for name in ("cost_plus", "cost_minus", "step", "noise")
                    if arrays[name].chunks != (meta.chunk_size,)), None)
    if chunked:
        return (f"describes {meta.n_chunks} chunks of {meta.chunk_size} but its array {chunked} is chunked by "
                f"{arrays[chunked].chunks[0]}")
    if arrays["done"].chunks != (1,):
        return (f"describes {meta.n_chunks} chunks of {meta.chunk_size} but its array done is chunked by "
                f"{arrays['done'].chunks[0]}, not one done flag a chunk")
    return None
