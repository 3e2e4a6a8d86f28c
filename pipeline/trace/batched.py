"""``Rep``: the values of one node under a batch of B perturbations, as ``replay`` holds them, and
the functions that lay them out (a value at θ gathered like a Rep, an axis expanded, operands
aligned for broadcasting, unit axes inserted or dropped, a transpose); and ``Split``, the signal to cut a
batch into blocks.

A Rep holds the node's value at θ (``base``) and, per axis, where the perturbed values may differ
from it:

- ``F`` (full): anywhere along the axis;
- ``S`` (selected): only at the positions ``idx``, the same for every perturbation (e.g. the
  examples whose activation changed);
- ``P`` (pinned): only at one position per perturbation, ``idx[p]`` (e.g. the row of W that moved).

``data`` holds the perturbed values there: the non-pinned axes in order, with the batch axis
inserted at position ``bpos``.
"""

from __future__ import annotations

import numpy as np


class Split(Exception):
    """Evaluate this node and the rest of the graph on parts of the batch, one after another."""

    def __init__(self, parts):
        self.parts = parts


class Rep:
    """The values of one node under a batch of perturbations (see the module docstring)."""

    __slots__ = ("kinds", "idx", "data", "bpos", "shape", "base", "owned", "same")

    def __init__(self, kinds, idx, data, bpos, shape, base, owned=False, same=None):
        self.kinds, self.idx, self.data, self.bpos = tuple(kinds), tuple(idx), data, bpos
        self.shape, self.base = tuple(shape), base
        self.owned = owned  # data is a buffer written for this block that no other Rep shares
        self.same = same    # if known: where a perturbation left the value θ's (bool, broadcastable to data)

    @property
    def B(self) -> int:
        return self.data.shape[self.bpos]

    def dpos(self, axis: int) -> int:
        return dpos(self.kinds, self.bpos, axis)

    def take(self, part) -> "Rep":
        key = (slice(None),) * self.bpos + (part,)
        idx = tuple(i[part] if k == "P" else i for k, i in zip(self.kinds, self.idx))
        same = self.same if self.same is None or self.same.shape[self.bpos] == 1 else self.same[key]
        return Rep(self.kinds, idx, self.data[key], self.bpos, self.shape, self.base, same=same)


# --- layouts -------------------------------------------------------------------------------------

def dpos(kinds, bpos: int, axis: int) -> int:
    """Position in ``data`` of logical axis ``axis`` (which is not pinned)."""
    r = sum(1 for k in kinds[:axis] if k != "P")
    return r + (r >= bpos)


def same_positions(a: np.ndarray, b: np.ndarray) -> bool:
    return a is b or (a.shape == b.shape and bool(np.array_equal(a, b)))


def per_item(kinds, idx, shape) -> int:
    n = 1
    for k, i, s in zip(kinds, idx, shape):
        n *= s if k == "F" else (len(i) if k == "S" else 1)
    return n


def gather(value, kinds, idx, bpos: int):
    """A value broadcastable to a node's shape (a constant, or a node's value at θ) laid out
    like a Rep's data with these kinds: S axes taken, P axes indexed per perturbation (a batch
    axis of length B) or, if the value has no pinned axis longer than 1, a batch axis of length 1."""
    if value is None or isinstance(value, (bool, int, float, complex)):
        return value  # Python scalars keep NumPy's weak promotion
    v = np.asarray(value)
    nd = len(kinds)
    if v.ndim < nd:
        v = v.reshape((1,) * (nd - v.ndim) + v.shape)
    for a, (k, i) in enumerate(zip(kinds, idx)):
        if k == "S" and v.shape[a] != 1:
            v = v.take(i, axis=a)
    pinned = [a for a, k in enumerate(kinds) if k == "P" and v.shape[a] != 1]
    if not pinned:
        v = v[tuple(0 if k == "P" else slice(None) for k in kinds)]
        return np.expand_dims(v, bpos)
    rest = [a for a in range(nd) if a not in pinned]
    v = v.transpose(pinned + rest)
    v = v[tuple(idx[a] for a in pinned) + tuple(0 if kinds[a] == "P" else slice(None) for a in rest)]
    return np.moveaxis(v, 0, bpos) if bpos else v


def unpinned(kinds, idx, bpos: int, axis: int):
    """Kinds, idx and batch position once ``axis`` is held in full (the batch axis stays after
    the same axes), and the data position of ``axis`` then."""
    r = sum(1 for k in kinds[:axis] if k != "P")
    if kinds[axis] == "P" and r < bpos:
        bpos += 1
    kinds = tuple(kinds[:axis]) + ("F",) + tuple(kinds[axis + 1:])
    idx = tuple(idx[:axis]) + (None,) + tuple(idx[axis + 1:])
    return kinds, idx, bpos, dpos(kinds, bpos, axis)


def full_batch(array: np.ndarray, bpos: int, B: int) -> np.ndarray:
    """A writable copy with a batch axis of length B."""
    shape = list(array.shape)
    shape[bpos] = B
    return np.array(np.broadcast_to(array, shape))


def expand(rep: Rep, axis: int) -> Rep:
    """The same values with ``axis`` held in full."""
    kinds, idx, bpos, d = unpinned(rep.kinds, rep.idx, rep.bpos, axis)
    full = full_batch(np.asarray(gather(rep.base, kinds, idx, bpos)), bpos, rep.B)
    if rep.kinds[axis] == "S":
        full[(slice(None),) * d + (rep.idx[axis],)] = rep.data
    else:  # one position per perturbation: index (perturbation, position) with the batch first
        da = dpos(kinds, 0, axis)
        key = (np.arange(rep.B),) + (slice(None),) * (da - 1) + (rep.idx[axis],)
        np.moveaxis(full, bpos, 0)[key] = np.moveaxis(rep.data, rep.bpos, 0)
    return Rep(kinds, idx, full, bpos, rep.shape, rep.base)


def dense(rep: Rep) -> Rep:
    for axis, kind in enumerate(rep.kinds):
        if kind != "F":
            rep = expand(rep, axis)
    return rep


def _labels(kinds, bpos: int, pad: int = 0) -> list:
    labels = [a + pad for a, k in enumerate(kinds) if k != "P"]
    labels.insert(bpos, "B")
    return labels


def align(rep: Rep, kinds, bpos: int):
    """``rep.data`` laid out for a result with ``kinds`` (rep's axes are right-aligned to them,
    as in broadcasting; each agrees with the result's kind or has length 1)."""
    pad = len(kinds) - len(rep.kinds)
    if pad == 0 and bpos == rep.bpos and rep.kinds == tuple(kinds):
        return rep.data
    labels = _labels(rep.kinds, rep.bpos, pad)
    d = rep.data
    drop = [i for i, L in enumerate(labels) if L != "B" and kinds[L] == "P"]  # length-1 axes
    if drop:
        d = d.reshape([s for i, s in enumerate(d.shape) if i not in drop])
        labels = [L for i, L in enumerate(labels) if i not in drop]
    target = _labels(kinds, bpos)
    missing = [L for L in target if L not in labels]
    if missing:
        d = d.reshape(d.shape + (1,) * len(missing))
        labels = labels + missing
    perm = [labels.index(L) for L in target]
    return d.transpose(perm) if perm != list(range(len(perm))) else d


def result_bpos(rep: Rep, kinds) -> int:
    """Where the batch axis goes in a result with ``kinds``: after the same logical axes as in
    ``rep`` (the largest operand), so that its data need not move."""
    pad = len(kinds) - len(rep.kinds)
    labels = _labels(rep.kinds, rep.bpos, pad)
    before = [L for L in labels[:labels.index("B")] if kinds[L] != "P"]
    target = [a for a, k in enumerate(kinds) if k != "P"]
    return target.index(before[-1]) + 1 if before else 0


def unit_insert(rep: Rep, axis: int) -> Rep:
    kinds = rep.kinds[:axis] + ("F",) + rep.kinds[axis:]
    idx = rep.idx[:axis] + (None,) + rep.idx[axis:]
    bpos = rep.bpos + (sum(1 for k in rep.kinds[:axis] if k != "P") < rep.bpos)
    d = dpos(kinds, bpos, axis)
    return Rep(kinds, idx, np.expand_dims(rep.data, d), bpos, rep.shape[:axis] + (1,) + rep.shape[axis:],
               np.expand_dims(rep.base, axis))


def unit_drop(rep: Rep, axis: int) -> Rep:
    d = rep.dpos(axis)
    bpos = rep.bpos - (d < rep.bpos)
    return Rep(rep.kinds[:axis] + rep.kinds[axis + 1:], rep.idx[:axis] + rep.idx[axis + 1:],
               np.squeeze(rep.data, d), bpos, rep.shape[:axis] + rep.shape[axis + 1:],
               np.squeeze(rep.base, axis))


def transpose_rep(rep: Rep, axes: tuple, base) -> Rep:
    kinds = tuple(rep.kinds[a] for a in axes)
    idx = tuple(rep.idx[a] for a in axes)
    old = _labels(rep.kinds, rep.bpos)
    bpos = min(rep.bpos, sum(1 for k in kinds if k != "P"))
    new = [a for a in axes if rep.kinds[a] != "P"]
    new.insert(bpos, "B")
    data = rep.data.transpose([old.index(L) for L in new])
    return Rep(kinds, idx, data, bpos, tuple(rep.shape[a] for a in axes), base)


def narrowed(kind: str, idx, positions: np.ndarray, length: int):
    """The kind and positions of an axis once only ``positions`` (of its data) change."""
    if kind == "S":
        return "S", idx[positions]
    if positions.size == length:
        return "F", None
    return "S", positions
