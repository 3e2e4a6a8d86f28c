"""The unit of work that runs on a Dask worker: evaluate one chunk and write it to the store.

Everything a task needs besides its chunk (θ, X, Y, the model) is read once per worker thread and
kept: tasks carry only small arguments. The generic path holds θ and perturbs its own copy in
place; the built-in network's fast path holds only the tensors after W1 (see ``fastpath``).
"""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass
from functools import partial

import numpy as np

from . import store
from .errors import JobError
from .evaluate import PerturbationFailure, in_place_costs, numerical_gradient
from .fastpath import FastNetwork
from .layout import Layout
from .models import ModelSpec, cost_function, load_model
from .plan import Chunk


@dataclass(frozen=True)
class TaskContext:
    """What every task of one job shares; small, hashable, cheap to send."""

    store: str
    model: ModelSpec
    epsilon: float | None
    method: str
    fast: bool  # use the built-in network's incremental evaluation (decided by the client)
    token: str  # the job's identity digest: a new job never reuses a worker's cached θ


class _Workspace:
    def __init__(self, context: TaskContext):
        self.group = store.open_existing(context.store, mode="r+")
        self.layout = Layout.from_json(store.metadata(self.group)["layout"])
        X, Y = store.read_case(self.group)
        self.fast = None
        if context.fast:  # the built-in network holds b1…bL and streams W1 from the store
            self.fast = FastNetwork(self.layout, partial(store.read_range, self.group, "theta"), X, Y)
            self.costs = self.fast.costs
            return
        self.theta = store.read_vector(self.group, "theta")  # this thread's own, writable copy
        if context.method == "complex-step":
            self.theta = self.theta.astype(np.result_type(self.theta.dtype, np.complex64))
        cost = cost_function(load_model(context.model), X, Y, self.layout.views(self.theta))
        self.costs = in_place_costs(cost, self.theta)

    def original(self, chunk: Chunk) -> np.ndarray:
        """θ over the chunk, unperturbed: from the held θ, or through the fast path's reader."""
        if self.fast is not None:
            return self.fast.unperturbed(np.arange(chunk.start, chunk.stop))
        return self.theta[chunk.start:chunk.stop].copy()


_local = threading.local()


def _workspace(context: TaskContext) -> _Workspace:
    cached = getattr(_local, "workspace", None)
    if cached is None or cached[0] != context:
        _local.workspace = None  # free the previous job's θ before reading this one's
        _local.workspace = (context, _Workspace(context))
    return _local.workspace[1]


def evaluate_chunk(context: TaskContext, chunk: Chunk) -> float:
    """The numerical gradient of ``chunk``, written to the store; returns the seconds it took."""
    started = time.perf_counter()
    workspace = _workspace(context)
    try:
        result = numerical_gradient(workspace.costs, workspace.original(chunk), chunk.start, context.epsilon,
                                    context.method)
    except PerturbationFailure as failure:
        where = workspace.layout.describe(failure.index)
        raise JobError(
            f"the forward failed at {where} {failure.sign} step (parameter {failure.index}, chunk "
            f"{chunk.index}): {failure.detail}; finished chunks are kept in the store"
        ) from None
    store.write_chunk(workspace.group, chunk, asdict(result))
    return time.perf_counter() - started
