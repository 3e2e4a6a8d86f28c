"""Issue 19: what gradjob reads back from files it did not just write — a Zarr case's attributes,
a history.jsonl, a store's attributes and chunks — is validated: one line, exit 2, nothing changed."""

import json

import numpy as np
import pytest
import zarr

from gradjob.model.cases import random_case


@pytest.fixture
def zarr_case(tmp_path):
    case = random_case([3, 2, 1], 4, 0)
    group = zarr.open_group(tmp_path / "case.zarr", mode="w")
    for name, array in {"X": case.X, "Y": case.Y, **case.parameters}.items():
        group.create_array(name, data=array)
    return tmp_path / "case.zarr"


@pytest.mark.parametrize("order, shown", [(5, "5"), ([1, "W1"], '[1, "W1"]'), ("W1", '"W1"'),
                                          ({"W1": 0}, '{"W1": 0}')])
def test_zarr_case_whose_parameters_attribute_is_not_a_list_of_names(gradjob, zarr_case, order, shown):
    zarr.open_group(zarr_case, mode="r+").attrs["parameters"] = order
    run = gradjob("submit", "--model", "network", "--case", zarr_case, "--dry-run")
    assert (run.exit_code, run.stdout, run.stderr) == (2, "", (
        f"gradjob: error: case store {zarr_case}: its 'parameters' attribute must be a list of array names; "
        f"got {shown}\n"))


def test_zarr_case_with_a_good_parameters_attribute_still_loads(gradjob, zarr_case):
    zarr.open_group(zarr_case, mode="r+").attrs["parameters"] = ["W1", "b1", "W2", "b2"]
    run = gradjob("submit", "--model", "network", "--case", zarr_case, "--dry-run")
    assert run.exit_code == 0, run.stderr
    assert "plan    11 parameters" in run.stdout


ROW = {"time": "2026-12-01T02:00:00+00:00", "check": "seed", "verdict": "pass", "difference": 1e-8, "failing": []}


@pytest.mark.parametrize("line", ['[1, 2]', '{"check": "seed"}', '"text"', 'not json at all',
                                  json.dumps({**ROW, "time": 5}), json.dumps({**ROW, "failing": "W1"}),
                                  json.dumps({**ROW, "difference": "small"})])
def test_history_with_a_line_that_is_not_a_row(gradjob, tmp_path, line):
    (tmp_path / "history.jsonl").write_text(json.dumps(ROW) + "\n" + line + "\n" + json.dumps(ROW) + "\n")
    run = gradjob("history", tmp_path)
    assert (run.exit_code, run.stdout) == (2, "")
    assert run.stderr == (f"gradjob: error: {tmp_path}/history.jsonl: line 2 is not a history row (a JSON object "
                          f"with a time, a check and a verdict): {line[:80]!r}; remove or repair that line\n")


def test_history_skips_a_last_line_cut_by_a_crash(gradjob, tmp_path):
    (tmp_path / "history.jsonl").write_text(json.dumps(ROW) + "\n" + json.dumps(ROW)[:30])
    run = gradjob("history", tmp_path)
    assert run.exit_code == 0, run.stderr
    assert run.stdout.splitlines()[1:] == ["2026-12-01T02:00:00+00:00  seed                       1.0000e-08  PASS"]
