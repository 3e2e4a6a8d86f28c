"""The generic replay rule: a node recomputed for each perturbation of the batch from its
operands' perturbed values. An operation with no incremental rule of its own (``np.concatenate``,
``np.einsum``, a batched ``@``) needs only its entry in ``ops``: ``Op(name, doc, Call,
recompute, {np.f: recorded_call(np.f, name)})`` (``recorded_call`` in ``functions``).

Exact by construction: each perturbation's value is the function called on arrays of the same
shapes and dtypes as in the real forward, so it is the real forward's to the last bit. It counts
no switches (``Replay.flips``): branches inside such a function are left to the step ladder.
"""

from __future__ import annotations

import numpy as np

from gradjob.trace.attrs import Call
from gradjob.trace.batched import Rep, dense
from gradjob.trace.graph import Ref


def recompute(replay, node, i: int, reps: list, B: int, plan, pos: int, dying=()):
    """The node's values under the batch, all of each (no axis kept pinned or selected), the
    function called once per perturbation; ``(Rep, None)`` as every replay rule returns."""
    base = replay.base[i]
    per_item = base.size * base.dtype.itemsize + sum(r.base.size * r.base.dtype.itemsize for r in reps if r is not None)
    replay._split_by_size(B, per_item)
    columns = [None if r is None else _batch_first(r, B) for r in reps]
    fixed = [replay.base[o.id] if isinstance(o, Ref) else o for o in node.operands]
    attrs: Call = node.attrs
    out = np.empty((B,) + base.shape, dtype=base.dtype)
    for b in range(B):
        values = [fixed[n] if c is None else c[b] for n, c in enumerate(columns)]
        out[b] = attrs.function(*attrs.arguments(values), **attrs.kwargs)
    return Rep("F" * base.ndim, (None,) * base.ndim, out, 0, base.shape, base, owned=True), None


def _batch_first(rep: Rep, B: int) -> np.ndarray:
    """A Rep's values in full, the batch axis first (of length B)."""
    held = dense(rep)
    data = np.moveaxis(held.data, held.bpos, 0)
    return np.broadcast_to(data, (B,) + data.shape[1:])
