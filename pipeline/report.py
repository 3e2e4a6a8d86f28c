"""Verdicts for people (text) and for machines (one JSON object)."""

from __future__ import annotations

import math

from .job import Outcome

EXIT_PASSED, EXIT_FAILED = 0, 1


def exit_code(outcome: Outcome) -> int:
    return EXIT_PASSED if outcome.reduction.passed else EXIT_FAILED


def to_json(outcome: Outcome) -> dict:
    r, meta = outcome.reduction, outcome.meta
    return {
        "difference": r.difference,
        "passed": r.passed,
        "epsilon": meta["epsilon"],
        "step": "fixed" if meta["epsilon"] is not None else "auto",
        "method": meta["method"],
        "threshold": r.threshold,
        "n_parameters": r.n_parameters,
        "failing": r.failing,
        "tensors": {t.name: t.to_json() for t in r.tensors},
        "model": meta["model"],
        "case": meta["case"],
        "mode": "directional" if outcome.store is None else "full",
        "store": outcome.store,
        "chunk_size": meta["chunk_size"],
        "n_chunks": meta["n_chunks"],
        "evaluated_chunks": outcome.evaluated_chunks,
        "created": meta["created"],
        "versions": meta["versions"],
        **({"forward_passes_per_tensor": meta["forward_passes_per_tensor"]} if outcome.store is None else {}),
    }


def to_text(outcome: Outcome) -> str:
    r, meta = outcome.reduction, outcome.meta
    if r.passed:
        head = f"PASS  backprop agrees with the numerical gradient: difference {r.difference:.6e} <= threshold {r.threshold:g}"
    else:
        head = f"FAIL  backprop disagrees with the numerical gradient: difference {r.difference:.6e}"
        head += f" > threshold {r.threshold:g}" if r.difference > r.threshold else f" (threshold {r.threshold:g})"
    step = meta.get("step_text") or (
        f"ε = {meta['epsilon']:g}, fixed" if meta["epsilon"] is not None
        else "automatic per parameter, 4·eps^(1/3)·max(1, |θᵢ|) (eps^(1/5) for five-point)")
    lines = [
        head,
        f"  model   {meta['model']}",
        f"  case    {meta['case']}",
        f"  step    {step}; {meta['method']}",
    ]
    if outcome.store is not None:
        lines.append(f"  store   {outcome.store} ({r.n_parameters} parameters in {meta['n_chunks']} chunks of {meta['chunk_size']})")
    lines.append("")
    name_width = max(6, *(len(t.name) for t in r.tensors))
    lines.append(f"  {'tensor':<{name_width}}  {'shape':<12} {'size':>9}  {'difference':>12}  verdict")
    for t in r.tensors:
        shape = "×".join(map(str, t.shape)) or "scalar"
        size = math.prod(t.shape)
        if not t.passed:
            verdict = f"FAIL  {t.diagnosis}"
        elif t.kinks:
            verdict = f"ok    ({t.kinks} element(s) at a kink, left out: one-sided slopes disagree)"
        elif t.difference > r.threshold:
            verdict = "ok    (above threshold, but within round-off noise of the step)"
        else:
            verdict = "ok"
        lines.append(f"  {t.name:<{name_width}}  {shape:<12} {size:>9}  {t.difference:>12.4e}  {verdict}")
    for t in r.tensors:
        if t.passed or not t.worst:
            continue
        lines.append("")
        lines.append(f"  worst elements of {t.name}:")
        for w in t.worst[:3]:
            where = f"{t.name}[{', '.join(map(str, w['index']))}]" if w["index"] else t.name
            lines.append(f"    {where:<16} analytic {w['analytic']: .8e}   numerical {w['numerical']: .8e}")
    if not r.passed and not r.failing:
        lines += ["", "  No tensor is wrong beyond round-off: the step is too small for this cost. Use the "
                  "default automatic steps or a larger --epsilon."]
    return "\n".join(lines)
