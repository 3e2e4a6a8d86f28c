"""Issue 21: the report is typed. Its JSON is one serializer of the dataclasses in
``report/model.py`` (keys exactly their fields, nothing hand-listed), it parses back into the same
values at the edge, and the renderers read attributes, never string keys of a dict.

Outcomes are real: the seed's planted bugs checked in-process (full, and its directional screen).
"""

import dataclasses
import json
import re
from pathlib import Path

import pytest
from conftest import seed_arrays

import gradjob
from gradjob.model import networks
from gradjob.numerics.reduce import WORST_KEPT
from gradjob.report import model
from gradjob.report import text as report
from gradjob.report.model import Report

pytestmark = pytest.mark.usefixtures("private_tmp")


@pytest.fixture(scope="module")
def outcomes():
    arrays = seed_arrays()
    full = gradjob.check(networks.forward_propagation_n, networks.backward_propagation_n, *arrays, epsilon=1e-7,
                         fast=False)
    screen = gradjob.check(networks.forward_propagation_n, networks.backward_propagation_n, *arrays, epsilon=1e-7,
                           mode="directional")
    return {"full": full, "directional": screen}


def keys(value) -> set[str]:
    return {f.name for f in dataclasses.fields(value) if not (f.metadata.get("optional") and
                                                              getattr(value, f.name) is None)}


@pytest.mark.parametrize("mode", ["full", "directional"])
def test_json_keys_are_exactly_the_typed_fields(outcomes, mode):
    typed = model.of(outcomes[mode])
    data = report.to_json(outcomes[mode])
    assert data == typed.to_json() and list(data) == [f.name for f in dataclasses.fields(Report)
                                                      if f.name in keys(typed)]
    assert ("forward_passes_per_tensor" in data) == (mode == "directional")
    assert set(data["precision"]) == keys(typed.precision) == {"checked", "model", "note", "text"}
    assert list(data["tensors"]) == ["W1", "b1", "W2", "b2", "W3", "b3"]
    for name, t in typed.tensors.items():
        row = data["tensors"][name]
        assert list(row) == [f.name for f in dataclasses.fields(t) if f.name in keys(t)]
        assert ("directions" in row) == (mode == "directional")
        assert set(row["kinks"]) == keys(t.kinks) == {"count", "elements"}
        assert set(row["suspects"]) == keys(t.suspects) == {f.name for f in dataclasses.fields(gradjob.types.Suspects)
                                                            } | {"wrong_elements"}
        for w, typed_w in zip(row["worst"], t.worst, strict=True):
            assert set(w) == keys(typed_w) == {"index", "analytic", "numerical", "abs_error"}
    if mode == "directional":
        assert data["tensors"]["W1"]["directions"] == {"count": 3, "kinks": [], "wrong": []}


@pytest.mark.parametrize("mode", ["full", "directional"])
def test_the_json_parses_back_into_the_same_report(outcomes, mode):
    typed = model.of(outcomes[mode])
    text = json.dumps(typed.to_json())
    again = Report.from_json(json.loads(text))
    assert again == typed and json.dumps(again.to_json()) == text
    assert report.to_text(again) == report.to_text(outcomes[mode])


def test_a_report_that_is_not_one_is_refused_naming_the_key(outcomes):
    data = model.of(outcomes["full"]).to_json()
    with pytest.raises(ValueError, match=re.escape("Report: missing keys ['passed']")):
        Report.from_json({k: v for k, v in data.items() if k != "passed"})
    with pytest.raises(ValueError, match=re.escape("Report: unknown keys ['verdict']")):
        Report.from_json({**data, "verdict": "fail"})
    bad = json.loads(json.dumps(data))
    bad["tensors"]["W2"]["difference"] = "0.3"
    with pytest.raises(ValueError, match=re.escape("Report.tensors.W2.difference: expected float, got '0.3'")):
        Report.from_json(bad)
    bad["tensors"]["W2"]["difference"] = True
    with pytest.raises(ValueError, match=re.escape("Report.tensors.W2.difference: expected float, got True")):
        Report.from_json(bad)


def test_worst_elements_are_the_tensors_own_never_padded(outcomes):
    """b3 has one element, b2 and W3 three: their worst lists hold that many, each element once."""
    tensors = model.of(outcomes["full"]).tensors
    assert {n: len(t.worst) for n, t in tensors.items()} == {"W1": 5, "b1": 5, "W2": 5, "b2": 3, "W3": 3, "b3": 1}
    for t in tensors.values():
        assert len(t.worst) == min(t.checked, WORST_KEPT)
        assert len({w.index for w in t.worst}) == len(t.worst)
    assert [w.index for w in tensors["b3"].worst] == [(0, 0)]


RENDERERS = ("text.py", "junit.py", "html.py", "plots.py", "outputs.py")


def test_renderers_read_no_string_keys():
    """No ``t["difference"]`` or ``.get("notes")``: a renderer reads the typed report's attributes."""
    names = set()
    for kind in (Report, model.TensorRow, model.TensorSuspects, model.Kinks, model.WorstElement, model.Directions,
                 model.PrecisionText):
        names |= {f.name for f in dataclasses.fields(kind)}
    read = re.compile(r"""(\[|\.get\()["'](""" + "|".join(sorted(names)) + r""")["']""")
    folder = Path(model.__file__).parent
    for name in RENDERERS:
        assert not read.findall((folder / name).read_text()), name
