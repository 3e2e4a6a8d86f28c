"""One self-contained HTML page per run: what the text report says, and the plots a person would
rather look at than read.

Per check: the verdict and how it was reached (precision, steps, evaluator, time, versions); a
table of tensors with their difference, threshold, resolution, noise, kinks and re-verified
suspects, and the same verdict words as the text (a passing tensor says why it passes); the
worst elements of each failing tensor; each tensor's difference against the asked threshold
and its own; and a heatmap of |grad − gradapprox| for every weight matrix, max-pooled to at most
``HEATMAP_SIDE`` cells a side while streaming the matrix from the store in row bands, with its
axes in the matrix's own row and column indices. Images are embedded PNGs.
"""

from __future__ import annotations

import base64
import html
import io
import math

import numpy as np

from . import store
from .diagnose import gradient_name
from .layout import Layout
from .report import tensor_verdict

HEATMAP_SIDE = 120
STYLE = ("body{font-family:sans-serif;margin:2em} .pass{color:#2e7d32;font-weight:bold} "
         ".fail{color:#c62828;font-weight:bold} table{border-collapse:collapse;margin:1em 0} "
         "td,th{border:1px solid #ccc;padding:2px 8px;text-align:left} img{margin:0.5em;vertical-align:top} "
         ".small{color:#555;font-size:90%}")


def _png(figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode()


def _figure(width, height):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height))


def difference_figure(result: dict):
    """Each tensor's difference (red: fails), the asked threshold (dashed) and each tensor's own
    threshold where its noise raised it (a black tick)."""
    names = list(result["tensors"])
    tensors = [result["tensors"][n] for n in names]
    values = [max(t["difference"], 1e-18) for t in tensors]
    figure = _figure(max(4, 0.6 * len(names) + 2), 3)
    axes = figure.add_subplot()
    axes.bar(names, values, color=["#2e7d32" if t["passed"] else "#c62828" for t in tensors])
    axes.set_yscale("log")
    axes.axhline(result["threshold"], color="black", linestyle="--", label=f"asked threshold {result['threshold']:g}")
    raised = [(k, t["threshold"]) for k, t in enumerate(tensors) if t["threshold"] > result["threshold"]]
    if raised:
        axes.scatter([k for k, _ in raised], [v for _, v in raised], marker="_", s=400, color="black",
                     label="its own threshold (the forward's noise)")
    axes.set_ylabel("relative difference")
    axes.legend(loc="best", fontsize="small")
    axes.set_title("per-tensor difference (red: fails)")
    return figure


def pooled_error(group, layout: Layout, name: str, side: int = HEATMAP_SIDE) -> tuple[np.ndarray, int, int]:
    """max |grad − gradapprox| over blocks of a 2-D tensor, read one band of rows at a time; and
    the rows and columns each cell pools."""
    tensor = next(t for t in layout.tensors if t.name == name)
    grad, gradapprox = group["grad"], group["gradapprox"]  # opened once, read band by band
    rows, cols = tensor.shape
    row_step, col_step = math.ceil(rows / side), math.ceil(cols / side)
    out = np.zeros((math.ceil(rows / row_step), math.ceil(cols / col_step)))
    for band, r0 in enumerate(range(0, rows, row_step)):
        r1 = min(rows, r0 + row_step)
        start, stop = tensor.offset + r0 * cols, tensor.offset + r1 * cols
        error = np.abs(np.asarray(grad[start:stop], dtype=np.float64) - gradapprox[start:stop])
        error = error.reshape(r1 - r0, cols).max(axis=0)
        padded = np.pad(error, (0, out.shape[1] * col_step - cols))
        out[band] = padded.reshape(out.shape[1], col_step).max(axis=1)
    return out, row_step, col_step


def heatmap_figure(error: np.ndarray, name: str, shape, row_step: int = 1, col_step: int = 1):
    """The pooled errors drawn over the matrix's own index range, so ticks read as its rows and
    columns whatever the pooling; integer ticks only."""
    from matplotlib.colors import LogNorm
    from matplotlib.ticker import MaxNLocator

    rows, cols = shape
    figure = _figure(4.5, 3.5)
    axes = figure.add_subplot()
    floor = max(float(error[error > 0].min()) if (error > 0).any() else 1e-16, 1e-18)
    image = axes.imshow(np.maximum(error, floor), aspect="auto", cmap="magma", interpolation="nearest",
                        extent=(-0.5, error.shape[1] * col_step - 0.5, error.shape[0] * row_step - 0.5, -0.5),
                        norm=LogNorm(vmin=floor, vmax=max(float(error.max()), floor * 10)))
    axes.set_xlim(-0.5, cols - 0.5)
    axes.set_ylim(rows - 0.5, -0.5)
    for axis in (axes.xaxis, axes.yaxis):
        axis.set_major_locator(MaxNLocator(nbins=6, integer=True))
    figure.colorbar(image, ax=axes, label="|grad − gradapprox|")
    pooled = f" (max over {row_step}×{col_step} blocks)" if (row_step, col_step) != (1, 1) else ""
    axes.set_title(f"{name} {rows}×{cols}{pooled}")
    axes.set_xlabel(f"column of {name}")
    axes.set_ylabel(f"row of {name}")
    return figure


def _index(name: str, index: list) -> str:
    return f"{name}[{', '.join(map(str, index))}]" if index else name


def _check_section(check: str, result: dict) -> list[str]:
    e = html.escape
    verdict = "PASS" if result["passed"] else "FAIL"
    wrong = f"; wrong: {', '.join(result['failing'])}" if result["failing"] else "; every tensor within its threshold"
    body = [f'<p class="{verdict.lower()}">{verdict}: difference {result["difference"]:.4e}{e(wrong)}</p>',
            "<p class=\"small\">"
            f"{result['n_parameters']:,} parameters; model {e(result['model'])}; case {e(result['case'])}<br>"
            f"precision: {e(result['precision']['text'])}; step: {e(result['step_text'])}; {e(result['method'])}"
            + (f"; evaluator {e(result['evaluator'])}" if result["store"] else "") + "<br>"
            + (f"run {e(result['created'])}; " if result.get("created") else "")
            + (e(", ".join(f"{k} {v}" for k, v in result["versions"].items())) if result.get("versions") else "")
            + "</p>"]
    body += [f"<p class=\"small\">note: {e(note)}</p>" for note in result.get("notes", [])]
    body.append("<table><tr><th>tensor</th><th>shape</th><th>difference</th><th>threshold</th><th>resolution</th>"
                "<th>noise ε_f</th><th>kinks</th><th>re-verified: agrees / kink / near-kink / wrong</th>"
                "<th>verdict</th></tr>")
    for name, t in result["tensors"].items():
        s = t["suspects"]
        body.append(f"<tr><td>{e(name)}</td><td>{'×'.join(map(str, t['shape']))}</td><td>{t['difference']:.4e}</td>"
                    f"<td>{t['threshold']:.1e}</td><td>{t['resolution']:.1e}</td><td>{t['noise']:.1e}</td>"
                    f"<td>{t['kinks']['count']}</td><td>{s['agrees']} / {s['kink']} / {s['near_kink']} / {s['wrong']}</td>"
                    f"<td>{e(tensor_verdict(t, result['threshold']))}</td></tr>")
    body.append("</table>")
    coarse = [(n, t) for n, t in result["tensors"].items() if t["threshold"] > result["threshold"]]
    if coarse:
        limits = ", ".join(f"{gradient_name(n)} {t['resolution']:.1e}" for n, t in coarse)
        body.append(f"<p>The forward's noise resolves only relative errors above: {e(limits)}; a smaller error there "
                    f"would pass unseen (asked threshold {result['threshold']:g}).</p>")
    for name, t in result["tensors"].items():
        if t["kinks"]["elements"]:
            where = ", ".join(_index(name, i) for i in t["kinks"]["elements"])
            body.append(f"<p class=\"small\">{e(name)}: {t['kinks']['count']} element(s) left out at kinks, "
                        f"first {e(where)}</p>")
        if not t["passed"] and t["worst"]:
            body.append(f"<p>worst elements of {e(name)}:</p><table><tr><th>element</th><th>analytic</th>"
                        "<th>numerical</th><th>|error|</th></tr>")
            body += [f"<tr><td>{e(_index(name, w['index']))}</td><td>{w['analytic']:.8e}</td>"
                     f"<td>{w['numerical']:.8e}</td><td>{w['abs_error']:.2e}</td></tr>" for w in t["worst"]]
            body.append("</table>")
    body.append(f'<img alt="per-tensor difference of {e(check)}" src="data:image/png;base64,'
                f'{_png(difference_figure(result))}">')
    if result["store"] is None:  # a directional screen keeps no per-element values
        body.append(f"<p>{e(result['method'])}: no per-element heatmaps; run a full check for them.</p>")
        return body
    group = store.open_existing(result["store"])
    layout = store.metadata(group).layout
    for tensor in layout.tensors:
        if len(tensor.shape) == 2 and min(tensor.shape) > 1:
            error, row_step, col_step = pooled_error(group, layout, tensor.name)
            image = _png(heatmap_figure(error, tensor.name, tensor.shape, row_step, col_step))
            body.append(f'<img alt="heatmap of |grad − gradapprox| for {e(tensor.name)}" '
                        f'src="data:image/png;base64,{image}">')
    return body


def to_html(title: str, results: list[dict]) -> str:
    """``results``: per check, ``{"check", "result" (report JSON)}`` or ``{"check", "error"}``."""
    heading = html.escape(f"gradjob {title}")
    body = [f"<h1>{heading}</h1>"]
    for entry in results:
        body.append(f"<h2>{html.escape(entry['check'])}</h2>")
        if entry.get("error"):
            body.append(f'<p class="fail">ERROR: {html.escape(entry["error"])}</p>')
        else:
            body += _check_section(entry["check"], entry["result"])
    return (f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{heading}</title>'
            f"<style>{STYLE}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")
