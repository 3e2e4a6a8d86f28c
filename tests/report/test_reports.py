"""Issue 13: reports a CI system and a person both read.

- ``gradjob report STORE --json-file --junit --html`` writes, from a finished store, the files
  ``submit`` wrote for it (the same but for what only a run knows: its wall times and notes);
- JUnit XML valid against the common schema (Jenkins xunit's junit-10.xsd, written out below as
  assertions), one name a level, time/timestamp/hostname, each tensor's numbers and why it passes;
- an HTML page that says everything the text report says, without contradicting it, and more:
  run time, versions, thresholds, suspects, kinks by class, worst elements, the difference plot
  and heatmaps whose axes read as the matrix's own indices.

Stores are real: the seed's planted bugs submitted through the CLI to the session's cluster, and
a ReLU network sitting on its kinks (tests/families/stacked_kinks.py), correct and with dW2
scaled by 1.05, checked in-process.
"""

import base64
import datetime
import json
import re
import socket
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import family
from typer.testing import CliRunner

import gradjob
from gradjob.cli.app import app
from gradjob.model.layout import Layout, Tensor
from gradjob.numerics import verify
from gradjob.report import html as html_page
from gradjob.report import junit, model, outputs, plots
from gradjob.report import text as report
from gradjob.report.outputs import Entry, ReportFiles
from gradjob.storage import store, verification

RUNTIME = ("evaluated_chunks", "notes", "seconds")  # what only a run knows, not its store
PNG = b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------------------------------------
# stores and their reports


@pytest.fixture(scope="module")
def seed(tmp_path_factory, cluster_address):
    """The seed's planted bugs at ε = 1e-7: submit writes JSON, JUnit and HTML; then report
    writes them again from the finished store."""
    folder = tmp_path_factory.mktemp("seed")
    runner = CliRunner()

    def cli(*args):
        return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)

    submitted = cli("submit", "--epsilon", "1e-7", "--store", folder / "seed.zarr", "--scheduler", cluster_address,
                    "--json-file", folder / "submit.json", "--junit", folder / "submit.xml",
                    "--html", folder / "submit.html")
    assert submitted.exit_code == 1, submitted.stderr
    reported = cli("report", folder / "seed.zarr", "--json-file", folder / "report.json",
                   "--junit", folder / "report.xml", "--html", folder / "report.html")
    assert reported.exit_code == 1, reported.stderr
    return SimpleNamespace(folder=folder, text=reported.stdout, **{
        f"{run}_{kind}": (folder / f"{run}.{kind}").read_text()
        for run in ("submit", "report") for kind in ("json", "xml", "html")})


@pytest.fixture(scope="module")
def kinks(tmp_path_factory):
    """The stacked-kinks ReLU network, correct ("kinks": passes, W1 above the asked threshold within
    its noise, with kinks, near-kinks and elements that agree on smaller steps) and with dW2 1.05×
    ("broken": W2 fails with wrong elements and kinks; "screen": its directional screen, no store),
    checked in-process; reports written as by ``submit``."""
    folder = tmp_path_factory.mktemp("kinks")
    sk = family("stacked_kinks")
    X, Y, parameters = sk.case_kinks()
    runs = {}
    for name, backward, options in (("kinks", sk.backward, {"store": str(folder / "kinks.zarr")}),
                                    ("broken", sk.backward_W2_x1_05, {"store": str(folder / "broken.zarr")}),
                                    ("screen", sk.backward_W2_x1_05, {"mode": "directional"})):
        outcome = gradjob.check(sk.forward, backward, X, Y, parameters, **options)
        entry = Entry.of(name, outcome)
        outputs.write(ReportFiles(None, str(folder / f"{name}.xml"), str(folder / f"{name}.html")), [entry])
        runs[name] = SimpleNamespace(outcome=outcome, entry=entry, result=report.to_json(outcome),
                                     report=model.of(outcome),
                                     text=report.to_text(outcome), store=outcome.store,
                                     xml=(folder / f"{name}.xml").read_text(),
                                     html=(folder / f"{name}.html").read_text())
    w1 = runs["kinks"].result["tensors"]["W1"]
    # what the family is for; the tests below need each of these
    assert runs["kinks"].result["passed"] and w1["passed"] and w1["difference"] > 2e-7, w1
    # (near-kinks: since kinks are found by the replay's switches, this family has none; the synthetic
    # store of test_heatmap_of_a_real_store has some)
    assert w1["suspects"]["kink"] and w1["suspects"]["agrees"], w1
    broken = runs["broken"].result
    assert broken["failing"] == ["W2"] and broken["tensors"]["W2"]["suspects"]["wrong"] > 0
    assert broken["tensors"]["W2"]["kinks"]["count"] > 0
    runs["folder"] = folder
    return runs


def verified_by_class(path: str) -> dict[str, dict[int, list[str]]]:
    """Per tensor and verify class, the stored re-verified suspects as ``W1[2, 3]``, by θ index."""
    group = store.open_existing(path)
    layout = store.metadata(group).layout
    out = {name: {} for name in layout.names}
    for i, verdict in sorted(verification.read_verification(group, path).items()):
        name = layout.locate(i)[0]
        out[name].setdefault(verdict.klass, []).append(layout.describe(i))
    return out


# ---------------------------------------------------------------------------------------------
# the common JUnit schema (Jenkins xunit-plugin junit-10.xsd), as assertions


SUREFIRE_TIME = re.compile(r"(([0-9]{0,3},)*[0-9]{3}|[0-9]{0,3})*(\.[0-9]*)?")
RESULT = (set(), {"type", "message"}, set())
RERUN = ({"type"}, {"message"}, {"stackTrace", "system-out", "system-err"})
JUNIT10 = {  # element: (required attributes, other allowed attributes, allowed child elements)
    "testsuites": (set(), {"name", "time", "tests", "failures", "errors"}, {"testsuite"}),
    "testsuite": ({"name", "tests", "failures", "errors"},
                  {"group", "time", "skipped", "timestamp", "hostname", "id", "package", "file", "log", "url"},
                  {"testsuite", "properties", "testcase", "system-out", "system-err"}),
    "testcase": ({"name"}, {"time", "classname", "group"},
                 {"skipped", "error", "failure", "rerunFailure", "rerunError", "flakyFailure", "flakyError",
                  "system-out", "system-err"}),
    "failure": RESULT, "error": RESULT, "skipped": RESULT,
    "rerunFailure": RERUN, "rerunError": RERUN, "flakyFailure": RERUN, "flakyError": RERUN,
    "properties": (set(), set(), {"property"}), "property": ({"name", "value"}, set(), set()),
    "system-out": (set(), set(), set()), "system-err": (set(), set(), set()), "stackTrace": (set(), set(), set()),
}
MIXED = {"failure", "error", "skipped", "system-out", "system-err", "stackTrace",  # text content allowed
         "rerunFailure", "rerunError", "flakyFailure", "flakyError"}


def assert_junit10(element: ET.Element) -> None:
    assert element.tag in JUNIT10, element.tag
    required, optional, children = JUNIT10[element.tag]
    assert required <= set(element.attrib) <= required | optional, (element.tag, element.attrib)
    if element.tag in ("testsuites", "testsuite") and "time" in element.attrib:
        assert SUREFIRE_TIME.fullmatch(element.get("time")), element.get("time")
    if element.tag not in MIXED:
        assert not (element.text or "").strip(), (element.tag, element.text)
    for child in element:
        assert child.tag in children, (element.tag, child.tag)
        assert not (child.tail or "").strip()
        assert_junit10(child)


def assert_junit_file(text: str) -> ET.Element:
    """Valid junit-10, counts that add up, time on every suite and the root, timestamp (ISO 8601,
    with its zone) and hostname on every suite (junit-10 allows neither on the root)."""
    root = ET.fromstring(text.encode())
    assert root.tag == "testsuites" and "time" in root.attrib
    assert_junit10(root)
    for suite in root:
        assert {"time", "timestamp", "hostname"} <= set(suite.attrib)
        cases = suite.findall("testcase")
        assert suite.get("tests") == str(len(cases))
        assert suite.get("failures") == str(sum(c.find("failure") is not None for c in cases))
        assert suite.get("errors") == str(sum(c.find("error") is not None for c in cases))
        assert datetime.datetime.fromisoformat(suite.get("timestamp")).tzinfo is not None
        assert suite.get("hostname") == socket.gethostname()
        assert all(SUREFIRE_TIME.fullmatch(c.get("time")) for c in cases)
    for key in ("tests", "failures", "errors"):
        assert root.get(key) == str(sum(int(s.get(key)) for s in root))
    assert float(root.get("time")) == pytest.approx(sum(float(s.get("time")) for s in root), abs=0.0015)
    return root


# ---------------------------------------------------------------------------------------------
# reading an HTML page and a text report back


class Page(HTMLParser):
    """A page as its title, its words (tags dropped, whitespace collapsed), its table rows (cells
    as text) and its images."""

    def __init__(self, source: str):
        super().__init__(convert_charrefs=True)
        self.title, self.rows, self.images, self.headings, self._data = None, [], [], [], []
        self._row = self._cell = None
        self._in = None
        self.feed(source)
        self.close()
        self.words = " ".join(" ".join(self._data).split())

    def handle_starttag(self, tag, attrs):
        if tag == "tr":
            self._row = []
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "img":
            self.images.append(dict(attrs))
        self._in = tag

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self._row.append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif tag == "tr":
            self.rows.append(self._row)
            self._row = None

    def handle_data(self, data):
        if self._in == "title" and self.title is None:
            self.title = data
        if self._in in ("h1", "h2") and data.strip():
            self.headings.append((self._in, data))
        if self._in in ("style",):
            return
        if self._cell is not None:
            self._cell.append(data)
        self._data.append(data)

    def row(self, first: str) -> list[str]:
        (row,) = [r for r in self.rows if r and r[0] == first and len(r) == 10]
        return row


def words(text: str) -> str:
    return " ".join(text.split())


FACT = re.compile(r"^  (model|case|precision|step|evaluator|store) +(.*)$")
TENSOR_ROW = re.compile(r"^  (\S+) +(\S+) +(\d+) +(\S+) +(\S+)  (ok.*|FAIL.*)$")
WORST_ROW = re.compile(r"^    (\S+(?:\[[^\]]*\])?) +analytic +(\S+) +numerical +(\S+)$")


def assert_page_says_the_text(page_source: str, text: str, n_tensors: int, full: bool = True) -> None:
    """Every line of the text report is on the page, in the same words and numbers."""
    page, lines = Page(page_source), text.splitlines()
    head = lines[0]
    assert words(head) in page.words
    verdict = head.split()[0]
    assert f'<span class="{verdict.lower()}">{verdict}</span>' in page_source
    assert {"PASS": "FAIL", "FAIL": "PASS"}[verdict] not in page.words  # never both
    facts = [FACT.match(line).groups() for line in lines[1:] if FACT.match(line)]
    assert len(facts) == (6 if full else 4)
    for label, value in facts:
        assert [label, words(value)] in page.rows, (label, value)
    rows = [TENSOR_ROW.match(line).groups() for line in lines if TENSOR_ROW.match(line)]
    assert len(rows) == n_tensors
    for name, shape, size, difference, threshold, tensor_verdict in rows:
        row = page.row(name)
        assert row[1:5] == [shape, size, difference, threshold], (row, name)
        assert row[-1] == words(tensor_verdict)
    worst = [WORST_ROW.match(line).groups() for line in lines if WORST_ROW.match(line)]
    assert len(worst) == 3 * sum("FAIL" in r[-1] for r in rows)
    for element, analytic, numerical in worst:
        assert [element, analytic, numerical] in [r[:3] for r in page.rows], element
    advice = [line for line in lines if line.startswith("  The forward's noise resolves")]
    for line in advice:
        assert words(line) in page.words


# ---------------------------------------------------------------------------------------------
# gradjob report writes the files submit wrote


def normalised_junit(text: str) -> bytes:
    """A JUnit file without what only a run knows: its times and notes."""
    root = ET.fromstring(text.encode())
    for element in root.iter():
        if "time" in element.attrib:
            element.set("time", "-")
        if element.tag == "system-out":
            element.text = "\n".join(line for line in element.text.split("\n") if not line.startswith("note: "))
    return ET.tostring(root)


def normalised_html(text: str) -> str:
    text = re.sub(r'<tr><th class="fact">wall time</th><td>[^<]*</td></tr>\n', "", text)
    return re.sub(r'<p class="small">note: [^<]*</p>\n', "", text)


def test_report_writes_the_files_submit_wrote(seed):
    submitted, reported = json.loads(seed.submit_json), json.loads(seed.report_json)
    assert submitted["seconds"] and not reported["seconds"]  # a run's wall times; a store has none
    assert {k: v for k, v in submitted.items() if k not in RUNTIME} == {
        k: v for k, v in reported.items() if k not in RUNTIME}
    assert normalised_junit(seed.submit_xml) == normalised_junit(seed.report_xml)
    assert {s.get("time") for s in ET.fromstring(seed.report_xml).iter("testsuite")} == {"0.000"}
    assert "<th class=\"fact\">wall time</th>" in seed.submit_html
    assert "<th class=\"fact\">wall time</th>" not in seed.report_html
    assert normalised_html(seed.submit_html) == normalised_html(seed.report_html)  # images included, byte for byte
    assert seed.text.startswith("FAIL  backprop disagrees with the numerical gradient: difference 2.850932e-01; "
                                "wrong: b1, W2\n")


# ---------------------------------------------------------------------------------------------
# JUnit


def test_junit_is_junit10_with_one_name_a_level(seed, kinks, tmp_path):
    root = assert_junit_file(seed.submit_xml)
    assert root.get("name") == "gradjob check seed"
    assert (root.get("tests"), root.get("failures"), root.get("errors")) == ("7", "3", "0")
    (suite,) = root
    assert suite.get("name") == "seed"
    cases = list(suite)
    assert [c.get("name") for c in cases] == ["overall difference"] + [f"tensor {t}" for t in
                                                                       ("W1", "b1", "W2", "b2", "W3", "b3")]
    assert {c.get("classname") for c in cases} == {"seed"}
    assert cases[0].find("failure").get("message") == "wrong: b1, W2; difference 2.850932e-01"
    assert cases[3].find("failure").get("message") == "dW2 is 2.00× the numerical gradient"
    assert cases[3].find("failure").text == "dW2 is 2.00× the numerical gradient"

    # a job: one suite per check, an error as an error case; the title as outputs.write gives it
    missing = Entry("missing-case", error="case file 'x.npz' does not exist", exit_code=2)
    entries = [kinks["kinks"].entry, kinks["broken"].entry, missing]
    outputs.write(ReportFiles(None, str(tmp_path / "job.xml"), str(tmp_path / "job.html")), entries, job="nightly")
    root = assert_junit_file((tmp_path / "job.xml").read_text())
    assert root.get("name") == "gradjob job nightly"
    assert [s.get("name") for s in root] == ["kinks", "broken", "missing-case"]
    assert [(s.get("tests"), s.get("failures"), s.get("errors")) for s in root] == [
        ("7", "0", "0"), ("7", "2", "0"), ("1", "0", "1")]
    (error,) = root.iter("error")
    assert (error.get("message"), error.text) == ("case file 'x.npz' does not exist",) * 2
    # a title that already says gradjob is not said twice, in JUnit or HTML
    for title, name in (("gradjob check", "gradjob check"), ("job nightly", "gradjob job nightly"),
                        ("check seed", "gradjob check seed")):
        assert ET.fromstring(junit.to_junit(title, [entries[2].as_report()]).encode()).get("name") == name
        assert f"<title>{name}</title>" in html_page.to_html(title, [entries[2].as_report()])
    assert "gradjob gradjob" not in (tmp_path / "job.xml").read_text() + seed.submit_xml


def test_junit_time_timestamp_and_hostname(seed, kinks, tmp_path):
    submitted = json.loads(seed.submit_json)
    root = ET.fromstring(seed.submit_xml.encode())
    (suite,) = root
    assert suite.get("time") == root.get("time") == f"{sum(submitted['seconds'].values()):.3f}" != "0.000"
    assert suite.get("timestamp") == submitted["created"]
    assert root.find("testsuite/testcase").get("time") == f"{submitted['seconds']['evaluate']:.3f}"
    assert ET.fromstring(seed.report_xml.encode()).find("testsuite").get("timestamp") == submitted["created"]

    # a job of two checks: the root's time is theirs summed; an error has no store: now
    before = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    entries = [kinks["kinks"].entry, kinks["broken"].entry, Entry("bad", error="no", exit_code=2)]
    root = ET.fromstring(junit.to_junit("job two", [e.as_report() for e in entries]).encode())
    after = datetime.datetime.now(datetime.timezone.utc)
    times = [sum(kinks[n].result["seconds"].values()) for n in ("kinks", "broken")]
    assert [s.get("time") for s in root] == [f"{t:.3f}" for t in times] + ["0.000"]
    assert float(root.get("time")) == pytest.approx(sum(times), abs=0.0015)
    assert [s.get("timestamp") for s in root][:2] == [kinks[n].result["created"] for n in ("kinks", "broken")]
    assert before <= datetime.datetime.fromisoformat(root[2].get("timestamp")) <= after
    assert {s.get("hostname") for s in root} == {socket.gethostname()}


def test_junit_system_out_has_each_tensors_numbers_and_why_it_passes(seed, kinks):
    cases = {c.get("name"): c for c in ET.fromstring(seed.submit_xml.encode()).iter("testcase")}
    b3 = cases["tensor b3"].find("system-out").text  # the seed's b3: above 2e-7, within its noise
    assert b3.startswith("difference 2.457") and "; threshold 2.8e-06; resolution 5.7e-06; noise " in b3
    assert "kinks 0; re-verified 0 (agrees 0, kink 0, near-kink 0, wrong 0, unresolved 0)" in b3
    assert b3.endswith("verdict: ok    (above 2e-07 but within the forward's noise, threshold 2.8e-06)")

    for run in ("kinks", "broken"):
        result = kinks[run].result
        cases = {c.get("name"): c for c in ET.fromstring(kinks[run].xml.encode()).iter("testcase")}
        for name, t in result["tensors"].items():
            out, s = cases[f"tensor {name}"].find("system-out").text, t["suspects"]
            assert out.startswith(
                f"difference {t['difference']:.6e}; threshold {t['threshold']:.1e}; resolution {t['resolution']:.1e}; "
                f"noise {t['noise']:.1e}; kinks {t['kinks']['count']}; re-verified {s['verified']} (agrees "
                f"{s['agrees']}, kink {s['kink']}, near-kink {s['near_kink']}, wrong {s['wrong']}, unresolved "
                f"{s['unresolved']})"), out
            typed = kinks[run].report.tensors[name]
            assert out.endswith(f"verdict: {report.tensor_verdict(typed, result['threshold'])}")
            assert (cases[f"tensor {name}"].find("failure") is None) == t["passed"]
    cases = {c.get("name"): c for c in ET.fromstring(kinks["kinks"].xml.encode()).iter("testcase")}
    w1 = cases["tensor W1"].find("system-out").text
    t = kinks["kinks"].result["tensors"]["W1"]
    assert f"; above 2e-07 but within the forward's noise, threshold {t['threshold']:.1e})" in w1
    assert f"{t['suspects']['kink']} element(s) at a kink, left out: one-sided slopes disagree" in w1
    assert (f"near kinks closer than float arithmetic resolves, left out" in w1) == (t['suspects']['near_kink'] > 0)
    assert f"{t['suspects']['agrees']} element(s) re-verified on smaller steps" in w1
    assert "left out at kinks: W1[" in w1
    w2 = {c.get("name"): c for c in ET.fromstring(kinks["broken"].xml.encode()).iter("testcase")}["tensor W2"]
    assert w2.find("failure").get("message") == "dW2 is 1.05× the numerical gradient"
    wrong = verified_by_class(kinks["broken"].store)["W2"][verify.WRONG]
    assert "\nwrong: " + ", ".join(wrong[:5]) in w2.find("system-out").text


# ---------------------------------------------------------------------------------------------
# HTML


def test_html_says_what_the_text_says(seed, kinks):
    assert_page_says_the_text(seed.submit_html, seed.text, 6)
    assert_page_says_the_text(seed.report_html, seed.text, 6)
    for run in ("kinks", "broken"):
        assert_page_says_the_text(kinks[run].html, kinks[run].text, 6)
    assert_page_says_the_text(kinks["screen"].html, kinks["screen"].text, 6, full=False)
    assert ["parameters", "69"] in Page(kinks["screen"].html).rows
    for run in ("kinks", "broken", "screen"):  # no element list left empty
        assert not re.search(r": (and \d+ more)?</p>", kinks[run].html)
    # the checks behind the helper: a passing tensor above the asked threshold says why, on both
    w1 = Page(kinks["kinks"].html).row("W1")[-1]
    threshold = kinks["kinks"].result["tensors"]["W1"]["threshold"]
    assert w1.startswith("ok (") and f"above 2e-07 but within the forward's noise, threshold {threshold:.1e}" in w1
    assert "at a kink, left out" in w1
    b3 = Page(seed.submit_html).row("b3")[-1]
    assert b3 == "ok (above 2e-07 but within the forward's noise, threshold 2.8e-06)"


def test_html_head_time_versions_precision_and_tensor_table(seed, kinks):
    result = json.loads(seed.submit_json)
    page = Page(seed.submit_html)
    assert page.title == "gradjob check seed"
    assert page.headings == [("h1", "gradjob check seed"), ("h2", "seed")]
    facts = {r[0]: r[1] for r in page.rows if len(r) == 2}
    assert facts["run"] == result["created"]
    assert facts["versions"] == ", ".join(f"{k} {v}" for k, v in result["versions"].items())
    assert re.fullmatch(r"gradjob 0\.1\.0, numpy [\d.]+, dask [\d.]+, distributed [\d.]+, zarr [\d.]+, python [\d.]+",
                        facts["versions"])
    assert facts["precision"] == result["precision"]["text"] == "checked in float64"
    assert facts["wall time"].startswith(f"{sum(result['seconds'].values()):.2f} s (prepare ")
    assert ["tensor", "shape", "size", "difference", "threshold", "resolution", "noise ε_f", "kinks",
            "re-verified: agrees / kink / near-kink / wrong", "verdict"] in page.rows
    for run in ("kinks", "broken"):
        page, result = Page(kinks[run].html), kinks[run].result
        assert page.title == f"gradjob check {run}"
        for name, t in result["tensors"].items():
            s = t["suspects"]
            assert page.row(name)[5:9] == [f"{t['resolution']:.1e}", f"{t['noise']:.1e}", str(t["kinks"]["count"]),
                                           f"{s['agrees']} / {s['kink']} / {s['near_kink']} / {s['wrong']}"]
            assert page.row(name)[-1] == words(report.tensor_verdict(kinks[run].report.tensors[name],
                                                                     result["threshold"]))


def test_html_lists_kinks_near_kinks_wrong_and_the_worst_elements(seed, kinks):
    for run in ("kinks", "broken"):
        page, result = kinks[run].html, kinks[run].result
        stored = verified_by_class(kinks[run].store)
        for name, t in result["tensors"].items():
            classes = stored[name]
            if not t["kinks"]["count"]:
                assert f'<p class="small">{name}: ' not in page
                continue
            listed = re.search(rf'<p class="small">{re.escape(name)}: (\d+) element\(s\) left out of the difference: '
                               r"([^<]*)</p>", page)
            assert listed and int(listed.group(1)) == t["kinks"]["count"]
            for klass, words_ in ((verify.KINK, "at a kink (one-sided slopes settle at different limits)"),
                                  (verify.NEAR_KINK, "near kinks closer than float arithmetic resolves")):
                elements = classes.get(klass, [])
                if elements:  # the first LISTED of them by index, as the store classed it, and a count of the rest
                    shown = ", ".join(elements[:html_page.LISTED])
                    more = f" and {len(elements) - html_page.LISTED} more" if len(elements) > html_page.LISTED else ""
                    assert f"{len(elements)} {words_}: {shown}{more}" in listed.group(2)
            assert sum(len(classes.get(k, [])) for k in verify.EXCLUDED) == t["kinks"]["count"]
        for name, t in result["tensors"].items():
            assert (f"<p>worst elements of {name}:</p>" in page) == (not t["passed"])
    wrong = verified_by_class(kinks["broken"].store)["W2"][verify.WRONG]
    more = f" and {len(wrong) - 12} more" if len(wrong) > 12 else ""
    assert (f'<p class="small">W2: {len(wrong)} element(s) settled on smaller steps and still wrong: '
            f'{", ".join(wrong[:12])}{more}</p>') in kinks["broken"].html
    table = Page(kinks["broken"].html).rows
    for w in kinks["broken"].result["tensors"]["W2"]["worst"]:
        row = [f"W2[{w['index'][0]}, {w['index'][1]}]", f"{w['analytic']:.8e}", f"{w['numerical']:.8e}",
               f"{w['abs_error']:.2e}"]
        assert row in table
    assert ["W2[2, 0]", "1.83160330e+00", "9.15801701e-01", "9.16e-01"] in Page(seed.submit_html).rows


def test_html_is_self_contained_with_the_plots(seed, kinks):
    # a heatmap for every matrix, a strip for every failing vector (the seed's b1, 5×1)
    for source, maps in ((seed.submit_html, ("heatmap W1", "strip b1", "heatmap W2")),
                         (kinks["broken"].html, ("heatmap W1", "heatmap W2"))):
        page = Page(source)
        alts = [i["alt"] for i in page.images]
        assert alts[0].startswith("per-tensor difference of ")
        assert alts[1:] == [f"{m.split()[0]} of |grad − gradapprox| for {m.split()[1]}" for m in maps]
        for image in page.images:
            assert image["src"].startswith("data:image/png;base64,")
            assert base64.b64decode(image["src"].split(",", 1)[1]).startswith(PNG)
        assert not re.search(r"<(link|script)|src=\"(?!data:)|url\(", source)
        assert "elements at kinks (marked) are left out of the difference" in page.words


# ---------------------------------------------------------------------------------------------
# the plots, built and read back before they are drawn into PNGs


def test_heatmap_axes_read_as_the_matrixs_own_rows_and_columns():
    error = np.arange(1, 7, dtype=float).reshape(2, 3)  # 250×600 pooled in blocks of 125×200
    marks = {verify.KINK: [[3, 590]], verify.NEAR_KINK: [[249, 0], [10, 20]], verify.WRONG: [[130, 300]]}
    figure = plots.heatmap_figure(error, "W1", (250, 600), 125, 200, marks)
    figure.canvas.draw()
    axes = figure.axes[0]
    assert axes.get_xlim() == (-0.5, 599.5) and axes.get_ylim() == (249.5, -0.5)
    assert [t.get_text() for t in axes.get_xticklabels()] == ["0", "100", "200", "300", "400", "500"]
    assert [t.get_text() for t in axes.get_yticklabels()] == ["0", "50", "100", "150", "200"]
    assert list(axes.get_xticks()) == [0, 100, 200, 300, 400, 500]
    (image,) = axes.images
    assert image.get_extent() == [-0.5, 599.5, 249.5, -0.5]  # cell (i, j): rows 125i…, columns 200j…
    assert (axes.get_xlabel(), axes.get_ylabel()) == ("column of W1", "row of W1")
    assert axes.get_title() == "W1 250×600 (max over 125×200 blocks)"
    # re-verified elements at their own (column, row), whatever the pooling
    assert [c.get_offsets().tolist() for c in axes.collections] == [[[590, 3]], [[0, 249], [20, 10]], [[300, 130]]]
    assert [t.get_text() for t in axes.get_legend().get_texts()] == ["kink (left out)", "near-kink (left out)", "wrong"]

    for n, ticks in ((1, [0]), (5, [0, 1, 2, 3, 4]), (10, [0, 2, 4, 6, 8]), (123457, [0, 25000, 50000, 75000, 100000])):
        assert plots.index_ticks(n) == ticks  # integers within 0 … n − 1, never scientific notation
    figure = plots.heatmap_figure(np.ones((3, 123457)), "W", (3, 123457))
    figure.canvas.draw()
    assert [t.get_text() for t in figure.axes[0].get_xticklabels()] == ["0", "25000", "50000", "75000", "100000"]
    assert [t.get_text() for t in figure.axes[0].get_yticklabels()] == ["0", "1", "2"]


class Recording:
    """A store (``store.Opened``'s ``read``: a block of several arrays in one call) that records the
    length of every read."""

    def __init__(self, arrays, reads):
        self.arrays, self.reads = arrays, reads

    def read(self, names, key):
        self.reads.append(key.stop - key.start)
        return {name: self.arrays[name][key] for name in names}


def test_pooled_error_streams_blocks_and_pools_the_matrixs_own_cells():
    rows, cols, offset = 301, 407, 11  # 122,507 elements: two READ_BLOCKs and a bit; cells of 3×4
    rng = np.random.default_rng(0)
    grad, gradapprox = rng.standard_normal(offset + rows * cols + 5), rng.standard_normal(offset + rows * cols + 5)
    layout = Layout((Tensor("b0", (offset,), 0), Tensor("W1", (rows, cols), offset),
                     Tensor("b1", (5,), offset + rows * cols)), "float64")
    reads = []
    group = Recording({"grad": grad, "gradapprox": gradapprox}, reads)
    pooled, row_step, col_step = plots.pooled_error(group, layout, "W1")
    assert (row_step, col_step, pooled.shape) == (3, 4, (101, 102))
    assert max(reads) <= store.READ_BLOCK and sum(reads) == rows * cols  # each element read once (both arrays a call)
    error = np.abs(grad - gradapprox)[offset:offset + rows * cols].reshape(rows, cols)
    for i, j in ((0, 0), (100, 101), (57, 13), (100, 0)):
        assert pooled[i, j] == error[3 * i:3 * i + 3, 4 * j:4 * j + 4].max()
    assert pooled.max() == error.max()


def test_heatmap_of_a_real_store(kinks):
    group = store.open_existing(kinks["broken"].store)
    layout = store.metadata(group).layout
    pooled, row_step, col_step = plots.pooled_error(group, layout, "W2")
    w2 = next(t for t in layout.tensors if t.name == "W2")
    grad = store.read_range(group, "grad", w2.offset, w2.stop)
    gradapprox = store.read_range(group, "gradapprox", w2.offset, w2.stop)
    assert (row_step, col_step) == (1, 1)
    assert np.array_equal(pooled, np.abs(grad - gradapprox).reshape(w2.shape))
    figure = plots.heatmap_figure(pooled, "W2", w2.shape)
    figure.canvas.draw()
    assert [t.get_text() for t in figure.axes[0].get_xticklabels()] == [str(k) for k in range(w2.shape[1])]
    assert [t.get_text() for t in figure.axes[0].get_yticklabels()] == [str(k) for k in range(w2.shape[0])]


def test_difference_plot_marks_the_asked_threshold_and_each_tensors_own():
    row = SimpleNamespace  # the plot reads a report's threshold and its tensors' difference, passed, threshold
    result = row(threshold=2e-7, tensors={
        "W1": row(difference=1e-9, passed=True, threshold=2e-7),
        "b1": row(difference=3e-7, passed=True, threshold=3e-6),
        "W2": row(difference=0.3, passed=False, threshold=2e-7),
        "b2": row(difference=0.0, passed=True, threshold=2e-7)})
    axes = plots.difference_figure(result).axes[0]
    assert [label.get_text() for label in axes.get_legend().get_texts()] == [
        "asked threshold 2e-07", "each tensor's own threshold"]
    (asked,) = axes.lines
    assert list(asked.get_ydata()) == [2e-7, 2e-7]
    (marks,) = axes.collections
    assert marks.get_offsets().tolist() == [[0.0, 2e-7], [1.0, 3e-6], [2.0, 2e-7], [3.0, 2e-7]]
    assert [b.get_height() for b in axes.patches] == [1e-9, 3e-7, 0.3, 1e-18]  # 0 drawn at the axis floor
    assert [b.get_facecolor()[0] > 0.5 for b in axes.patches] == [False, False, True, False]  # red: fails
    assert axes.get_yscale() == "log"
