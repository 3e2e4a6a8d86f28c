"""Incremental evaluation of a recorded forward (see ``trace``): the costs of many single-element
perturbations of θ, each propagating only what changes.

Longer than gradjob's other modules (about 840 lines) because the batched representation below
and the incremental rule of every recorded operation are one algorithm; moving the representation
(``Rep`` and its helpers) to a module of its own is planned work.

A node's values under a batch of B perturbations are held as a ``Rep``: its value at θ (``base``)
and, per axis, where the perturbed values may differ from it:

- ``F`` (full): anywhere along the axis;
- ``S`` (selected): only at the positions ``idx``, the same for every perturbation (e.g. the
  examples whose activation changed);
- ``P`` (pinned): only at one position per perturbation, ``idx[p]`` (e.g. the row of W that moved).

``data`` holds the perturbed values there: the non-pinned axes in order, with the batch axis
inserted at position ``bpos``. Perturbing W1[j, k] pins both axes of W1; ``W1 @ X`` is then
pinned to row j (updated, not recomputed); elementwise operations act on that row; ``W2 @ A1``
becomes the rank-one update W2[:, j] ⊗ ΔA1[j] on the examples where ΔA1[j] ≠ 0 (``S``), laid out
(rows, batch, examples) so that every later matrix product is one GEMM over all perturbations.
A reduction adds the exact partial reduction of what did not change to that of what did.

A batch is split where an intermediate would exceed ``BLOCK_BYTES``, and by pinned row at a
rank-one update when that makes the changed columns fewer. Intermediates of a block are written
into buffers reused from block to block (a fresh multi-MiB array costs page faults, ruinously so
on Dask workers, which run with ``MALLOC_TRIM_THRESHOLD_`` set). Every value keeps the dtype the
real forward gives it, and the results equal the real forward's to round-off.

``Replay.costs`` may be called from several threads: buffers are per thread.
"""

from __future__ import annotations

import threading

import numpy as np

from .evaluate import PerturbationFailure
from .layout import Layout
from .trace import Graph, Ref, Untraceable, record

# The largest batched intermediate of a block. Measured on 784-512-256-1 (ReLU) and 784-512-256-10
# (tanh, softmax) networks, one thread: 0.5, 1, 2, 4, 8 and 16 MiB took 156, 95, 66, 54, 48, 62 µs
# (ReLU) and 360, 226, 176, 154, 152, 181 µs (tanh) per W1 parameter ±. Below 4 MiB the Python
# work per block dominates; at 4 MiB a block's few arrays stay in the shared L3 cache (32 MiB),
# also with two workers per machine.
BLOCK_BYTES = 4 << 20
# Python work per node and block, in element operations, when deciding whether splitting a
# batch by pinned row (fewer changed columns each) pays.
NODE_OVERHEAD_ELEMENTS = 20_000
# A product with at most this many outputs per row (e.g. class scores) is laid out with that axis
# outermost in memory: a softmax's reductions over it are then vectorised.
NARROW = 32


class _Split(Exception):
    """Evaluate this node and the rest of the graph on parts of the batch, one after another."""

    def __init__(self, parts):
        self.parts = parts


def _split_by_size(B: int, per_item_bytes: int):
    if B <= 1 or B * per_item_bytes <= BLOCK_BYTES:
        return
    step = max(1, BLOCK_BYTES // max(1, per_item_bytes))
    raise _Split([slice(i, min(B, i + step)) for i in range(0, B, step)])


class Rep:
    """The values of one node under a batch of perturbations (see the module docstring)."""

    __slots__ = ("kinds", "idx", "data", "bpos", "shape", "base", "owned")

    def __init__(self, kinds, idx, data, bpos, shape, base, owned=False):
        self.kinds, self.idx, self.data, self.bpos = tuple(kinds), tuple(idx), data, bpos
        self.shape, self.base = tuple(shape), base
        self.owned = owned  # data is a buffer written for this block that no other Rep shares

    @property
    def B(self) -> int:
        return self.data.shape[self.bpos]

    def dpos(self, axis: int) -> int:
        return _dpos(self.kinds, self.bpos, axis)

    def take(self, part) -> "Rep":
        key = (slice(None),) * self.bpos + (part,)
        idx = tuple(i[part] if k == "P" else i for k, i in zip(self.kinds, self.idx))
        return Rep(self.kinds, idx, self.data[key], self.bpos, self.shape, self.base)


# --- layouts -------------------------------------------------------------------------------------

def _dpos(kinds, bpos: int, axis: int) -> int:
    """Position in ``data`` of logical axis ``axis`` (which is not pinned)."""
    r = sum(1 for k in kinds[:axis] if k != "P")
    return r + (r >= bpos)


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return a is b or (a.shape == b.shape and bool(np.array_equal(a, b)))


def _per_item(kinds, idx, shape) -> int:
    n = 1
    for k, i, s in zip(kinds, idx, shape):
        n *= s if k == "F" else (len(i) if k == "S" else 1)
    return n


def _gather(value, kinds, idx, bpos: int):
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


def _unpinned(kinds, idx, bpos: int, axis: int):
    """Kinds, idx and batch position once ``axis`` is held in full (the batch axis stays after
    the same axes), and the data position of ``axis`` then."""
    r = sum(1 for k in kinds[:axis] if k != "P")
    if kinds[axis] == "P" and r < bpos:
        bpos += 1
    kinds = tuple(kinds[:axis]) + ("F",) + tuple(kinds[axis + 1:])
    idx = tuple(idx[:axis]) + (None,) + tuple(idx[axis + 1:])
    return kinds, idx, bpos, _dpos(kinds, bpos, axis)


def _full_batch(array: np.ndarray, bpos: int, B: int) -> np.ndarray:
    """A writable copy with a batch axis of length B."""
    shape = list(array.shape)
    shape[bpos] = B
    return np.array(np.broadcast_to(array, shape))


def _expand(rep: Rep, axis: int) -> Rep:
    """The same values with ``axis`` held in full."""
    kinds, idx, bpos, d = _unpinned(rep.kinds, rep.idx, rep.bpos, axis)
    full = _full_batch(np.asarray(_gather(rep.base, kinds, idx, bpos)), bpos, rep.B)
    if rep.kinds[axis] == "S":
        full[(slice(None),) * d + (rep.idx[axis],)] = rep.data
    else:  # one position per perturbation: index (perturbation, position) with the batch first
        da = _dpos(kinds, 0, axis)
        key = (np.arange(rep.B),) + (slice(None),) * (da - 1) + (rep.idx[axis],)
        np.moveaxis(full, bpos, 0)[key] = np.moveaxis(rep.data, rep.bpos, 0)
    return Rep(kinds, idx, full, bpos, rep.shape, rep.base)


def _dense(rep: Rep) -> Rep:
    for axis, kind in enumerate(rep.kinds):
        if kind != "F":
            rep = _expand(rep, axis)
    return rep


def _labels(kinds, bpos: int, pad: int = 0) -> list:
    labels = [a + pad for a, k in enumerate(kinds) if k != "P"]
    labels.insert(bpos, "B")
    return labels


def _align(rep: Rep, kinds, bpos: int):
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


def _result_bpos(rep: Rep, kinds) -> int:
    """Where the batch axis goes in a result with ``kinds``: after the same logical axes as in
    ``rep`` (the largest operand), so that its data need not move."""
    pad = len(kinds) - len(rep.kinds)
    labels = _labels(rep.kinds, rep.bpos, pad)
    before = [L for L in labels[:labels.index("B")] if kinds[L] != "P"]
    target = [a for a, k in enumerate(kinds) if k != "P"]
    return target.index(before[-1]) + 1 if before else 0


def _unit_insert(rep: Rep, axis: int) -> Rep:
    kinds = rep.kinds[:axis] + ("F",) + rep.kinds[axis:]
    idx = rep.idx[:axis] + (None,) + rep.idx[axis:]
    bpos = rep.bpos + (sum(1 for k in rep.kinds[:axis] if k != "P") < rep.bpos)
    d = _dpos(kinds, bpos, axis)
    return Rep(kinds, idx, np.expand_dims(rep.data, d), bpos, rep.shape[:axis] + (1,) + rep.shape[axis:],
               np.expand_dims(rep.base, axis))


def _unit_drop(rep: Rep, axis: int) -> Rep:
    d = rep.dpos(axis)
    bpos = rep.bpos - (d < rep.bpos)
    return Rep(rep.kinds[:axis] + rep.kinds[axis + 1:], rep.idx[:axis] + rep.idx[axis + 1:],
               np.squeeze(rep.data, d), bpos, rep.shape[:axis] + rep.shape[axis + 1:],
               np.squeeze(rep.base, axis))


def _transpose(rep: Rep, axes: tuple, base) -> Rep:
    kinds = tuple(rep.kinds[a] for a in axes)
    idx = tuple(rep.idx[a] for a in axes)
    old = _labels(rep.kinds, rep.bpos)
    bpos = min(rep.bpos, sum(1 for k in kinds if k != "P"))
    new = [a for a in axes if rep.kinds[a] != "P"]
    new.insert(bpos, "B")
    data = rep.data.transpose([old.index(L) for L in new])
    return Rep(kinds, idx, data, bpos, tuple(rep.shape[a] for a in axes), base)


def _narrowed(kind: str, idx, positions: np.ndarray, length: int):
    """The kind and positions of an axis once only ``positions`` (of its data) change."""
    if kind == "S":
        return "S", idx[positions]
    if positions.size == length:
        return "F", None
    return "S", positions


# --- the evaluator --------------------------------------------------------------------------------

class _Plan:
    """The nodes that depend on one tensor, in order, and when each value is last needed."""

    def __init__(self, graph: Graph, leaf: int):
        nodes = graph.nodes
        depends = {leaf}
        order = [leaf]
        for i in range(leaf + 1, len(nodes)):
            if any(j in depends for j in nodes[i].inputs):
                depends.add(i)
                order.append(i)
        self.order, self.depends = order, depends
        self.position = {i: pos for pos, i in enumerate(order)}
        self.consumers: dict[int, list[int]] = {}
        for i in order:
            for j in nodes[i].inputs:
                self.consumers.setdefault(j, []).append(i)
        last = {}
        for pos, i in enumerate(order):
            for j in nodes[i].inputs:
                if j in depends:
                    last[j] = pos
        self.dead = [[] for _ in order]
        for j, pos in last.items():
            if j != graph.cost:
                self.dead[pos].append(j)
        self.reaches_cost = graph.cost in depends


_REDUCERS = {"sum": (np.add, np.sum), "mean": (np.add, np.sum), "max": (np.maximum, np.max),
             "min": (np.minimum, np.min), "nansum": (np.add, np.nansum), "nanmax": (np.fmax, np.nanmax),
             "nanmin": (np.fmin, np.nanmin)}


class Replay:
    """The costs of single-element perturbations of θ, from one traced run of the forward."""

    def __init__(self, graph: Graph, layout: Layout):
        self.graph, self.layout = graph, layout
        self.base = [np.asarray(n.value) for n in graph.nodes]
        self.dtypes = [b.dtype for b in self.base]
        self._finite: dict[int, bool] = {}
        self._cost = graph.nodes[graph.cost].value
        self._complex = np.iscomplexobj(self._cost)
        self._plans: dict[str, _Plan] = {}
        self._partials: dict = {}   # (node, kind, axes reduced, dtype) -> that reduction at θ
        self._excluding: dict = {}  # (partial, axis, position) -> the reduction without that position
        self._transposes: dict = {}
        self._local = threading.local()

    def __getstate__(self):
        state = dict(self.__dict__)
        del state["_local"]  # per-thread buffers, empty between calls
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._local = threading.local()

    @classmethod
    def of(cls, forward, X, Y, layout: Layout, theta: np.ndarray) -> "Replay":
        """Trace ``forward(X, Y, layout.views(theta))`` once; raises ``Untraceable``."""
        return cls(record(forward, X, Y, layout, theta), layout)

    @property
    def cost(self) -> float:
        """J at θ as the trace computed it (the real forward's value)."""
        return complex(self._cost) if self._complex else float(self._cost)

    # -- the contract of evaluate.in_place_costs
    def costs(self, indices: np.ndarray, values: np.ndarray, sign: str = "") -> np.ndarray:
        """J at θ with θ[indices[p]] = values[p], for each p separately."""
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        values = np.asarray(values).reshape(-1)
        if indices.size and (indices.min() < 0 or indices.max() >= self.layout.n_parameters):
            raise IndexError(f"index out of range for θ of {self.layout.n_parameters} parameters")
        complex_out = self._complex or np.iscomplexobj(values)
        out = np.empty(len(indices), dtype=np.complex128 if complex_out else np.float64)
        self._local.buffers = {}
        try:
            with np.errstate(all="ignore"):
                for tensor in self.layout.tensors:
                    inside = np.flatnonzero((indices >= tensor.offset) & (indices < tensor.stop))
                    if inside.size:
                        out[inside] = self._tensor_costs(tensor, indices[inside] - tensor.offset, values[inside])
        finally:
            self._local.buffers = {}  # a Replay between calls holds no more than its values at θ
        bad = np.flatnonzero(~np.isfinite(out))
        if bad.size:
            raise PerturbationFailure(int(indices[bad[0]]), sign, f"the cost is {out[bad[0]]}")
        return out

    def _tensor_costs(self, tensor, local: np.ndarray, values: np.ndarray) -> np.ndarray:
        leaf = self.graph.params[tensor.name]
        plan = self._plans.get(tensor.name)
        if plan is None:
            plan = self._plans[tensor.name] = _Plan(self.graph, leaf)
        if not plan.reaches_cost:
            return np.full(len(local), self._cost)
        base = self.base[leaf]
        if np.iscomplexobj(values) and not np.iscomplexobj(base):
            raise Untraceable("complex perturbations of a forward traced with real θ: trace it with complex θ")
        shape = base.shape
        coords = np.unravel_index(local, shape) if shape else ()
        kinds = tuple("P" if s > 1 else "F" for s in shape)
        idx = tuple(c if s > 1 else None for c, s in zip(coords, shape))
        data = values.astype(base.dtype).reshape((-1,) + (1,) * sum(1 for k in kinds if k == "F"))
        env = {leaf: Rep(kinds, idx, data, 0, shape, base)}
        return self._run(plan, 1, env, len(local))

    def _run(self, plan: _Plan, pos: int, env: dict, B: int, skip: frozenset = frozenset()) -> np.ndarray:
        """Costs from the node at ``pos`` on; ``env`` holds the perturbed values so far, ``skip``
        the later nodes already evaluated (fused into a product, or hoisted before a split)."""
        nodes = self.graph.nodes
        while pos < len(plan.order):
            i = plan.order[pos]
            if i not in skip:
                try:
                    rep, stands_for = self._evaluate(nodes[i], i, env, B, plan, pos, plan.dead[pos])
                except _Split as split:
                    skip = self._hoist(plan, pos, env, B, skip)
                    out = np.empty(B, dtype=np.complex128 if self._complex else np.float64)
                    for part in split.parts:
                        sub = {k: r.take(part) for k, r in env.items()}
                        n = len(range(B)[part]) if isinstance(part, slice) else len(part)
                        out[part] = self._run(plan, pos, sub, n, skip)
                    return out
                if stands_for is not None:
                    skip = skip | {stands_for}
                    i = stands_for
                if rep is not None:
                    env[i] = rep
            for j in plan.dead[pos]:
                env.pop(j, None)
            pos += 1
        rep = env.get(self.graph.cost)
        if rep is None:
            return np.full(B, self._cost)
        return np.moveaxis(rep.data, rep.bpos, 0).reshape(B)

    def _hoist(self, plan: _Plan, pos: int, env: dict, B: int, skip: frozenset) -> frozenset:
        """Before splitting the batch at ``pos``: evaluate, once for the whole batch, the later
        nodes that do not depend on the node there (e.g. a regularisation term)."""
        nodes = self.graph.nodes
        after = {plan.order[pos]}  # depend on the split node, or wait for one that does
        skip = set(skip)
        for i in plan.order[pos + 1:]:
            if i in skip:
                continue
            if any(j in after for j in nodes[i].inputs):
                after.add(i)
                continue
            try:
                rep, stands_for = self._evaluate(nodes[i], i, env, B, plan, plan.position[i])
            except _Split:
                after.add(i)
                continue
            skip.add(i)
            if stands_for is not None:
                skip.add(stands_for)
                i = stands_for
            if rep is not None:
                env[i] = rep
        return frozenset(skip)

    # -- buffers, per thread
    def _buffer_like(self, key, shape, dtype, like) -> np.ndarray:
        """``_buffer`` laid out in memory in the same axis order as ``like`` (elementwise
        operations then run in memory order)."""
        if like is None or like.ndim != len(shape) or like.flags.c_contiguous:
            return self._buffer(key, shape, dtype)
        order = sorted(range(len(shape)), key=lambda a: -abs(like.strides[a]) if like.shape[a] > 1 else 0)
        buf = self._buffer(key, tuple(shape[a] for a in order), dtype)
        return buf.transpose(np.argsort(order))

    def _buffer(self, key, shape, dtype) -> np.ndarray:
        """An array to write node ``key``'s block into, reused from block to block: no node is
        evaluated again while a block that used its previous value is still being evaluated."""
        n = 1
        for s in shape:
            n *= s
        if n * dtype.itemsize > 2 * BLOCK_BYTES:
            return np.empty(shape, dtype)
        buffers = self._local.buffers
        buf = buffers.get(key)
        if buf is None or buf.size < n or buf.dtype != dtype:
            buf = buffers[key] = np.empty(n, dtype)
        return buf[:n].reshape(shape)

    # -- one node
    def _evaluate(self, node, i: int, env: dict, B: int, plan: _Plan, pos: int, dying=()):
        """(the node's Rep or None if no perturbation changes it, the id of the node the Rep
        stands for when it is a later one's: a product fused with the bias added to it)."""
        reps = [env.get(a.id) if isinstance(a, Ref) else None for a in node.operands]
        if all(r is None for r in reps):
            return None, None
        op = node.op
        if op == "matmul":
            return self._matmul(node, i, reps, B, plan, len(plan.order) - pos)
        if op == "elementwise":
            function = node.attrs["function"]
            reusable = None
            if isinstance(function, np.ufunc):  # write over an operand's block if this is its last use
                reusable = next((r for r, o in zip(reps, node.operands)
                                 if r is not None and r.owned and o.id in dying), None)
            rep = self._elementwise(node, i, reps, function, node.attrs["kwargs"], B, reusable)
        elif op == "astype":
            rep = self._elementwise(node, i, reps, _astype, {}, B)
        elif op in ("copy", "transpose", "reshape"):  # may share the operand's data
            reps[0].owned = False
            if op == "copy":
                rep = Rep(reps[0].kinds, reps[0].idx, reps[0].data, reps[0].bpos, reps[0].shape, reps[0].base)
            elif op == "transpose":
                rep = _transpose(reps[0], node.attrs["axes"], self.base[i])
            else:
                rep = self._reshape(reps[0], node.attrs["shape"], self.base[i], B)
        elif op == "reduce":
            rep = self._reduce(node, i, reps[0], node.operands[0].id, B)
        elif op == "index":
            reps[0].owned = False  # basic indexing gives a view of the operand's data
            rep = self._index(reps[0], node.attrs["key"], self.base[i], B)
        else:
            raise AssertionError(f"unknown node {op}")
        return rep, None

    def _bias(self, plan: _Plan, i: int):
        """The node j = i + c (or c + i, i - c) when it is i's only use and c does not change
        under these perturbations: a rank-one update of i can then be added to j's value."""
        users = plan.consumers.get(i, [])
        if len(users) != 1:
            return None
        j = users[0]
        node = self.graph.nodes[j]
        if node.op != "elementwise" or node.attrs["kwargs"] or len(node.operands) != 2:
            return None
        a, b = node.operands
        function = node.attrs["function"]
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

    def _transposed(self, i: int) -> np.ndarray:
        """base[i].T, contiguous (a rank-one update of W @ A is laid out rows innermost)."""
        value = self._transposes.get(i)
        if value is None:
            value = self._transposes[i] = np.ascontiguousarray(self.base[i].T)
        return value

    def _operand_value(self, operand):
        return self.base[operand.id] if isinstance(operand, Ref) else operand

    def _elementwise(self, node, i, reps, function, kwargs, B, reusable=None):
        shape = self.base[i].shape
        nd = len(shape)
        changed = [r for r in reps if r is not None]
        first = changed[0]
        if len(changed) == 1 and first.shape == shape:  # the common case: nothing to reconcile
            kinds, idx, bpos = first.kinds, first.idx, first.bpos
            _split_by_size(B, _per_item(kinds, idx, shape) * self.dtypes[i].itemsize)
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
                    elif kind != r.kinds[pa] or not _same(ix, r.idx[pa]):
                        kind = "F"
                        break
                kinds.append(kind or "F")
                idx.append(ix if kind in ("S", "P") else None)
            kinds, idx = tuple(kinds), tuple(idx)
            _split_by_size(B, _per_item(kinds, idx, shape) * self.dtypes[i].itemsize)
            for n, r in enumerate(reps):
                if r is not None:
                    pad = nd - len(r.shape)
                    for pa, k in enumerate(r.kinds):
                        if k != "F" and kinds[pa + pad] == "F":
                            r = _expand(r, pa)
                    reps[n] = r
            bpos = _result_bpos(max((r for r in reps if r is not None), key=lambda r: r.data.size), kinds)
        args = [_align(r, kinds, bpos) if r is not None else _gather(self._operand_value(o), kinds, idx, bpos)
                for r, o in zip(reps, node.operands)]
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
        return Rep(kinds, idx, out, bpos, shape, self.base[i], owned=True)

    # -- matrix products
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
            ra = _unit_insert(ra, 0) if ra is not None else None
        if vector_b:
            vb = vb[:, None]
            rb = _unit_insert(rb, 1) if rb is not None else None
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
            rep = _unit_drop(rep, 1)
        if vector_a:
            rep = _unit_drop(rep, 0)
        return rep, fused

    def _matmul_both(self, ra, rb, base, B):
        _split_by_size(B, (base.size + ra.base.size + rb.base.size) * base.dtype.itemsize)
        a = np.moveaxis(_dense(ra).data, ra.bpos, 0)
        b = np.moveaxis(_dense(rb).data, rb.bpos, 0)
        return Rep("FF", (None, None), np.matmul(a, b), 0, base.shape, base)

    def _matmul_left(self, i, r, C, base, B, exact, remaining, bias):
        """r (n, k) perturbed, C (k, m) constant."""
        k0, k1 = r.kinds
        k, m = C.shape
        if (k1 != "F" and not exact) or k1 == "S":
            r, k1 = _expand(r, 1), "F"
        if k1 == "F":
            if k0 == "P":  # rows: one GEMM
                _split_by_size(B, m * base.dtype.itemsize)
                d = np.moveaxis(r.data, r.bpos, 0)
                return Rep("PF", (r.idx[0], None), np.dot(d, C, out=self._buffer(i, (B, m), base.dtype)), 0,
                           base.shape, base, owned=True), None
            _split_by_size(B, _per_item(r.kinds, r.idx, r.shape) // k * m * base.dtype.itemsize)
            return self._product(i, r, 1, C, base), None
        # the contracted axis is pinned: one column of r moved per perturbation
        pins = r.idx[1]
        dtype = np.result_type(r.data, C)
        delta = r.data.astype(dtype) - np.asarray(_gather(r.base, r.kinds, r.idx, r.bpos)).astype(dtype)
        if k0 == "P":  # one element: one row of the product changes
            _split_by_size(B, m * base.dtype.itemsize)
            out = self._buffer(i, (B, m), base.dtype)
            np.multiply(delta.reshape(B, 1), C[pins, :], out=out)
            out += _gather(base, "PF", (r.idx[0], None), 0)
            return Rep("PF", (r.idx[0], None), out, 0, base.shape, base, owned=True), None
        D = np.moveaxis(delta, r.bpos, 1)  # (rows, B)
        rows = self._rank_one_support(D.T, pins, m, remaining)
        if rows is None:
            return None, None
        kind, positions = _narrowed(k0, r.idx[0], rows, base.shape[0])
        _split_by_size(B, rows.size * m * base.dtype.itemsize)
        if bias is not None:
            base, i = self.base[bias], bias
        out = self._buffer(i, (rows.size, B, m), base.dtype)
        np.multiply(D[rows][:, :, None], C[pins][None, :, :], out=out)
        out += base[:, None, :] if kind == "F" else \
            np.take(base, positions, axis=0, out=self._buffer((i, "base"), (rows.size, m), base.dtype))[:, None, :]
        return Rep((kind, "F"), (positions, None), out, 1, base.shape, base, owned=True), bias

    def _matmul_right(self, i, C, r, base, B, exact, remaining, bias):
        """C (n, k) constant, r (k, m) perturbed."""
        k0, k1 = r.kinds
        n, k = C.shape
        if (k0 != "F" and not exact) or k0 == "S":
            r, k0 = _expand(r, 0), "F"
        if k0 == "F":
            if k1 == "P":  # columns: one GEMM
                _split_by_size(B, n * base.dtype.itemsize)
                d = np.moveaxis(r.data, r.bpos, 1)  # (k, B)
                return Rep("FP", (None, r.idx[1]), np.dot(C, d, out=self._buffer(i, (n, B), base.dtype)), 1,
                           base.shape, base, owned=True), None
            _split_by_size(B, _per_item(r.kinds, r.idx, r.shape) // k * n * base.dtype.itemsize)
            return self._product(i, r, 0, C.T, base), None
        pins = r.idx[0]
        dtype = np.result_type(r.data, C)
        delta = r.data.astype(dtype) - np.asarray(_gather(r.base, r.kinds, r.idx, r.bpos)).astype(dtype)
        if k1 == "P":  # one element: one column of the product changes
            _split_by_size(B, n * base.dtype.itemsize)
            out = self._buffer(i, (n, B), base.dtype)
            np.multiply(C[:, pins], delta.reshape(1, B), out=out)
            out += _gather(base, "FP", (None, r.idx[1]), 1)
            return Rep("FP", (None, r.idx[1]), out, 1, base.shape, base, owned=True), None
        D = np.moveaxis(delta, r.bpos, 0)  # (B, columns)
        columns = self._rank_one_support(D, pins, n, remaining)
        if columns is None:
            return None, None
        kind, positions = _narrowed(k1, r.idx[1], columns, base.shape[1])
        _split_by_size(B, columns.size * n * base.dtype.itemsize)
        if bias is not None:
            base, i = self.base[bias], bias
        out = self._buffer(i, (B, columns.size, n), base.dtype)  # rows innermost: see _product
        np.multiply(C.T[pins][:, None, :], D[:, columns][:, :, None], out=out)
        transposed = self._transposed(i)
        out += transposed[None] if kind == "F" else \
            np.take(transposed, positions, axis=0, out=self._buffer((i, "base"), (columns.size, n), base.dtype))[None]
        return Rep(("F", kind), (None, positions), out.transpose(2, 0, 1), 1, base.shape, base, owned=True), bias

    def _product(self, i, r: Rep, axis: int, M: np.ndarray, base) -> Rep:
        """r with its (full) axis ``axis`` contracted with M (k, width): one GEMM of everything
        else (k last in memory) by M; the result's new axis is innermost in memory, where the
        next product wants it. Computed as (rest, k) @ (k, width) even for W @ A: OpenBLAS is up
        to twice as fast with the wide operand first when W has few rows."""
        d = r.data
        dk = _dpos(r.kinds, r.bpos, axis)
        rest = np.moveaxis(d, dk, -1)
        flat = rest.reshape(-1, M.shape[0])  # a view when k is innermost in memory
        out = self._buffer(i, (flat.shape[0], M.shape[1]), base.dtype)
        np.dot(flat, M, out=out)
        if M.shape[1] <= NARROW:  # few outputs (classes): those axes outermost, for reductions over them
            turned = self._buffer((i, "narrow"), (M.shape[1], flat.shape[0]), base.dtype)
            np.copyto(turned, out.T)
            data = np.moveaxis(turned.reshape((M.shape[1],) + rest.shape[:-1]), 0, dk)
        else:
            data = np.moveaxis(out.reshape(rest.shape[:-1] + (M.shape[1],)), -1, dk)
        return Rep(r.kinds, r.idx, data, r.bpos, base.shape, base, owned=True)

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
                raise _Split(np.split(order, starts[1:]))
        return np.flatnonzero(changed)

    # -- reductions
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
        kind, axes, keepdims = node.attrs["kind"], node.attrs["axes"], node.attrs["keepdims"]
        combine, reducer = _REDUCERS[kind]
        dtype = node.attrs["dtype"]
        if kind == "mean" and dtype is None:  # as np.mean accumulates
            given = rep.base.dtype
            dtype = np.dtype(np.float64) if given.kind in "biu" else (np.dtype(np.float32) if given == np.float16 else None)
        kwargs = {"dtype": dtype} if dtype is not None else {}
        kinds, idx, data, bpos = list(rep.kinds), list(rep.idx), rep.data, rep.bpos
        shape = list(rep.shape)
        done: tuple = ()
        full = [a for a in axes if kinds[a] == "F"]
        if full:
            data = reducer(data, axis=tuple(_dpos(kinds, bpos, a) for a in full), keepdims=True, **kwargs)
            for a in full:
                shape[a] = 1
            done = tuple(full)
        for a in [x for x in axes if kinds[x] == "S"]:  # what changed, plus what did not
            base = self._partial(source, kind, done, dtype)
            d = _dpos(kinds, bpos, a)
            part = reducer(data, axis=d, keepdims=True, **kwargs)
            rest = np.setdiff1d(np.arange(shape[a]), idx[a], assume_unique=True)
            if rest.size:
                others = np.asarray(_gather(base, kinds[:a] + ["S"] + kinds[a + 1:], idx[:a] + [rest] + idx[a + 1:], bpos))
                part = combine(part, reducer(others, axis=d, keepdims=True, **kwargs))
            data, kinds[a], idx[a], shape[a] = part, "F", None, 1
            done = tuple(sorted(done + (a,)))
        for a in [x for x in axes if kinds[x] == "P"]:  # the changed position, plus all others
            base = self._partial(source, kind, done, dtype)
            rest = self._excluding_pins(base, (source, kind, done, dtype), kinds, idx, bpos, a, kind, B, kwargs)
            new_kinds, new_idx, bpos, d = _unpinned(kinds, idx, bpos, a)
            kinds, idx = list(new_kinds), list(new_idx)
            data = combine(np.expand_dims(data, d), rest)
            shape[a] = 1
            done = tuple(sorted(done + (a,)))
        out = Rep(kinds, idx, data, bpos, shape, self._partial(source, kind, done, dtype))
        if kind == "mean":
            count = int(np.prod([rep.shape[a] for a in axes], dtype=np.int64))
            # as np.mean: divided by an intp count (a float32 sum in float64), then in the mean's dtype
            out.data = np.true_divide(out.data, np.intp(count)).astype(self.dtypes[i], copy=False)
        if not keepdims:
            for a in sorted(axes, reverse=True):
                out = _unit_drop(out, a)
        out.base = self.base[i]
        return out

    def _excluding_pins(self, base, key, kinds, idx, bpos, a, kind, B, kwargs):
        """Per perturbation, ``base`` reduced over axis ``a`` without the pinned position,
        laid out like the result's data with ``a`` held as a full axis of length 1."""
        reducer = _REDUCERS[kind][1]
        other_pins = any(k == "P" and base.shape[x] > 1 for x, k in enumerate(kinds) if x != a)
        unpinned, loose, new_bpos, d = _unpinned(kinds, idx, bpos, a)
        if other_pins:  # each perturbation's own slice, with its pinned position left out
            per_item = _per_item(unpinned, loose, base.shape) * base.dtype.itemsize
            step = max(1, BLOCK_BYTES // per_item)
            results = []
            for first in range(0, B, step):  # in blocks, without splitting the whole batch
                part = slice(first, min(B, first + step))
                part_idx = [i[part] if k == "P" else i for k, i in zip(unpinned, loose)]
                block = _full_batch(np.asarray(_gather(base, unpinned, part_idx, new_bpos)), new_bpos,
                                    part.stop - part.start)
                moved = np.moveaxis(block, new_bpos, 0)
                da = _dpos(unpinned, 0, a)
                at = (np.arange(part.stop - part.start),) + (slice(None),) * (da - 1)
                pins = idx[a][part]
                if kind in ("sum", "mean", "nansum"):
                    moved[at + (pins,)] = 0
                else:  # max/min: a neighbour's value changes nothing
                    moved[at + (pins,)] = moved[at + ((pins + 1) % base.shape[a],)]
                results.append(reducer(block, axis=d, keepdims=True, **kwargs))
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
        gathered = _gather(table, kinds, idx[:a] + [inverse.reshape(-1)] + idx[a + 1:], bpos)
        return np.expand_dims(gathered, d)

    # -- shapes and indexing
    def _reshape(self, rep: Rep, shape: tuple, base, B: int) -> Rep:
        if [s for s in rep.shape if s != 1] == [s for s in shape if s != 1]:
            for a in range(len(rep.shape) - 1, -1, -1):  # only axes of length 1 come or go
                if rep.shape[a] == 1:
                    rep = _unit_drop(rep, a)
            for a, s in enumerate(shape):
                if s == 1:
                    rep = _unit_insert(rep, a)
            return Rep(rep.kinds, rep.idx, rep.data, rep.bpos, rep.shape, base)
        _split_by_size(B, int(np.prod(rep.shape)) * base.dtype.itemsize)
        d = np.moveaxis(_dense(rep).data, rep.bpos, 0)
        return Rep("F" * len(shape), (None,) * len(shape), d.reshape((B,) + tuple(shape)), 0, shape, base)

    def _index(self, rep: Rep, key: tuple, base, B: int) -> Rep:
        _split_by_size(B, int(np.prod(rep.shape)) * base.dtype.itemsize)
        d = np.moveaxis(_dense(rep).data, rep.bpos, -1)  # batch last: indexing leaves it last
        used = sum(p.ndim if isinstance(p, np.ndarray) and p.dtype == bool else (p is not None and p is not Ellipsis)
                   for p in key)
        full = []
        for p in key:
            full.extend([slice(None)] * (len(rep.shape) - used) if p is Ellipsis else [p])
        if not any(p is Ellipsis for p in key):
            full.extend([slice(None)] * (len(rep.shape) - used))
        out = d[tuple(full) + (slice(None),)]
        return Rep("F" * base.ndim, (None,) * base.ndim, out, base.ndim, base.shape, base)


def _astype(a, out):
    np.copyto(out, a, casting="unsafe")
