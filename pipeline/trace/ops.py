"""The operations of the traced fast path, each declared once, here: its name (a node's ``op``),
its line of documentation (README's supported list is made from them, see ``supported``), the
dataclass of its node's attributes (``attrs``), its replay rule, and the NumPy functions whose
record rule makes it (``FUNCTIONS``, the table ``Traced.__array_function__`` looks them up in;
ufuncs and ``Traced``'s operators and methods reach the same rules; writes reach ``writes``'
rules through ``Traced.__setitem__``, ``__array__`` and ``__array_ufunc__``).

A replay rule is ``rule(replay, node, i, reps, B, plan, pos, dying) -> (rep, stands_for)``:
``replay`` the ``Replay`` (values at θ ``replay.base``, dtypes, buffers, ``replay._split_by_size``),
``node`` the node and ``i`` its id, ``reps`` per operand its ``Rep`` under the batch of ``B``
perturbations (None for a constant or an operand no perturbation changes; never all None),
``plan`` the tensor's ``Plan`` and ``pos`` the node's position in it, ``dying`` the operands
whose last use this is (their buffers may be overwritten). It returns the node's ``Rep`` (None
if nothing changed) and the id of a later node that Rep stands for (a product fused with its
bias), else None. An operation with no incremental rule uses ``generic.recompute``, recorded by
``functions.recorded_call(np.f, name)``: adding one is a line here (see ``concatenate``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from gradjob.trace import functions as f
from gradjob.trace.attrs import Axes, Call, DType, Key, NoAttrs, Param, Reduction, Shape, Ufunc, Write
from gradjob.trace.batched import Rep, transpose_rep
from gradjob.trace.casts import untangle
from gradjob.trace.elementwise import astype_into
from gradjob.trace.generic import recompute
from gradjob.trace.writes import replay_write


@dataclass(frozen=True)
class Op:
    name: str
    doc: str                    # one line of README's supported list (Markdown)
    attrs: type = NoAttrs
    replay: Callable | None = None  # None: it makes no node of its own, or a node that is never replayed
    functions: dict = field(default_factory=dict)  # NumPy callable -> its record rule


# -- the replay rules with an incremental form (the rules themselves are ``Replay``'s mixins)
def _matmul(replay, node, i, reps, B, plan, pos, dying=()):
    return replay._matmul(node, i, reps, B, plan, len(plan.order) - pos)


def _elementwise(replay, node, i, reps, B, plan, pos, dying=()):
    function = node.attrs.function
    reusable = None
    if isinstance(function, np.ufunc):  # write over an operand's block if this is its last use
        reusable = next((r for r, o in zip(reps, node.operands) if r is not None and r.owned and o.id in dying), None)
    return replay._elementwise(node, i, reps, function, node.attrs.kwargs, B, reusable), None


def _astype(replay, node, i, reps, B, plan, pos, dying=()):
    return replay._elementwise(node, i, reps, astype_into, {}, B), None


def _copy(replay, node, i, reps, B, plan, pos, dying=()):
    r = reps[0]
    r.owned = False  # shares its operand's data
    return Rep(r.kinds, r.idx, r.data, r.bpos, r.shape, r.base), None


def _transpose(replay, node, i, reps, B, plan, pos, dying=()):
    reps[0].owned = False
    return transpose_rep(reps[0], node.attrs.axes, replay.base[i]), None


def _reshape(replay, node, i, reps, B, plan, pos, dying=()):
    reps[0].owned = False
    return replay._reshape(reps[0], node.attrs.shape, replay.base[i], B), None


def _reduce(replay, node, i, reps, B, plan, pos, dying=()):
    return replay._reduce(node, i, reps[0], node.operands[0].id, B), None


def _index(replay, node, i, reps, B, plan, pos, dying=()):
    reps[0].owned = False  # basic indexing gives a view of the operand's data
    return replay._index(reps[0], node.attrs.key, replay.base[i], B), None


def _like(function):
    return f.constant_like(function)


_DECLARED = [
    Op("param", "the parameters themselves, each a leaf of the graph", Param),
    Op("matmul", "`np.dot`, `@`/`np.matmul`, `.dot` on 1-D or 2-D operands (`np.dot` with a scalar multiplies), "
       "also `X.dot(W)` with X a plain array and a constant 1-D vector `@` a traced matrix",
       NoAttrs, _matmul, {np.dot: f.traced_dot}),
    Op("matmul_nd", "`@`/`np.matmul`/`np.dot` with more than 2 dimensions (batched attention, "
       "`Q @ K.transpose(0, 2, 1)`), recomputed per perturbation", Call, recompute),
    Op("elementwise", "every elementwise ufunc, called or through an operator, with broadcasting and Python "
       "scalars or constant arrays on either side (`+ - * / // % **`, unary `-`, `abs()`, `np.maximum/minimum`, "
       "`np.exp/log/log1p/tanh/sqrt/square`, …), comparisons and `& | ^` on masks, `np.where(c, a, b)`, "
       "`np.clip`/`.clip`", Ufunc, _elementwise, {np.where: f.traced_where, np.clip: f.traced_clip}),
    Op("astype", "`.astype`/`np.astype`, and NumPy's scalar types as casts of arrays (`np.int64(A > 0)`)",
       DType, _astype, {np.astype: f.traced_astype}),
    Op("copy", "`np.copy`/`.copy`, `.flatten`", NoAttrs, _copy, {np.copy: f.traced_copy}),
    Op("transpose", "`.T`, `np.transpose`/`.transpose`", Axes, _transpose, {np.transpose: f.traced_transpose}),
    Op("reshape", "`np.reshape`/`.reshape`, `np.squeeze`/`.squeeze`, `np.expand_dims`, `np.ravel`/`.ravel`",
       Shape, _reshape, {np.reshape: f.traced_reshape, np.squeeze: f.traced_squeeze,
                         np.expand_dims: f.traced_expand_dims, np.ravel: f.traced_ravel}),
    Op("reduce", "`np.sum/mean/max/min/amax/amin/nansum/nanmax/nanmin` and the methods `.sum/.mean/.max/.min`, "
       "with `axis`, `keepdims`, `dtype`", Reduction, _reduce,
       {np.sum: f.traced_sum, np.mean: f.traced_mean, np.max: f.traced_max, np.amax: f.traced_max,
        np.min: f.traced_min, np.amin: f.traced_min, np.nansum: f.traced_nansum, np.nanmax: f.traced_nanmax,
        np.nanmin: f.traced_nanmin}),
    Op("var", "`np.var/std`, `.var/.std` (with `ddof`) and `np.linalg.norm(x)` (the default norm), "
       "recorded as the sums and ufuncs NumPy computes them with", NoAttrs, None,
       {np.var: f.traced_var, np.std: f.traced_std, np.linalg.norm: f.traced_norm}),
    Op("index", "indexing with constants: integers, slices, `None`, `...`, integer and boolean arrays "
       "(`scores[np.arange(N), y]`)", Key, _index),
    Op("shape", "`len()`, `.shape/.ndim/.size/.dtype`, `np.shape/ndim/size`, iterating over the first axis, "
       "`np.zeros_like/ones_like/full_like` (constants: no node)", NoAttrs, None,
       {np.shape: lambda a: np.shape(f.plain(untangle(a))), np.ndim: lambda a: np.ndim(f.plain(untangle(a))),
        np.size: lambda a, axis=None: np.size(f.plain(untangle(a)), axis),
        np.zeros_like: _like(np.zeros_like), np.ones_like: _like(np.ones_like), np.full_like: _like(np.full_like)}),
    Op("concatenate", "`np.concatenate`", Call, recompute,
       {np.concatenate: f.recorded_call(np.concatenate, "concatenate")}),
    Op("stack", "`np.stack`", Call, recompute, {np.stack: f.recorded_call(np.stack, "stack")}),
    Op("pad", "`np.pad` (constant widths and values)", Call, recompute, {np.pad: f.recorded_call(np.pad, "pad")}),
    Op("einsum", "`np.einsum` (a constant subscripts string)", Call, recompute,
       {np.einsum: f.recorded_call(np.einsum, "einsum")}),
    Op("nan_to_num", "`np.nan_to_num` (network2's `np.sum(np.nan_to_num(-y*np.log(a)-(1-y)*np.log(1-a)))`)",
       Call, recompute, {np.nan_to_num: f.recorded_call(np.nan_to_num, "nan_to_num")}),
    Op("setitem", "writes, each the array's next version that later reads see, into plain arrays and traced ones "
       "that are no parameters (`writes`): `out[n, f, i, j] = np.sum(...)`, `h[:, t, :] = next_h`, `dWx += dWx_t` "
       "into zeros, `dx[...] += ...`, `out=` (`np.exp(Z, out=Z)`), `dhidden[hidden <= 0] = 0` (a mask computed "
       "from the parameters, a scalar stored), `z[pos] = np.exp(-x[pos])` (cs231n's stable sigmoid: a selection "
       "by such a mask, used elementwise and stored back with the same mask)", Write, replay_write),
    Op("ufunc_at", "`np.add.at(dE, idx, v)` (a ufunc's `.at`) into a plain array or a traced one that is no "
       "parameter", Write, replay_write),
    Op("constant", "never replayed: a plain array's value before its first write while traced", NoAttrs),
    Op("assigned", "never replayed: an array that shares memory with one written into (a view), refused if "
       "the cost depends on it", NoAttrs),
]

OPS: dict[str, Op] = {op.name: op for op in _DECLARED}
FUNCTIONS: dict = {function: rule for op in _DECLARED for function, rule in op.functions.items()}


def supported() -> str:
    """README's list of supported operations, one line per operation (between its markers)."""
    return "\n".join(f"- {op.doc}" for op in _DECLARED if op.name not in ("param", "constant", "assigned"))
