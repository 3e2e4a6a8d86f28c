"""Issue 18.3: the faster of the validated replay and the forward runs, by measurement, and one
note says which and why. The decision is a pure function of measured times (``evaluators.faster``),
tested here with given times; the runs below assert only the note's shape, the evaluator and the
verdict, never a time."""

import json
import re
import time

import numpy as np
import pytest

from gradjob.model.layout import Layout
from gradjob.run import evaluators
from gradjob.trace import Replay

SEED_STYLE = '''
from gradjob.examples.seed_style import forward_propagation_n as forward, backward_propagation_n as backward
'''
NOTE = re.compile(r"evaluator: (traced|forward), [0-9.e+-]+ ms/param vs (replay|forward) [0-9.e+-]+ ms/param(.*)")


@pytest.mark.parametrize("replay, forward, n, expected", [
    (1.05e-3, 0.4e-3, 20_000, ("forward", "evaluator: forward, 0.8 ms/param vs replay 2.1 ms/param, measured on "
                                          "the same perturbations")),
    (1e-5, 1e-3, 533_505, ("traced", "evaluator: traced, 0.02 ms/param vs forward 2 ms/param")),
    (1.4e-3, 1e-3, 10**6, ("traced", "evaluator: traced, 2.8 ms/param vs forward 2 ms/param (the forward is not "
                                     "1.5× faster; the replay finds kinks by its switches)")),
    (7e-4, 2e-5, 57, ("traced", "evaluator: traced, 1.4 ms/param vs forward 0.04 ms/param (the forward would save "
                                "about 0.078 s over 57 parameters; the replay finds kinks by its switches)")),
    (0.6, 0.05, 30_000, ("forward", "evaluator: forward, 100 ms/param vs replay 1,200 ms/param, measured on the same "
                                    "perturbations")),
])
def test_the_decision_from_given_times(replay, forward, n, expected):
    assert evaluators.faster(replay, forward, 2, n) == expected


def test_equal_times_keep_the_replay_and_saving_exactly_the_threshold_takes_the_forward():
    assert evaluators.faster(1e-3, 1e-3, 2, 10**6)[0] == "traced"
    # 1.5× exactly, saving (1.5e-3 − 1e-3)·2·2000 = 2 s: both rules met
    assert evaluators.faster(1.5e-3, 1e-3, 2, 2000)[0] == "forward"
    assert evaluators.faster(1.5e-3, 1e-3, 2, 1999)[0] == "traced"


def submit(gradjob, *options):
    run = gradjob("submit", "--json", "--model", "model.py", "--forward", "forward", "--backward", "backward",
                  "--case", "random", "--layers", "12,10,8,1", "--examples", "16", *options)
    assert run.exit_code == 0, run.stderr
    result = json.loads(run.stdout)
    return result, [note for note in result["notes"] if note.startswith("evaluator:")]


def test_the_seed_style_model_keeps_the_replay(gradjob, write_model):
    write_model(SEED_STYLE)
    result, notes = submit(gradjob)
    assert result["evaluator"] == "traced" and result["passed"] and result["failing"] == []
    assert notes == [], notes   # a kept replay needs no note: "evaluator traced" says it


def slower_replay(monkeypatch, seconds_per_evaluation=0.02):
    """The replay made slower than the forward by a sleep per perturbation (227 parameters: the
    forward then saves about 9 s, over the 2 s that make it worth leaving the replay)."""
    costs = Replay.costs

    def slow(self, indices, values, sign=""):
        time.sleep(seconds_per_evaluation * len(indices))
        return costs(self, indices, values, sign)

    monkeypatch.setattr(Replay, "costs", slow)


def test_a_replay_slower_than_the_forward_gives_way_to_it(gradjob, write_model, monkeypatch):
    write_model(SEED_STYLE)
    slower_replay(monkeypatch)
    result, notes = submit(gradjob)
    assert result["evaluator"] == "forward" and result["passed"] and result["failing"] == []
    assert len(notes) == 1, result["notes"]
    assert NOTE.fullmatch(notes[0]).groups() == ("forward", "replay", ", measured on the same perturbations")
    assert not any("traced fast path is off" in note for note in result["notes"])


def test_a_store_keeps_the_evaluator_it_was_started_with(gradjob, write_model, monkeypatch):
    """The job's identity names the traced path whichever evaluator measured faster, so the same
    job submitted again finds its store (here: finished) instead of being refused as another job's."""
    write_model(SEED_STYLE)
    with monkeypatch.context() as patch:
        slower_replay(patch)
        first, _ = submit(gradjob, "--store", "kept.zarr")
    again, notes = submit(gradjob, "--store", "kept.zarr")
    assert (first["evaluator"], again["evaluator"]) == ("forward", "forward")
    assert notes == []  # the replay measured faster now; the store's own evaluator runs
    assert "this store was started with the forward evaluator; its remaining chunks use it too" in again["notes"]
    assert "verdict of the finished store kept.zarr, no evaluation" in again["notes"]
    assert again["difference"] == first["difference"]


def test_the_directional_screen_measures_no_evaluator(gradjob, write_model):
    """The screen calls the forward alone: a note on the replay's speed would describe nothing it ran."""
    write_model(SEED_STYLE)
    result, notes = submit(gradjob, "--mode", "directional")
    assert (result["evaluator"], result["passed"], notes) == ("forward", True, [])


class FakeReplay:
    """Costs that advance a fake clock by a cost per call plus one per evaluation, by tensor (as a
    replay's batch shares its call's work), recording each call's indices."""

    def __init__(self, layout, per_call, per_evaluation):
        self.layout, self.per_call, self.per_evaluation = layout, per_call, per_evaluation
        self.now, self.calls = 0.0, []

    def clock(self):
        return self.now

    def costs(self, indices, values, sign=""):
        name = self.layout.locate(int(indices[0]))[0]
        self.calls.append((name, indices.copy()))
        self.now += self.per_call + self.per_evaluation[name] * len(indices)
        return np.zeros(len(indices))


def test_the_replay_is_timed_per_tensor_on_consecutive_elements_weighted_by_size(monkeypatch):
    """Each tensor timed on one run of consecutive elements (one call, as a chunk's), the largest
    first, and its time per evaluation weighted by its size: scattered elements charged each its own
    call, and the RNN example then ran on the forward two runs in three."""
    layout = Layout.of({"small": np.zeros(10), "large": np.zeros((30, 20)), "middle": np.zeros(100)})
    fake = FakeReplay(layout, per_call=1e-3, per_evaluation={"small": 1e-4, "large": 2e-5, "middle": 5e-5})
    monkeypatch.setattr(evaluators.time, "perf_counter", fake.clock)
    seconds = evaluators.replay_timing(fake.costs, layout, np.zeros(layout.n_parameters), 1e-4)
    assert [name for name, _ in fake.calls] == ["large", "middle", "small"]
    for name, indices in fake.calls:
        assert np.array_equal(indices, np.arange(indices[0], indices[0] + len(indices)))
        assert layout.locate(int(indices[-1]))[0] == name
    assert [len(indices) for _, indices in fake.calls] == [256, 100, 10]
    each = {"large": 1e-3 / 256 + 2e-5, "middle": 1e-3 / 100 + 5e-5, "small": 1e-3 / 10 + 1e-4}
    assert seconds == pytest.approx((600 * each["large"] + 100 * each["middle"] + 10 * each["small"]) / 710)


def test_the_timing_stops_at_its_budget_after_the_largest_tensors(monkeypatch):
    """Each run is sized from the validation's time per evaluation to what is left of the budget."""
    layout = Layout.of({"small": np.zeros(400), "large": np.zeros(1000), "middle": np.zeros(500)})
    fake = FakeReplay(layout, per_call=0.0, per_evaluation={"small": 2**-10, "large": 2**-10, "middle": 2**-8})
    monkeypatch.setattr(evaluators.time, "perf_counter", fake.clock)
    seconds = evaluators.replay_timing(fake.costs, layout, np.zeros(layout.n_parameters), 2**-9)
    # 256 elements in 0.25 s, then 128 (what the 0.25 s left allows at the validation's 2 ms each), 0.5 s
    assert [(name, len(indices)) for name, indices in fake.calls] == [("large", 256), ("middle", 128)]
    assert seconds == (1000 * 2**-10 + 500 * 2**-8) / 1500
