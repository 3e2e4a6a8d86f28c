"""The comparison of analytic and numerical gradients, streamed block by block.

difference = ‖grad − gradapprox‖₂ / (‖grad‖₂ + ‖gradapprox‖₂), overall and per tensor, over the
elements not at a kink. Sums are accumulated per tensor over fixed blocks from the tensor's
start, so the numbers do not depend on how the job was chunked; only running sums, the
verified suspects and a few elements are held.

One verdict rule: a tensor fails iff it has wrong elements (see ``verify``) or its difference
exceeds its threshold, which is the asked threshold or, where the forward's measured noise
cannot resolve that, ``NOISE_MARGIN`` times the difference its noise alone would give. A
suspect the ladder could not resolve counts its whole disagreement as noise: it cannot fail
the tensor, and the tensor's resolution says how much that costs. The check
passes iff no tensor fails. Each tensor's *resolution* is the smallest relative error of its
gradient the check would flag: 2T/(1 − T) for its threshold T.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np

from gradjob.model.layout import Layout, Tensor
from gradjob.numerics import verify
from gradjob.numerics.diagnose import diagnose, gradient_name
from gradjob.numerics.sums import Sums
from gradjob.types import Calibration, Reduction, Suspects, TensorResult

NOISE_MARGIN = 5.0   # a tensor's threshold is at least this many times its noise-only difference
WORST_KEPT = 5
KINKS_KEPT = 5
PRIMARY_KINK = 0.1   # unverified suspects: analytic within 10% of the slope jump of one side

Blocks = Callable[[int, int], Iterable[dict]]
"""``blocks(start, stop)``: dicts of theta, grad, gradapprox, cost_plus, cost_minus, step and
noise arrays covering [start, stop) in order."""


class IncompleteStore(Exception):
    """A parameter has no numerical gradient in the store (not computed, or its chunk was lost)."""

    def __init__(self, index: int):
        super().__init__(index)
        self.index = index


def relative_difference(error2: float, grad2: float, approx2: float) -> float:
    """‖g − a‖ / (‖g‖ + ‖a‖) from sums of squares; 0 when both gradients are exactly zero."""
    denominator = math.sqrt(grad2) + math.sqrt(approx2)
    return math.sqrt(error2) / denominator if denominator else 0.0


def _checked_blocks(blocks: Blocks, tensor: Tensor):
    offset = tensor.offset
    for block in blocks(tensor.offset, tensor.stop):
        missing = np.logical_or.reduce([np.isnan(v) for v in block.values()])
        if missing.any():
            raise IncompleteStore(offset + int(np.flatnonzero(missing)[0]))
        yield offset, block
        offset += block["grad"].size


def find_suspects(layout: Layout, blocks: Blocks, grad_eps: float) -> dict[str, verify.SuspectHeap]:
    """Per tensor, the worst elements whose numerical gradient disagrees beyond their noise."""
    found = {}
    for tensor in layout.tensors:
        heap = verify.SuspectHeap()
        for offset, block in _checked_blocks(blocks, tensor):
            score = np.abs(block["grad"] - block["gradapprox"]) / np.maximum(
                verify.tolerance(block["grad"], block["noise"], grad_eps), np.finfo(np.float64).tiny)
            heap.add(offset + np.arange(score.size), score, block["step"], block["grad"])
        found[tensor.name] = heap
    return found


@dataclass
class _Accumulator:
    sums: Sums = field(default_factory=Sums)
    raw: Sums = field(default_factory=Sums)
    suspects: dict = field(default_factory=lambda: dict.fromkeys(verify.CLASSES + ("beyond_cap",), 0))
    kink_elements: list = field(default_factory=list)
    wrong_elements: list = field(default_factory=list)
    worst: list = field(default_factory=list)  # heap of (|d|, -index, g, a)


def reduce_gradients(layout: Layout, blocks: Blocks, threshold: float, cost: float, calibration: Calibration | None,
                     verdicts: dict[int, verify.Verdict], grad_eps: float, replace: bool = True) -> Reduction:
    """The verdict of a whole check; ``verdicts`` are the verified suspects by θ index. With
    ``replace``, a verified element's settled estimate stands in for its first one; a fixed
    ``--epsilon`` asks for that step's numbers, so there the classes count but numbers stay."""
    verified = np.array(sorted(verdicts), dtype=np.int64)
    results, total, raw_total = [], Sums(), Sums()
    for tensor in layout.tensors:
        acc = _Accumulator()
        for offset, block in _checked_blocks(blocks, tensor):
            _add_block(acc, offset, block, cost, verified, verdicts, grad_eps, replace)
        total.merge(acc.sums)
        raw_total.merge(acc.raw)
        noise = calibration.of(tensor.name).noise if calibration else math.nan
        results.append(_tensor_result(layout, tensor, acc, threshold, noise, blocks))
    results = [shape_verdict(tensor, result) for tensor, result in zip(layout.tensors, results)]
    passed = all(t.passed for t in results)
    return Reduction(relative_difference(total.dd, total.gg, total.aa),
                     relative_difference(raw_total.dd, raw_total.gg, raw_total.aa),
                     passed, threshold, layout.n_parameters, results)


def _add_block(acc: _Accumulator, offset: int, block: dict, cost: float, verified: np.ndarray,
               verdicts: dict, grad_eps: float, replace: bool) -> None:
    g, a, noise = block["grad"], block["gradapprox"].copy(), block["noise"].copy()
    index = offset + np.arange(g.size)
    acc.raw.add(g, a, block["theta"], noise)
    keep = np.ones(g.size, dtype=bool)
    for k in np.flatnonzero(np.isin(index, verified, assume_unique=True)):
        verdict = verdicts[int(index[k])]
        name = verify.CLASSES[verdict.klass]
        acc.suspects[name] += 1
        if verdict.klass in verify.EXCLUDED:
            keep[k] = False
        elif verdict.klass in (verify.AGREES, verify.WRONG):  # the settled estimate and its error bound
            if replace:
                a[k], noise[k] = verdict.estimate, verdict.tolerance
            if verdict.klass == verify.WRONG:
                acc.wrong_elements.append(int(index[k]))
        else:  # unresolved at the precision this dtype allows: its disagreement is uncertainty, not error
            noise[k] = max(noise[k], abs(g[k] - a[k]))
    tol = verify.tolerance(g, noise, grad_eps)
    beyond = (np.abs(g - a) > tol) & ~np.isin(index, verified, assume_unique=True)
    acc.suspects["beyond_cap"] += int(beyond.sum())
    primary_kink = beyond & _one_sided_kinks(block, cost, tol)
    keep &= ~primary_kink
    kinks = np.flatnonzero(~keep)
    room = KINKS_KEPT - len(acc.kink_elements)
    acc.kink_elements += [offset + int(k) for k in kinks[:max(0, room)]]
    acc.sums.kinks += int(kinks.size)
    g, a, theta, noise, index = g[keep], a[keep], block["theta"][keep], noise[keep], index[keep]
    acc.sums.add(g, a, theta, noise)
    d = np.abs(g - a)
    for k in np.argsort(-d, kind="stable")[:WORST_KEPT]:
        item = (float(d[k]), -int(index[k]), float(g[k]), float(a[k]))
        if len(acc.worst) < WORST_KEPT:
            heapq.heappush(acc.worst, item)
        else:
            heapq.heappushpop(acc.worst, item)


def _one_sided_kinks(block: dict, cost: float, tol: np.ndarray) -> np.ndarray:
    """Suspects past the verification cap whose one-sided slopes (J⁺ − J)/h and (J − J⁻)/h disagree
    by far more than their noise while the analytic gradient matches one side."""
    h = block["step"]
    s_plus = (block["cost_plus"] - cost) / h
    s_minus = (cost - block["cost_minus"]) / h
    jump = np.abs(s_plus - s_minus)
    nearest = np.minimum(np.abs(block["grad"] - s_plus), np.abs(block["grad"] - s_minus))
    return (jump > 4 * tol) & (nearest < PRIMARY_KINK * jump)


def tensor_threshold(threshold: float, sums: Sums) -> float:
    """The asked threshold, or the difference the tensor's noise alone could reach, if higher."""
    scale = math.sqrt(sums.gg) + math.sqrt(sums.aa)
    floor = NOISE_MARGIN * math.sqrt(sums.nn) / scale if scale else 0.0
    return max(threshold, floor)


def resolution(threshold: float) -> float:
    """The smallest relative error e of a gradient (g = (1 + e)·true) that gives a difference above
    ``threshold``: e/(2 + e) > T ⇔ e > 2T/(1 − T)."""
    return 2 * threshold / (1 - threshold) if threshold < 1 else math.inf


def _tensor_result(layout: Layout, tensor: Tensor, acc: _Accumulator, threshold: float, noise: float,
                   blocks: Blocks) -> TensorResult:
    sums = acc.sums
    difference = relative_difference(sums.dd, sums.gg, sums.aa)
    own = tensor_threshold(threshold, sums)
    wrong = [list(layout.locate(i)[1]) for i in sorted(acc.wrong_elements)]
    passed = not wrong and difference <= own
    worst = [{"index": list(layout.locate(-neg)[1]), "analytic": g, "numerical": a, "abs_error": d}
             for d, neg, g, a in sorted(acc.worst, reverse=True)]
    diagnosis = None
    if not passed:
        diagnosis = diagnose(tensor, sums, worst, wrong, lambda: _whole(tensor, blocks))
    suspects = Suspects(verified=sum(acc.suspects[k] for k in verify.CLASSES), **acc.suspects)
    return TensorResult(tensor.name, tensor.shape, difference, own, resolution(own), noise, math.sqrt(sums.dd),
                        math.sqrt(sums.nn), passed, diagnosis, worst, sums.kinks,
                        [list(layout.locate(i)[1]) for i in acc.kink_elements], suspects,
                        wrong[:WORST_KEPT],
                        tensor.size - sums.kinks)


def shape_mismatch(tensor: Tensor) -> str | None:
    """``db1 has shape (5,) but b1 is (5, 1)``, where the backward's gradient is shaped unlike its
    parameter (see ``Layout.with_gradient_shapes``); None where the shapes are equal."""
    if tensor.gradient_shape is None:
        return None
    return f"{gradient_name(tensor.name)} has shape {tensor.gradient_shape} but {tensor.name} is {tensor.shape}"


def shape_verdict(tensor: Tensor, result: TensorResult) -> TensorResult:
    """A gradient shaped unlike its parameter fails its tensor, whatever its numbers say."""
    mismatch = shape_mismatch(tensor)
    if mismatch is not None:
        result.passed = False
        result.diagnosis = mismatch + (f"; {result.diagnosis}" if result.diagnosis else "")
    return result


def _whole(tensor: Tensor, blocks: Blocks) -> dict[str, np.ndarray]:
    """grad, gradapprox and θ of a tensor in its shape (for the transpose test of square matrices)."""
    parts = list(blocks(tensor.offset, tensor.stop))
    return {name: np.concatenate([p[name] for p in parts]).reshape(tensor.shape) for name in ("grad", "gradapprox", "theta")}
