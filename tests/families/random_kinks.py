"""Random correct piecewise-linear networks sitting on their kinks, and their broken twins (issue 17).

Each case, drawn from its seed: LINEAR→act→…→LINEAR→SIGMOID with cross-entropy, two or three hidden
layers, each act one of ReLU (``np.maximum``), ReLU as ``Z * (Z > 0)``, leaky ReLU (``np.where``),
``abs`` and max-pooling over pairs of units; float64 or float32 parameters; kinks planted through
the biases at distances 0, 1e-14 … 1e-8 from a pre-activation's switch (a tie of a pooled pair) in
one, two or three consecutive layers, for the same example or for different ones; and, in some
float64 cases, one output saturated near 1 (pre-activation 12 to 18) with label 0, so that
``log(1 - A)`` carries round-off far above one ulp of the cost (in float32, or beyond 18 in float64,
that round-off makes gradjob check the model in float32, which no 1 % error survives). Float32 parameters are checked in float64, where a float32 bias can put a
pre-activation only as near its kink as float32 allows (about 1e-8). The broken twin scales one
random tensor's gradient by 1.01.

A case passes when the correct backward passes and the broken twin fails naming its tensor alone:

    python -m tests.families.random_kinks --cases 200 [--seed 0]

prints the false alarms (any tensor failing that is not broken) and the share of broken tensors
named. Standalone apart from that runner: numpy only.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field

import numpy as np

ACTIVATIONS = ("relu", "relu_mask", "leaky", "abs", "maxpool")
DISTANCES = (0.0, 1e-14, 1e-13, 1e-12, 1e-11, 1e-10, 1e-9, 1e-8)
FACTOR = 1.01


def sigmoid(Z):
    return 1 / (1 + np.exp(-Z))


def activate(kind, Z):
    if kind == "relu":
        return np.maximum(0, Z)
    if kind == "relu_mask":
        return Z * (Z > 0)
    if kind == "leaky":
        return np.where(Z > 0, Z, 0.01 * Z)
    if kind == "abs":
        return np.abs(Z)
    n, m = Z.shape
    return Z.reshape(n // 2, 2, m).max(axis=1)


def activate_backward(kind, dA, Z):
    if kind in ("relu", "relu_mask"):
        return dA * (Z > 0)
    if kind == "leaky":
        return dA * np.where(Z > 0, 1.0, 0.01)
    if kind == "abs":
        return dA * np.sign(Z)
    first = Z[0::2] >= Z[1::2]  # ties go to the first of the pair, as max does
    dZ = np.zeros_like(Z)
    dZ[0::2] = dA * first
    dZ[1::2] = dA * ~first
    return dZ


@dataclass
class Case:
    seed: int
    dtype: str
    activations: tuple
    X: np.ndarray
    Y: np.ndarray
    parameters: dict
    broken: str
    kinks: list = field(default_factory=list)   # (layer, unit, example, planted distance, realised distance)
    saturated: float | None = None              # the output pre-activation pushed towards 1, if any

    def forward(self, X, Y, parameters):
        return network_forward(self.activations, X, Y, parameters)

    def backward(self, X, Y, cache):
        return network_backward(self.activations, X, Y, cache)

    def broken_backward(self, X, Y, cache):
        grads = network_backward(self.activations, X, Y, cache)
        grads["d" + self.broken] = grads["d" + self.broken] * FACTOR
        return grads

    def describe(self) -> str:
        kinks = ", ".join(f"L{l}u{u}e{e}@{d:.0e}" for l, u, e, d, _ in self.kinks)
        sat = f", output at {self.saturated:g}" if self.saturated is not None else ""
        return f"seed {self.seed}: {self.dtype} {'-'.join(self.activations)}, kinks {kinks}{sat}, broken {self.broken}"


def network_forward(activations, X, Y, parameters):
    m = X.shape[1]
    A, cache = X, []
    for l, kind in enumerate(activations, start=1):
        Z = np.dot(parameters[f"W{l}"], A) + parameters[f"b{l}"]
        cache.append((A, Z))
        A = activate(kind, Z)
    L = len(activations) + 1
    Z = np.dot(parameters[f"W{L}"], A) + parameters[f"b{L}"]
    AL = sigmoid(Z)
    cache.append((A, Z))
    logprobs = np.multiply(-np.log(AL), Y) + np.multiply(-np.log(1 - AL), 1 - Y)
    cost = 1. / m * np.sum(logprobs)
    return cost, (cache, AL, parameters)


def network_backward(activations, X, Y, cache):
    layers, AL, parameters = cache
    m = X.shape[1]
    L = len(activations) + 1
    dZ = AL - Y
    grads = {}
    for l in range(L, 0, -1):
        A_prev, _ = layers[l - 1]
        grads[f"dW{l}"] = 1. / m * np.dot(dZ, A_prev.T)
        grads[f"db{l}"] = 1. / m * np.sum(dZ, axis=1, keepdims=True)
        if l > 1:
            dA = np.dot(parameters[f"W{l}"].T, dZ)
            dZ = activate_backward(activations[l - 2], dA, layers[l - 2][1])
    return grads


def _plant(wa: float, target: float, dtype):
    """A bias b (in ``dtype``) with fl(wa + b) as near ``target`` as the dtype allows."""
    kind = np.dtype(dtype).type
    b = kind(target - wa)
    for _ in range(8):  # nudge by ulps until the rounded sum is the target, where it can be
        z = float(np.float64(wa) + np.float64(b)) if kind is np.float32 else float(kind(wa) + b)
        if z == target:
            break
        b = np.nextafter(b, kind(np.inf) if z < target else kind(-np.inf))
    return b


def make_case(seed: int) -> Case:
    rng = np.random.default_rng(seed)
    dtype = "float64" if rng.random() < 0.6 else "float32"
    kind = np.dtype(dtype).type
    hidden = int(rng.integers(2, 4))
    activations = tuple(str(a) for a in rng.choice(ACTIVATIONS, size=hidden))
    m = int(rng.integers(5, 10))
    dims = [int(rng.integers(3, 6))]
    for act in activations:
        dims.append(2 * int(rng.integers(2, 4)) if act == "maxpool" else int(rng.integers(3, 7)))
    widths_out = [d // 2 if a == "maxpool" else d for d, a in zip(dims[1:], activations)]
    X = rng.standard_normal((dims[0], m)).astype(kind)
    Y = (rng.random((1, m)) < 0.5).astype(kind)
    parameters = {}
    fan_in = dims[0]
    for l, n in enumerate(dims[1:], start=1):
        parameters[f"W{l}"] = (rng.standard_normal((n, fan_in)) * np.sqrt(2.0 / fan_in)).astype(kind)
        parameters[f"b{l}"] = (rng.standard_normal((n, 1)) * 0.1).astype(kind)
        fan_in = widths_out[l - 1]
    L = hidden + 1
    parameters[f"W{L}"] = (rng.standard_normal((1, fan_in)) * np.sqrt(2.0 / fan_in)).astype(kind)
    parameters[f"b{L}"] = (rng.standard_normal((1, 1)) * 0.1).astype(kind)

    # kinks: in `count` consecutive hidden layers from `first`, for one example or for different ones
    count = int(rng.integers(1, hidden + 1))
    first = int(rng.integers(1, hidden - count + 2))
    same = bool(rng.random() < 0.6)
    example = int(rng.integers(m))
    planned = {}
    for l in range(first, first + count):
        e = example if same else int(rng.integers(m))
        d = float(rng.choice(DISTANCES)) * (1 if rng.random() < 0.5 else -1)
        unit = int(rng.integers(widths_out[l - 1]))
        planned[l] = (unit, e, d)
    kinks = []
    A = X.astype(np.float64) if dtype == "float32" else X
    for l, act in enumerate(activations, start=1):
        W, b = parameters[f"W{l}"], parameters[f"b{l}"]
        if l in planned:
            unit, e, d = planned[l]
            WA = np.dot(W.astype(A.dtype), A)
            if act == "maxpool":  # a tie of the pair (2·unit, 2·unit + 1), off by d
                partner = float(WA[2 * unit + 1, e] + b[2 * unit + 1, 0])
                b[2 * unit, 0] = _plant(WA[2 * unit, e], partner + d, dtype)
            else:
                b[unit, 0] = _plant(WA[unit, e], d, dtype)
        Z = np.dot(W.astype(A.dtype), A) + b.astype(A.dtype)
        if l in planned:
            unit, e, d = planned[l]
            realised = Z[2 * unit, e] - Z[2 * unit + 1, e] if act == "maxpool" else Z[unit, e]
            kinks.append((l, unit, e, d, float(realised)))
        A = activate(act, Z)

    saturated = None
    if dtype == "float64" and rng.random() < 0.6:  # the largest output near 1, its label 0: log(1 - A) is noisy
        WA = np.dot(parameters[f"W{L}"].astype(A.dtype), A)[0]
        top = int(np.argmax(WA))
        saturated = float(rng.choice((12.0, 15.0, 18.0)))
        parameters[f"b{L}"][0, 0] = kind(saturated - WA[top])
        Y[0, top] = 0
    broken = str(rng.choice(sorted(parameters)))
    return Case(seed, dtype, activations, X, Y, parameters, broken, kinks, saturated)


def run_case(case: Case, **options) -> tuple[list, list]:
    """(tensors failing for the correct backward, tensors failing for the broken twin)."""
    import gradjob

    outcomes = []
    for backward in (case.backward, case.broken_backward):
        params = {k: v.copy() for k, v in case.parameters.items()}
        outcome = gradjob.check(case.forward, backward, case.X, case.Y, params, **options)
        outcomes.append(list(outcome.reduction.failing))
    return outcomes[0], outcomes[1]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0, help="the first case's seed; cases take seed, seed+1, …")
    parser.add_argument("--verbose", action="store_true", help="one line per case")
    args = parser.parse_args(argv)
    false_alarms, named, started = [], 0, time.perf_counter()
    for seed in range(args.seed, args.seed + args.cases):
        case = make_case(seed)
        correct, broken = run_case(case)
        wrong = sorted(set(correct) | (set(broken) - {case.broken}))
        if wrong:
            false_alarms.append(seed)
            print(f"FALSE ALARM {wrong}: {case.describe()}", flush=True)
        if case.broken in broken:
            named += 1
        else:
            print(f"missed {case.broken}: {case.describe()}", flush=True)
        if args.verbose:
            print(f"seed {seed}: correct fails {correct}, broken twin fails {broken}", flush=True)
    n = args.cases
    print(f"{n} cases (seeds {args.seed}…{args.seed + n - 1}): {len(false_alarms)} false alarm(s), broken tensor "
          f"named in {named}/{n} ({100 * named / n:.1f} %), {time.perf_counter() - started:.0f} s")
    return 0 if not false_alarms and named >= 0.95 * n else 1


if __name__ == "__main__":
    sys.exit(main())
