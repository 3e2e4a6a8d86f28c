"""Incremental evaluation of a recorded forward (see ``trace``): the costs of many single-element
perturbations of θ, each propagating only what changes.

A node's values under a batch of B perturbations are held as a ``Rep`` (see ``batched``): its
value at θ and, per axis, where the perturbed values may differ from it: anywhere (``F``), at
positions shared by the batch (``S``), or at one position per perturbation (``P``).
Perturbing W1[j, k] pins both axes of W1; ``W1 @ X`` is then pinned to row j (updated, not
recomputed); elementwise operations act on that row; ``W2 @ A1`` becomes the rank-one update
W2[:, j] ⊗ ΔA1[j] on the examples where ΔA1[j] ≠ 0 (``S``), laid out (rows, batch, examples) so
that every later matrix product is one GEMM over all perturbations. A reduction adds the exact
partial reduction of what did not change to that of what did.

A batch is split where an intermediate would exceed ``BLOCK_BYTES``, and by pinned row at a
rank-one update when that makes the changed columns fewer. Intermediates of a block are written
into buffers reused from block to block (a fresh multi-MiB array costs page faults, ruinously so
on Dask workers, which run with ``MALLOC_TRIM_THRESHOLD_`` set). Every value keeps the dtype the
real forward gives it, and the results equal the real forward's to round-off.

``Replay.costs`` may be called from several threads: buffers are per thread.

Here: ``Replay`` runs the graph node by node, splits batches and keeps the buffers; each node is
evaluated by its operation's replay rule, looked up in ``ops.OPS``. The incremental rules are
mixed into ``Replay`` from modules of their own (``elementwise``: ufuncs, ``np.where``,
``np.clip``, casts, reshapes; ``indexing``; ``products``: matrix products; ``reductions``), and reach
the buffers and the block size through ``self`` (``self._buffer``, ``self._split_by_size``); every
other operation is recomputed per perturbation (``generic``). This module imports those, not they
this one.

About 290 lines because ``Replay``'s own part is one piece of control flow, read together: the
loop over nodes, the batch splits it catches (``_run``, ``_hoist``), the buffers, the dispatch.
"""

from __future__ import annotations

import threading

import numpy as np

from gradjob.model.layout import Layout
from gradjob.numerics.evaluate import PerturbationFailure
from gradjob.trace.batched import Rep, Split
from gradjob.trace.elementwise import ElementwiseRules
from gradjob.trace.indexing import IndexRules, deferrable
from gradjob.trace.graph import Graph, Ref, Untraceable
from gradjob.trace.ops import OPS
from gradjob.trace.products import ProductRules
from gradjob.trace.record import record
from gradjob.trace.reductions import ReductionRules

# The largest batched intermediate of a block. Measured on 784-512-256-1 (ReLU) and 784-512-256-10
# (tanh, softmax) networks, one thread: 0.5, 1, 2, 4, 8 and 16 MiB took 156, 95, 66, 54, 48, 62 µs
# (ReLU) and 360, 226, 176, 154, 152, 181 µs (tanh) per W1 parameter ±. Below 4 MiB the Python
# work per block dominates; at 4 MiB a block's few arrays stay in the shared L3 cache (32 MiB),
# also with two workers per machine.
BLOCK_BYTES = 4 << 20


def _blocks(B: int, per_item_bytes: int) -> list[slice]:
    """The batch of B perturbations in blocks of at most ``BLOCK_BYTES`` (one item at least)."""
    step = max(1, BLOCK_BYTES // max(1, per_item_bytes))
    return [slice(i, min(B, i + step)) for i in range(0, B, step)]


def _split_by_size(B: int, per_item_bytes: int):
    if B <= 1 or B * per_item_bytes <= BLOCK_BYTES:
        return
    raise Split(_blocks(B, per_item_bytes))


class Plan:
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
        # a smooth elementwise node used only by a gather of its elements is evaluated there, on those
        # elements alone (``gather_through``): gather id -> the deferred node's id
        self.gathers = {g: e for e in order if e != graph.cost and (g := deferrable(e, nodes, self.consumers)) is not None}
        self.deferred = frozenset(self.gathers.values())
        last = {}
        for pos, i in enumerate(order):
            for j in nodes[i].inputs:
                for k in (nodes[j].inputs if j in self.deferred else (j,)):  # read where the gather is
                    if k in depends:
                        last[k] = pos
        self.dead = [[] for _ in order]
        for j, pos in last.items():
            if j != graph.cost:
                self.dead[pos].append(j)
        self.reaches_cost = graph.cost in depends


class Replay(ElementwiseRules, IndexRules, ProductRules, ReductionRules):
    """The costs of single-element perturbations of θ, from one traced run of the forward."""

    _split_by_size = staticmethod(_split_by_size)  # for the rules mixed in: BLOCK_BYTES is read here
    _blocks = staticmethod(_blocks)

    def __init__(self, graph: Graph, layout: Layout):
        self.graph, self.layout = graph, layout
        self.base = [np.asarray(n.value) for n in graph.nodes]
        self.dtypes = [b.dtype for b in self.base]
        self._finite: dict[int, bool] = {}
        self._cost = graph.nodes[graph.cost].value
        self._complex = np.iscomplexobj(self._cost)
        self._plans: dict[str, Plan] = {}
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
    def arithmetic_dtype(self) -> str:
        """The narrowest floating dtype the forward computes a value in from floating values (a mask
        cast to float32 is exact and does not count): "float32" for a forward that casts inside."""
        kinds = [self.dtypes[i] for i, node in enumerate(self.graph.nodes)
                 if self.dtypes[i].kind == "f" and any(self.dtypes[j].kind == "f" for j in node.inputs)]
        return str(min(kinds, key=lambda d: d.itemsize, default=np.dtype(np.float64)))

    @property
    def cost(self) -> float:
        """J at θ as the trace computed it (the real forward's value)."""
        return complex(self._cost) if self._complex else float(self._cost)

    # -- the contract of evaluate.in_place_costs
    def costs(self, indices: np.ndarray, values: np.ndarray, sign: str = "") -> np.ndarray:
        """J at θ with θ[indices[p]] = values[p], for each p separately."""
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        out = self._replay(indices, values, record=False)
        bad = np.flatnonzero(~np.isfinite(out))
        if bad.size:
            raise PerturbationFailure(int(indices[bad[0]]), sign, f"the cost is {out[bad[0]]}")
        return out

    def flips(self, indices: np.ndarray, values: np.ndarray) -> np.ndarray:
        """Per evaluation (θ with θ[indices[p]] = values[p]), how many elements of the forward's
        switches take another branch than at θ: comparisons, ``maximum``/``minimum``, ``abs``/``sign``,
        ``clip``, ``where``, rounding, casts to integers, the position of a max/min reduction's extreme
        (a tie counts as its own branch). An evaluation that flips none lies on θ's smooth piece, so
        differences taken from it carry no kink; equal counts at two steps on one side of θ mean
        (for kinks crossed as the step grows) the same kinks crossed."""
        return self._replay(np.asarray(indices, dtype=np.int64).reshape(-1), values, record=True)

    def _replay(self, indices: np.ndarray, values, record: bool) -> np.ndarray:
        """The costs, or with ``record`` the switch flags, of each perturbation."""
        values = np.asarray(values).reshape(-1)
        if indices.size and (indices.min() < 0 or indices.max() >= self.layout.n_parameters):
            raise IndexError(f"index out of range for θ of {self.layout.n_parameters} parameters")
        complex_out = self._complex or np.iscomplexobj(values)
        out = np.empty(len(indices), dtype=np.complex128 if complex_out else np.float64)
        flags = np.zeros(len(indices), dtype=np.int64)
        self._local.buffers = {}
        try:
            with np.errstate(all="ignore"):
                for tensor in self.layout.tensors:
                    inside = np.flatnonzero((indices >= tensor.offset) & (indices < tensor.stop))
                    if inside.size:
                        self._local.flags = np.zeros(inside.size, dtype=np.int64) if record else None
                        out[inside] = self._tensor_costs(tensor, indices[inside] - tensor.offset, values[inside])
                        if record:
                            flags[inside] = self._local.flags
        finally:
            self._local.buffers = {}  # a Replay between calls holds no more than its values at θ
            self._local.flags = None
        return flags if record else out

    def _switched(self, counts: np.ndarray) -> None:
        """Count, per perturbation of the current block, switch elements that took another branch."""
        self._local.flags += counts

    @property
    def _recording(self) -> bool:
        return getattr(self._local, "flags", None) is not None

    def _tensor_costs(self, tensor, local: np.ndarray, values: np.ndarray) -> np.ndarray:
        leaf = self.graph.params[tensor.name]
        plan = self._plans.get(tensor.name)
        if plan is None:
            plan = self._plans[tensor.name] = Plan(self.graph, leaf)
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

    def _run(self, plan: Plan, pos: int, env: dict, B: int, skip: frozenset = frozenset()) -> np.ndarray:
        """Costs from the node at ``pos`` on; ``env`` holds the perturbed values so far, ``skip``
        the later nodes already evaluated (fused into a product, or hoisted before a split)."""
        nodes = self.graph.nodes
        while pos < len(plan.order):
            i = plan.order[pos]
            if i not in skip and i not in plan.deferred:
                try:
                    rep, stands_for = self._evaluate(nodes[i], i, env, B, plan, pos, plan.dead[pos])
                except Split as split:
                    skip = self._hoist(plan, pos, env, B, skip)
                    out = np.empty(B, dtype=np.complex128 if self._complex else np.float64)
                    flags = self._local.flags
                    for part in split.parts:
                        sub = {k: r.take(part) for k, r in env.items()}
                        n = len(range(B)[part]) if isinstance(part, slice) else len(part)
                        if flags is not None:  # each part records into its own flags
                            self._local.flags = np.zeros(n, dtype=np.int64)
                        out[part] = self._run(plan, pos, sub, n, skip)
                        if flags is not None:
                            flags[part] += self._local.flags
                    self._local.flags = flags
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

    def _hoist(self, plan: Plan, pos: int, env: dict, B: int, skip: frozenset) -> frozenset:
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
            if i in plan.deferred:  # evaluated at its gather
                continue
            try:
                rep, stands_for = self._evaluate(nodes[i], i, env, B, plan, plan.position[i])
            except Split:
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
    def _evaluate(self, node, i: int, env: dict, B: int, plan: Plan, pos: int, dying=()):
        """(the node's Rep or None if no perturbation changes it, the id of the node the Rep
        stands for when it is a later one's: a product fused with the bias added to it)."""
        if i in plan.gathers:
            return self._gather_through(self.graph.nodes[plan.gathers[i]], node, i, env, B), None
        reps = [env.get(a.id) if isinstance(a, Ref) else None for a in node.operands]
        if all(r is None for r in reps):
            return None, None
        return OPS[node.op].replay(self, node, i, reps, B, plan, pos, dying)

    def _operand_value(self, operand):
        return self.base[operand.id] if isinstance(operand, Ref) else operand
