"""The re-verification stage: the suspects of every tensor, found by streaming the store, are
evaluated on a ladder of smaller steps on the executor, classed (see ``verify``) and their
verdicts stored, so that ``report`` and a resumed run show and keep them."""

from __future__ import annotations

import contextlib

import numpy as np

from gradjob.errors import InputError
from gradjob.numerics import verify
from gradjob.numerics.reduce import IncompleteStore, find_suspects
from gradjob.run import tasks
from gradjob.run.progress import Progress
from gradjob.storage import store, verification
from gradjob.types import StoreMeta

LADDER_BATCH = 64  # suspects per verification task


@contextlib.contextmanager
def intact(path: str, meta: StoreMeta):
    """Streaming a store whose chunks are all marked done: a gap is corruption, said in one line."""
    try:
        yield
    except IncompleteStore as gap:
        raise InputError(f"store {path} is corrupted: chunk data for {meta.layout.describe(gap.index)} is missing "
                         "although its chunk is marked done; resubmit with --overwrite") from None


def verify_suspects(group, path: str, meta: StoreMeta, context: tasks.TaskContext, executor,
                    progress: Progress) -> dict:
    """Re-verify the worst suspects of every tensor on the executor; store and return the verdicts."""
    grad_eps = meta.layout.gradient_eps
    with intact(path, meta):
        heaps = find_suspects(meta.layout, lambda a, b: store.iter_blocks(group, a, b), grad_eps)
    picked = [item for heap in heaps.values() for item in heap.picked()]
    arrays = {name: np.empty(0, dtype=np.float64) for name in verification.VERIFY_ARRAYS}
    arrays["index"], arrays["klass"] = np.empty(0, dtype=np.int64), np.empty(0, dtype=np.uint8)
    if picked and meta.method != "complex-step":
        progress.note(f"re-verifying {len(picked)} element(s) whose numerical gradient disagrees beyond its noise, "
                      "on smaller steps")
        batches = [(tuple(i for i, _, _ in picked[k:k + LADDER_BATCH]),
                    tuple(h for _, h, _ in picked[k:k + LADDER_BATCH])) for k in range(0, len(picked), LADDER_BATCH)]
        parts = executor.map(tasks.evaluate_ladders, context, batches)
        arrays = {name: np.concatenate([p[name] for p in parts]) for name in parts[0] if all(name in p for p in parts)}
        grads = [g for _, _, g in picked]  # in the order of the batches, as the ladders come back
        decide = verify.resolution(meta.precision.checked)
        noise = _own_noise(meta, arrays)
        verdicts = [verify.classify(float(g), float(arrays["cost"][k]), arrays["cost_plus"][k], arrays["cost_minus"][k],
                                    arrays["step_plus"][k], arrays["step_minus"][k], float(noise[k]), grad_eps, decide,
                                    *_switches(arrays, k))
                    for k, g in enumerate(grads)]
        arrays["klass"] = np.array([v.klass for v in verdicts], dtype=np.uint8)
        arrays["estimate"] = np.array([v.estimate for v in verdicts])
        arrays["tolerance"] = np.array([v.tolerance for v in verdicts])
    verification.write_verification(group, arrays)
    return verification.verdicts_of(arrays)


def _switches(arrays: dict, k: int) -> tuple:
    """Suspect k's switches flipped per rung where the forward is traced and its chunk's replay held
    (kinks are then found by them); (None, None) where the slopes must decide (-1: not known)."""
    if "flip_plus" not in arrays or arrays["flip_plus"][k].min() < 0 or arrays["flip_minus"][k].min() < 0:
        return None, None
    return arrays["flip_plus"][k], arrays["flip_minus"][k]


def _own_noise(meta: StoreMeta, arrays: dict) -> np.ndarray:
    """Each suspect's noise as measured along its own coordinate, where that is above its tensor's
    (a suspect reached by a saturated output is far noisier than its tensor's sample); never below
    the tensor's, which the first steps were chosen and judged by."""
    noise_of = {t.name: t.noise for t in meta.calibration.tensors}
    tensor = np.array([noise_of[meta.layout.locate(int(i))[0]] for i in arrays["index"]])
    own = arrays.get("noise")
    return tensor if own is None else np.fmax(own, tensor)
