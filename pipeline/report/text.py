"""Verdicts for people (text) and for machines (one JSON object).

No line contradicts the verdict: the head names the failing tensors or says every tensor is
within its threshold, and a passing tensor above the asked threshold says why it passes.
Advice appears only where it applies: when the forward's noise cannot resolve the asked
threshold for some tensor, the text says how small an error there would still be flagged.
"""

from __future__ import annotations

import math

from gradjob.model.naming import element_name, shape_text
from gradjob.numerics.diagnose import gradient_name
from gradjob.report import model
from gradjob.report.model import Report, TensorRow
from gradjob.types import Outcome

EXIT_PASSED, EXIT_FAILED = 0, 1


def head_line(result: Report) -> tuple[str, str]:
    """The text report's first line (``report.to_text``), as its verdict word and the rest."""
    unchecked = [name for name, t in result.tensors.items() if not t.checked]
    if result.passed and unchecked:
        return "PASS", (f"backprop agrees with the numerical gradient: difference {result.difference:.6e}, every "
                        f"tensor checked within its threshold; not checked (all at kinks): {', '.join(unchecked)}")
    if result.passed:
        return "PASS", (f"backprop agrees with the numerical gradient: difference {result.difference:.6e}, "
                        "every tensor within its threshold")
    return "FAIL", (f"backprop disagrees with the numerical gradient: difference {result.difference:.6e}; "
                    f"wrong: {', '.join(result.failing)}")


def facts(result: Report) -> list[tuple[str, str]]:
    """The text report's lines under its head, as (label, value), then the run's time, versions
    and, after a run (not from a store alone), its wall time per stage."""
    rows = [("model", result.model), ("case", result.case), ("precision", result.precision.text),
            ("step", f"{result.step_text}; {result.method}")]
    if result.mode == "full":
        rows.append(("evaluator", result.evaluator))
    if result.store is not None:
        rows.append(("store", f"{result.store} ({result.n_parameters} parameters in {result.n_chunks} chunks "
                              f"of {result.chunk_size})"))
    else:  # a directional screen, or a check whose temporary store is removed
        rows.append(("parameters", str(result.n_parameters)))
    if result.created:
        rows.append(("run", result.created))
    if result.versions:
        rows.append(("versions", ", ".join(f"{k} {v}" for k, v in result.versions.items())))
    if result.seconds:
        seconds = result.seconds
        rows.append(("wall time", f"{sum(seconds.values()):.2f} s ("
                                  + ", ".join(f"{k} {v:.2f} s" for k, v in seconds.items()) + ")"))
    return rows


def resolution_text(t: TensorRow) -> str:
    """A tensor's resolution; "none" where its noise is as large as its gradient (no error would show)."""
    return f"{t.resolution:.1e}" if t.resolution is not None else "none (noise as large as the gradient)"


def resolution_line(result: Report) -> str | None:
    """The text report's line on tensors whose noise resolves only errors above the asked threshold."""
    coarse = [(n, t) for n, t in result.tensors.items()
              if t.passed and (t.threshold > result.threshold or not t.checked)]  # a failing one was seen
    if not coarse:
        return None
    p = result.precision
    promotable = p.checked != "float64" and p.note is None and p.model != "float64"
    limits = ", ".join(f"{gradient_name(n)} " + (resolution_text(t) if t.checked else "none (all at kinks)")
                       for n, t in coarse)
    return (f"The forward's noise resolves only relative errors above: {limits}; a smaller error there would pass "
            f"unseen (asked threshold {result.threshold:g})"
            + ("; --precision float64 would check in float64" if promotable else "") + ".")



def exit_code(outcome: Outcome) -> int:
    return EXIT_PASSED if outcome.reduction.passed else EXIT_FAILED


def to_json(outcome: Outcome) -> dict:
    """The report's one JSON form (``model.Report.to_json``)."""
    return model.of(outcome).to_json()


def tensor_verdict(t: TensorRow, threshold: float) -> str:
    """One tensor's verdict in words: the text table, JUnit and the HTML page all say it this way.
    A passing tensor says why it passes."""
    if not t.passed:
        return f"FAIL  {t.diagnosis}"
    if t.checked == 0:
        return "ok    (not checked: all its numbers sit at kinks or near them, so none could be compared)"
    reasons = []
    suspects = t.suspects
    at_kinks = t.kinks.count - suspects.near_kink
    if at_kinks:
        reasons.append(f"{at_kinks} element(s) at a kink, left out: one-sided slopes disagree")
    if suspects.near_kink:
        reasons.append(f"{suspects.near_kink} near kinks closer than float arithmetic resolves, left out")
    if suspects.agrees:
        reasons.append(f"{suspects.agrees} element(s) re-verified on smaller steps")
    if suspects.unresolved:
        reasons.append(f"{suspects.unresolved} element(s) unsettled on smaller steps, counted as noise")
    if suspects.beyond_cap:
        reasons.append(f"{suspects.beyond_cap} more suspect(s) beyond the re-verification cap, judged on "
                       "their numbers")
    if t.difference > threshold:
        reasons.append(f"above {threshold:g} but within the forward's noise, threshold {t.threshold:.1e}")
    return "ok" + (f"    ({'; '.join(reasons)})" if reasons else "")


TEXT_FACTS = ("model", "case", "precision", "step", "evaluator", "store")


def to_text(outcome: Outcome | Report) -> str:
    """The text report, built from the typed report as the HTML page and JUnit are."""
    data = outcome if isinstance(outcome, Report) else model.of(outcome)
    word, rest = head_line(data)
    lines = [f"{word}  {rest}", *(f"  {label:<9} {value}" for label, value in facts(data) if label in TEXT_FACTS), ""]
    width = max(6, *(len(name) for name in data.tensors))
    lines.append(f"  {'tensor':<{width}}  {'shape':<12} {'size':>9}  {'difference':>12}  {'threshold':>9}  verdict")
    for name, t in data.tensors.items():
        shape = shape_text(t.shape)
        lines.append(f"  {name:<{width}}  {shape:<12} {math.prod(t.shape):>9}  {t.difference:>12.4e}  "
                     f"{t.threshold:>9.1e}  {tensor_verdict(t, data.threshold)}")
    for name, t in data.tensors.items():
        if t.passed or not t.worst:
            continue
        lines += ["", f"  worst elements of {name}:"]
        for w in t.worst[:3]:
            where = element_name(name, w.index)
            lines.append(f"    {where:<16} analytic {w.analytic: .8e}   numerical {w.numerical: .8e}")
    line = resolution_line(data)
    if line:
        lines += ["", f"  {line}"]
    return "\n".join(lines)
