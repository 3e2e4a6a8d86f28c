"""Verdicts for people (text) and for machines (one JSON object).

No line contradicts the verdict: the head names the failing tensors or says every tensor is
within its threshold, and a passing tensor above the asked threshold says why it passes.
Advice appears only where it applies: when the forward's noise cannot resolve the asked
threshold for some tensor, the text says how small an error there would still be flagged.
"""

from __future__ import annotations

import math

from .diagnose import gradient_name
from .types import Outcome

EXIT_PASSED, EXIT_FAILED = 0, 1


def exit_code(outcome: Outcome) -> int:
    return EXIT_PASSED if outcome.reduction.passed else EXIT_FAILED


def to_json(outcome: Outcome) -> dict:
    r, meta = outcome.reduction, outcome.meta
    return {
        "difference": r.difference,
        "raw_difference": r.raw_difference,
        "passed": r.passed,
        "epsilon": meta.epsilon if meta else None,
        "step": "fixed" if meta and meta.epsilon is not None else "auto",
        "step_text": outcome.step_text,
        "method": outcome.method_text,
        "threshold": r.threshold,
        "precision": {**outcome.precision.to_json(), "text": outcome.precision.describe()},
        "evaluator": outcome.evaluator,
        "n_parameters": r.n_parameters,
        "failing": r.failing,
        "tensors": {t.name: t.to_json() for t in r.tensors},
        "model": outcome.model,
        "case": outcome.case,
        "mode": "directional" if outcome.store is None else "full",
        "store": outcome.store,
        "chunk_size": meta.chunk_size if meta else None,
        "n_chunks": meta.n_chunks if meta else None,
        "evaluated_chunks": outcome.evaluated_chunks,
        "created": meta.created if meta else None,
        "versions": meta.versions if meta else None,
        "notes": list(outcome.notes),
        "seconds": dict(outcome.seconds),
        **({"forward_passes_per_tensor": outcome.forward_passes_per_tensor} if outcome.store is None else {}),
    }


def tensor_verdict(t: dict, threshold: float) -> str:
    """One tensor's verdict in words, from its JSON form (``TensorResult.to_json``): the text table,
    JUnit and the HTML page all say it this way. A passing tensor says why it passes."""
    if not t["passed"]:
        return f"FAIL  {t['diagnosis']}"
    reasons = []
    suspects = t["suspects"]
    at_kinks = t["kinks"]["count"] - suspects["near_kink"]
    if at_kinks:
        reasons.append(f"{at_kinks} element(s) at a kink, left out: one-sided slopes disagree")
    if suspects["near_kink"]:
        reasons.append(f"{suspects['near_kink']} near kinks closer than float arithmetic resolves, left out")
    if suspects["agrees"]:
        reasons.append(f"{suspects['agrees']} element(s) re-verified on smaller steps")
    if t["difference"] > threshold:
        reasons.append(f"above {threshold:g} but within the forward's noise, threshold {t['threshold']:.1e}")
    return "ok" + (f"    ({'; '.join(reasons)})" if reasons else "")


def to_text(outcome: Outcome) -> str:
    r, meta = outcome.reduction, outcome.meta
    if r.passed:
        head = (f"PASS  backprop agrees with the numerical gradient: difference {r.difference:.6e}, "
                "every tensor within its threshold")
    else:
        head = (f"FAIL  backprop disagrees with the numerical gradient: difference {r.difference:.6e}; "
                f"wrong: {', '.join(r.failing)}")
    lines = [
        head,
        f"  model     {outcome.model}",
        f"  case      {outcome.case}",
        f"  precision {outcome.precision.describe()}",
        f"  step      {outcome.step_text}; {outcome.method_text}",
    ]
    if outcome.store is not None:
        lines.append(f"  evaluator {outcome.evaluator}")
        lines.append(f"  store     {outcome.store} ({r.n_parameters} parameters in {meta.n_chunks} chunks of "
                     f"{meta.chunk_size})")
    lines.append("")
    width = max(6, *(len(t.name) for t in r.tensors))
    lines.append(f"  {'tensor':<{width}}  {'shape':<12} {'size':>9}  {'difference':>12}  {'threshold':>9}  verdict")
    for t in r.tensors:
        shape = "×".join(map(str, t.shape)) or "scalar"
        lines.append(f"  {t.name:<{width}}  {shape:<12} {math.prod(t.shape):>9}  {t.difference:>12.4e}  "
                     f"{t.threshold:>9.1e}  {tensor_verdict(t.to_json(), r.threshold)}")
    for t in r.tensors:
        if t.passed or not t.worst:
            continue
        lines.append("")
        lines.append(f"  worst elements of {t.name}:")
        for w in t.worst[:3]:
            where = f"{t.name}[{', '.join(map(str, w['index']))}]" if w["index"] else t.name
            lines.append(f"    {where:<16} analytic {w['analytic']: .8e}   numerical {w['numerical']: .8e}")
    coarse = [t for t in r.tensors if t.threshold > r.threshold]
    if coarse:
        limits = ", ".join(f"{gradient_name(t.name)} {t.resolution:.1e}" for t in coarse)
        lines += ["", f"  The forward's noise resolves only relative errors above: {limits}; a smaller error there "
                      f"would pass unseen (asked threshold {r.threshold:g})"
                      + ("; --precision float64 would check in float64" if _promotable(outcome) else "") + "."]
    return "\n".join(lines)


def _promotable(outcome: Outcome) -> bool:
    """Advice to check in float64 applies only where the user chose the model's own precision."""
    p = outcome.precision
    return p.checked != "float64" and p.note is None and p.model != "float64"
