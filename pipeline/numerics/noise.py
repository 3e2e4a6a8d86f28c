"""How noisy the forward is, and which steps balance truncation against that noise.

Measured, not assumed: a cost summed over a batch, or computed in float32 inside however it is
called, carries far more round-off than one ulp of J. ECnoise (Moré & Wild, "Estimating
computational noise", SIAM J. Sci. Comput. 33(3), 2011) takes J at 7 equally spaced points
along one coordinate: the k-th differences of pure noise have the known scale γₖ = (k!)²/(2k)!,
so the order at which consecutive estimates agree and the differences change sign gives ε_f.

Steps then balance central differences' truncation μ₃h²/6 against their noise ε_f/h, so
h = (3ε_f/μ₃)^(1/3) (Moré & Wild, "Estimating derivatives of noisy simulations", ACM TOMS 38(3),
2012), with μ₃ from a third difference at a spacing where it stands above the noise. Steps are
kept within [√η, 4·η^(1/3)]·max(1, |θᵢ|), η = ε_f/|J|: the upper end is the classic
4·eps^(1/3) rule with the measured relative noise in place of eps, so few kinks are crossed.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Generator

import numpy as np

from gradjob.model.layout import Layout
from gradjob.numerics.evaluate import PerturbationFailure
from gradjob.types import Calibration, TensorNoise

POINTS = 7          # evaluations per noise estimate, as Moré & Wild recommend
SAMPLES = 4         # elements measured per tensor; the median is robust to one at a kink
ATTEMPTS = 4        # spacing changes by 100× per attempt when ECnoise says too small / too large
SPACINGS = 4        # further 100× smaller spacings tried while the level keeps shrinking (a kink)
COMPLEX_STEP = 1e-20

Line = Callable[[np.ndarray], np.ndarray]
"""``line(offsets)``: J at θ + offset·d for each offset, along one fixed direction d."""
FLIPS = "flips"  # a step asking which switches its offsets flip (``Replay.flips``), not J there
Steps = Generator[np.ndarray, np.ndarray, Any]
"""A measurement along one line, as a generator: it yields offsets, is sent J there (``along``,
``in_step``), and returns its result; pure numerics, whoever evaluates J."""


def ecnoise(values: np.ndarray) -> tuple[float, int]:
    """Noise level of equally spaced function values; ``inform`` 1: measured, 2: the spacing is
    too small (half the first differences are 0), 3: too large (no order settles)."""
    f = np.asarray(values, dtype=np.float64).copy()
    n = f.size
    low, high = f.min(), f.max()
    if high - low > 0.1 * max(abs(high), abs(low)):
        return 0.0, 3
    levels, sign_change, gamma = np.zeros(n - 1), np.zeros(n - 1, dtype=bool), 1.0
    for j in range(1, n):
        f[: n - j] = f[1 : n - j + 1] - f[: n - j]
        diffs = f[: n - j]
        if j == 1 and np.count_nonzero(diffs == 0) >= n / 2:
            return 0.0, 2
        gamma *= 0.5 * j / (2 * j - 1)
        levels[j - 1] = math.sqrt(gamma * float(np.mean(diffs * diffs)))
        sign_change[j - 1] = diffs.min() * diffs.max() < 0
    for k in range(n - 3):
        window = levels[k : k + 3]
        if window.max() <= 4 * window.min() and sign_change[k]:
            return float(levels[k]), 1
    return 0.0, 3


def measure_noise(line: Line, spacing: float) -> tuple[float | None, int]:
    """ε_f along ``line`` (None if ECnoise never settles), and the evaluations spent (``noise_steps``
    on one line)."""
    return along(noise_steps(spacing), line)


def noise_steps(spacing: float) -> Steps:
    """``measure_noise`` as steps: each offsets yielded is sent back J there.

    A kink inside the sampled span looks like noise to a difference table, but its level shrinks
    with the spacing while round-off does not: while the level keeps shrinking as the spacing
    does (100× per step), the spacing goes on down, and the last level is kept."""
    level, spent = yield from _settled_level(spacing)
    for _ in range(SPACINGS):
        if level is None:
            break
        spacing /= 100
        finer, more = yield from _settled_level(spacing, grow=False)
        spent += more
        if finer is None or finer > level / 10:
            level = level if finer is None else min(level, finer)
            break
        level = finer
    return level, spent


def _settled_level(spacing: float, grow: bool = True) -> Steps:
    offsets = (np.arange(POINTS) - POINTS // 2).astype(np.float64)
    spent = 0
    for _ in range(ATTEMPTS if grow else 1):
        level, inform = ecnoise((yield offsets * spacing))
        spent += POINTS
        if inform == 1:
            return level, spent
        spacing = spacing * 100 if inform == 2 else spacing / 100
    return None, spent


def central_step(line: Line, noise: float, cost: float, scale: float) -> tuple[float, float, int]:
    """The central-difference step along ``line`` for an element of magnitude ``scale``, the third
    derivative it is balanced against, and the evaluations spent (``central_steps`` on one line)."""
    return along(central_steps(noise, cost, scale), line)


def central_steps(noise: float, cost: float, scale: float) -> Steps:
    """``central_step`` as steps (see ``noise_steps``)."""
    eta = max(noise / max(abs(cost), 1e-300), np.finfo(np.float64).eps)
    lowest, highest = math.sqrt(eta) * scale, 4 * eta ** (1 / 3) * scale
    h = eta ** (1 / 5) * scale  # balances a third difference's noise against its truncation
    j = yield np.array([2 * h, h, -h, -2 * h])
    third = abs(j[0] - 2 * j[1] + 2 * j[2] - j[3])
    if third < 30 * noise:      # μ₃ below detection: this bound on it gives a step of about 0.6h
        third = 30 * noise
    mu3 = third / (2 * h ** 3)
    return float(np.clip((3 * noise / mu3) ** (1 / 3), lowest, highest)), float(mu3), 4


def along(steps: Steps, line: Line, switches: Line | None = None):
    """What ``steps`` returns, each offsets it yields evaluated on ``line`` (``(FLIPS, offsets)``: the
    switches each flips, on ``switches``)."""
    try:
        request = next(steps)
        while True:
            request = steps.send(switches(request[1]) if isinstance(request, tuple) else line(request))
    except StopIteration as done:
        return done.value


def in_step(costs, starts: dict[int, tuple[Steps, float]], dtype, flips=None, drop_failures: bool = True) -> dict:
    """Steps along several coordinates driven together, each round's offsets of all of them
    evaluated in one call of ``costs`` (and the switches asked, in one call of ``flips``): a replay
    walks its graph once per call, so a naive conv's calibration costs one walk per round, not one
    per element. ``starts`` maps an index i of θ to its steps and θᵢ; returns what each returned. An
    element whose evaluation fails is left out (the chunk holding it will fail there and say so), or
    with ``drop_failures`` False its ``PerturbationFailure`` raised."""
    steps = {i: s for i, (s, _) in starts.items()}
    bases = {i: b for i, (_, b) in starts.items()}
    pending = {i: next(s) for i, s in steps.items()}
    results = {}
    while pending:
        answers = {}
        for asked, evaluate in ((False, lambda i, v: costs(i, v, "~")), (True, flips)):
            values = {i: (bases[i] + (r[1] if asked else r)).astype(dtype) for i, r in pending.items()
                      if isinstance(r, tuple) == asked}
            if values:
                answers.update(_evaluated(evaluate, values, steps, drop_failures))
        pending = {}
        for i, answer in answers.items():
            try:
                pending[i] = steps[i].send(answer)
            except StopIteration as done:
                results[i] = done.value
    return results


def _evaluated(evaluate, values: dict, steps: dict, drop_failures: bool) -> dict:
    """``evaluate(indices, values)`` at every element's values in one call, split back per element;
    on a failure, each on its own to find which."""
    try:
        out = evaluate(np.concatenate([np.full(v.size, i) for i, v in values.items()]), np.concatenate(list(values.values())))
        return dict(zip(values, np.split(out, np.cumsum([v.size for v in values.values()])[:-1])))
    except PerturbationFailure:
        if not drop_failures:
            raise
    answers = {}
    for i, v in values.items():
        try:
            answers[i] = evaluate(np.full(v.size, i), v)
        except PerturbationFailure:
            steps[i].close()
    return answers


def noise_along(costs, i: int, value, cost: float, flips=None, first_step: float | None = None) -> float:
    """ε_f along coordinate ``i`` alone (``own_noise_steps`` on one line)."""
    kind = np.asarray(value).dtype
    return along(own_noise_steps(kind, cost, float(value), flips is not None, first_step),
                 lambda steps: costs(np.full(steps.size, i), (float(value) + steps).astype(kind), "~"),
                 lambda steps: flips(np.full(steps.size, i), (float(value) + steps).astype(kind)))


def own_noise_steps(kind, cost: float, value: float, switches: bool, first_step: float | None = None) -> Steps:
    """ε_f along one coordinate alone, as steps (a suspect's own, not its tensor's sample): the round-off of
    J differs from element to element where a saturated output or a cancelling sum is reached
    from some elements only. At least one ulp of J; NaN where ECnoise never settles.

    With ``switches`` (the traced forward's, ``Replay.flips``: asked by yielding ``(FLIPS, offsets)``),
    kinks are kept out of the difference tables exactly: ECnoise runs at the first step, a tenth of it
    and √eps·max(1, |θᵢ|), each shrunk until none of its points flips a switch, and the largest level is
    kept. The coarse spacings see round-off that moves in rare steps (1 − A of a saturated sigmoid
    changes by one ulp of 1 only every so often: between its steps J looks smooth, but its slope misses
    that term); one ECnoise estimate can also be several times low. Without, ``noise_steps`` shrinks
    one spacing while the level does."""
    eps = float(np.finfo(kind).eps)
    floor = eps * max(abs(cost), np.finfo(np.float64).tiny)
    offsets = (np.arange(POINTS) - POINTS // 2).astype(np.float64)
    fine = math.sqrt(eps) * max(1.0, abs(value))
    if not switches:
        level, _ = yield from noise_steps(fine)
        return math.nan if level is None else max(level, floor)
    levels = []
    for spacing in ([first_step / 2, first_step / 20] if first_step else []) + [fine]:
        for _ in range(SPACINGS + 2):
            if not (yield FLIPS, offsets * spacing).any():
                break
            spacing /= 100
        level, inform = ecnoise((yield offsets * spacing))
        if inform == 1:
            levels.append(level)
    if not levels:
        level, _ = yield from _settled_level(fine)
        levels = [level] if level is not None else []
    return max(max(levels), floor) if levels else math.nan


def calibrate(costs, layout: Layout, theta: np.ndarray, cost: float, method: str, checked_dtype) -> Calibration:
    """Noise and step scale per tensor, from ``SAMPLES`` elements each (fixed, spread, seeded).

    ``costs(indices, values)`` is the evaluator the chunks will use, so the noise measured is the
    noise of the numbers that will be compared.
    """
    eps = float(np.finfo(checked_dtype).eps)
    spacing0 = math.sqrt(eps)
    floor = eps * max(abs(cost), np.finfo(np.float64).tiny)
    tensors, evaluations = [], 0
    for position, tensor in enumerate(layout.tensors):
        rng = np.random.default_rng(position)
        picks = np.sort(rng.choice(tensor.size, size=min(SAMPLES, tensor.size), replace=False)) + tensor.offset
        starts = {int(i): (_element(spacing0, method, floor, cost, max(1.0, abs(float(theta[i])))), float(theta[i]))
                  for i in picks}
        measured = in_step(costs, starts, theta.dtype)
        levels, steps, curvatures = [], [], []
        for i in sorted(measured):
            level, h, mu3, spent = measured[i]
            evaluations += spent
            if level is None:
                continue
            levels.append(level)
            if h is not None:
                steps.append(h)
                curvatures.append(mu3)
        noise = max(float(np.median(levels)), floor) if levels else floor
        eta = max(noise / max(abs(cost), 1e-300), eps)
        if method == "central":
            step_scale = float(np.median(steps)) if steps else 4 * eta ** (1 / 3)
        elif method == "five-point":
            step_scale = 2 * eta ** (1 / 5)  # measured on the seed: 2 balances as 4·eps^(1/5) did with one-ulp noise
        else:
            step_scale = COMPLEX_STEP
        curvature = float(np.median(curvatures)) if curvatures else 0.0
        tensors.append(TensorNoise(tensor.name, noise, step_scale, len(levels), curvature))
    return Calibration(tuple(tensors), evaluations)


def _element(spacing0: float, method: str, floor: float, cost: float, scale: float) -> Steps:
    """One sampled element's calibration as steps: its noise level, and for central differences its
    step (relative to ``scale``) and third derivative; with the evaluations spent."""
    level, spent = yield from noise_steps(spacing0 * scale)
    if level is None or method != "central":
        return level, None, None, spent
    h, mu3, more = yield from central_steps(max(level, floor), cost, scale)
    return level, h / scale, mu3, spent + more


def fixed_calibration(layout: Layout, noise: float, step_scale: float) -> Calibration:
    """One noise level and step scale for every tensor (tests, and models too small to measure)."""
    return Calibration(tuple(TensorNoise(t.name, noise, step_scale, 0) for t in layout.tensors), 0)
