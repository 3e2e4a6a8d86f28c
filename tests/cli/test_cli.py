"""Issue 13: the command a nightly job and a person both use: help, version, typed options, the plan
before the run, progress in logs, and stdout that stays machine-readable."""

import json
import os
import re
import subprocess
import sys

from gradjob import __version__
from gradjob.executors import cluster

GRADJOB = [sys.executable, "-c", "from gradjob.cli import app; app(prog_name='gradjob')"]

PRINTING_MODEL = '''
import numpy as np
from gradjob.model.networks import network_forward, network_backward as backward

print("model file imported")  # as libraries do: a warning, a banner


def forward(X, Y, parameters):
    print("forward called")
    return network_forward(X, Y, parameters)
'''


def test_version_and_help(gradjob):
    assert (gradjob("--version").exit_code, gradjob("--version").stdout) == (0, f"gradjob {__version__}\n")
    top = gradjob("-h")
    assert top.exit_code == 0
    for text in ("submit", "report", "history", "bench", "--install-completion", "exit codes: 0 the check passes",
                 "1 backprop disagrees with the numerical gradient", "2 bad input", "3 the job could not finish",
                 "130/143/129 stopped by SIGINT/SIGTERM/SIGHUP"):
        assert text in " ".join(top.stdout.split()), text
    assert "Run one check, or every check of a job file." in top.stdout  # command help not cut short
    sub = gradjob("submit", "-h")
    assert sub.exit_code == 0
    for option in ("--precision", "--dry-run", "--scheduler", "DASK_SCHEDULER_ADDRESS", "--json-file", "--html"):
        assert option in sub.stdout


def test_unknown_option_and_bad_choice_are_one_line(gradjob):
    run = gradjob("submit", "--epsilonn", "1e-7")
    assert run.exit_code == 2 and run.stderr.count("\n") == 1 and run.stderr.startswith("gradjob: error: ")
    assert "--epsilonn" in run.stderr
    run = gradjob("submit", "--method", "backward")
    assert (run.exit_code, run.stderr) == (
        2, "gradjob: error: --method must be one of central, five-point, complex-step; got 'backward'\n")


def test_workers_with_a_scheduler_is_refused(gradjob, monkeypatch):
    run = gradjob("submit", "--workers", "2", "--scheduler", "tcp://127.0.0.1:1")
    message = ("gradjob: error: --workers sizes the embedded cluster; with --scheduler (or DASK_SCHEDULER_ADDRESS) the "
               "cluster's own workers run the job: drop one of them\n")
    assert (run.exit_code, run.stderr) == (2, message)
    monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", "tcp://127.0.0.1:1")
    run = gradjob("submit", "--workers", "2")
    assert (run.exit_code, run.stderr) == (2, message)


def test_dry_run_prints_the_plan_and_touches_nothing(gradjob, tmp_path):
    run = gradjob("submit", "--model", "network", "--layers", "30,20,1", "--examples", "8", "--workers", "2",
                  "--dry-run")
    assert run.exit_code == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0] == "plan    641 parameters in 16 chunks of 41"
    assert lines[1].startswith("  store     gradjob-stores/network-random-") and lines[1].endswith(".zarr")
    assert lines[2] == "  evaluator incremental"
    assert lines[3] == "  steps     automatic, from the forward's noise measured per tensor (ECnoise)"
    assert re.fullmatch(r"  memory    about \d+\.\d MiB of data per worker", lines[4])
    assert lines[5] == "  precision checked in float64; threshold 2e-07"
    assert not (tmp_path / "gradjob-stores").exists()


def test_scheduler_from_the_environment(gradjob, cluster_address, free_port, monkeypatch):
    """In a DaskJob pod the operator sets DASK_SCHEDULER_ADDRESS: it is the default --scheduler. (The
    unanswered wait shortened to 1 s: test_bad_input waits the real 10 s and checks its message.)"""
    monkeypatch.setattr(cluster, "CONNECT_SECONDS", 1)
    monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", f"tcp://127.0.0.1:{free_port}")
    run = gradjob("submit", "--epsilon", "1e-7")
    assert run.exit_code == 2
    assert run.stderr.startswith(f"gradjob: error: cannot reach the Dask scheduler at tcp://127.0.0.1:{free_port} "
                                 "within 1 s")
    monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", cluster_address)
    assert gradjob("submit", "--epsilon", "1e-7").exit_code == 1  # the seed's planted bugs, found there


def test_progress_in_a_log_and_stdout_kept_for_json(tmp_path, cluster_address):
    """Off a terminal, stderr gets plain progress lines (no ANSI), also with
    --json; whatever the user's code prints goes to stderr, so stdout is exactly one JSON object."""
    (tmp_path / "model.py").write_text(PRINTING_MODEL)
    run = subprocess.run(GRADJOB + ["submit", "--json", "--model", "model.py", "--forward", "forward", "--backward",
                                    "backward", "--case", "seed", "--workers", "1"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["passed"] is True
    assert run.stdout.count("\n") == 1
    assert "\x1b[" not in run.stderr
    assert "model file imported" in run.stderr and "forward called" in run.stderr
    stamp = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ "  # UTC: when, for a log read the next morning
    assert "Dask dashboard" not in run.stderr  # issue 20: the embedded cluster has no bokeh, and says nothing of it
    assert re.search(rf"^{stamp}chunks \d+/\d+, [\d,]+ parameters/s, elapsed \d:\d\d:\d\d, about \d:\d\d:\d\d left, "
                     r"\d+ suspect\(s\) so far$", run.stderr, re.M)


def test_a_user_module_named_pipeline_does_not_shadow_gradjob(tmp_path):
    """ML repositories often have a pipeline.py or pipeline/; gradjob's import name is gradjob."""
    (tmp_path / "pipeline.py").write_text("raise ImportError('the team pipeline, not gradjob')\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    run = subprocess.run(["gradjob", "submit", "--epsilon", "1e-7", "--workers", "1"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 1, run.stderr
    assert "FAIL  dW2 is 2.00× the numerical gradient" in run.stdout


FAILING_AT_A_PERTURBATION = '''
from gradjob.model.networks import network_forward, network_backward as backward
from gradjob.model.cases import seed_case

LIMIT = float(seed_case().parameters["W2"][1, 2])


def forward(X, Y, parameters):
    if float(parameters["W2"][1, 2]) > LIMIT:
        raise ValueError("boom")
    return network_forward(X, Y, parameters)
'''


def test_json_on_exit_3_is_a_json_error_object(gradjob, write_model):
    """A job that could not finish (exit 3) prints, with --json, one JSON object on stdout as bad input
    (exit 2) does: it printed nothing, and a nightly job's parser failed on an empty stdout."""
    model = write_model(FAILING_AT_A_PERTURBATION)
    run = gradjob("submit", "--json", model, "--forward", "forward", "--backward", "backward", "--case", "seed",
                  "--no-fast", "--store", "s.zarr")
    line = run.stderr.splitlines()[-3]  # the error line, then the user's frame (file, line; code)
    assert run.exit_code == 3 and line.startswith("gradjob: error: the forward failed at W2[1, 2] + step ")
    assert line.endswith("ValueError: boom; finished chunks are kept in the store")
    assert json.loads(run.stdout) == {"passed": False, "error": line.removeprefix("gradjob: error: "), "exit_code": 3}
    assert run.stdout.count("\n") == 1
    bad = gradjob("submit", "--json", "--epsilon", "0")  # exit 2 as before
    assert (bad.exit_code, json.loads(bad.stdout)) == (2, {"passed": False, "exit_code": 2, "error": (
        "--epsilon must be a positive finite number; got 0.0")})
