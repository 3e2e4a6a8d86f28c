"""Complex step is refused for a forward that drops or mangles imaginary parts: probed at a few
parameters before anything is stored."""

from __future__ import annotations

import numpy as np

from gradjob.errors import InputError
from gradjob.model.cases import Case
from gradjob.model.layout import Layout
from gradjob.model.spec import Model, cost_function
from gradjob.numerics.evaluate import PerturbationFailure, in_place_costs, numerical_gradient
from gradjob.numerics.noise import COMPLEX_STEP


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
