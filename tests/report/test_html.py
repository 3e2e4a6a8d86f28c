"""Issue 20: the HTML page read through its DOM (html.parser): the job's summary at the top, a strip
for failing 1×N and 1-D tensors, directions named as directions; and matplotlib, imported only for
the page, quiet for a service user whose home is not writable."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

import gradjob
from gradjob.numerics import verify
from gradjob.report import html as html_page
from gradjob.report import plots
from gradjob.report.model import CheckReport
from gradjob.report.outputs import Entry
from gradjob.storage import store, verification

GRADJOB = str(Path(sys.executable).with_name("gradjob"))


def test_importing_gradjob_does_not_import_matplotlib():
    code = ("import sys, gradjob, gradjob.cli, gradjob.cli.app, gradjob.run.jobfile, gradjob.report.outputs, "
            "gradjob.report.html; print(sorted(m for m in sys.modules if m.split('.')[0] == 'matplotlib'))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert (run.returncode, run.stdout, run.stderr) == (0, "[]\n", "")


def test_html_report_with_an_unwritable_home_logs_nothing_about_matplotlib(tmp_path):
    """What systemd and cron run as a system user: HOME names a folder that cannot be made."""
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("MPLCONFIGDIR", "XDG_CONFIG_HOME", "XDG_CACHE_HOME")}
    env.update(HOME="/proc/gradjob-home", TMPDIR=str(scratch))
    run = subprocess.run([GRADJOB, "submit", "--model", "linear", "--mode", "directional", "--html", "screen.html"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stderr == ""
    assert (tmp_path / "screen.html").read_text().startswith("<!DOCTYPE html>")
    assert os.listdir(scratch) == []   # the private config folder is removed at exit


# ---------------------------------------------------------------------------------------------
# the page through its DOM

VOID = {"meta", "img", "br", "hr", "link", "input"}


class Node:
    def __init__(self, tag: str, attrs: dict, parent: "Node | None"):
        self.tag, self.attrs, self.parent, self.children = tag, attrs, parent, []

    @property
    def text(self) -> str:
        return " ".join("".join(c if isinstance(c, str) else c.text + " " for c in self.children).split())

    def find_all(self, tag: str, **attrs) -> list["Node"]:
        found = []
        for child in self.children:
            if isinstance(child, Node):
                if child.tag == tag and all(child.attrs.get(k.rstrip("_")) == v for k, v in attrs.items()):
                    found.append(child)
                found += child.find_all(tag, **attrs)
        return found

    def elements(self) -> list["Node"]:
        return [c for c in self.children if isinstance(c, Node)]


class Dom(HTMLParser):
    """The page as a tree of ``Node``s (html.parser), so tests read structure, not substrings."""

    def __init__(self, source: str):
        super().__init__(convert_charrefs=True)
        self.root = self._at = Node("#document", {}, None)
        self.feed(source)
        self.close()
        assert self._at is self.root, "unclosed elements"

    def handle_starttag(self, tag, attrs):
        node = Node(tag, dict(attrs), self._at)
        self._at.children.append(node)
        if tag not in VOID:
            self._at = node

    def handle_endtag(self, tag):
        assert self._at.tag == tag, (self._at.tag, tag)
        self._at = self._at.parent

    def handle_data(self, data):
        self._at.children.append(data)


def body(source: str) -> Node:
    (element,) = Dom(source).root.find_all("body")
    return element


def rows(table: Node) -> list[list[str]]:
    return [[cell.text for cell in tr.elements()] for tr in table.find_all("tr")]


# A model with every shape of tensor: a matrix W, a 1-D b, a 1×N row c, an N×1 column d and a
# 1-D e. The backward scales the gradients named in FACTORS.
SHAPES = {"W": (3, 4), "b": (6,), "c": (1, 5), "d": (7, 1), "e": (4,)}


def parameters() -> dict:
    rng = np.random.default_rng(3)
    return {name: rng.standard_normal(shape) for name, shape in SHAPES.items()}


def forward(X, Y, p):
    cost = (np.sum(np.tanh(p["W"] @ X)) + np.sum(np.sin(p["b"])) + np.sum(p["c"] ** 3) / 3
            + np.sum(np.cos(p["d"])) + 0.5 * np.sum(p["e"] ** 2))
    return cost, p


def backward_with(factors: dict):
    def backward(X, Y, p):
        t = np.tanh(p["W"] @ X)
        grads = {"dW": (1 - t ** 2) @ X.T, "db": np.cos(p["b"]), "dc": p["c"] ** 2, "dd": -np.sin(p["d"]), "de": p["e"]}
        return {k: v * factors.get(k[1:], 1.0) for k, v in grads.items()}
    return backward


X = np.random.default_rng(4).standard_normal((4, 2))
Y = np.zeros((1, 2))   # the cost does not read it


def checked(tmp_path, name: str, factors: dict, **options):
    outcome = gradjob.check(forward, backward_with(factors), X, Y, parameters(), epsilon=1e-6,
                            store=str(tmp_path / f"{name}.zarr"), **options)
    return Entry.of(name, outcome)


@pytest.fixture(scope="module")
def pages(tmp_path_factory):
    folder = tmp_path_factory.mktemp("html")
    good = checked(folder, "good", {})
    broken = checked(folder, "broken", {"b": 2.0, "c": -1.0, "d": 3.0, "W": 2.0})
    error = CheckReport("missing", error="case file 'x.npz' does not exist")
    assert good.result["passed"] and broken.result["failing"] == ["W", "b", "c", "d"]
    job = html_page.to_html("job nightly", [good.as_report(), broken.as_report(), error])
    return {"good": good, "broken": broken, "job": job, "folder": folder}


def test_summary_of_the_job_at_the_top(pages):
    page = body(pages["job"])
    top = page.elements()
    assert [n.tag for n in top[:4]] == ["h1", "p", "table", "h2"]   # the summary comes before any check
    assert top[0].text == "gradjob job nightly"
    assert top[1].attrs["id"] == "summary"
    assert top[1].text == "FAIL 1 of 3 checks passed; not passed: broken, missing"
    assert top[2].attrs["class"] == "summary"
    good, broken = pages["good"].result, pages["broken"].result
    assert rows(top[2]) == [
        ["check", "verdict", "mode", "difference", "threshold", "failing tensors"],
        ["good", "PASS", "full", f"{good['difference']:.4e}", "2.0e-07", ""],
        ["broken", "FAIL", "full", f"{broken['difference']:.4e}", "2.0e-07", "W, b, c, d"],
        ["missing", "ERROR", "case file 'x.npz' does not exist"],
    ]
    # each row links to its check's section
    links = [a.attrs["href"] for a in top[2].find_all("a")]
    sections = {h2.attrs["id"]: h2.text for h2 in page.find_all("h2")}
    assert [sections[href.removeprefix("#")] for href in links] == ["good", "broken", "missing"]
    single = body(html_page.to_html("check good", [pages["good"].as_report()]))
    assert single.find_all("p", id="summary")[0].text == "PASS 1 of 1 checks passed"


def test_failing_vectors_get_a_strip_as_matrices_get_a_heatmap(pages):
    images = [img.attrs["alt"] for img in body(pages["job"]).find_all("img")]
    assert images == ["per-tensor difference of good", "heatmap of |grad − gradapprox| for W",
                      "per-tensor difference of broken", "heatmap of |grad − gradapprox| for W",
                      "strip of |grad − gradapprox| for b", "strip of |grad − gradapprox| for c",
                      "strip of |grad − gradapprox| for d"]   # e passes: no strip; a passing vector has none


def test_strip_reads_as_the_vectors_own_indices(pages):
    path = pages["broken"].outcome.store
    group = store.open_existing(path)
    layout = store.metadata(group).layout
    stored = {}
    for i, v in verification.read_verification(group, path).items():
        name, index = layout.locate(i)
        stored.setdefault(name, {}).setdefault(v.klass, []).append(list(index))
    for name, axis in (("b", "element"), ("c", "column"), ("d", "row")):
        shape = SHAPES[name]
        n = int(np.prod(shape))
        error, row_step, step = plots.pooled_error(group, layout, name, shape=(1, n))
        assert (error.shape, row_step, step) == ((1, n), 1, 1)
        figure = plots.strip_figure(error, name, shape, step, stored[name])
        figure.canvas.draw()
        axes = figure.axes[0]
        assert axes.get_title() == f"{name} {'×'.join(map(str, shape))}"
        assert axes.get_xlabel() == f"{axis} of {name}"
        assert axes.get_xlim() == (-0.5, n - 0.5) and list(axes.get_yticks()) == []
        assert [int(t) for t in axes.get_xticks()] == plots.index_ticks(n)
        wrong = sorted(int(np.ravel_multi_index(tuple(i), shape)) for i in stored[name][verify.WRONG])
        assert wrong == list(range(n))   # every element of a scaled gradient is settled as wrong
        (marks,) = axes.collections
        assert sorted(int(x) for x, y in marks.get_offsets().tolist()) == wrong
        assert not pages["broken"].result["tensors"][name]["passed"]
    assert plots.is_vector((6,)) and plots.is_vector((1, 5)) and plots.is_vector((7, 1))
    assert not plots.is_vector((3, 4)) and not plots.is_vector((1, 1)) and not plots.is_vector(())


def test_directional_screen_names_directions_not_elements(tmp_path):
    """A 4×7 tensor wrong by 2×: the screen's three numbers are directions 0, 1, 2 in the JSON and on
    the page, never elements W2[0], W2[1]."""
    rng = np.random.default_rng(5)
    p = {"W1": rng.standard_normal((3, 4)), "W2": rng.standard_normal((4, 7))}

    def fwd(X, Y, p):
        return float(np.sum(np.tanh(p["W1"] @ X)) + np.sum(np.sin(p["W2"]))), p

    def bwd(X, Y, p):
        t = np.tanh(p["W1"] @ X)
        return {"dW1": (1 - t ** 2) @ X.T, "dW2": 2 * np.cos(p["W2"])}

    entry = Entry.of("screen", gradjob.check(fwd, bwd, X, Y, p, mode="directional", directions=3))
    w2 = entry.result["tensors"]["W2"]
    assert entry.result["failing"] == ["W2"]
    assert w2["directions"] == {"count": 3, "kinks": [], "wrong": [0, 1, 2]}
    assert (w2["kinks"]["elements"], w2["suspects"]["wrong_elements"], w2["worst"]) == ([], [], [])
    assert entry.result["tensors"]["W1"]["directions"] == {"count": 3, "kinks": [], "wrong": []}
    page = body(html_page.to_html("check screen", [entry.as_report()]))
    notes = [p.text for p in page.find_all("p", class_="small")]
    assert notes == ["W2: 3 of 3 random directions still wrong on smaller steps: directions 0, 1, 2"]
    assert not re.search(r"W[12]\[", page.text)
    assert "The kinks and re-verified counts above are of random directions, not elements." in page.text
