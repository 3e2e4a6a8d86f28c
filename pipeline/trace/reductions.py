"""Reductions (sums, means, maxima and minima, their NaN-ignoring forms) replayed under a batch of
perturbations: the exact partial reduction of what did not change, kept from θ, combined with that
of what did. A part of ``Replay`` (``replay``), mixed into it, that uses its values at θ and its
block sizes (``_blocks``, ``_split_by_size``).
"""

from __future__ import annotations

import numpy as np

from gradjob.trace.products import settle
from gradjob.trace.batched import Rep, Split, dense, dpos, expand, full_batch, gather, per_item, unit_drop, unpinned

_REDUCERS = {"sum": (np.add, np.sum), "mean": (np.add, np.sum), "max": (np.maximum, np.max),
             "min": (np.minimum, np.min), "nansum": (np.add, np.nansum), "nanmax": (np.fmax, np.nanmax),
             "nanmin": (np.fmin, np.nanmin)}

_EXTREMES = ("max", "min", "nanmax", "nanmin")


def _extreme_moved(rep: Rep, base: np.ndarray, axes: tuple, kind: str, B: int) -> np.ndarray:
    """Per perturbation, in how many slots a max/min reduction's extreme moved to another position
    than at θ, or a tie formed or broke (the switch of max-pooling: its argmax)."""
    held = dense(rep)
    data = np.moveaxis(full_batch(np.asarray(held.data), held.bpos, B), held.bpos, 0)

    def winners(values, lead):
        moved = np.moveaxis(values, [lead + a for a in axes], list(range(-len(axes), 0)))
        flat = moved.reshape(moved.shape[:moved.ndim - len(axes)] + (-1,))
        largest = "max" in kind
        if kind.startswith("nan"):
            flat = np.where(np.isnan(flat), -np.inf if largest else np.inf, flat)
        hits = flat == (flat.max(axis=-1, keepdims=True) if largest else flat.min(axis=-1, keepdims=True))
        return np.argmax(hits, axis=-1), np.count_nonzero(hits, axis=-1) > 1

    (where_now, tie_now), (where_then, tie_then) = winners(data, 1), winners(base, 0)
    differ = (where_now != where_then) | (tie_now != tie_then)
    return np.count_nonzero(differ.reshape(B, -1), axis=1)


class ReductionRules:
    """``Replay``'s rules for reductions."""

    def _partial(self, source: int, kind: str, done: tuple, dtype):
        """The value at θ of node ``source`` reduced over the axes ``done`` (kept, length 1)."""
        key = (source, kind, done, dtype)
        value = self._partials.get(key)
        if value is None:
            kwargs = {"dtype": dtype} if dtype is not None else {}
            value = _REDUCERS[kind][1](self.base[source], axis=done, keepdims=True, **kwargs) if done \
                else self.base[source]
            self._partials[key] = value
        return value

    def _reduce(self, node, i, rep: Rep, source: int, B: int):
        kind, axes, keepdims = node.attrs.kind, node.attrs.axes, node.attrs.keepdims
        combine, reducer = _REDUCERS[kind]
        dtype = node.attrs.dtype
        if kind == "mean" and dtype is None:  # as np.mean accumulates
            given = rep.base.dtype
            dtype = np.dtype(np.float64) if given.kind in "biu" else (np.dtype(np.float32) if given == np.float16 else None)
        kwargs = {"dtype": dtype} if dtype is not None else {}
        # a max over an axis moved at one position per perturbation (a softmax's over a score column):
        # unmoved for most perturbations; not while counting switches (split batches would count twice)
        localized = kind in _EXTREMES and not self._recording and any(rep.kinds[a] == "P" for a in axes)
        if self._recording and kind in _EXTREMES:
            self._split_by_size(B, int(np.prod(rep.shape)) * rep.base.dtype.itemsize)
            self._switched(_extreme_moved(rep, self.base[source], axes, kind, B))
        selected = [a for a in axes if rep.kinds[a] == "S"]
        if selected:  # held in full: which positions changed depends on the batch, the order of a sum must not
            self._split_by_size(B, per_item(["F" if a in selected else k for a, k in enumerate(rep.kinds)],
                                             rep.idx, rep.shape) * rep.data.dtype.itemsize)
            for a in selected:
                rep = expand(rep, a)
        kinds, idx, data, bpos = list(rep.kinds), list(rep.idx), rep.data, rep.bpos
        shape = list(rep.shape)
        done: tuple = ()
        full = [a for a in axes if kinds[a] == "F"]
        if full:
            reduced = tuple(dpos(kinds, bpos, a) for a in full)
            data = _each(reducer, rep.data, reduced, bpos, kwargs)
            settle(data, rep.data, reduced, rep, self._partial(source, kind, tuple(full), dtype))
            for a in full:
                shape[a] = 1
            done = tuple(full)
        for a in [x for x in axes if kinds[x] == "P"]:  # the changed position, plus all others
            base = self._partial(source, kind, done, dtype)
            rest = self._excluding_pins(base, (source, kind, done, dtype), kinds, idx, bpos, a, kind, B, kwargs)
            new_kinds, new_idx, bpos, d = unpinned(kinds, idx, bpos, a)
            kinds, idx = list(new_kinds), list(new_idx)
            data = combine(np.expand_dims(data, d), rest)
            shape[a] = 1
            done = tuple(sorted(done + (a,)))
        out = Rep(kinds, idx, data, bpos, shape, self.base[i].reshape(shape))  # every axis reduced: node i at θ
        if data is rep.data:  # nothing to reduce (np.min of a 0-d value): its operand's data, not to be written over
            rep.owned = False
        if localized:  # each perturbation by itself: θ's max where it left it, the moved one elsewhere
            unchanged = _unchanged(out, B)
            if unchanged.all():  # often so (a softmax's max over a column one weight moved)
                return None
            if unchanged.any():  # whatever the rest of its batch, an element's cost takes one path
                raise Split([np.flatnonzero(unchanged), np.flatnonzero(~unchanged)])
        if kind == "mean":
            count = int(np.prod([rep.shape[a] for a in axes], dtype=np.int64))
            # as np.mean: divided by an intp count (a float32 sum in float64), then in the mean's dtype
            out.data = np.true_divide(out.data, np.intp(count)).astype(self.dtypes[i], copy=False)
        if not keepdims:
            for a in sorted(axes, reverse=True):
                out = unit_drop(out, a)
        out.base = self.base[i]  # as the forward shaped it
        return out

    def _excluding_pins(self, base, key, kinds, idx, bpos, a, kind, B, kwargs):
        """Per perturbation, ``base`` reduced over axis ``a`` without the pinned position,
        laid out like the result's data with ``a`` held as a full axis of length 1."""
        reducer = _REDUCERS[kind][1]
        other_pins = any(k == "P" and base.shape[x] > 1 for x, k in enumerate(kinds) if x != a)
        free, loose, new_bpos, d = unpinned(kinds, idx, bpos, a)
        if other_pins:  # each perturbation's own slice, with its pinned position left out
            results = []
            for part in self._blocks(B, per_item(free, loose, base.shape) * base.dtype.itemsize):
                part_idx = [i[part] if k == "P" else i for k, i in zip(free, loose)]
                block = full_batch(np.asarray(gather(base, free, part_idx, new_bpos)), new_bpos,
                                    part.stop - part.start)
                moved = np.moveaxis(block, new_bpos, 0)
                da = dpos(free, 0, a)
                at = (np.arange(part.stop - part.start),) + (slice(None),) * (da - 1)
                pins = idx[a][part]
                if kind in ("sum", "mean", "nansum"):
                    moved[at + (pins,)] = 0
                else:  # max/min: a neighbour's value changes nothing
                    moved[at + (pins,)] = moved[at + ((pins + 1) % base.shape[a],)]
                results.append(_each(reducer, block, (d,), new_bpos, kwargs))
            return results[0] if len(results) == 1 else np.concatenate(results, axis=new_bpos)
        unique, inverse = np.unique(idx[a], return_inverse=True)
        parts = []
        for u in unique.tolist():  # each position left out once for the life of the replay
            value = self._excluding.get((key, a, u))
            if value is None:
                value = self._excluding[(key, a, u)] = reducer(np.delete(base, u, axis=a), axis=a,
                                                               keepdims=True, **kwargs)
            parts.append(value)
        table = np.concatenate(parts, axis=a)  # along a: one entry per position left out
        gathered = gather(table, kinds, idx[:a] + [inverse.reshape(-1)] + idx[a + 1:], bpos)
        return np.expand_dims(gathered, d)


def _unchanged(rep: Rep, B: int) -> np.ndarray:
    """Per perturbation, whether every value of ``rep`` is its value at θ, to the last bit (-0.0 is
    not 0.0: 1/max would tell them apart)."""
    then = np.asarray(gather(rep.base, rep.kinds, rep.idx, rep.bpos))
    equal = np.equal(rep.data, then)
    if rep.data.dtype.kind == "f":
        equal &= np.signbit(rep.data) == np.signbit(then)
    return np.broadcast_to(np.moveaxis(equal, rep.bpos, 0), (B,) + equal.shape[:rep.bpos] + equal.shape[rep.bpos + 1:]) \
        .reshape(B, -1).all(axis=1)


def _each(reducer, data: np.ndarray, axes: tuple, bpos: int, kwargs: dict) -> np.ndarray:
    """``data`` reduced over its axes ``axes`` (kept, length 1), each perturbation on its own and in
    one order whatever the batch: batch first, the reduced axes last and contiguous, reduced as one
    axis. An element's cost is then the same to the last bit in any batch, so in any chunking."""
    keep = [a for a in range(data.ndim) if a not in axes and a != bpos]
    order = [bpos, *keep, *axes]
    moved = np.ascontiguousarray(data.transpose(order))
    out = reducer(moved.reshape(moved.shape[:1 + len(keep)] + (-1,)), axis=-1, **kwargs)
    return out.reshape(out.shape + (1,) * len(axes)).transpose(np.argsort(order))
