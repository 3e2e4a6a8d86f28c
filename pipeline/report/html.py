"""One self-contained HTML page per run: what the text report says, and the plots a person would
rather look at than read.

At the top, a summary of the run: per check its verdict, difference, threshold and failing
tensors (or its error), linked to its section, and how many checks passed.

Per check: the text report's head line and its facts (model, case, precision, step, evaluator,
store), when it ran and with which versions; a table of tensors with their difference,
threshold, resolution, noise, kinks and re-verified suspects, and the same verdict words as the
text (a passing tensor says why it passes); the elements left out at kinks and near-kinks and the
elements settled as wrong, by index; the worst elements of each failing tensor; each tensor's
difference against the asked threshold and its own; and a heatmap of |grad − gradapprox| for
every weight matrix, max-pooled to at most ``HEATMAP_SIDE`` cells a side while streaming the
matrix from the store ``store.READ_BLOCK`` elements at a time, with its axes in the matrix's own
row and column indices and the re-verified kinks and wrong elements marked, and a strip for each
failing vector (1-D, 1×N or N×1) over its own indices. A directional screen's numbers are of
random directions: it names directions, never elements. Images are embedded
PNGs. Everything is read from the typed report (``model.Report``), and from the store only the
heatmaps' values and the (at most ``verify.CAP`` per tensor) re-verified suspects.
"""

from __future__ import annotations

import html
import math

from gradjob.model.layout import Layout
from gradjob.model.naming import element_name, shape_text
from gradjob.numerics import verify
from gradjob.report import plots
from gradjob.report import text as report
from gradjob.report.model import CheckReport, Report, TensorRow
from gradjob.report.junit import run_name
from gradjob.report.text import tensor_verdict
from gradjob.storage import store, verification

LISTED = 12  # elements listed per class and tensor; the rest are counted
STYLE = ("body{font-family:sans-serif;margin:2em} .pass{color:#2e7d32;font-weight:bold} "
         ".fail{color:#c62828;font-weight:bold} table{border-collapse:collapse;margin:1em 0} "
         "td,th{border:1px solid #ccc;padding:2px 8px;text-align:left} th.fact{border:none;padding-right:1em} "
         "table.facts td{border:none} img{margin:0.5em;vertical-align:top} .small{color:#555;font-size:90%}")


def _listed(name: str, indices: list, total: int | None = None) -> str:
    """The first ``LISTED`` elements by index, and how many more there are of ``total``."""
    shown = indices[:LISTED]
    more = max(len(indices) if total is None else total, len(indices)) - len(shown)
    return ", ".join(element_name(name, i) for i in shown) + (f" and {more} more" if more > 0 else "")


def _verified(group, path: str, layout: Layout) -> dict[str, dict[int, list]]:
    """Per tensor, per verify class, the indices (within the tensor) of its re-verified suspects."""
    verdicts = verification.read_verification(group, path) or {}
    out = {t.name: {} for t in layout.tensors}
    for i in sorted(verdicts):
        name, index = layout.locate(i)
        out[name].setdefault(verdicts[i].klass, []).append(list(index))
    return out


def _directions(numbers: list[int]) -> str:
    return ("direction " if len(numbers) == 1 else "directions ") + ", ".join(map(str, numbers))


def _elements(name: str, t: TensorRow, classes: dict[int, list] | None) -> list[str]:
    """The elements left out at kinks and near-kinks, settled as wrong or unresolved, by index.
    ``classes``: the tensor's re-verified suspects by verify class; None without a store (a
    directional screen, whose numbers are of random directions: those are named, by number)."""
    e, lines = html.escape, []
    kinks, s = t.kinks, t.suspects
    if classes is None:
        numbers = t.directions
        if numbers is not None and numbers.kinks:
            lines.append(f"{len(numbers.kinks)} of {numbers.count} random directions cross a kink, left out: "
                         f"{_directions(numbers.kinks)}")
        if numbers is not None and numbers.wrong:
            lines.append(f"{len(numbers.wrong)} of {numbers.count} random directions still wrong on smaller "
                         f"steps: {_directions(numbers.wrong)}")
        return [f'<p class="small">{e(name)}: {e(line)}</p>' for line in lines]
    if kinks.count:
        parts = [f"{len(classes[k])} {label}: {_listed(name, classes[k])}"
                 for k, label in ((verify.KINK, "at a kink (one-sided slopes settle at different limits)"),
                                  (verify.NEAR_KINK, "near kinks closer than float arithmetic resolves"))
                 if classes.get(k)]
        past = kinks.count - s.kink - s.near_kink
        if past > 0:
            parts.append(f"{past} past the re-verification cap, judged on their one-sided slopes")
        lines.append(f"{kinks.count} element(s) left out of the difference: " + "; ".join(parts))
    if s.wrong:
        wrong = classes.get(verify.WRONG) or list(s.wrong_elements)
        lines.append(f"{s.wrong} element(s) settled on smaller steps and still wrong: "
                     f"{_listed(name, wrong, s.wrong)}")
    if s.unresolved:
        lines.append(f"{s.unresolved} element(s) unresolved (no step quiet enough; their disagreement counts as "
                     f"noise): {_listed(name, classes.get(verify.UNRESOLVED, []), s.unresolved)}")
    if s.beyond_cap:
        lines.append(f"{s.beyond_cap} disagreeing element(s) past the re-verification cap, judged on their numbers")
    return [f'<p class="small">{e(name)}: {e(line)}</p>' for line in lines]


def verdict_line(result: Report) -> str:
    """The head line of a check, its verdict word marked."""
    word, rest = report.head_line(result)
    return f'<p><span class="{word.lower()}">{word}</span> {html.escape(rest)}</p>'


def tensor_table(result: Report) -> list[str]:
    """Per tensor: difference, threshold, resolution, noise, kinks, re-verified suspects, verdict."""
    e = html.escape
    body = ["<table><tr><th>tensor</th><th>shape</th><th>size</th><th>difference</th><th>threshold</th>"
            "<th>resolution</th><th>noise ε_f</th><th>kinks</th>"
            "<th>re-verified: agrees / kink / near-kink / wrong</th><th>verdict</th></tr>"]
    for name, t in result.tensors.items():
        s = t.suspects
        body.append(f"<tr><td>{e(name)}</td><td>{shape_text(t.shape)}</td><td>{math.prod(t.shape)}</td>"
                    f"<td>{t.difference:.4e}</td><td>{t.threshold:.1e}</td><td>{report.resolution_text(t)}</td>"
                    f"<td>{t.noise:.1e}</td><td>{t.kinks.count}</td>"
                    f"<td>{s.agrees} / {s.kink} / {s.near_kink} / {s.wrong}</td>"
                    f"<td>{e(tensor_verdict(t, result.threshold))}</td></tr>")
    body.append("</table>")
    coarse = report.resolution_line(result)
    if coarse:
        body.append(f"<p>{e(coarse)}</p>")
    return body


def elements(result: Report, verified: dict | None) -> list[str]:
    """Per tensor, the elements left out or settled wrong (see ``_elements``; ``verified``: the
    store's re-verified suspects, or None to list only what the report names) and a failing
    tensor's worst elements."""
    e, body = html.escape, []
    for name, t in result.tensors.items():
        body += _elements(name, t, verified.get(name, {}) if verified is not None else None)
        if not t.passed and t.worst:
            body.append(f"<p>worst elements of {e(name)}:</p><table><tr><th>element</th><th>analytic</th>"
                        "<th>numerical</th><th>|error|</th></tr>")
            body += [f"<tr><td>{e(element_name(name, w.index))}</td><td>{w.analytic:.8e}</td>"
                     f"<td>{w.numerical:.8e}</td><td>{w.abs_error:.2e}</td></tr>" for w in t.worst]
            body.append("</table>")
    return body


def summary(result: Report) -> str:
    """A check's verdict, tensor table and worst elements, from its report alone: what a notebook
    shows for an ``Outcome`` (no plots, no store read)."""
    return "\n".join(["<div>", verdict_line(result), *tensor_table(result), *elements(result, None), "</div>"])


def _check_section(check: str, result: Report) -> list[str]:
    e = html.escape
    body = [verdict_line(result), '<table class="facts">']
    body += [f'<tr><th class="fact">{e(label)}</th><td>{e(value)}</td></tr>' for label, value in report.facts(result)]
    body.append("</table>")
    body += [f'<p class="small">note: {e(note)}</p>' for note in result.notes]
    group = layout = None
    verified: dict | None = None
    if result.store is not None:
        group = store.open_existing(result.store)
        layout = store.metadata(group).layout
        verified = _verified(group, result.store, layout)
    body += tensor_table(result)
    body += elements(result, verified)
    body.append(f'<img alt="per-tensor difference of {e(check)}" src="data:image/png;base64,'
                f'{plots.png(plots.difference_figure(result))}">')
    if group is None:  # a directional screen keeps no per-element values
        body.append(f"<p>{e(result.method)}: no per-element heatmaps; run a full check for them. The kinks and "
                    "re-verified counts above are of random directions, not elements.</p>")
        return body
    maps = []
    for tensor in layout.tensors:
        if len(tensor.shape) == 2 and min(tensor.shape) > 1:
            error, row_step, col_step = plots.pooled_error(group, layout, tensor.name)
            image = plots.png(plots.heatmap_figure(error, tensor.name, tensor.shape, row_step, col_step, verified[tensor.name]))
            maps.append(f'<img alt="heatmap of |grad − gradapprox| for {e(tensor.name)}" '
                        f'src="data:image/png;base64,{image}">')
        elif plots.is_vector(tensor.shape) and not result.tensors[tensor.name].passed:
            error, _, step = plots.pooled_error(group, layout, tensor.name, shape=(1, tensor.size))
            image = plots.png(plots.strip_figure(error, tensor.name, tensor.shape, step, verified[tensor.name]))
            maps.append(f'<img alt="strip of |grad − gradapprox| for {e(tensor.name)}" '
                        f'src="data:image/png;base64,{image}">')
    if maps:
        settled = (", and elements re-verified as agreeing count with their settled estimate"
                   if result.step == "auto" else "")
        body.append('<p class="small">|grad − gradapprox| of every element as first evaluated, before '
                    f"re-verification: elements at kinks (marked) are left out of the difference{settled}.</p>")
        body += maps
    return body


def _anchor(index: int) -> str:
    return f"check-{index + 1}"


def _summary(results: list[CheckReport]) -> list[str]:
    """The run at a glance: how many checks passed, and a row per check linked to its section."""
    e = html.escape
    failing = [entry.check for entry in results if entry.error or not entry.report.passed]
    line = f"{len(results) - len(failing)} of {len(results)} checks passed"
    word = "FAIL" if failing else "PASS"
    body = [f'<p id="summary"><span class="{word.lower()}">{word}</span> {e(line)}'
            + (f"; not passed: {e(', '.join(failing))}" if failing else "") + "</p>",
            '<table class="summary"><tr><th>check</th><th>verdict</th><th>mode</th><th>difference</th>'
            "<th>threshold</th><th>failing tensors</th></tr>"]
    for index, entry in enumerate(results):
        link = f'<td><a href="#{_anchor(index)}">{e(entry.check)}</a></td>'
        if entry.error:
            body.append(f'<tr>{link}<td class="fail">ERROR</td><td colspan="4">{e(entry.error)}</td></tr>')
            continue
        r = entry.report
        word = "PASS" if r.passed else "FAIL"
        body.append(f'<tr>{link}<td class="{word.lower()}">{word}</td><td>{e(r.mode)}</td>'
                    f'<td>{r.difference:.4e}</td><td>{r.threshold:.1e}</td>'
                    f'<td>{e(", ".join(r.failing))}</td></tr>')
    body.append("</table>")
    return body


def to_html(title: str, results: list[CheckReport]) -> str:
    """``results``: per check, its report or its error; ``title`` names the run ("check seed", "job nightly")."""
    heading = html.escape(run_name(title))
    body = [f"<h1>{heading}</h1>", *_summary(results)]
    for index, entry in enumerate(results):
        body.append(f'<h2 id="{_anchor(index)}">{html.escape(entry.check)}</h2>')
        if entry.error:
            body.append(f'<p class="fail">ERROR: {html.escape(entry.error)}</p>')
        else:
            body += _check_section(entry.check, entry.report)
    return (f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{heading}</title>'
            f"<style>{STYLE}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")
