"""The comparison of analytic and numerical gradients, streamed block by block.

difference = ‖grad − gradapprox‖₂ / (‖grad‖₂ + ‖gradapprox‖₂), overall and per tensor. Sums are
accumulated per tensor over fixed blocks from the tensor's start, so the numbers do not depend
on how the job was chunked. Only running sums and a few elements are kept in memory.

Round-off: a tensor fails when its relative difference exceeds the threshold *and* its error
exceeds ``NOISE_FACTOR`` times the round-off the method cannot avoid (the evaluator's per-element
``noise``). That keeps a correct tensor whose tiny gradient is swamped by round-off (the seed's
b3 at ε=1e-7) from being called a bug.

Kinks: where a step crosses a non-differentiable point (a ReLU switching), the one-sided slopes
(J⁺ − J)/h and (J − J⁻)/h disagree and a correct analytic gradient matches one of them, while the
central quotient sits between. Such elements are reported as kinks and left out of the sums.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np

from .layout import Layout, Tensor

NOISE_FACTOR = 100.0
KINK_MATCH = 0.1     # analytic within 10% of the slope jump of one side
WORST_KEPT = 5
KINKS_KEPT = 5
ISOLATED_MAX = 3     # at most this many wrong elements (and at most half) reads as "isolated"
TRANSPOSE_MAX = 1 << 20  # square tensors up to this size are read whole to test for a transpose


@dataclass
class TensorSums:
    """Running sums for one tensor; everything the verdict needs."""

    gg: float = 0.0
    aa: float = 0.0
    dd: float = 0.0
    ga: float = 0.0
    noise: float = 0.0
    wrong: int = 0
    kinks: int = 0
    kink_elements: list = field(default_factory=list)
    worst: list = field(default_factory=list)  # heap of (|d|, -index, g, a)

    def add(self, offset: int, block: dict, cost: float, threshold: float) -> None:
        kink = kinks(block, cost)
        keep = ~kink
        g, a, noise = block["grad"][keep], block["gradapprox"][keep], block["noise"][keep]
        index = offset + np.flatnonzero(keep)
        d = g - a
        self.gg += float(np.sum(g * g))
        self.aa += float(np.sum(a * a))
        self.dd += float(np.sum(d * d))
        self.ga += float(np.sum(g * a))
        self.noise += float(np.sum(noise * noise))
        ad = np.abs(d)
        self.wrong += int(np.count_nonzero((ad > NOISE_FACTOR * noise) & (ad > threshold * (np.abs(g) + np.abs(a)))))
        self.kinks += int(kink.sum())
        room = KINKS_KEPT - len(self.kink_elements)
        self.kink_elements += [offset + int(k) for k in np.flatnonzero(kink)[:max(0, room)]]
        for k in np.argsort(-ad, kind="stable")[:WORST_KEPT]:
            item = (float(ad[k]), -int(index[k]), float(g[k]), float(a[k]))
            if len(self.worst) < WORST_KEPT:
                heapq.heappush(self.worst, item)
            else:
                heapq.heappushpop(self.worst, item)


def kinks(block: dict, cost: float) -> np.ndarray:
    """Elements whose steps cross a kink: one-sided slopes disagree beyond round-off and the
    analytic gradient matches one side."""
    h = block["step"]
    s_plus = (block["cost_plus"] - cost) / h
    s_minus = (cost - block["cost_minus"]) / h
    jump = np.abs(s_plus - s_minus)
    g = block["grad"]
    nearest = np.minimum(np.abs(g - s_plus), np.abs(g - s_minus))
    return (jump > 4 * NOISE_FACTOR * block["noise"]) & (nearest < KINK_MATCH * jump)


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
    kinks: int = 0
    kink_elements: list = field(default_factory=list)

    def to_json(self) -> dict:
        return {"difference": self.difference, "passed": self.passed, "shape": list(self.shape),
                "error_norm": self.error_norm, "noise_norm": self.noise_norm,
                "diagnosis": self.diagnosis, "worst": self.worst,
                "kinks": {"count": self.kinks, "elements": self.kink_elements}}


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


class IncompleteStore(Exception):
    """A parameter has no numerical gradient in the store (not computed, or its chunk was lost)."""

    def __init__(self, index: int):
        super().__init__(index)
        self.index = index


Blocks = Callable[[int, int], Iterable[dict]]


def reduce_gradients(layout: Layout, blocks: Blocks, threshold: float, cost: float) -> Reduction:
    """Verdict of a whole check. ``blocks(start, stop)`` yields dicts of grad, gradapprox,
    cost_plus, cost_minus, step and noise arrays covering [start, stop) in order; ``cost`` is J(θ)."""
    results, totals = [], TensorSums()
    for tensor in layout.tensors:
        sums = TensorSums()
        offset = tensor.offset
        for block in blocks(tensor.offset, tensor.stop):
            missing = np.logical_or.reduce([np.isnan(v) for v in block.values()])
            if missing.any():
                raise IncompleteStore(offset + int(np.flatnonzero(missing)[0]))
            sums.add(offset, block, cost, threshold)
            offset += block["grad"].size
        for name in ("gg", "aa", "dd", "noise"):
            setattr(totals, name, getattr(totals, name) + getattr(sums, name))
        results.append(_tensor_result(layout, tensor, sums, threshold, blocks))
    difference = relative_difference(totals.dd, totals.gg, totals.aa)
    passed = difference <= threshold and all(t.passed for t in results)
    return Reduction(difference, passed, threshold, layout.n_parameters, results)


def _tensor_result(layout: Layout, tensor: Tensor, sums: TensorSums, threshold: float, blocks: Blocks) -> TensorResult:
    difference = relative_difference(sums.dd, sums.gg, sums.aa)
    error, noise = math.sqrt(sums.dd), math.sqrt(sums.noise)
    passed = difference <= threshold or error <= NOISE_FACTOR * noise
    worst = [
        {"index": list(layout.locate(-neg)[1]), "analytic": g, "numerical": a, "abs_error": ad}
        for ad, neg, g, a in sorted(sums.worst, reverse=True)
    ]
    diagnosis = None
    if not passed:
        diagnosis = diagnose(tensor, sums, worst, lambda: _transposed(tensor, blocks, noise))
    return TensorResult(tensor.name, tensor.shape, difference, error, noise, passed, diagnosis, worst,
                        sums.kinks, [list(layout.locate(i)[1]) for i in sums.kink_elements])


def _transposed(tensor: Tensor, blocks: Blocks, noise: float) -> bool:
    """Is the analytic gradient of a square matrix the transpose of the numerical one?"""
    if len(tensor.shape) != 2 or tensor.shape[0] != tensor.shape[1] or tensor.size > TRANSPOSE_MAX:
        return False
    parts = list(blocks(tensor.offset, tensor.stop))
    g = np.concatenate([p["grad"] for p in parts]).reshape(tensor.shape)
    a = np.concatenate([p["gradapprox"] for p in parts]).reshape(tensor.shape)
    error = float(np.linalg.norm(g - a.T))
    return error <= max(1e-3 * float(np.linalg.norm(g)), NOISE_FACTOR * noise)


def diagnose(tensor: Tensor, sums: TensorSums, worst: list[dict], transposed: Callable[[], bool]) -> str:
    """How a failing tensor's gradient is wrong, in one sentence, where a simple pattern fits."""
    name, grad = tensor.name, f"d{tensor.name}"
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
    if transposed():
        return f"{grad} is the transpose of the numerical gradient"
    if 0 < sums.wrong <= ISOLATED_MAX and 2 * sums.wrong <= tensor.size:
        where = ", ".join(f"{name}[{', '.join(map(str, w['index']))}]" for w in worst[: sums.wrong])
        return f"{sums.wrong} isolated wrong element(s) in {grad}: {where}"
    return f"{sums.wrong} of {tensor.size} elements of {grad} disagree; no simple pattern"
