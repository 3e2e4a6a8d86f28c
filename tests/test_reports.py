"""Issue 13: reports a CI system and a person both read: `gradjob report` writes them from a finished
store, JUnit in the common schema's shape with each tensor's numbers, an HTML page that says what
the text says, with heatmap axes in the matrix's own indices."""

import html
import json
import re
import socket
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from gradjob import html as html_page

RUNTIME = ("evaluated_chunks", "notes", "seconds")


@pytest.fixture
def seed_store(gradjob, tmp_path, cluster_address):
    """The seed's planted bugs at ε = 1e-7, with JSON, JUnit and HTML written by submit."""
    run = gradjob("submit", "--epsilon", "1e-7", "--store", "seed.zarr", "--scheduler", cluster_address,
                  "--json-file", "submit.json", "--junit", "submit.xml", "--html", "submit.html")
    assert run.exit_code == 1, run.stderr
    return tmp_path


def test_report_writes_the_files_submit_wrote(gradjob, seed_store):
    run = gradjob("report", "seed.zarr", "--json-file", "report.json", "--junit", "report.xml", "--html", "report.html")
    assert run.exit_code == 1
    submitted, reported = (json.loads((seed_store / name).read_text()) for name in ("submit.json", "report.json"))
    assert {k: v for k, v in submitted.items() if k not in RUNTIME} == {k: v for k, v in reported.items()
                                                                         if k not in RUNTIME}
    for name in ("report.xml", "report.html"):
        assert (seed_store / name).stat().st_size > 1000
    assert gradjob("report", "--help").stdout.count("--fast") == 0  # options report ignored are gone


def test_junit_has_one_name_a_level_the_schemas_attributes_and_each_tensors_numbers(seed_store):
    root = ET.parse(seed_store / "submit.xml").getroot()
    assert root.tag == "testsuites" and root.get("name") == "gradjob check seed"
    assert (root.get("tests"), root.get("failures"), root.get("errors")) == ("7", "3", "0")
    assert float(root.get("time")) > 0
    (suite,) = root
    assert suite.tag == "testsuite" and suite.get("name") == "seed"
    assert set(suite.attrib) == {"name", "tests", "failures", "errors", "time", "timestamp", "hostname"}
    assert suite.get("hostname") == socket.gethostname()
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", suite.get("timestamp"))
    cases = list(suite)
    assert [c.get("name") for c in cases] == ["overall difference"] + [f"tensor {t}" for t in
                                                                       ("W1", "b1", "W2", "b2", "W3", "b3")]
    for case in cases:
        assert case.tag == "testcase" and set(case.attrib) == {"classname", "name", "time"}
        assert [child.tag for child in case] in (["system-out"], ["failure", "system-out"])
    assert cases[0].find("failure").get("message") == "wrong: b1, W2; difference 2.850932e-01"
    assert cases[3].find("failure").get("message") == "dW2 is 2.00× the numerical gradient"
    b3 = cases[6].find("system-out").text
    assert b3.startswith("difference 2.457") and "; threshold 2.8e-06; resolution 5.7e-06; noise " in b3
    assert "re-verified 0 (agrees 0, kink 0, near-kink 0, wrong 0, unresolved 0)" in b3
    assert b3.endswith("verdict: ok    (above 2e-07 but within the forward's noise, threshold 2.8e-06)")


def test_html_says_what_the_text_says(gradjob, seed_store):
    page = (seed_store / "submit.html").read_text()
    text = gradjob("report", "seed.zarr").stdout
    assert "<title>gradjob check seed</title>" in page and "<h1>gradjob check seed</h1>" in page
    assert "FAIL: difference 2.8509e-01; wrong: b1, W2" in page
    assert "precision: checked in float64; step: ε = 1e-07, fixed; central; evaluator forward" in page
    assert re.search(r"run \d{4}-\d\d-\d\dT[\d:]+\+00:00; gradjob 0\.1\.0, numpy ", page)
    for line in text.splitlines():  # every tensor's verdict words, as the text prints them
        match = re.match(r"  (W\d|b\d) .*?\d\.\de[-+]\d\d  (ok.*|FAIL.*)$", line)
        if match:
            assert f"<td>{html.escape(match.group(2))}</td>" in page, match.group(2)
    assert "within the forward&#x27;s noise" in page
    assert "<td>W2[2, 0]</td><td>1.83160330e+00</td><td>9.15801701e-01</td>" in page  # worst elements of W2
    assert "The forward's noise resolves only relative errors above: dW1 " in page


def test_heatmap_axes_read_as_the_matrixs_own_rows_and_columns():
    error = np.arange(1, 7, dtype=float).reshape(2, 3)  # 250×600 pooled in blocks of 125×200
    figure = html_page.heatmap_figure(error, "W1", (250, 600), 125, 200)
    axes = figure.axes[0]
    assert axes.get_xlim() == (-0.5, 599.5) and axes.get_ylim() == (249.5, -0.5)
    for ticks, stop in ((axes.get_xticks(), 600), (axes.get_yticks(), 250)):
        shown = [t for t in ticks if -0.5 <= t <= stop - 0.5]
        assert shown and all(float(t).is_integer() for t in shown)
    assert (axes.get_xlabel(), axes.get_ylabel()) == ("column of W1", "row of W1")
    assert axes.get_title() == "W1 250×600 (max over 125×200 blocks)"


def test_difference_plot_marks_each_tensors_own_threshold():
    result = {"threshold": 2e-7, "tensors": {
        "W1": {"difference": 1e-9, "passed": True, "threshold": 2e-7},
        "b1": {"difference": 3e-7, "passed": True, "threshold": 3e-6},
        "W2": {"difference": 0.3, "passed": False, "threshold": 2e-7}}}
    axes = html_page.difference_figure(result).axes[0]
    assert [label.get_text() for label in axes.get_legend().get_texts()] == [
        "asked threshold 2e-07", "its own threshold (the forward's noise)"]
    (marks,) = axes.collections
    assert marks.get_offsets().tolist() == [[1.0, 3e-6]]
