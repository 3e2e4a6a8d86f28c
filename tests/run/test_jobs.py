"""Issue 6: job files, reports a team reads (JSON, JUnit, HTML), and history."""

import base64
import json
import re
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import zarr

from gradjob.model.cases import random_case

JOBS = Path(__file__).resolve().parents[2] / "jobs"
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def jobs(tmp_path):
    """A copy of jobs/ in the test's directory, so stores and reports land there."""
    shutil.copytree(JOBS, tmp_path / "jobs")
    return tmp_path / "jobs"


def plant_bug(job_file: Path) -> None:
    text = job_file.read_text()
    assert 'backward = "backward_propagation_n"' in text
    job_file.write_text(text.replace('backward = "backward_propagation_n"', 'backward = "backward_with_planted_bug"'))


def test_nightly_job_writes_reports_exits_by_verdict_and_history_marks_the_failing_night(gradjob, jobs, tmp_path,
                                                                                        cluster_address):
    """Three nights: passing, a planted bug, passing again (one test: each night is the next's start)."""
    good = (jobs / "nightly.toml").read_text()
    run = gradjob("submit", jobs / "nightly.toml", "--scheduler", cluster_address)
    assert run.exit_code == 0, run.stderr
    assert run.stdout.rstrip().endswith("job nightly: 2 of 2 checks passed")
    summary = json.loads((tmp_path / "reports/nightly.json").read_text())
    assert [c["check"] for c in summary["checks"]] == ["fraud-network-model-file", "builtin-network-large"]
    assert all(c["passed"] for c in summary["checks"])
    assert summary["checks"][1]["n_parameters"] == 256 * 128 + 128 + 128 * 64 + 64 + 64 + 1

    suites = ET.parse(tmp_path / "reports/nightly.xml").getroot()
    assert [s.get("name") for s in suites] == ["fraud-network-model-file", "builtin-network-large"]
    assert [c.get("name") for c in suites[0]] == ["overall difference"] + [f"tensor {t}" for t in
                                                                           ("W1", "b1", "W2", "b2", "W3", "b3")]
    assert suites[0].get("failures") == "0" and suites.findall(".//failure") == []

    page = (tmp_path / "reports/nightly.html").read_text()
    images = [src.split('"')[0] for src in page.split('src="data:image/png;base64,')[1:]]
    # per check: the difference plot and a heatmap for W1 and W2 (W3 has a single row)
    assert len(images) == 6
    assert all(base64.b64decode(image).startswith(PNG) for image in images)
    assert 'alt="heatmap of |grad − gradapprox| for W2"' in page

    plant_bug(jobs / "nightly.toml")
    run = gradjob("submit", jobs / "nightly.toml", "--scheduler", cluster_address, "--json")
    assert run.exit_code == 1
    result = json.loads(run.stdout)
    assert [c["passed"] for c in result["checks"]] == [False, True]
    assert result["checks"][0]["failing"] == ["W2"]
    suites = ET.parse(tmp_path / "reports/nightly.xml").getroot()
    failed = [(suite.get("name"), case.get("name"), case.find("failure").get("message"))
              for suite in suites for case in suite if case.find("failure") is not None]
    difference = result["checks"][0]["difference"]
    assert difference > 0.1   # dW2 doubled: far beyond any threshold
    assert failed == [("fraud-network-model-file", "overall difference", f"wrong: W2; difference {difference:.6e}"),
                      ("fraud-network-model-file", "tensor W2", "dW2 is 2.00× the numerical gradient")]

    (jobs / "nightly.toml").write_text(good)
    assert gradjob("submit", jobs / "nightly.toml", "--scheduler", cluster_address).exit_code == 0
    run = gradjob("history", "gradjob-stores/nightly")
    assert run.exit_code == 0
    rows = [line for line in run.stdout.splitlines()[1:] if "fraud-network-model-file" in line]
    assert len(rows) == 3
    assert [("PASS" in r, "FAIL (W2)" in r, "← new since the previous run" in r) for r in rows] == [
        (True, False, False), (False, True, True), (True, False, False)]
    assert rows == sorted(rows)  # newest last


def test_seed_demo_job_fails_as_the_seed_does_and_corrected_twin_passes(gradjob, jobs, cluster_address):
    run = gradjob("submit", jobs / "seed-demo.toml", "--scheduler", cluster_address, "--json")
    assert run.exit_code == 1
    checks = {c["check"]: c for c in json.loads(run.stdout)["checks"]}
    assert abs(checks["seed-planted-bugs"]["difference"] - 0.2850931567761623) < 1e-9
    assert checks["seed-planted-bugs"]["failing"] == ["b1", "W2"]
    assert checks["seed-corrected"]["passed"]
    assert gradjob("submit", jobs / "seed-corrected.toml", "--scheduler", cluster_address).exit_code == 0


def write_case(path: Path, seed: int) -> None:
    case = random_case([6, 5, 1], 7, seed)
    group = zarr.open_group(path, mode="w")
    for name, array in {"X": case.X, "Y": case.Y, **case.parameters}.items():
        group.create_array(name, data=array)


def test_case_in_a_zarr_group_rewritten_every_night(gradjob, tmp_path, cluster_address):
    write_case(tmp_path / "weights.zarr", seed=1)
    (tmp_path / "job.toml").write_text('''
[job]
name = "weights"
store_root = "stores"
[[check]]
name = "tonight"
model = "network"
case = "weights.zarr"
''')
    first = json.loads(gradjob("submit", "job.toml", "--json", "--scheduler", cluster_address).stdout)
    write_case(tmp_path / "weights.zarr", seed=2)  # the training pipeline's new weights
    second = json.loads(gradjob("submit", "job.toml", "--json", "--scheduler", cluster_address).stdout)
    assert first["passed"] and second["passed"]
    assert first["checks"][0]["store"] != second["checks"][0]["store"]  # new weights, new store
    assert first["checks"][0]["n_parameters"] == 6 * 5 + 5 + 5 + 1
    assert len(list((tmp_path / "stores" / "tonight").glob("*.zarr"))) == 2


def test_a_check_with_bad_input_is_reported_and_the_others_still_run(gradjob, tmp_path, cluster_address):
    (tmp_path / "job.toml").write_text('''
[[check]]
name = "missing-case"
model = "network"
case = "tonight.npz"
[[check]]
name = "seed"
model = "network"
case = "seed"
''')
    run = gradjob("submit", "job.toml", "--scheduler", cluster_address, "--junit", "junit.xml")
    assert run.exit_code == 2
    assert "gradjob: error in check missing-case: case file 'tonight.npz' does not exist\n" in run.stderr
    assert run.stdout.rstrip().endswith("job job: 1 of 2 checks passed; not passed: missing-case")
    errors = ET.parse(tmp_path / "junit.xml").getroot().findall(".//error")
    assert [e.get("message") for e in errors] == ["case file 'tonight.npz' does not exist"]


def test_a_directional_screen_beside_a_full_check(gradjob, tmp_path, cluster_address):
    """A job can screen a model cheaply (no store) and check another in full; reports cover both."""
    (tmp_path / "job.toml").write_text('''
[[check]]
name = "screen-seed-buggy"
model = "seed-buggy"
mode = "directional"
directions = 4
[[check]]
name = "full-seed"
model = "network"
case = "seed"
''')
    run = gradjob("submit", "job.toml", "--scheduler", cluster_address, "--json", "--junit", "junit.xml",
                  "--html", "page.html")
    assert run.exit_code == 1, run.stderr
    screened, full = json.loads(run.stdout)["checks"]
    assert (screened["passed"], screened["failing"], screened["store"]) == (False, ["b1", "W2"], None)
    assert screened["method"] == "directional, 4 random directions per tensor"
    assert screened["tensors"]["W2"]["diagnosis"] == "dW2 is 2.00× the numerical gradient"
    assert full["passed"] and full["store"].endswith(".zarr")
    assert not (tmp_path / "gradjob-stores/job/screen-seed-buggy").exists()
    failures = ET.parse(tmp_path / "junit.xml").getroot().findall(".//failure")
    assert len(failures) == 3  # overall, W2 and b1 of the screen
    page = (tmp_path / "page.html").read_text()
    assert "directional, 4 random directions per tensor: no per-element heatmaps" in page
    assert 'alt="heatmap of |grad − gradapprox| for W2"' in page  # from the full check's store
    history = gradjob("history", "gradjob-stores/job")
    assert history.exit_code == 0 and "screen-seed-buggy" in history.stdout


@pytest.mark.parametrize("text, message", [
    ("[[check]]\nname = 'a'\nmodle = 'network'\n", "job file {f}: unknown key(s) modle in [check]"),
    ("[jobs]\nname = 'x'\n", "job file {f}: unknown section [jobs]; use check, cluster, job, reports"),
    # a key above every section was "unknown section [store_root]"
    ("store_root = 'r'\n[[check]]\nname = 'a'\n", "job file {f}: store_root is outside any section; put it under [job]"),
    ("epsilon = 1e-7\n[[check]]\nname = 'a'\n", "job file {f}: epsilon is outside any section; put it under [[check]]"),
    ("colour = 1\n[[check]]\nname = 'a'\n", "job file {f}: colour is outside any section; keys belong under a section"),
    ("[job]\nname = 'x'\n", "job file {f} has no [[check]]; add at least one"),
    ("[[check]]\nmodel = 'network'\n", "job file {f}: check 1 has no name"),
    ("[[check]]\nname = 'a'\n[[check]]\nname = 'a'\n", "job file {f}: two checks are named 'a'"),
    ("[[check]\n", "job file {f} is not valid TOML: "),
    ("[[check]]\nname = 'a'\nmode = 'quick'\n",
     "job file {f}: check 'a': mode must be one of full, directional; got 'quick'"),
    ("[[check]]\nname = 'a'\nmode = 'directional'\ndirections = 0\n",
     "job file {f}: check 'a': directions must be at least 1; got 0"),
    ("[[check]]\nname = 'a'\ndirections = 2.5\n", "job file {f}: check 'a': directions must be a whole number; got 2.5"),
    # issue 13: values of the wrong type were a traceback and exit 1 ("backprop is wrong"), or silently true
    ("[[check]]\nname = 'a'\nlayers = \"4,3,1\"\n", "job file {f}: check 'a': layers must be a list; got '4,3,1'"),
    ("[[check]]\nname = 'a'\nexamples = \"16\"\n", "job file {f}: check 'a': examples must be a whole number; got '16'"),
    ("[[check]]\nname = 'a'\nepsilon = \"1e-7\"\n", "job file {f}: check 'a': epsilon must be a positive finite number; got '1e-7'"),
    ("[[check]]\nname = 'a'\nthreshold = \"2e-7\"\n", "job file {f}: check 'a': threshold must be a positive finite number; got '2e-7'"),
    ("[[check]]\nname = 'a'\nfast = \"no\"\n", "job file {f}: check 'a': fast must be true or false; got 'no'"),
    ("[[check]]\nname = 'a'\nlayers = [4, 0, 1]\n", "job file {f}: check 'a': layers[1] must be at least 1; got 0"),
    ("[[check]]\nname = 'a'\nepsilon = -1e-7\n", "job file {f}: check 'a': epsilon must be a positive finite number; got -1e-07"),
    ("[[check]]\nname = 'a'\nprecision = 'float32'\n",
     "job file {f}: check 'a': precision must be one of float64, model; got 'float32'"),
    ("[cluster]\nworkers = 0\n[[check]]\nname = 'a'\n", "job file {f}: [cluster]: workers must be at least 1; got 0"),
    ("[[check]]\nname = 3\n", "job file {f}: check 1: name must be a string; got 3"),
    ("[[check]]\nname = 'a'\ntask_timeout = 0\n", "job file {f}: check 'a': task_timeout must be a positive finite number; got 0.0"),
    ("[[check]]\nname = 'a'\nseed = -1\n", "job file {f}: check 'a': seed must be at least 0; got -1"),  # was accepted
    # issue 19: a check's name is its folder under store_root; "../../escaped" wrote outside it
    *[(f"[[check]]\nname = '{name}'\n", f"job file {{f}}: check name '{name}' is not a plain name; use letters, "
       "digits, '.', '_' and '-', starting with a letter or digit (it names the check's folder under store_root)")
      for name in ("../../escaped", "..", "a/b", "/abs", "")],
])
def test_bad_job_files(gradjob, tmp_path, text, message):
    (tmp_path / "bad.toml").write_text(text)
    run = gradjob("submit", "bad.toml")
    assert run.exit_code == 2
    assert run.stderr.startswith("gradjob: error: " + message.format(f="bad.toml"))
    assert run.stderr.count("\n") == 1


def test_single_check_options_with_a_job_file_are_refused(gradjob, jobs):
    run = gradjob("submit", jobs / "nightly.toml", "--epsilon", "1e-7")
    assert (run.exit_code, run.stderr) == (
        2, "gradjob: error: --epsilon describes a single check; with a job file put it in the file's [[check]]\n")
    missing = gradjob("submit", "absent.toml")
    assert (missing.exit_code, missing.stderr) == (2, "gradjob: error: job file 'absent.toml' does not exist\n")


def test_single_directional_screen_writes_its_reports(gradjob, tmp_path):
    run = gradjob("submit", "--mode", "directional", "--html", "screen.html", "--junit", "screen.xml")
    assert run.exit_code == 1, run.stderr  # the seed's planted bugs, found by the screen
    page = (tmp_path / "screen.html").read_text()
    assert "FAIL" in page and "no per-element heatmaps" in page
    assert len(ET.parse(tmp_path / "screen.xml").getroot().findall(".//failure")) == 3


THREE_SMALL_CHECKS = '''
[cluster]
workers = 1
[[check]]
name = "seed-a"
model = "network"
case = "seed"
[[check]]
name = "seed-b"
model = "seed-buggy"
[[check]]
name = "seed-c"
model = "linear"
'''


def test_a_job_file_starts_one_cluster_and_its_log_names_each_check(gradjob, tmp_path, monkeypatch):
    """Issue 18: a cluster per check (3 tiny checks: 23 s); issue 20: progress lines named no check, and a
    resubmitted finished check did not say its verdict came from the store."""
    from gradjob.executors import cluster

    started = []
    enter = cluster.DaskExecutor.__enter__
    monkeypatch.setattr(cluster.DaskExecutor, "__enter__", lambda self: started.append(self) or enter(self))
    (tmp_path / "job.toml").write_text(THREE_SMALL_CHECKS)
    run = gradjob("submit", "job.toml", "--json")
    assert run.exit_code == 1, run.stderr  # seed-b's planted bugs
    assert len(started) == 1
    for name in ("seed-a", "seed-b", "seed-c"):
        assert re.search(rf"^\S+Z {name}: chunks \d+/\d+, ", run.stderr, re.M)
    assert "Dask dashboard" not in run.stderr  # an embedded cluster without bokeh: nothing to say

    again = gradjob("submit", "job.toml")
    assert again.exit_code == 1
    assert again.stdout.rstrip().endswith("job job: 2 of 3 checks passed; not passed: seed-b")
    for check in json.loads(run.stdout)["checks"]:
        assert (f"gradjob: note: {check['check']}: verdict of the finished store {check['store']}, no evaluation\n"
                in again.stderr)
    assert len(started) == 1  # nothing left to evaluate: no cluster at all


def test_the_dashboard_line_is_said_once_per_job(gradjob, tmp_path, cluster_address):
    (tmp_path / "job.toml").write_text(THREE_SMALL_CHECKS.replace("workers = 1", f"scheduler = '{cluster_address}'"))
    run = gradjob("submit", "job.toml")
    assert run.exit_code == 1, run.stderr
    assert run.stderr.count("Dask dashboard: not available (the scheduler has no bokeh") == 1


def test_task_timeout_and_an_asked_cluster_reach_each_check(tmp_path):
    from gradjob.run import jobfile

    (tmp_path / "job.toml").write_text("[[check]]\nname = 'a'\ntask_timeout = 90\n[[check]]\nname = 'b'\n")
    a, b = jobfile.load(str(tmp_path / "job.toml")).checks
    assert (a.request.task_timeout, b.request.task_timeout) == (90, None)
    assert not a.request.cluster  # small work may run in-process
    (tmp_path / "job.toml").write_text("[cluster]\nworkers = 1\n[[check]]\nname = 'a'\n")
    assert jobfile.load(str(tmp_path / "job.toml")).checks[0].request.cluster
    assert jobfile.with_cluster(jobfile.load(str(tmp_path / "job.toml")), None, 2).checks[0].request.cluster
