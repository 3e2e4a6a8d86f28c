"""Indexing replayed under a batch of perturbations: basic indexing (integers, slices, ``None``,
``...``) of a value moved at one position per perturbation keeps it at that position (``w[f]`` of a
moved filter is θ's for every other filter); a gather of single elements (``probs[np.arange(N),
y]``) takes them from where the Rep holds them; a lookup of rows (``W_embed[word_ids]``) of a value
moved in one row per perturbation is θ's for the perturbations of rows no id names; and a smooth
elementwise node whose one use is such a gather is evaluated at the gathered elements alone
(``deferrable``, which ``replay.Plan`` asks). Anything else is held in full and indexed. A part of
``Replay`` (``replay``), mixed into it.
"""

from __future__ import annotations

import numpy as np

from gradjob.trace.batched import Rep, Split, dense, gather
from gradjob.trace.graph import Ref


class IndexRules:
    """``Replay``'s rules for indexing."""

    def _index(self, rep: Rep, key: tuple, base, B: int) -> Rep | None:
        if _lookup(key) and rep.kinds[0] == "P":
            used = _rows_used(rep.idx[0], key[0], rep.shape[0])
            if not used.any():
                return None  # no perturbation moves a row the lookup takes: the result is θ's
            if not used.all():  # rows no id names cost nothing; the rest are looked up below
                raise Split([np.flatnonzero(~used), np.flatnonzero(used)])
        if elements_key(key, len(rep.shape)):
            return self._gather_elements(rep, key, base, B)
        if "P" in rep.kinds and "S" not in rep.kinds and _basic(key):
            indexed = _index_pinned(rep, key, base, B)
            if indexed is not None:
                return indexed
        self._split_by_size(B, int(np.prod(rep.shape)) * base.dtype.itemsize)
        d = np.moveaxis(dense(rep).data, rep.bpos, -1)  # batch last: indexing leaves it last
        used = sum(p.ndim if isinstance(p, np.ndarray) and p.dtype == bool else (p is not None and p is not Ellipsis)
                   for p in key)
        full = []
        for p in key:
            full.extend([slice(None)] * (len(rep.shape) - used) if p is Ellipsis else [p])
        if not any(p is Ellipsis for p in key):
            full.extend([slice(None)] * (len(rep.shape) - used))
        out = d[tuple(full) + (slice(None),)]
        return Rep("F" * base.ndim, (None,) * base.ndim, out, base.ndim, base.shape, base)


    def _gather_elements(self, rep: Rep, key: tuple, base, B: int) -> Rep:
        """``x[rows, columns]`` (an integer array per axis: ``probs[np.arange(N), y]``): each element
        taken from where the Rep holds it, θ's value where a perturbation left it alone; the Rep is not
        expanded (a score column moved by one weight stays a column up to here)."""
        arrays = np.broadcast_arrays(*key)
        flat = [_wrapped(k, s).reshape(-1) for k, s in zip(arrays, rep.shape)]
        self._split_by_size(B, max(1, flat[0].size) * (base.dtype.itemsize + 1))
        out = np.empty((B, flat[0].size), dtype=base.dtype)
        out[...] = np.asarray(base).reshape(-1)
        hit = np.ones((B, flat[0].size), dtype=bool)
        coords, sizes = [], []
        for k, ix, s, positions in zip(rep.kinds, rep.idx, rep.shape, flat):
            if k == "P":
                hit &= positions[None, :] == np.asarray(ix).reshape(-1, 1)
                continue
            if k == "S":
                inverse = np.full(s, -1, dtype=np.int64)
                inverse[ix] = np.arange(len(ix))
                positions = inverse[positions]
                hit &= positions[None, :] >= 0
            coords.append(positions)
            sizes.append(s if k == "F" else len(ix))
        p, j = np.nonzero(hit)
        data = np.broadcast_to(np.moveaxis(rep.data, rep.bpos, 0), (B, *sizes))
        out[p, j] = data[(p,) + tuple(c[j] for c in coords)]
        shape = arrays[0].shape
        return Rep("F" * len(shape), (None,) * len(shape), out.reshape((B, *shape)), 0, shape, base, owned=True)

    def _gather_through(self, node, index, i: int, env: dict, B: int):
        """``f(a, b)[key]`` for an elementwise ``f`` used only there, computed as ``f(a[key], b[key])``
        on the elements taken (a softmax's ``(exp / sum)[np.arange(N), y]``: N divisions, not N×C);
        ``key`` as ``_gather_elements``'s, adapted to each operand's broadcast shape. ``Plan`` defers
        the elementwise node to here (see ``deferrable``)."""
        key = index.attrs.key
        shape = np.broadcast_shapes(*(np.shape(self._operand_value(o)) for o in node.operands))
        reps, operands = [], []
        for o in node.operands:
            value = self._operand_value(o)
            if np.ndim(value) == 0:
                reps.append(env.get(o.id) if isinstance(o, Ref) else None)
                operands.append(value)
                continue
            pad = len(shape) - np.ndim(value)
            own = tuple(np.zeros_like(k) if np.shape(value)[a - pad] == 1 else k
                        for a, k in enumerate(key) if a >= pad)
            taken = np.asarray(value)[own]
            rep = env.get(o.id) if isinstance(o, Ref) else None
            reps.append(None if rep is None else self._gather_elements(rep, own, taken, B))
            operands.append(taken)
        if all(r is None for r in reps):
            return None
        return self._elementwise(_Node(operands), i, reps, node.attrs.function, node.attrs.kwargs, B)


class _Node:
    """The operands of an elementwise node taken at a gather's elements (``_gather_through``)."""

    def __init__(self, operands):
        self.operands = operands


# ufuncs whose value is smooth (no switch to count, see ``_branches``): an elementwise node of one of
# these, used only by a gather, is evaluated at the gathered elements alone
SMOOTH = {np.add, np.subtract, np.multiply, np.divide, np.negative, np.exp, np.log, np.log1p, np.expm1,
          np.tanh, np.sqrt, np.square, np.reciprocal, np.power}


def elements_key(key: tuple, ndim: int) -> bool:
    """Whether ``key`` takes single elements: one integer array per axis."""
    return len(key) == ndim and ndim > 0 and all(isinstance(k, np.ndarray) and k.dtype.kind in "iu" for k in key)


def deferrable(e: int, nodes, consumers: dict) -> int | None:
    """The gather that is the one use of node ``e``, a smooth elementwise ufunc, else None."""
    node, users = nodes[e], consumers.get(e, [])
    if node.op != "elementwise" or node.attrs.function not in SMOOTH or node.attrs.kwargs or len(users) != 1:
        return None
    use = nodes[users[0]]
    return users[0] if use.op == "index" and elements_key(use.attrs.key, np.ndim(node.value)) else None


def _lookup(key: tuple) -> bool:
    """Whether ``key`` takes whole rows by an integer array (``W_embed[word_ids]``)."""
    return len(key) == 1 and isinstance(key[0], np.ndarray) and key[0].dtype.kind in "iu"


def _rows_used(rows: np.ndarray, ids: np.ndarray, length: int) -> np.ndarray:
    """For each perturbation, whether the row it moves (``rows``) is among ``ids``."""
    named = np.zeros(length, dtype=bool)
    named[_wrapped(ids, length).reshape(-1)] = True
    return named[rows]


def _wrapped(key: np.ndarray, length: int) -> np.ndarray:
    """The positions an integer key takes along an axis of ``length``, negative ones counted from its
    end, as ``intp``: in the key's own dtype an int8 or uint8 key (ids into a table longer than 127
    or 255) overflows."""
    key = key.astype(np.intp, copy=False)
    return np.where(key < 0, key + length, key)


def _basic(key: tuple) -> bool:
    return all((isinstance(k, (int, np.integer, slice)) and not isinstance(k, (bool, np.bool_))) or k is None
               or k is Ellipsis for k in key)


def _index_pinned(rep: Rep, key: tuple, base, B: int) -> Rep:
    """``x[key]``, key basic, x moved at one position per perturbation along its pinned axes (and
    anywhere along the others): a pinned axis an integer takes keeps θ's value for the perturbations
    pinned elsewhere, a sliced one keeps its pins, renumbered; the data is indexed, never expanded."""
    ellipsis = sum(k is not None and k is not Ellipsis for k in key)
    parts = []
    for k in key:
        parts.extend([slice(None)] * (len(rep.shape) - ellipsis) if k is Ellipsis else [k])
    parts.extend([slice(None)] * (len(rep.shape) - sum(p is not None for p in parts)))
    kinds, idx, data_key = [], [], [slice(None)]
    elsewhere = np.zeros(B, dtype=bool)
    axis = 0
    for part in parts:
        if part is None:
            kinds.append("F"), idx.append(None), data_key.append(None)
            continue
        kind, pins, size = rep.kinds[axis], rep.idx[axis], rep.shape[axis]
        axis += 1
        if kind == "F":
            data_key.append(part)
            if isinstance(part, slice):
                kinds.append("F"), idx.append(None)
            continue
        positions = np.arange(size)[part]
        if not isinstance(part, slice):
            elsewhere |= np.asarray(pins) != positions
            continue
        if positions.size <= 1:  # a pinned axis is longer than 1 (see ``batched.gather``): held in full
            return None
        renumbered = np.full(size, -1, dtype=np.int64)
        renumbered[positions] = np.arange(positions.size)
        moved = renumbered[pins]
        elsewhere |= moved < 0
        kinds.append("P"), idx.append(np.maximum(moved, 0))
    held = np.moveaxis(rep.data, rep.bpos, 0)
    data = np.array(np.broadcast_to(held, (B,) + held.shape[1:])[tuple(data_key)])
    if elsewhere.any():  # those perturbations leave this part of x as it is at θ
        at_theta = np.broadcast_to(np.asarray(gather(base, kinds, idx, 0)), data.shape)
        data[elsewhere] = at_theta[elsewhere]
    return Rep(kinds, idx, data, 0, base.shape, base, owned=True)
