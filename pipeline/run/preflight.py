"""Everything a check settles on the client before a store or a cluster is touched.

Options are validated (``gradjob.options``); the model and case are loaded; the precision to
check in is chosen; the analytic gradient and J(θ) are computed (every run, fresh or resumed, so a verdict is always
about the code that runs now, in the precision ``precision`` chooses); complex step is probed
(``complex_step``); the evaluator is chosen; and the job's identity names its store. A refused
request therefore never changes an existing store.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from gradjob import options
from gradjob.model.cases import Case, load_case
from gradjob.model.layout import Layout
from gradjob.model.spec import (
    BUILTIN_CASE_FOR,
    Model,
    ModelSpec,
    load_model,
    model_spec,
)
from gradjob.run import complex_step, evaluators
from gradjob.run import identity as job_identity
from gradjob.run import precision as precisions
from gradjob.numerics import verdict
from gradjob.types import Precision, Request


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
    evaluator: str          # see ``evaluators``: a new store's; a resumed store keeps its own (``job.as_stored``)
    identity: dict
    store: str
    notes: tuple[str, ...]  # said to the user: a fallback of precision or of the evaluator


def prepare(request: Request, spec: ModelSpec | None = None, case: Case | None = None) -> Prepared:
    """Validate everything that can be validated on the client; J(θ) and the analytic gradient.
    ``spec`` and ``case``, when given (the Python API), stand for ``--model`` and ``--case``."""
    options.check(request)
    spec = spec or model_spec(request.model, request.forward, request.backward)
    case_name = "arrays" if case is not None else (request.case or BUILTIN_CASE_FOR.get(request.model, "seed"))
    case = case or load_case(case_name, list(request.layers), request.examples, request.seed)
    model = load_model(spec)
    precision, case, layout, theta, cost, grad = precisions.at_theta(model, case, request.precision)
    if request.method == "complex-step":
        complex_step.check_complex_safe(model, case, layout, theta)
    choice = evaluators.choose(spec, model, layout, case.X, case.Y, theta, request.fast, request.method,
                               precision.checked, measure=request.mode != "directional")
    if precision.checked == precision.model == "float64" and not spec.is_builtin:  # after the trace, which
        precision = precisions.noisy_inside(precision, model, case, layout, theta, grad, cost)  # shows hidden state first
    identity = job_identity.of(spec, case.digest(), hashlib.sha256(theta.tobytes()).hexdigest(), layout.to_json(),
                               request.epsilon, request.method, choice.identity, precision.checked)
    path = request.store or job_identity.default_store_path(spec, case_name, identity, request.store_dir)
    threshold = verdict.asked_threshold(request.threshold, verdict.default_threshold(precision.checked))
    notes = tuple(n for n in (choice.note, precision.describe() if precision.note else None) if n)
    return Prepared(request, spec, model, case, case_name, layout, theta, grad, cost, precision, threshold,
                    choice.evaluator, identity, path, notes)


