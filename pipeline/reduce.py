"""The comparison of analytic and numerical gradients, streamed block by block.

difference = ‖grad − gradapprox‖₂ / (‖grad‖₂ + ‖gradapprox‖₂), overall and per tensor. Sums are
accumulated per tensor over fixed blocks from the tensor's start, so the numbers do not depend
on how the job was chunked. Only running sums and a few worst elements are kept in memory.

A tensor fails when its relative difference exceeds the threshold *and* its error exceeds
``NOISE_FACTOR`` times the round-off that finite differences cannot avoid, estimated per element
as machine-eps·(|J⁺|+|J⁻|)/(2h). That keeps a correct tensor whose tiny gradient is swamped by
round-off (the seed's b3 at ε=1e-7) from being called a bug.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np

from .layout import Layout

NOISE_FACTOR = 100.0
WORST_KEPT = 5
ISOLATED_MAX = 3  # at most this many wrong elements (and under 1%) reads as "isolated"


@dataclass
class TensorSums:
    """Running sums for one tensor; everything the verdict needs."""

    gg: float = 0.0
    aa: float = 0.0
    dd: float = 0.0
    ga: float = 0.0
    noise: float = 0.0
    wrong: int = 0
    worst: list = field(default_factory=list)  # heap of (|d|, -index, g, a)

    def add(self, offset: int, g: np.ndarray, a: np.ndarray, noise: np.ndarray, threshold: float) -> None:
        d = g - a
        self.gg += float(np.sum(g * g))
        self.aa += float(np.sum(a * a))
        self.dd += float(np.sum(d * d))
        self.ga += float(np.sum(g * a))
        self.noise += float(np.sum(noise * noise))
        ad = np.abs(d)
        self.wrong += int(np.count_nonzero((ad > NOISE_FACTOR * noise) & (ad > threshold * (np.abs(g) + np.abs(a)))))
        top = np.argsort(-ad, kind="stable")[:WORST_KEPT]
        for k in top:
            item = (float(ad[k]), -(offset + int(k)), float(g[k]), float(a[k]))
            if len(self.worst) < WORST_KEPT:
                heapq.heappush(self.worst, item)
            else:
                heapq.heappushpop(self.worst, item)


@dataclass
class TensorResult:
    name: str
    shape: tuple[int, ...]
    difference: float
    error_norm: float
    noise_norm: float
    passed: bool
    diagnosis: str | None
    worst: list[dict]

    def to_json(self) -> dict:
        return {"difference": self.difference, "passed": self.passed, "shape": list(self.shape),
                "error_norm": self.error_norm, "noise_norm": self.noise_norm,
                "diagnosis": self.diagnosis, "worst": self.worst}


@dataclass
class Reduction:
    difference: float
    passed: bool
    threshold: float
    n_parameters: int
    tensors: list[TensorResult]

    @property
    def failing(self) -> list[str]:
        return [t.name for t in self.tensors if not t.passed]


def relative_difference(error2: float, grad2: float, approx2: float) -> float:
    """‖g − a‖ / (‖g‖ + ‖a‖) from sums of squares; 0 when both gradients are exactly zero."""
    denominator = math.sqrt(grad2) + math.sqrt(approx2)
    return math.sqrt(error2) / denominator if denominator else 0.0


def reduce_gradients(layout: Layout, blocks: Callable[[int, int], Iterable[dict]], threshold: float,
                     machine_eps: float) -> Reduction:
    """Verdict of a whole check. ``blocks(start, stop)`` yields dicts of grad, gradapprox,
    cost_plus, cost_minus and step arrays covering [start, stop) in order."""
    results, totals = [], TensorSums()
    for tensor in layout.tensors:
        sums = TensorSums()
        offset = tensor.offset
        for block in blocks(tensor.offset, tensor.stop):
            a = block["gradapprox"]
            missing = np.logical_or.reduce([np.isnan(v) for v in block.values()])
            if missing.any():
                raise IncompleteStore(offset + int(np.flatnonzero(missing)[0]))
            noise = machine_eps * (np.abs(block["cost_plus"]) + np.abs(block["cost_minus"])) / (2 * block["step"])
            sums.add(offset, block["grad"], a, noise, threshold)
            offset += a.size
        for name in ("gg", "aa", "dd", "noise"):
            setattr(totals, name, getattr(totals, name) + getattr(sums, name))
        results.append(_tensor_result(layout, tensor.name, tensor.shape, sums, threshold))
    difference = relative_difference(totals.dd, totals.gg, totals.aa)
    passed = difference <= threshold and all(t.passed for t in results)
    return Reduction(difference, passed, threshold, layout.n_parameters, results)


class IncompleteStore(Exception):
    """A parameter has no numerical gradient in the store (not computed, or its chunk was lost)."""

    def __init__(self, index: int):
        super().__init__(index)
        self.index = index


def _tensor_result(layout: Layout, name: str, shape, sums: TensorSums, threshold: float) -> TensorResult:
    difference = relative_difference(sums.dd, sums.gg, sums.aa)
    error, noise = math.sqrt(sums.dd), math.sqrt(sums.noise)
    passed = difference <= threshold or error <= NOISE_FACTOR * noise
    worst = [
        {"index": list(layout.locate(-neg)[1]), "analytic": g, "numerical": a, "abs_error": ad}
        for ad, neg, g, a in sorted(sums.worst, reverse=True)
    ]
    size = int(np.prod(shape, dtype=np.int64))
    return TensorResult(name, tuple(shape), difference, error, noise, passed,
                        None if passed else diagnose(name, sums, size, worst), worst)


def diagnose(name: str, sums: TensorSums, size: int, worst: list[dict]) -> str:
    """How a failing tensor's gradient is wrong, in one sentence, where a simple pattern fits."""
    grad = f"d{name}"
    if sums.gg == 0.0:
        return f"{grad} is all zeros: the gradient is missing"
    if sums.aa == 0.0:
        return f"{grad} is non-zero but the cost does not depend on {name}"
    factor = sums.ga / sums.aa
    residual = math.sqrt(max(0.0, sums.gg - sums.ga * sums.ga / sums.aa)) / math.sqrt(sums.gg)
    if residual < 1e-3:
        if abs(factor + 1) < 1e-3:
            return f"{grad} has the wrong sign (it is -1.00× the numerical gradient)"
        return f"{grad} is {factor:.2f}× the numerical gradient"
    if sums.wrong <= ISOLATED_MAX and sums.wrong < max(1, 0.01 * size):
        where = ", ".join(f"{name}[{', '.join(map(str, w['index']))}]" for w in worst[: sums.wrong])
        return f"{sums.wrong} isolated wrong element(s) in {grad}: {where}"
    return f"{sums.wrong} of {size} elements of {grad} disagree; no simple pattern"
