"""Directional screening: a handful of forward passes per tensor that names a wrong tensor
before any full run.

For each tensor, K random unit directions u (supported on that tensor only) compare
(J(θ+hu) − J(θ−hu))/2h with grad·u. A wrong tensor shows up along almost every direction. The K
numbers per tensor go through the same reducer as a full check (round-off, kinks, factor), so
the verdict means the same. 2K forward passes per tensor, run on the client: no cluster, no store.
"""

from __future__ import annotations

import numpy as np

from .evaluate import STEP_EXPONENT, STEP_SCALE
from .job import Outcome, Prepared
from .layout import Layout, Tensor
from .models import cost_function, load_model
from .reduce import reduce_gradients

DEFAULT_DIRECTIONS = 3


def screen(prepared: Prepared, directions: int = DEFAULT_DIRECTIONS, seed: int = 0) -> Outcome:
    layout, theta = prepared.layout, prepared.theta.copy()
    case = prepared.case
    cost = cost_function(load_model(prepared.spec), case.X, case.Y, layout.views(theta))
    eps = float(np.finfo(theta.dtype).eps)
    arrays = {name: np.empty(directions * len(layout.tensors)) for name in
              ("grad", "gradapprox", "cost_plus", "cost_minus", "step", "noise")}
    for t_index, tensor in enumerate(layout.tensors):
        rng = np.random.default_rng([seed, t_index])
        values = theta[tensor.offset:tensor.stop]
        saved = values.copy()
        grad = prepared.grad[tensor.offset:tensor.stop]
        scale = max(1.0, float(np.abs(saved).max()))
        h = (prepared.request.epsilon or STEP_SCALE * eps ** STEP_EXPONENT["central"] * scale)
        for k in range(directions):
            u = rng.standard_normal(tensor.size).astype(theta.dtype)
            u /= np.linalg.norm(u)
            try:
                values[:] = saved + h * u
                j_plus = cost()
                values[:] = saved - h * u
                j_minus = cost()
            finally:
                values[:] = saved
            at = t_index * directions + k
            arrays["grad"][at] = float(grad @ u)
            arrays["gradapprox"][at] = (j_plus - j_minus) / (2 * h)
            arrays["cost_plus"][at], arrays["cost_minus"][at], arrays["step"][at] = j_plus, j_minus, h
            arrays["noise"][at] = eps * (abs(j_plus) + abs(j_minus)) / (2 * h)
    directions_layout = Layout(tuple(Tensor(t.name, (directions,), i * directions)
                                     for i, t in enumerate(layout.tensors)), "float64")
    reduction = reduce_gradients(directions_layout, lambda a, b: [{k: v[a:b] for k, v in arrays.items()}],
                                 prepared.threshold, prepared.cost)
    reduction.n_parameters = layout.n_parameters
    for result, tensor in zip(reduction.tensors, layout.tensors):
        result.shape = tensor.shape
        result.worst = []
        if result.diagnosis and ("element" in result.diagnosis):
            result.diagnosis = f"d{tensor.name} disagrees with the numerical derivative along random directions"
    request = prepared.request
    meta = {"epsilon": request.epsilon, "method": f"directional, {directions} random directions per tensor",
            "model": prepared.spec.describe(), "case": case.description, "chunk_size": None, "n_chunks": None,
            "created": None, "versions": None, "forward_passes_per_tensor": 2 * directions,
            "step_text": (f"ε = {request.epsilon:g} along each unit direction" if request.epsilon else
                          "automatic per tensor, 4·eps^(1/3)·max(1, max|θ|) along each unit direction")}
    return Outcome(reduction, meta, None)
