"""Matrix products replayed under a batch of perturbations: a row or column updated when one
operand moved at one position, a rank-one update on the positions it changes (added straight
into the bias that follows, when there is one), otherwise one GEMM over every perturbation. A
part of ``Replay`` (``replay``), mixed into it, that uses its values at θ, per-thread buffers and
block split.
"""

from __future__ import annotations

import numpy as np

from gradjob.trace.batched import (
    Rep,
    dense,
    dpos,
    expand,
    gather,
    narrowed,
    per_item,
    Split,
    transpose_rep,
    unit_drop,
    unit_insert,
)
from gradjob.trace.graph import Ref

# Python work per node and block, in element operations, when deciding whether splitting a
# batch by pinned row (fewer changed columns each) pays.
NODE_OVERHEAD_ELEMENTS = 20_000
# BLAS computes a row of a product the same way in every product whose row count is a multiple of
# this (no gemv for one row, no remainder kernels; checked on OpenBLAS): products over a batch are
# computed in such row counts, so an element's cost does not depend on the batch it is replayed in.
ROW_TILE = 8
# A product with at most this many outputs per row (e.g. class scores) is laid out with that axis
# outermost in memory: a softmax's reductions over it are then vectorised.
NARROW = 32


class ProductRules:
    """``Replay``'s rules for matrix products."""

    def _bias(self, plan, i: int):
        """The node j = i + c (or c + i, i - c) when it is i's only use and c does not change
        under these perturbations: a rank-one update of i can then be added to j's value."""
        users = plan.consumers.get(i, [])
        if len(users) != 1:
            return None
        j = users[0]
        if j in plan.deferred:  # evaluated at a gather of its elements
            return None
        node = self.graph.nodes[j]
        if node.op != "elementwise" or node.attrs.kwargs or len(node.operands) != 2:
            return None
        a, b = node.operands
        function = node.attrs.function
        if function is np.add:
            other = b if isinstance(a, Ref) and a.id == i else a
        elif function is np.subtract and isinstance(a, Ref) and a.id == i:
            other = b
        else:
            return None
        if isinstance(other, Ref) and (other.id == i or other.id in plan.depends):
            return None
        if self.base[j].shape != self.base[i].shape or self.dtypes[j] != self.dtypes[i]:
            return None
        return j

    def _transposed(self, i: int, base: np.ndarray) -> np.ndarray:
        """``base`` (node i's value at θ as a matrix: a vector-matrix product's as one row).T,
        contiguous (a rank-one update of W @ A is laid out rows innermost)."""
        value = self._transposes.get(i)
        if value is None:
            value = self._transposes[i] = np.ascontiguousarray(base.T)
        return value

    def _is_finite(self, i: int) -> bool:
        if i not in self._finite:
            b = self.base[i]
            self._finite[i] = bool(np.all(np.isfinite(b))) if b.dtype.kind in "fc" else True
        return self._finite[i]

    def _matmul(self, node, i, reps, B, plan, remaining):
        (ra, rb), (oa, ob) = reps, node.operands
        va, vb = np.asarray(self._operand_value(oa)), np.asarray(self._operand_value(ob))
        vector_a, vector_b = va.ndim == 1, vb.ndim == 1
        if vector_a:
            va = va[None, :]
            ra = unit_insert(ra, 0) if ra is not None else None
        if vector_b:
            vb = vb[:, None]
            rb = unit_insert(rb, 1) if rb is not None else None
        base = self.base[i].reshape(va.shape[0], vb.shape[1])
        # the update of a product (rank one, or one row) needs finite values to subtract
        exact = all(self._is_finite(o.id) for o in (oa, ob) if isinstance(o, Ref)) and self._is_finite(i)
        bias = None if vector_a or vector_b else self._bias(plan, i)
        if ra is not None and rb is not None:
            rep, fused = self._matmul_both(ra, rb, base, B), None
        elif ra is not None:
            rep, fused = self._matmul_left(i, ra, vb, base, B, exact, remaining, bias)
        else:
            rep, fused = self._matmul_right(i, va, rb, base, B, exact, remaining, bias)
        if rep is None:
            return None, fused
        if vector_b:
            rep = unit_drop(rep, 1)
        if vector_a:
            rep = unit_drop(rep, 0)
        return rep, fused

    def _matmul_both(self, ra, rb, base, B):
        """Both operands perturbed. When one of them moved at one position per perturbation (a
        parameter, or a row or column of it: W at step t of a recurrence ``h @ W``), the product is
        the other's perturbed values times that operand at θ (one GEMM) plus the moved part's
        contribution; else one batched product of the full values. That split needs finite values (an
        inf times θ's operand plus an inf times the moved part is NaN where the forward's one product
        is not): a perturbation whose operands are not takes the batched product, by its own values,
        whatever the rest of its batch (the two paths round differently)."""
        pinned_a, pinned_b = _moved_at_pins(ra), _moved_at_pins(rb)
        if pinned_a or pinned_b:
            finite = _finite_each(ra, B) & _finite_each(rb, B)
            if not finite.all():
                if finite.any():
                    raise Split([np.flatnonzero(finite), np.flatnonzero(~finite)])
                pinned_a = pinned_b = False
        if pinned_b:
            self._split_by_size(B, (base.size + ra.base.size) * base.dtype.itemsize)
            return self._dense_times_pinned(dense(ra), rb, base, B)
        if pinned_a:  # (A' B')ᵀ = B'ᵀ A'ᵀ
            self._split_by_size(B, (base.size + rb.base.size) * base.dtype.itemsize)
            rep = self._dense_times_pinned(transpose_rep(dense(rb), (1, 0), rb.base.T),
                                           transpose_rep(ra, (1, 0), ra.base.T), base.T, B)
            return Rep("FF", (None, None), rep.data.transpose(0, 2, 1), 0, base.shape, base)
        self._split_by_size(B, (base.size + ra.base.size + rb.base.size) * base.dtype.itemsize)
        return Rep("FF", (None, None), np.matmul(_stacked(ra), _stacked(rb)), 0, base.shape, base)

    def _dense_times_pinned(self, ra: Rep, rb: Rep, base, B) -> Rep:
        """A' (B, n, k) held in full times B' = b + Δb, Δb one element, row or column per
        perturbation (``_moved_at_pins``): A' b in one GEMM, then A' Δb added where it lands."""
        a = np.moveaxis(ra.data, ra.bpos, 0)
        a = np.broadcast_to(a, (B,) + a.shape[1:])
        n, k = a.shape[1:]
        b = rb.base
        dtype = np.result_type(a, b)
        a = np.ascontiguousarray(a, dtype=dtype)  # each perturbation's sums in one order, whatever the batch
        out = np.empty((B * n, b.shape[1]), dtype)
        _dot(a.reshape(B * n, k), b.astype(dtype, copy=False), out)
        out = out.reshape(B, n, b.shape[1])
        delta = np.ascontiguousarray(np.moveaxis(_delta(rb, a), rb.bpos, 0))  # (B,), (B, m) or (B, k)
        p = np.arange(B)
        if rb.kinds == ("P", "P"):
            out[p, :, rb.idx[1]] += a[p, :, rb.idx[0]] * delta[:, None]
        elif rb.kinds == ("P", "F"):
            out += a[p, :, rb.idx[0]][:, :, None] * delta[:, None, :]
        else:  # ("F", "P")
            out[p, :, rb.idx[1]] += np.einsum("pnk,pk->pn", a, delta)
        return Rep("FF", (None, None), out.astype(base.dtype, copy=False), 0, base.shape, base)

    def _matmul_left(self, i, r, C, base, B, exact, remaining, bias):
        """r (n, k) perturbed, C (k, m) constant."""
        k0, k1 = r.kinds
        k, m = C.shape
        if (k1 != "F" and not exact) or k1 == "S":
            r, k1 = expand(r, 1), "F"
        if k1 == "F":
            if k0 == "P":  # rows: one GEMM
                self._split_by_size(B, m * base.dtype.itemsize)
                d = np.moveaxis(r.data, r.bpos, 0)
                return Rep("PF", (r.idx[0], None), _dot(d, C, self._buffer(i, (B, m), base.dtype)), 0,
                           base.shape, base, owned=True), None
            self._split_by_size(B, per_item(r.kinds, r.idx, r.shape) // k * m * base.dtype.itemsize)
            return self._product(i, r, 1, C, base), None
        # the contracted axis is pinned: one column of r moved per perturbation
        pins = r.idx[1]
        delta = _delta(r, C)
        if k0 == "P":  # one element: one row of the product changes
            self._split_by_size(B, m * base.dtype.itemsize)
            out = self._buffer(i, (B, m), base.dtype)
            np.multiply(delta.reshape(B, 1), C[pins, :], out=out)
            out += gather(base, "PF", (r.idx[0], None), 0)
            return Rep("PF", (r.idx[0], None), out, 0, base.shape, base, owned=True), None
        D = np.moveaxis(delta, r.bpos, 1)  # (rows, B)
        rows = self._rank_one_support(D.T, pins, m, remaining)
        if rows is None:
            return None, None
        kind, positions = narrowed(k0, r.idx[0], rows, base.shape[0])
        self._split_by_size(B, rows.size * m * base.dtype.itemsize)
        if bias is not None:
            base, i = self.base[bias], bias
        out = self._buffer(i, (rows.size, B, m), base.dtype)
        np.multiply(D[rows][:, :, None], C[pins][None, :, :], out=out)
        out += base[:, None, :] if kind == "F" else \
            np.take(base, positions, axis=0, out=self._buffer((i, "base"), (rows.size, m), base.dtype))[:, None, :]
        return Rep((kind, "F"), (positions, None), out, 1, base.shape, base, owned=True,
                   same=(D[rows] == 0)[:, :, None]), bias

    def _matmul_right(self, i, C, r, base, B, exact, remaining, bias):
        """C (n, k) constant, r (k, m) perturbed."""
        k0, k1 = r.kinds
        n, k = C.shape
        if (k0 != "F" and not exact) or k0 == "S":
            r, k0 = expand(r, 0), "F"
        if k0 == "F":
            if k1 == "P":  # columns: one GEMM
                self._split_by_size(B, n * base.dtype.itemsize)
                d = np.moveaxis(r.data, r.bpos, 1)  # (k, B)
                return Rep("FP", (None, r.idx[1]), _dot(d.T, C.T, self._buffer(i, (n, B), base.dtype).T).T, 1,
                           base.shape, base, owned=True), None
            self._split_by_size(B, per_item(r.kinds, r.idx, r.shape) // k * n * base.dtype.itemsize)
            return self._product(i, r, 0, C.T, base), None
        pins = r.idx[0]
        delta = _delta(r, C)
        if k1 == "P":  # one element: one column of the product changes
            self._split_by_size(B, n * base.dtype.itemsize)
            out = self._buffer(i, (n, B), base.dtype)
            np.multiply(C[:, pins], delta.reshape(1, B), out=out)
            out += gather(base, "FP", (None, r.idx[1]), 1)
            return Rep("FP", (None, r.idx[1]), out, 1, base.shape, base, owned=True), None
        D = np.moveaxis(delta, r.bpos, 0)  # (B, columns)
        columns = self._rank_one_support(D, pins, n, remaining)
        if columns is None:
            return None, None
        kind, positions = narrowed(k1, r.idx[1], columns, base.shape[1])
        self._split_by_size(B, columns.size * n * base.dtype.itemsize)
        if bias is not None:
            base, i = self.base[bias], bias
        out = self._buffer(i, (B, columns.size, n), base.dtype)  # rows innermost: see _product
        np.multiply(C.T[pins][:, None, :], D[:, columns][:, :, None], out=out)
        transposed = self._transposed(i, base)
        out += transposed[None] if kind == "F" else \
            np.take(transposed, positions, axis=0, out=self._buffer((i, "base"), (columns.size, n), base.dtype))[None]
        return Rep(("F", kind), (None, positions), out.transpose(2, 0, 1), 1, base.shape, base, owned=True,
                   same=(D[:, columns] == 0)[None]), bias

    def _product(self, i, r: Rep, axis: int, M: np.ndarray, base) -> Rep:
        """r with its (full) axis ``axis`` contracted with M (k, width): one GEMM of everything
        else (k last in memory) by M; the result's new axis is innermost in memory, where the
        next product wants it. Computed as (rest, k) @ (k, width) even for W @ A: OpenBLAS is up
        to twice as fast with the wide operand first when W has few rows."""
        d = r.data
        dk = dpos(r.kinds, r.bpos, axis)
        rest = np.moveaxis(d, dk, -1)
        flat = rest.reshape(-1, M.shape[0])  # a view when k is innermost in memory
        out = self._buffer(i, (flat.shape[0], M.shape[1]), base.dtype)
        _dot(flat, M, out)
        if M.shape[1] <= NARROW:  # few outputs (classes): those axes outermost, for reductions over them
            turned = self._buffer((i, "narrow"), (M.shape[1], flat.shape[0]), base.dtype)
            np.copyto(turned, out.T)
            data = np.moveaxis(turned.reshape((M.shape[1],) + rest.shape[:-1]), 0, dk)
        else:
            data = np.moveaxis(out.reshape(rest.shape[:-1] + (M.shape[1],)), -1, dk)
        same = settle(data, d, dk, r, base)
        return Rep(r.kinds, r.idx, data, r.bpos, base.shape, base, owned=True, same=same)

    def _rank_one_support(self, D: np.ndarray, pins: np.ndarray, width: int, remaining: int):
        """Where the rank-one update ΔD (B, length) ⊗ (width) changes anything. Splits the batch
        by pinned position when the parts' changed positions are that much fewer."""
        nonzero = D != 0
        changed = np.any(nonzero, axis=0)
        count = int(np.count_nonzero(changed))
        if count == 0:
            return None
        if pins[0] != pins[-1] or not np.all(pins == pins[0]):
            order = np.argsort(pins, kind="stable")
            sorted_pins = pins[order]
            starts = np.flatnonzero(np.r_[True, sorted_pins[1:] != sorted_pins[:-1]])
            per = np.logical_or.reduceat(nonzero[order], starts, axis=0)
            sizes = np.diff(np.r_[starts, len(pins)])
            grouped = int((sizes * np.count_nonzero(per, axis=1)).sum()) * width \
                + len(starts) * remaining * NODE_OVERHEAD_ELEMENTS
            if grouped < D.shape[0] * count * width:
                raise Split(np.split(order, starts[1:]))
        return np.flatnonzero(changed)


def _moved_at_pins(r: Rep) -> bool:
    """Whether a perturbed matrix moved at one element, row or column per perturbation (so that its
    value is its value at θ plus that move, where the values are finite: ``_finite_each``)."""
    return r.kinds in (("P", "P"), ("P", "F"), ("F", "P"))


def _finite_each(r: Rep, B: int) -> np.ndarray:
    """Per perturbation of the batch, whether a perturbed operand is finite everywhere: one
    perturbation's inf decides nothing for the others."""
    if not np.all(np.isfinite(r.base)):
        return np.zeros(B, dtype=bool)
    finite = np.isfinite(r.data)
    if finite.all():  # the common case, in one pass
        return np.ones(B, dtype=bool)
    return np.broadcast_to(np.all(finite, axis=tuple(a for a in range(r.data.ndim) if a != r.bpos)), (B,))


def _stacked(r: Rep) -> np.ndarray:
    """r's values held in full as a C-contiguous stack of matrices, batch first: np.matmul computes each
    matrix of such a stack by BLAS, the same way whatever the batch, but a strided stack (the batch
    innermost in memory, as a batch of perturbations often is) in another order."""
    r = dense(r)
    return np.ascontiguousarray(np.moveaxis(r.data, r.bpos, 0))


def _delta(r, C) -> np.ndarray:
    """How far the perturbed operand moved from θ, in the product's dtype."""
    dtype = np.result_type(r.data, C)
    return r.data.astype(dtype) - np.asarray(gather(r.base, r.kinds, r.idx, r.bpos)).astype(dtype)


def _dot(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> np.ndarray:
    """a @ b written into ``out``, the rows of a (one or more per perturbation) taken in multiples of
    ``ROW_TILE``, the last few padded with zeros."""
    rows = a.shape[0]
    full = rows - rows % ROW_TILE
    if full:
        if out.flags.c_contiguous:
            np.dot(a[:full], b, out=out[:full])
        else:
            out[:full] = np.dot(a[:full], b)
    if full < rows:
        padded = np.zeros((ROW_TILE, a.shape[1]), dtype=a.dtype)
        padded[:rows - full] = a[full:]
        out[full:] = np.dot(padded, b)[:rows - full]
    return out


def settle(data: np.ndarray, d: np.ndarray, axes, r: Rep, base) -> np.ndarray:
    """Where a perturbation left every input of an output unchanged (all of ``d`` along ``axes`` is
    θ's: known from ``r.same``, else compared), its output is θ's, as where the batch had no change
    at all: which positions are recomputed depends on the whole batch, and a recomputed value may
    differ from θ's by round-off. Returns where the output is θ's."""
    axes = axes if isinstance(axes, tuple) else (axes,)
    if r.same is not None:
        same = r.same
        reduce = tuple(a for a in axes if same.shape[a] != 1)
        same = np.all(same, axis=reduce, keepdims=True) if reduce else same
    else:
        same = np.all(d == np.asarray(gather(r.base, r.kinds, r.idx, r.bpos)), axis=axes, keepdims=True)
    if same.any():
        np.copyto(data, np.asarray(gather(base, r.kinds, r.idx, r.bpos)), where=same)
    return same
