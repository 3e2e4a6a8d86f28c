"""Everything a check settles on the client before a store or a cluster is touched.

Options are validated; the model and case are loaded; the precision to check in is chosen; the
analytic gradient and J(θ) are computed (every run, fresh or resumed, so a verdict is always
about the code that runs now); complex step is probed; the evaluator is chosen; and the job's
identity names its store. A refused request therefore never changes an existing store.

Precision: a float32 or float16 model is checked in float64 where its code allows it. θ, X and
Y are promoted; the forward must then compute in float64 (its cost's dtype, and its measured
noise along one coordinate, say so), agree with its own-precision cost to that precision's
round-off, and the backward must run on the float64 cache. Anything else falls back to the
model's precision with a note; ``precision="model"`` asks for that directly.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np

from . import evaluators
from . import identity as job_identity
from .cases import Case, load_case
from .errors import InputError
from .evaluate import PerturbationFailure, in_place_costs, numerical_gradient
from .layout import Layout
from .models import BUILTIN_CASE_FOR, Model, ModelSpec, as_cost, cost_dtype, cost_function, load_model, model_spec
from .noise import COMPLEX_STEP, measure_noise
from .types import METHODS, MODES, PRECISIONS, Precision, Request, default_threshold

LOW_PRECISION_NOISE = 1e-10  # relative noise of J above which a "float64" forward computes in float32


@dataclass(frozen=True)
class Prepared:
    """A validated request at the precision it is checked in."""

    request: Request
    spec: ModelSpec
    model: Model
    case: Case
    case_name: str
    layout: Layout
    theta: np.ndarray
    grad: np.ndarray
    cost: float
    precision: Precision
    threshold: float
    evaluator: str          # see ``evaluators``: part of the job's identity
    identity: dict
    store: str
    notes: tuple[str, ...]  # said to the user: a fallback of precision or of the evaluator


def check_options(request: Request) -> None:
    """``InputError`` for any option out of range, before anything is loaded."""
    if request.epsilon is not None and not (math.isfinite(request.epsilon) and request.epsilon > 0):
        raise InputError(f"--epsilon must be a positive finite number; got {request.epsilon}")
    if request.threshold is not None and not (math.isfinite(request.threshold) and request.threshold > 0):
        raise InputError(f"--threshold must be a positive finite number; got {request.threshold}")
    for option, value, allowed in (("--method", request.method, METHODS), ("--mode", request.mode, MODES),
                                   ("--precision", request.precision, PRECISIONS)):
        if value not in allowed:
            raise InputError(f"{option} must be one of {', '.join(allowed)}; got {value!r}")
    if request.chunk_size is not None and request.chunk_size < 1:
        raise InputError(f"--chunk-size must be at least 1; got {request.chunk_size}")
    if request.workers < 1:
        raise InputError(f"--workers must be at least 1; got {request.workers}")
    if request.directions < 1:
        raise InputError(f"--directions must be at least 1; got {request.directions}")
    if request.overwrite and request.resume:
        raise InputError("--overwrite and --resume contradict each other; choose one")


WORKERS_WITH_SCHEDULER = ("--workers sizes the embedded cluster; with --scheduler (or DASK_SCHEDULER_ADDRESS) the "
                          "cluster's own workers run the job: drop one of them")


def prepare(request: Request, spec: ModelSpec | None = None, case: Case | None = None) -> Prepared:
    """Validate everything that can be validated on the client; J(θ) and the analytic gradient.
    ``spec`` and ``case``, when given (the Python API), stand for ``--model`` and ``--case``."""
    check_options(request)
    spec = spec or model_spec(request.model, request.forward, request.backward)
    case_name = "arrays" if case is not None else (request.case or BUILTIN_CASE_FOR.get(request.model, "seed"))
    case = case or load_case(case_name, list(request.layers), request.examples, request.seed)
    model = load_model(spec)
    precision, case, layout, theta, cost, grad = at_theta(model, case, request.precision)
    if request.method == "complex-step":
        check_complex_safe(model, case, layout, theta)
    evaluator, evaluator_note = evaluators.choose(spec, model, layout, case.X, case.Y, theta, request.fast,
                                                  request.method, precision.checked)
    if precision.checked == precision.model == "float64" and not spec.is_builtin:  # after the trace, which
        precision = noisy_inside(precision, model, case, layout, theta, grad, cost)  # shows hidden state first
    identity = job_identity.of(spec, case.digest(), hashlib.sha256(theta.tobytes()).hexdigest(), layout.to_json(),
                               request.epsilon, request.method, evaluator, precision.checked)
    path = request.store or job_identity.default_store_path(spec, case_name, identity, request.store_dir)
    threshold = request.threshold if request.threshold is not None else default_threshold(precision.checked)
    notes = tuple(n for n in (evaluator_note, precision.describe() if precision.note else None) if n)
    return Prepared(request, spec, model, case, case_name, layout, theta, grad, cost, precision, threshold, evaluator,
                    identity, path, notes)


def at_theta(model: Model, case: Case, choice: str):
    """(precision, case, layout, θ, J(θ), gradient) in the precision the check will use."""
    layout = Layout.of(case.parameters)
    own = layout.dtype
    if choice == "model" or np.dtype(own).itemsize >= 8:
        theta = layout.flatten(case.parameters)
        cost, grad, computed = analytic_gradient(model, case, layout, theta)
        checked = computed if np.dtype(computed).itemsize < np.dtype(own).itemsize else own
        note = f"the forward computes in {checked} whatever it is given" if checked != own else None
        return Precision(checked, own, note), case, layout, theta, cost, grad
    promoted = promote(case)
    wide = Layout.of(promoted.parameters)
    theta = wide.flatten(promoted.parameters)
    try:
        cost, grad, computed = analytic_gradient(model, promoted, wide, theta)
        problem = _why_not_float64(model, case, layout, promoted, wide, theta, cost, grad, computed)
    except InputError as exc:
        problem = f"with float64 inputs it fails ({exc})"
    if problem is None:
        return Precision("float64", own), promoted, wide, theta, cost, grad
    theta = layout.flatten(case.parameters)
    cost, grad, computed = analytic_gradient(model, case, layout, theta)
    return Precision(own, own, problem), case, layout, theta, cost, grad


def noisy_inside(precision: Precision, model: Model, case: Case, layout: Layout, theta: np.ndarray,
                 grad: np.ndarray, cost: float) -> Precision:
    """A forward whose every dtype is float64 may still compute in float32 inside (a cast, then a
    float64 cost): its measured noise tells, and the check is then judged at that precision."""
    try:
        eta = relative_noise(model, case, layout, theta, grad, cost)
    except PerturbationFailure:
        return precision  # the cluster's evaluations will name the failure
    if eta is None or eta <= LOW_PRECISION_NOISE:
        return precision
    checked = "float32" if eta < 1e-5 else "float16"
    return Precision(checked, precision.model,
                     f"the forward computes in {checked} inside: its cost is that noisy (relative noise {eta:.1e})")


def promote(case: Case) -> Case:
    """θ, and X and Y where they are floating point, in float64."""
    def wide(array):
        array = np.asarray(array)
        return array.astype(np.float64) if array.dtype.kind == "f" and array.dtype.itemsize < 8 else array

    return Case(wide(case.X), wide(case.Y), {k: wide(v) for k, v in case.parameters.items()}, case.description)


def _why_not_float64(model, case, layout, promoted, wide, theta, cost64, grad64, computed) -> str | None:
    """None when the promoted forward really computes in float64, else why not (one clause)."""
    if np.dtype(computed).itemsize < 8:
        return f"its forward or backward computes in {computed} even with float64 inputs"
    narrow = layout.flatten(case.parameters)
    try:
        own_cost = as_cost(model.forward(case.X, case.Y, layout.views(narrow)))
    except Exception as exc:
        raise InputError(f"the forward raised at the case's parameters: {type(exc).__name__}: {exc}") from None
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


def analytic_gradient(model: Model, case: Case, layout: Layout, theta: np.ndarray) -> tuple[float, np.ndarray, str]:
    """J(θ), the backward's gradient at θ, and the narrowest dtype either was computed in;
    refuses a forward that is not deterministic."""
    views = layout.views(theta)
    try:
        first = model.forward(case.X, case.Y, views)
        second = model.forward(case.X, case.Y, views)
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"the forward raised at the case's parameters: {type(exc).__name__}: {exc}") from None
    cost, again = as_cost(first), as_cost(second)
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
        raise InputError(f"the backward raised: {type(exc).__name__}: {exc}") from None
    grad = layout.flatten_gradients(gradients)
    if not np.all(np.isfinite(grad)):
        raise InputError(f"the backward returned non-finite gradient values (first at {layout.describe(int(np.flatnonzero(~np.isfinite(grad))[0]))})")
    dtypes = [np.dtype(d) for d in (cost_dtype(first), *layout.gradient_dtypes(gradients)) if d is not None
              and np.dtype(d).kind == "f"]
    computed = min(dtypes, key=lambda d: d.itemsize, default=np.dtype(layout.dtype))
    return cost, grad, computed.name


def check_complex_safe(model: Model, case: Case, layout: Layout, theta: np.ndarray, probes: int = 5) -> None:
    """Refuse complex step for a forward that drops or mangles imaginary parts.

    At a few parameters spread over θ the complex-step derivative must agree with central
    differences; abs, comparisons, ``.real`` or real-only functions on θ break that.
    """
    advice = "use --method central or five-point"
    complex_theta = theta.astype(np.result_type(theta.dtype, np.complex64))
    complex_cost = in_place_costs(cost_function(model, case.X, case.Y, layout.views(complex_theta)), complex_theta)
    real_cost = in_place_costs(cost_function(model, case.X, case.Y, layout.views(theta)), theta)
    eps = float(np.finfo(theta.dtype).eps)
    for i in np.unique(np.linspace(0, theta.size - 1, min(probes, theta.size)).astype(int)):
        where = layout.describe(int(i))
        scale = max(1.0, abs(float(theta[i])))
        try:
            by_complex = numerical_gradient(complex_cost, complex_theta[i:i + 1].copy(), i, np.array([COMPLEX_STEP * scale]),
                                            np.zeros(1), "complex-step").gradapprox[0]
        except PerturbationFailure as failure:
            raise InputError(f"the forward is not complex-safe: with a complex {where} it failed ({failure.detail}); {advice}") from None
        except InputError as exc:
            raise InputError(f"the forward is not complex-safe: with a complex {where}, {exc}; {advice}") from None
        by_central = numerical_gradient(real_cost, theta[i:i + 1].copy(), i, np.array([4 * eps ** (1 / 3) * scale]),
                                        np.zeros(1)).gradapprox[0]
        if abs(by_complex - by_central) > 1e-5 * (abs(by_complex) + abs(by_central)) + 1e-9:
            raise InputError(
                f"the forward is not complex-safe: at {where} complex step gives {by_complex:.6g} but central "
                f"differences {by_central:.6g} (abs, comparisons or real-only functions on θ?); {advice}"
            )
