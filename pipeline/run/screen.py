"""Directional screening: a handful of forward passes per tensor that names a wrong tensor
before any full run.

For each tensor, K random unit directions u (supported on that tensor only) compare
(J(θ+hu) − J(θ−hu))/2h with grad·u. A wrong tensor shows up along almost every direction. The
forward's noise is measured along one random direction (ECnoise, see ``noise``) and sets the
step and each number's noise bound; a number that disagrees beyond its noise is re-verified on a
ladder of smaller steps along its direction, and the K numbers per tensor then go through the
same reducer and verdict rule (``verdict``) as a full check, so the verdict means the same. Run on
the client: no cluster, no store.
"""

from __future__ import annotations

import math

import numpy as np

from gradjob.model.layout import Layout, Tensor
from gradjob.model.spec import cost_function
from gradjob.numerics import verify
from gradjob.numerics.evaluate import central_noise
from gradjob.numerics.noise import central_step, measure_noise
from gradjob.numerics.reduce import reduce_gradients
from gradjob.run.preflight import Prepared
from gradjob.types import Calibration, Outcome, TensorNoise


def screen(prepared: Prepared, directions: int, seed: int = 0) -> Outcome:
    layout, theta = prepared.layout, prepared.theta.copy()
    case, epsilon = prepared.case, prepared.request.epsilon
    cost = cost_function(prepared.model, case.X, case.Y, layout.views(theta))
    eps = float(np.finfo(theta.dtype).eps)
    names = ("theta", "grad", "gradapprox", "cost_plus", "cost_minus", "step", "noise")
    arrays = {name: np.zeros(directions * len(layout.tensors)) for name in names}
    noise, step_scale, curvature, passes = _calibrate(layout, theta, cost, eps, prepared.cost, seed)
    measured, lines = [], {}
    for t_index, tensor in enumerate(layout.tensors):
        rng = np.random.default_rng([seed, t_index])
        values = theta[tensor.offset:tensor.stop]
        saved = values.copy()
        grad = prepared.grad[tensor.offset:tensor.stop]
        scale = max(1.0, float(np.abs(saved).max()))
        h = epsilon if epsilon is not None else step_scale * scale
        measured.append(TensorNoise(tensor.name, noise, h / scale, 1, curvature))
        for k in range(directions):
            u = rng.standard_normal(tensor.size).astype(theta.dtype)
            u /= np.linalg.norm(u)
            j_plus, j_minus = _along(values, saved, u, np.array([h, -h]), cost)
            at = t_index * directions + k
            lines[at] = (values, saved, u)
            arrays["grad"][at] = float(grad @ u)
            arrays["gradapprox"][at] = (j_plus - j_minus) / (2 * h)
            arrays["cost_plus"][at], arrays["cost_minus"][at], arrays["step"][at] = j_plus, j_minus, h
            arrays["noise"][at] = central_noise(noise, h, curvature)
        passes += 2 * directions
    grad_eps = layout.gradient_eps
    verdicts, spent = _verify(arrays, lines, cost, noise, grad_eps, verify.resolution(prepared.precision.checked))
    passes += spent
    directions_layout = Layout(tuple(Tensor(t.name, (directions,), i * directions)
                                     for i, t in enumerate(layout.tensors)), "float64")
    reduction = reduce_gradients(directions_layout, lambda a, b: [{k: v[a:b] for k, v in arrays.items()}],
                                 prepared.threshold, prepared.cost, Calibration(tuple(measured), passes), verdicts,
                                 grad_eps, screened=layout)
    reduction.n_parameters = layout.n_parameters
    for result, tensor in zip(reduction.tensors, layout.tensors):
        result.shape = tensor.shape
        # the reducer's "elements" here are direction numbers: said as directions, no element is named
        result.directions = {"count": directions, "kinks": [k for (k,) in result.kink_elements],
                             "wrong": [k for (k,) in result.wrong_elements]}
        result.worst, result.kink_elements, result.wrong_elements = [], [], []
    step = (f"ε = {epsilon:g} along each unit direction" if epsilon is not None
            else f"automatic from the measured noise, {step_scale:.2g}·max(1, max|θ|) along each unit direction")
    return Outcome(reduction, None, None, f"directional, {directions} random directions per tensor", step,
                   prepared.spec.describe(), case.description, prepared.precision, "forward",
                   notes=list(prepared.notes), forward_passes_per_tensor=math.ceil(passes / len(layout.tensors)))


def _verify(arrays: dict, lines: dict, cost, noise: float, grad_eps: float, decide: float) -> tuple[dict, int]:
    """Directions whose numbers disagree beyond their noise, re-verified on a ladder of smaller
    steps along the same direction, as a full check verifies its suspects (see ``verify``)."""
    tolerance = verify.tolerance(arrays["grad"], arrays["noise"], grad_eps)
    verdicts, spent = {}, 0
    for at in np.flatnonzero(np.abs(arrays["grad"] - arrays["gradapprox"]) > tolerance):
        values, saved, u = lines[int(at)]
        h = arrays["step"][at] * 10.0 ** -np.arange(verify.RUNGS)
        j0 = _along(values, saved, u, np.zeros(1), cost)[0]
        j_plus, j_minus = _along(values, saved, u, h, cost), _along(values, saved, u, -h, cost)
        spent += 1 + 2 * verify.RUNGS
        verdicts[int(at)] = verify.classify(float(arrays["grad"][at]), j0, j_plus, j_minus, h, h, noise, grad_eps, decide)
    return verdicts, spent


def _along(values: np.ndarray, saved: np.ndarray, u: np.ndarray, offsets: np.ndarray, cost) -> np.ndarray:
    """J at θ + t·u for each offset t, θ restored after."""
    out = np.empty(offsets.size)
    try:
        for k, t in enumerate(offsets):
            values[:] = saved + t * u
            out[k] = cost()
    finally:
        values[:] = saved
    return out


def _calibrate(layout: Layout, theta: np.ndarray, cost, eps: float, cost0: float,
               seed: int) -> tuple[float, float, float, int]:
    """ε_f, the step scale and |J‴| along one random direction in the largest tensor (the noise of
    J is the forward's, whichever way θ moves); one ulp of J where ECnoise cannot settle."""
    tensor = max(layout.tensors, key=lambda t: t.size)
    values = theta[tensor.offset:tensor.stop]
    saved = values.copy()
    u = np.random.default_rng([seed, len(layout.tensors)]).standard_normal(tensor.size).astype(theta.dtype)
    u /= np.linalg.norm(u)
    scale = max(1.0, float(np.abs(saved).max()))

    def line(offsets):
        return _along(values, saved, u, offsets, cost)

    level, spent = measure_noise(line, math.sqrt(eps) * scale)
    noise = max(level or 0.0, eps * abs(cost0))
    h, curvature, more = central_step(line, noise, cost0, scale)
    return noise, h / scale, curvature, spent + more

