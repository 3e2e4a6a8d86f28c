"""One self-contained HTML page per run: the plots a person would rather look at than read.

Per check: each tensor's difference against the threshold (log scale), and a heatmap of
|grad − gradapprox| for every weight matrix, max-pooled to at most ``HEATMAP_SIDE`` cells a side
while streaming the matrix from the store in row bands. Images are embedded PNGs.
"""

from __future__ import annotations

import base64
import html
import io
import math

import numpy as np

from . import store
from .layout import Layout

HEATMAP_SIDE = 120


def _png(figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode()


def _figure(width, height):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height))


def difference_plot(result: dict) -> str:
    names = list(result["tensors"])
    values = [max(result["tensors"][n]["difference"], 1e-18) for n in names]
    colours = ["#2e7d32" if result["tensors"][n]["passed"] else "#c62828" for n in names]
    figure = _figure(max(4, 0.6 * len(names) + 2), 3)
    axes = figure.add_subplot()
    axes.bar(names, values, color=colours)
    axes.set_yscale("log")
    axes.axhline(result["threshold"], color="black", linestyle="--", label=f"threshold {result['threshold']:g}")
    axes.set_ylabel("relative difference")
    axes.legend(loc="best")
    axes.set_title("per-tensor difference (red: fails)")
    return _png(figure)


def pooled_error(group, layout: Layout, name: str, side: int = HEATMAP_SIDE) -> np.ndarray:
    """max |grad − gradapprox| over blocks of a 2-D tensor, read one band of rows at a time."""
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
    return out


def heatmap(error: np.ndarray, name: str, shape) -> str:
    from matplotlib.colors import LogNorm

    figure = _figure(4.5, 3.5)
    axes = figure.add_subplot()
    floor = max(float(error[error > 0].min()) if (error > 0).any() else 1e-16, 1e-18)
    image = axes.imshow(np.maximum(error, floor), aspect="auto", cmap="magma",
                        norm=LogNorm(vmin=floor, vmax=max(float(error.max()), floor * 10)))
    figure.colorbar(image, ax=axes, label="|grad − gradapprox|")
    axes.set_title(f"{name} {shape[0]}×{shape[1]}" + (" (max-pooled)" if error.shape != tuple(shape) else ""))
    axes.set_xlabel("column")
    axes.set_ylabel("row")
    return _png(figure)


def to_html(title: str, results: list[dict]) -> str:
    """``results``: per check, ``{"check", "result" (report JSON) or None, "error"}``."""
    body = [f"<h1>{html.escape(title)}</h1>"]
    for entry in results:
        check, result, error = entry["check"], entry.get("result"), entry.get("error")
        body.append(f"<h2>{html.escape(check)}</h2>")
        if error:
            body.append(f'<p class="fail">ERROR: {html.escape(error)}</p>')
            continue
        verdict = "PASS" if result["passed"] else "FAIL"
        body.append(f'<p class="{verdict.lower()}">{verdict}: difference {result["difference"]:.4e} '
                    f'(threshold {result["threshold"]:g}), {result["n_parameters"]:,} parameters, '
                    f'model {html.escape(result["model"])}, case {html.escape(result["case"])}</p>')
        body.append("<table><tr><th>tensor</th><th>shape</th><th>difference</th><th>at a kink</th><th>verdict</th></tr>")
        for name, t in result["tensors"].items():
            body.append(f"<tr><td>{html.escape(name)}</td><td>{'×'.join(map(str, t['shape']))}</td>"
                        f"<td>{t['difference']:.4e}</td><td>{t['kinks']['count']}</td>"
                        f"<td>{'ok' if t['passed'] else html.escape('FAIL ' + (t['diagnosis'] or ''))}</td></tr>")
        body.append("</table>")
        if any(t["kinks"]["count"] for t in result["tensors"].values()):
            body.append("<p>Elements at a kink (a ReLU switching within the step) show as bright cells in "
                        "the heatmaps; their one-sided slopes disagree, so they are left out of the difference.</p>")
        body.append(f'<img alt="per-tensor difference of {html.escape(check)}" src="data:image/png;base64,{difference_plot(result)}">')
        if result["store"] is None:  # a directional screen keeps no per-element values
            body.append(f"<p>{html.escape(result['method'])}: no per-element heatmaps; run a full check for them.</p>")
            continue
        group = store.open_existing(result["store"])
        layout = store.metadata(group).layout
        for tensor in layout.tensors:
            if len(tensor.shape) == 2 and min(tensor.shape) > 1:
                image = heatmap(pooled_error(group, layout, tensor.name), tensor.name, tensor.shape)
                body.append(f'<img alt="heatmap of |grad − gradapprox| for {html.escape(tensor.name)}" '
                            f'src="data:image/png;base64,{image}">')
    style = ("body{font-family:sans-serif;margin:2em} .pass{color:#2e7d32;font-weight:bold} "
             ".fail{color:#c62828;font-weight:bold} table{border-collapse:collapse;margin:1em 0} "
             "td,th{border:1px solid #ccc;padding:2px 8px;text-align:left} img{margin:0.5em;vertical-align:top}")
    return (f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")
