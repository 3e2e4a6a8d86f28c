"""Elementwise operations (every ufunc, ``np.where``, ``np.clip``, casts) and reshapes,
replayed under a batch of perturbations: a part of ``Replay`` (``replay``), mixed into it, that
uses its values at θ (``self.base``, ``self.dtypes``), its per-thread buffers and its block split.
"""

from __future__ import annotations

import numpy as np

from gradjob.trace.batched import (
    Rep,
    Split,
    align,
    dense,
    expand,
    gather,
    per_item,
    result_bpos,
    same_positions,
    unit_drop,
    unit_insert,
)


class ElementwiseRules:
    """``Replay``'s rules for elementwise operations, reshapes and indexing."""

    def _elementwise(self, node, i, reps, function, kwargs, B, reusable=None):
        shape = self.base[i].shape
        nd = len(shape)
        changed = [r for r in reps if r is not None]
        first = changed[0]
        if len(changed) == 1 and first.shape == shape:  # the common case: nothing to reconcile
            kinds, idx, bpos = first.kinds, first.idx, first.bpos
            self._split_by_size(B, per_item(kinds, idx, shape) * self.dtypes[i].itemsize)
        else:
            kinds, idx = [], []
            for a in range(nd):
                kind, ix = None, None
                for r in changed:
                    pa = a - (nd - len(r.shape))
                    if pa < 0 or r.kinds[pa] == "F" or (r.shape[pa] == 1 and shape[a] != 1):
                        kind = "F"
                        break
                    if kind is None:
                        kind, ix = r.kinds[pa], r.idx[pa]
                    elif kind != r.kinds[pa] or not same_positions(ix, r.idx[pa]):
                        if kind == r.kinds[pa] == "P":
                            _split_where_pins_part(ix, r.idx[pa])
                        kind = "F"
                        break
                kinds.append(kind or "F")
                idx.append(ix if kind in ("S", "P") else None)
            kinds, idx = tuple(kinds), tuple(idx)
            self._split_by_size(B, per_item(kinds, idx, shape) * self.dtypes[i].itemsize)
            for n, r in enumerate(reps):
                if r is not None:
                    pad = nd - len(r.shape)
                    for pa, k in enumerate(r.kinds):
                        if k != "F" and kinds[pa + pad] == "F":
                            r = expand(r, pa)
                    reps[n] = r
            bpos = result_bpos(max((r for r in reps if r is not None), key=lambda r: r.data.size), kinds)
        args = [align(r, kinds, bpos) if r is not None else gather(self._operand_value(o), kinds, idx, bpos)
                for r, o in zip(reps, node.operands)]
        if self._recording:  # before the call: its output may overwrite an operand's block
            bases = [a if r is None else gather(self._operand_value(o), kinds, idx, bpos)
                     for a, r, o in zip(args, reps, node.operands)]
            self._switched(_flipped(function, args, bases, self.dtypes[i], bpos, B))
        shape_out = np.broadcast_shapes(*(np.shape(a) for a in args if a is not None))
        if reusable is not None and reusable.data.shape == shape_out and reusable.data.dtype == self.dtypes[i] \
                and any(a is reusable.data for a in args):
            out = reusable.data
        else:
            like = max((a for a in args if isinstance(a, np.ndarray)), key=lambda a: a.size, default=None)
            out = self._buffer_like(i, shape_out, self.dtypes[i], like)
        if isinstance(function, np.ufunc):
            function(*args, out=out, **kwargs)
        elif function is np.where:
            np.copyto(out, args[2])
            np.copyto(out, args[1], where=np.broadcast_to(args[0], out.shape))
        elif function is np.clip:
            np.clip(*args, out=out)
        else:
            function(*args, out=out)
        same = first.same if len(changed) == 1 and out.shape == first.data.shape else None  # θ's stays θ's
        return Rep(kinds, idx, out, bpos, shape, self.base[i], owned=True, same=same)

    # -- shapes and indexing
    def _reshape(self, rep: Rep, shape: tuple, base, B: int) -> Rep:
        if [s for s in rep.shape if s != 1] == [s for s in shape if s != 1]:
            for a in range(len(rep.shape) - 1, -1, -1):  # only axes of length 1 come or go
                if rep.shape[a] == 1:
                    rep = unit_drop(rep, a)
            for a, s in enumerate(shape):
                if s == 1:
                    rep = unit_insert(rep, a)
            return Rep(rep.kinds, rep.idx, rep.data, rep.bpos, rep.shape, base)
        groups = _groups(rep.shape, tuple(shape))
        if groups is None:  # zero-length axes
            self._split_by_size(B, int(np.prod(rep.shape)) * base.dtype.itemsize)
            d = np.moveaxis(dense(rep).data, rep.bpos, 0)
            return Rep("F" * len(shape), (None,) * len(shape), d.reshape((B,) + tuple(shape)), 0, shape, base)
        # an axis the reshape leaves as it is keeps its kind (a score column of (N*T, V) moved by one
        # weight stays one column of (N, T, V)); the axes of a group that is split or merged are held in full
        kinds, idx = [], []
        for old, new in groups:
            kept = len(old) == 1 and len(new) == 1
            for a in old:
                if rep.kinds[a] != "F" and not kept:
                    rep = expand(rep, a)
            for _ in new:
                kinds.append(rep.kinds[old[0]] if kept else "F")
                idx.append(rep.idx[old[0]] if kept else None)
        self._split_by_size(B, per_item(kinds, idx, shape) * base.dtype.itemsize)
        d = np.moveaxis(rep.data, rep.bpos, 0)
        sizes = [s if k == "F" else len(ix) for s, k, ix in zip(shape, kinds, idx) if k != "P"]
        return Rep(kinds, idx, d.reshape([d.shape[0]] + sizes), 0, shape, base)


def _split_where_pins_part(a: np.ndarray, b: np.ndarray) -> None:
    """Two operands pinned on one axis, at the same position for some perturbations of the batch and
    not for others: the batch split between them. The result is pinned where the positions are the
    same and held in full where not, for each perturbation by its own pins (as alone), never by
    whether the rest of its batch has them the same (the two are computed in other orders)."""
    same = np.asarray(a) == np.asarray(b)
    if same.any() and not same.all():
        raise Split([np.flatnonzero(same), np.flatnonzero(~same)])


def _groups(old: tuple, new: tuple):
    """The axes of ``old`` and of ``new`` that a reshape maps onto each other, in order: pairs of
    (old axes, new axes) of equal total length (a unit axis that comes or goes has a group of its
    own, with no axis on the other side); None with zero-length axes."""
    if 0 in old or 0 in new:
        return None
    groups, i, j = [], 0, 0
    while i < len(old) or j < len(new):
        if i < len(old) and old[i] == 1 and (j == len(new) or new[j] != 1):
            groups.append(((i,), ()))
            i += 1
            continue
        if j < len(new) and new[j] == 1 and (i == len(old) or old[i] != 1):
            groups.append(((), (j,)))
            j += 1
            continue
        i0, j0, p, q = i, j, old[i], new[j]
        i, j = i + 1, j + 1
        while p != q:
            if p < q:
                p, i = p * old[i], i + 1
            else:
                q, j = q * new[j], j + 1
        groups.append((tuple(range(i0, i)), tuple(range(j0, j))))
    return groups


def astype_into(a, out):
    np.copyto(out, a, casting="unsafe")


# -- switches: which branch each element takes, at θ and perturbed (see ``Replay.flips``)
_COMPARED = {np.greater, np.greater_equal, np.less, np.less_equal, np.equal, np.not_equal, np.maximum,
             np.minimum, np.fmax, np.fmin, np.heaviside}
_SIGNED = {np.absolute, np.fabs, np.sign}
_ROUNDED = {np.floor, np.ceil, np.trunc, np.rint}
_DIVIDED = {np.floor_divide, np.remainder, np.fmod, np.divmod}
_TRUTH = {np.logical_and, np.logical_or, np.logical_xor, np.logical_not}


def _order(a, b):
    """-1, 0 or 1 by how ``a`` compares with ``b``: a tie is a branch of its own, so a switch sitting
    exactly on its kink flips under any perturbation that moves it."""
    return np.greater(a, b).astype(np.int8) - np.less(a, b)


def _branches(function, args, dtype) -> list:
    """Arrays that are equal at θ and perturbed exactly where the switch takes the same branch
    (empty for a smooth function)."""
    if function in _COMPARED:
        return [_order(args[0], args[1])]
    if function in _SIGNED:
        return [_order(args[0], 0)]
    if function in _ROUNDED:
        return [function(args[0])]
    if function in _DIVIDED:
        return [np.floor_divide(args[0], args[1])]
    if function in _TRUTH:
        return [np.not_equal(a, 0) for a in args]
    if function is np.where:
        return [np.not_equal(args[0], 0)]
    if function is np.clip:
        return [_order(args[0], bound) for bound in args[1:] if bound is not None]
    if function is astype_into and dtype.kind in "biu":
        return [np.asarray(args[0]).astype(dtype)]
    return []


def _flipped(function, args, bases, dtype, bpos: int, B: int) -> np.ndarray:
    """Per perturbation of the block, how many elements take another branch than at θ."""
    counts = np.zeros(B, dtype=np.int64)
    for now, then in zip(_branches(function, args, dtype), _branches(function, bases, dtype)):
        differ = np.asarray(np.not_equal(now, then))
        if differ.any():
            moved = np.moveaxis(differ, bpos, 0)
            counts += np.count_nonzero(moved.reshape(moved.shape[0], -1), axis=1)
    return counts
