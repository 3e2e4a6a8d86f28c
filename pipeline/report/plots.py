"""The plots of the HTML page, as matplotlib figures (returned, so tests read their axes): each
tensor's difference against the thresholds, and heatmaps of |grad − gradapprox| for weight
matrices (strips for failing vectors: 1-D, 1×N or N×1), max-pooled while streaming the tensor
from the store in blocks, drawn over the tensor's own indices."""

from __future__ import annotations

import atexit
import base64
import io
import math
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from gradjob.model.layout import Layout
from gradjob.numerics import verify
from gradjob.storage import store

HEATMAP_SIDE = 120
MARKS = ((verify.KINK, "x", "#00e5ff", "kink (left out)"),
         (verify.NEAR_KINK, "+", "#2962ff", "near-kink (left out)"),
         (verify.WRONG, "s", "#ff1744", "wrong"))


def png(figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode()


def _quiet_config_dir() -> None:
    """Point matplotlib at a private temporary config dir when its own (~/.config/matplotlib,
    ~/.cache/matplotlib) cannot be made: a service user without a writable home (systemd, cron)
    would otherwise log two warning lines on every run that writes HTML. MPLCONFIGDIR, if set, wins."""
    if "MPLCONFIGDIR" in os.environ:
        return
    home = Path(os.environ.get("HOME") or "~").expanduser()
    for base, default in (("XDG_CONFIG_HOME", ".config"), ("XDG_CACHE_HOME", ".cache")):
        directory = Path(os.environ.get(base) or home / default) / "matplotlib"
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError:
            break
        if not os.access(directory, os.W_OK):
            break
    else:
        return
    private = tempfile.mkdtemp(prefix="gradjob-matplotlib-")
    atexit.register(shutil.rmtree, private, True)
    os.environ["MPLCONFIGDIR"] = private


def _figure(width, height):
    _quiet_config_dir()
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height))


def difference_figure(result):
    """Each tensor's difference (red: fails) on a log scale, the asked threshold (dashed) and each
    tensor's own threshold (a black tick: on the dashed line, or above it where the forward's
    noise raised it). ``result``: a ``model.Report`` (its ``threshold`` and ``tensors``)."""
    names = list(result.tensors)
    tensors = [result.tensors[n] for n in names]
    values = [max(t.difference, 1e-18) for t in tensors]
    figure = _figure(max(4, 0.6 * len(names) + 2), 3)
    axes = figure.add_subplot()
    axes.bar(names, values, color=["#2e7d32" if t.passed else "#c62828" for t in tensors])
    axes.set_yscale("log")
    axes.axhline(result.threshold, color="black", linestyle="--", label=f"asked threshold {result.threshold:g}")
    axes.scatter(range(len(names)), [t.threshold for t in tensors], marker="_", s=400, color="black", zorder=3,
                 label="each tensor's own threshold")
    if len(names) > 8:
        axes.tick_params(axis="x", labelrotation=60)
    axes.set_ylabel("relative difference")
    axes.legend(loc="best", fontsize="small")
    axes.set_title("per-tensor difference (red: fails)")
    return figure


def pooled_error(group, layout: Layout, name: str, side: int = HEATMAP_SIDE,
                 shape: tuple[int, int] | None = None) -> tuple[np.ndarray, int, int]:
    """max |grad − gradapprox| over blocks of rows × columns of a 2-D tensor (or of a vector read as
    ``shape`` (1, N)), streamed from the store ``store.READ_BLOCK`` elements at a time; and the
    rows and columns each cell pools."""
    tensor = next(t for t in layout.tensors if t.name == name)
    rows, cols = shape or tensor.shape
    row_step, col_step = math.ceil(rows / side), math.ceil(cols / side)
    out = np.zeros((math.ceil(rows / row_step), math.ceil(cols / col_step)))
    cells = out.reshape(-1)  # a view: maxima land in ``out``
    start = 0
    for block in store.iter_blocks(group, tensor.offset, tensor.stop, ("grad", "gradapprox")):
        error = np.abs(block["grad"] - block["gradapprox"])
        row, col = np.divmod(np.arange(start, start + error.size), cols)
        np.maximum.at(cells, (row // row_step) * out.shape[1] + col // col_step, error)
        start += error.size
    return out, row_step, col_step


def index_ticks(n: int, bins: int = 6) -> list[int]:
    """Up to ``bins`` + 1 round integer positions within the indices 0 … n − 1 of an axis."""
    from matplotlib.ticker import MaxNLocator

    return [int(k) for k in MaxNLocator(nbins=bins, integer=True).tick_values(0, n - 1) if 0 <= k <= n - 1]


def heatmap_figure(error: np.ndarray, name: str, shape, row_step: int = 1, col_step: int = 1,
                   marks: dict | None = None):
    """The pooled errors drawn over the matrix's own index range, so ticks read as its rows and
    columns whatever the pooling; integer ticks only. ``marks``: per verify class, the (row,
    column) of re-verified elements to mark (kinks, near-kinks, wrong elements)."""
    from matplotlib.colors import LogNorm

    rows, cols = shape
    figure = _figure(4.5, 3.5)
    axes = figure.add_subplot()
    floor = max(float(error[error > 0].min()) if (error > 0).any() else 1e-16, 1e-18)
    image = axes.imshow(np.maximum(error, floor), aspect="auto", cmap="magma", interpolation="nearest",
                        extent=(-0.5, error.shape[1] * col_step - 0.5, error.shape[0] * row_step - 0.5, -0.5),
                        norm=LogNorm(vmin=floor, vmax=max(float(error.max()), floor * 10)))
    shown = False
    for klass, marker, colour, label in MARKS:
        where = (marks or {}).get(klass)
        if where:
            axes.scatter([c for _, c in where], [r for r, _ in where], marker=marker, s=30, linewidths=1.5,
                         color=colour, facecolors="none" if marker == "s" else None, label=label)
            shown = True
    axes.set_xlim(-0.5, cols - 0.5)
    axes.set_ylim(rows - 0.5, -0.5)
    for ticks, n in ((axes.set_xticks, cols), (axes.set_yticks, rows)):
        where = index_ticks(n)
        ticks(where, labels=[str(k) for k in where])  # plain integers: no offset or scientific notation
    figure.colorbar(image, ax=axes, label="|grad − gradapprox|")
    pooled = f" (max over {row_step}×{col_step} blocks)" if (row_step, col_step) != (1, 1) else ""
    axes.set_title(f"{name} {rows}×{cols}{pooled}")
    axes.set_xlabel(f"column of {name}")
    axes.set_ylabel(f"row of {name}")
    if shown:
        axes.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=3, fontsize="x-small", frameon=False)
    return figure


def is_vector(shape) -> bool:
    """A 1-D tensor, or a 1×N or N×1 matrix, of more than one element: drawn as a strip."""
    return math.prod(shape) > 1 and sum(n > 1 for n in shape) == 1


def strip_figure(error: np.ndarray, name: str, shape, step: int = 1, marks: dict | None = None):
    """A vector's pooled errors (``error``: one row) as a strip over its own element indices:
    rows of an N×1 bias, columns of a 1×N weight, elements of a 1-D tensor. ``marks``: per verify
    class, the indices (as stored: one per dimension) of re-verified elements to mark."""
    from matplotlib.colors import LogNorm

    n = math.prod(shape)
    axis = ("element", "row", "column")[0 if len(shape) == 1 else 1 if shape[0] > 1 else 2]
    figure = _figure(4.5, 1.8)
    axes = figure.add_subplot()
    floor = max(float(error[error > 0].min()) if (error > 0).any() else 1e-16, 1e-18)
    image = axes.imshow(np.maximum(error, floor), aspect="auto", cmap="magma", interpolation="nearest",
                        extent=(-0.5, error.shape[1] * step - 0.5, 0.5, -0.5),
                        norm=LogNorm(vmin=floor, vmax=max(float(error.max()), floor * 10)))
    shown = False
    for klass, marker, colour, label in MARKS:
        where = (marks or {}).get(klass)
        if where:
            axes.scatter([int(np.ravel_multi_index(tuple(i), shape)) for i in where], [0] * len(where), marker=marker,
                         s=30, linewidths=1.5, color=colour, facecolors="none" if marker == "s" else None, label=label)
            shown = True
    axes.set_xlim(-0.5, n - 0.5)
    axes.set_ylim(0.5, -0.5)
    where = index_ticks(n)
    axes.set_xticks(where, labels=[str(k) for k in where])
    axes.set_yticks([])
    figure.colorbar(image, ax=axes, label="|grad − gradapprox|")
    pooled = f" (max over {step} {axis}s)" if step != 1 else ""
    axes.set_title(f"{name} {'×'.join(map(str, shape))}{pooled}")
    axes.set_xlabel(f"{axis} of {name}")
    if shown:
        axes.legend(loc="upper center", bbox_to_anchor=(0.5, -0.6), ncol=3, fontsize="x-small", frameon=False)
    return figure
