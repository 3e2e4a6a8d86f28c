"""J(θ), the backward's gradient at θ, and the precision they are checked in.

A float32 or float16 model is checked in float64 where its code allows it. θ, X and Y are
promoted; the forward must then compute in float64 (its cost's dtype, and its measured noise
along one coordinate, say so), agree with its own-precision cost to that precision's round-off,
and the backward must run on the float64 cache. Anything else falls back to the model's
precision with a note; ``precision="model"`` asks for that directly. A float64 forward may still
compute in float32 inside: its measured noise tells (``noisy_inside``), but only where the cost
also stays put under steps float32 cannot hold: a float64 output saturating near 0 or 1 is as noisy
relative to |J|, yet its cost moves at every float64 step.
"""

from __future__ import annotations

import math

import numpy as np

from gradjob.errors import InputError
from gradjob.model.cases import Case
from gradjob.model.layout import Layout
from gradjob.model.spec import Model, as_cost, cost_dtype
from gradjob.model.usercode import with_frames
from gradjob.numerics.evaluate import PerturbationFailure
from gradjob.numerics.noise import measure_noise
from gradjob.run import evaluators
from gradjob.types import Precision

LOW_PRECISION_NOISE = 1e-10  # relative noise of J above which a "float64" forward computes in float32
SUB_FLOAT32_STEPS = np.arange(-3, 4) * 2.0 ** -30  # relative steps below float32's spacing (2^-24 … 2^-23)


def at_theta(model: Model, case: Case, choice: str):
    """(precision, case, layout, θ, J(θ), gradient) in the precision the check will use."""
    layout = Layout.of(case.parameters)
    own = layout.dtype
    if choice == "model" or np.dtype(own).itemsize >= 8:
        theta = layout.flatten(case.parameters)
        cost, grad, computed, layout = analytic_gradient(model, case, layout, theta)
        checked = computed if np.dtype(computed).itemsize < np.dtype(own).itemsize else own
        note = f"the forward computes in {checked} whatever it is given" if checked != own else None
        return Precision(checked, own, note), case, layout, theta, cost, grad
    promoted = promote(case)
    wide = Layout.of(promoted.parameters)
    theta = wide.flatten(promoted.parameters)
    try:
        cost, grad, computed, wide = analytic_gradient(model, promoted, wide, theta)
        problem = _why_not_float64(model, case, layout, promoted, wide, theta, cost, grad, computed)
    except InputError as exc:
        problem = f"with float64 inputs it fails ({exc})"
    if problem is None:
        return Precision("float64", own), promoted, wide, theta, cost, grad
    theta = layout.flatten(case.parameters)
    cost, grad, computed, layout = analytic_gradient(model, case, layout, theta)
    return Precision(own, own, problem), case, layout, theta, cost, grad


def noisy_inside(precision: Precision, model: Model, case: Case, layout: Layout, theta: np.ndarray,
                 grad: np.ndarray, cost: float) -> Precision:
    """A forward whose every dtype is float64 may still compute in float32 inside (a cast, then a
    float64 cost): its measured noise tells, and the check is then judged at that precision."""
    try:
        eta = relative_noise(model, case, layout, theta, grad, cost)
    except PerturbationFailure:
        return precision  # the cluster's evaluations will name the failure
    if eta is None or eta <= LOW_PRECISION_NOISE or sees_float64_steps(model, case, layout, theta, grad):
        return precision
    checked = "float32" if eta < 1e-5 else "float16"
    return Precision(checked, precision.model,
                     f"the forward computes in {checked} inside: its cost is that noisy (relative noise {eta:.1e})")


def sees_float64_steps(model: Model, case: Case, layout: Layout, theta: np.ndarray, grad: np.ndarray) -> bool:
    """Whether the cost moves when an element of some tensor moves by less than float32 can represent.
    A forward computing in float32 between θ and J cannot see those steps: its costs there are one
    value (two, where the steps straddle a float32 rounding boundary). A saturated float64 output may
    hide one tensor's steps too, so one tensor whose steps move the cost is enough."""
    costs = evaluators.build("forward", model, layout, case.X, case.Y, theta.copy())
    for tensor in layout.tensors:
        part = slice(tensor.offset, tensor.stop)
        weight = np.abs(grad[part] * theta[part])  # a step relative to θᵢ moves J most here; θᵢ = 0 has none
        if not weight.any():
            continue
        i = tensor.offset + int(np.argmax(weight))
        try:
            values = costs(np.full(SUB_FLOAT32_STEPS.size, i), theta[i] * (1 + SUB_FLOAT32_STEPS), "~")
        except PerturbationFailure:
            continue
        if np.unique(values).size > 2:
            return True
    return False


def promote(case: Case) -> Case:
    """θ, and X and Y where they are floating point, in float64."""
    def wide(array):
        array = np.asarray(array)
        return array.astype(np.float64) if array.dtype.kind == "f" and array.dtype.itemsize < 8 else array

    return Case(wide(case.X), wide(case.Y), {k: wide(v) for k, v in case.parameters.items()}, case.description)


def _why_not_float64(model, case, layout, promoted, wide, theta, cost64, grad64, computed) -> str | None:
    """None when the promoted forward really computes in float64, else why not (one clause)."""
    if np.dtype(computed).itemsize < 8:
        return f"its forward computes in {computed} even with float64 inputs"
    narrow = layout.flatten(case.parameters)
    try:
        own_cost = as_cost(model.forward(case.X, case.Y, layout.views(narrow)))
    except Exception as exc:
        raise with_frames(InputError(f"the forward raised at the case's parameters: {type(exc).__name__}: {exc}"),
                          exc) from None
    eps = float(np.finfo(layout.dtype).eps)
    if abs(own_cost - cost64) > 1e3 * eps * max(1.0, abs(own_cost)):
        return (f"its float64 cost {cost64:.9g} differs from its {layout.dtype} cost {own_cost:.9g} by more than "
                f"{layout.dtype} round-off")
    try:
        eta = relative_noise(model, promoted, wide, theta, grad64, cost64)
    except PerturbationFailure as failure:
        return f"with float64 inputs the forward fails near {wide.describe(failure.index)} ({failure.detail})"
    if eta is not None and eta > LOW_PRECISION_NOISE:
        return f"its cost is as noisy as {layout.dtype} arithmetic even with float64 inputs (relative noise {eta:.1e})"
    return None


def relative_noise(model: Model, case: Case, layout: Layout, theta: np.ndarray, grad: np.ndarray,
                   cost: float) -> float | None:
    """The forward's measured noise relative to |J| (ECnoise along the element J is most sensitive
    to); None where it cannot be measured. Computing in float32 shows as ~1e-8, in float64 ~1e-16."""
    costs = evaluators.build("forward", model, layout, case.X, case.Y, theta.copy())
    i = int(np.argmax(np.abs(grad)))
    level, _ = measure_noise(lambda offsets: costs(np.full(offsets.size, i), theta[i] + offsets, "~"),
                             math.sqrt(np.finfo(np.float64).eps) * max(1.0, abs(float(theta[i]))))
    return None if level is None else level / max(abs(cost), 1e-300)


def unchanged(layout: Layout, theta: np.ndarray, given: np.ndarray, role: str) -> None:
    """Refuse a forward or backward that wrote into the parameter arrays it was given (``W1 -= …``,
    ``W[0] = …``, ``params['W1'] *= 2``, ``out=W1``): every evaluation would then be at parameters
    other than the ones asked for, and the analytic gradient at yet others."""
    bits = f"u{theta.dtype.itemsize}"
    changed = np.flatnonzero(theta.view(bits) != given.view(bits))
    if changed.size:
        i = int(changed[0])
        tensors = sorted({layout.locate(int(j))[0] for j in changed}, key=layout.names.index)
        raise InputError(
            f"the {role} writes into the parameter arrays it is given ({', '.join(tensors)} changed: "
            f"{layout.describe(i)} from {given[i]:.6g} to {theta[i]:.6g}), so a check of it would mean nothing; "
            "compute new arrays instead (W1 = W1 - …, not W1 -= …, W1[i] = … or out=W1)")


def analytic_gradient(model: Model, case: Case, layout: Layout,
                      theta: np.ndarray) -> tuple[float, np.ndarray, str, Layout]:
    """J(θ), the backward's gradient at θ (in θ's dtype, whatever the backward's), the dtype the
    forward computed its cost in, and the layout noting gradients shaped unlike their parameters;
    refuses a nondeterministic forward and one that writes into its parameters."""
    views = layout.views(theta)
    given = theta.copy()
    try:  # each call gets its own dict of θ's views, whatever the last one did to its dict
        first = model.forward(case.X, case.Y, dict(views))
        unchanged(layout, theta, given, "forward")
        second = model.forward(case.X, case.Y, dict(views))
        unchanged(layout, theta, given, "forward")
    except InputError:
        raise
    except Exception as exc:
        raise with_frames(InputError(f"the forward raised at the case's parameters: {type(exc).__name__}: {exc}"),
                          exc) from None
    cost, again = as_cost(first), as_cost(second)
    if isinstance(cost, complex):
        raise InputError(f"the forward's cost at the case's parameters is complex ({cost}); the cost must be a real "
                         "number")
    if not math.isfinite(cost):
        raise InputError(f"the forward's cost at the case's parameters is {cost}; the check needs a finite cost")
    if cost != again:
        raise InputError(
            f"the forward is not deterministic: two evaluations at the same θ gave {cost!r} and {again!r}; "
            "fix its randomness (e.g. one dropout mask for the whole job) before checking"
        )
    cache = first[1] if isinstance(first, tuple) and len(first) > 1 else None
    try:
        gradients = model.backward(case.X, case.Y, cache)
    except InputError:
        raise
    except Exception as exc:
        raise with_frames(InputError(f"the backward raised: {type(exc).__name__}: {exc}"), exc) from None
    unchanged(layout, theta, given, "backward")
    grad = layout.flatten_gradients(gradients)
    if not np.all(np.isfinite(grad)):
        raise InputError(f"the backward returned non-finite gradient values (first at {layout.describe(int(np.flatnonzero(~np.isfinite(grad))[0]))})")
    # The cost's dtype alone says what the forward computes in. The backward's dtypes never set the
    # check's: float32 gradients of a float64 forward, judged at float32's threshold, let a 0.2 % error pass.
    own = cost_dtype(first)
    computed = np.dtype(own) if own is not None and np.dtype(own).kind == "f" else np.dtype(layout.dtype)
    return cost, grad, computed.name, layout.with_gradient_shapes(gradients)
