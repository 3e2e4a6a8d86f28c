"""Issue 5: faults never change the verdict and never lose finished work.

Evaluations are counted by the model itself (each forward call appends a line to a file named by
GRADJOB_TEST_CALLS), so "not evaluated again" is a count, not a hope.
"""

import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET

import dask
import numpy as np
import pytest
import zarr
from distributed import Client, LocalCluster
from typer.testing import CliRunner

from gradjob.cli.app import app
from gradjob.numerics.verify import RUNGS
from gradjob.run import job, reverify

GRADJOB = [sys.executable, "-c", "from gradjob.cli import app; app(prog_name='gradjob')"]

COUNTING_MODEL = '''
import os
import time

import numpy as np
from gradjob.model.networks import network_forward, network_backward


def forward(X, Y, parameters):
    """The built-in network, slowed and counted when the test asks for it."""
    log = os.environ.get("GRADJOB_TEST_CALLS")
    if log:
        with open(log, "a") as f:
            f.write("call\\n")
    time.sleep(float(os.environ.get("GRADJOB_TEST_SLEEP", "0")))
    return network_forward(X, Y, parameters)


backward = network_backward
'''

CRASHING_MODEL = '''
import math
import os
import signal
import time

from gradjob.model.networks import network_forward, network_backward
from gradjob.model.cases import random_case

BASE = random_case([4, 5, 3, 1], 16, 0).parameters


def _perturbed(parameters, name, index):
    return parameters[name][index] != BASE[name][index]


def crash_forward(X, Y, parameters):
    time.sleep(float(os.environ.get("GRADJOB_TEST_SLEEP", "0")))  # keeps chunks running side by side
    if _perturbed(parameters, "W2", (1, 2)):
        os.kill(os.getpid(), signal.SIGKILL)  # the process dies, as a segfaulting extension would
    return network_forward(X, Y, parameters)


def raising_forward(X, Y, parameters):
    if _perturbed(parameters, "W2", (1, 2)):
        raise ValueError("matrix not positive definite")
    return network_forward(X, Y, parameters)


def hang_forward(X, Y, parameters):
    if _perturbed(parameters, "W2", (1, 2)):
        time.sleep(3600)  # never returns, as a deadlocked library call would not
    return network_forward(X, Y, parameters)


def nan_forward(X, Y, parameters):
    cost, cache = network_forward(X, Y, parameters)
    return (math.nan if _perturbed(parameters, "b2", (0, 0)) else cost), cache


backward = network_backward
'''


# W2[1, 2] is θ[32]; chunks of 3 put it in chunk 10, parameters 30–32
CRASH_MESSAGE = ("\ngradjob: error: chunk 10 (parameters 30–32: W2[1, 0] to W2[1, 2]) killed the workers that "
                 "ran it, also when run alone; its forward may crash the process. Finished chunks are kept in "
                 "the store\n")


HANG_MESSAGE = ("\ngradjob: error: chunk 10 (parameters 30–32: W2[1, 0] to W2[1, 2]) ran longer than the task time "
                "limit of 2 s; its forward may hang at one of these parameters (raise the limit with --task-timeout "
                "or the job file's task_timeout if it is only slow); finished chunks are kept in the store\n")


def suspects(stderr):
    """The chunks the job said it re-runs alone, from its progress note."""
    note = re.search(r"^(?:\S+Z )?workers kept dying while running chunks? ([0-9, ]+); re-running each alone to "
                     r"find the one that crashes$", stderr, re.M)  # a log line starts with its UTC time
    return [int(k) for k in note.group(1).split(", ")] if note else []


def submit_in(folder, *args):
    """``gradjob submit`` in-process, in ``folder``: for the module's fixtures (conftest's ``gradjob``
    is per test)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        run = CliRunner().invoke(app, ["submit", *map(str, args)], catch_exceptions=False)
    assert run.exit_code == 0, run.stderr
    return run


@pytest.fixture(scope="module")
def without_the_crash(tmp_path_factory, cluster_address):
    """gradapprox of the crashing model with its crash taken out, run once for the module's tests."""
    folder = tmp_path_factory.mktemp("without-the-crash")
    model = folder / "fine.py"
    model.write_text(CRASHING_MODEL.replace("os.kill(os.getpid(), signal.SIGKILL)", "pass"))
    submit_in(folder, "--json", "--store", folder / "ref.zarr", "--scheduler", cluster_address,
              *model_args(model, "crash_forward"))
    return gradapprox(folder / "ref.zarr")


def assert_finished_chunks_as_without_the_crash(store, finished, expected):
    """Every chunk done in ``store`` is byte-identical to a run of the crashing model that does not crash."""
    kept = gradapprox(store)
    for k in np.flatnonzero(finished):
        assert kept[3 * k: 3 * k + 3].tobytes() == expected[3 * k: 3 * k + 3].tobytes()


def model_args(path, forward="forward"):
    """One forward call per evaluation (--no-fast), so the model's own call count is the count of
    evaluations; the traced replay would evaluate without calling it."""
    return ["--model", str(path), "--forward", forward, "--backward", "backward", "--case", "random",
            "--layers", "4,5,3,1", "--chunk-size", "3", "--no-fast"]


def gradapprox(store):
    return zarr.open_group(store, mode="r")["gradapprox"][:]


def done(store):
    return zarr.open_group(store, mode="r")["done"][:].astype(bool)


def wait_until(condition, seconds=120):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise TimeoutError("condition not reached")


def done_count(store):
    try:
        return int(done(store).sum())
    except Exception:
        return 0


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory, cluster_address):
    """The uninterrupted run every fault is compared with, on the shared cluster (once: tests only read it)."""
    folder = tmp_path_factory.mktemp("clean")
    model = folder / "model.py"
    model.write_text(COUNTING_MODEL)
    run = submit_in(folder, "--json", "--store", folder / "clean.zarr", "--scheduler", cluster_address,
                    *model_args(model))
    return model, json.loads(run.stdout), gradapprox(folder / "clean.zarr")


@pytest.mark.parametrize("stop, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_client_stopped_then_resubmitted(tmp_path, clean_run, stop, code):
    """SIGTERM (Kubernetes, Slurm, systemd) stops a job as Ctrl-C does: one line, exit 128 + signal, the
    lock released, the workers shut down; the resubmitted job gives the identical result."""
    model, clean, clean_gradapprox = clean_run
    store, calls = tmp_path / "interrupted.zarr", tmp_path / "calls.log"
    command = GRADJOB + ["submit", "--json", "--workers", "2", "--store", str(store), "--junit", "j.xml",
                         *model_args(model)]
    env = {**os.environ, "GRADJOB_TEST_SLEEP": "0.02"}
    client = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_until(lambda: done_count(store) >= 3)
    client.send_signal(stop)
    _, stderr = client.communicate(timeout=120)
    assert client.returncode == code, stderr
    assert stderr.endswith(f"gradjob: stopped by {stop.name}; finished chunks are kept in the store: submit the same "
                           "job again to resume\n")
    assert "leaked" not in stderr and "Traceback" not in stderr
    assert not (tmp_path / "interrupted.zarr.lock").exists()
    error = ET.parse(tmp_path / "j.xml").getroot().find(".//error")  # CI does not publish an older report
    assert error.get("message") == (f"stopped by {stop.name} before it finished; finished chunks are kept in the "
                                    "store: submit the same job again to resume")
    row = json.loads((tmp_path / "history.jsonl").read_text().splitlines()[-1])
    assert (row["check"], row["verdict"]) == ("interrupted", "stopped")
    finished = done(store)
    assert 3 <= finished.sum() < finished.size
    sizes = np.array([min(3, 47 - start) for start in range(0, 47, 3)])

    preflight = tmp_path / "preflight.log"  # what the client spends before any chunk: --dry-run stops there
    subprocess.run([*command, "--dry-run"], cwd=tmp_path, env={**os.environ, "GRADJOB_TEST_CALLS": str(preflight)},
                   capture_output=True, text=True, timeout=300, check=True)
    resumed = subprocess.run(command, cwd=tmp_path, env={**os.environ, "GRADJOB_TEST_CALLS": str(calls)},
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    result = json.loads(resumed.stdout)
    # the client's calls (the determinism check, the noise probe), two per parameter not yet done, and
    # the ladders of the suspects re-verified at the end (J at θ and 2 per rung)
    suspects = zarr.open_group(store, mode="r")["verify/index"].shape[0]
    ladders = suspects * (1 + 2 * RUNGS)
    # J at θ asked again after each chunk and each batch of ladders: a forward whose calls change it stops the job
    again = int((~finished).sum()) + -(-suspects // reverify.LADDER_BATCH)
    client_calls = len(preflight.read_text().splitlines())
    assert 2 <= client_calls <= 2 + 3 * 7  # the determinism check, and ECnoise's 7 points a few times
    # and the resumed job times its forward (job.PROBE_EVALUATIONS) for its task time limit, and J at θ
    # by the client and by each worker that ran a task (one or both), to show the workers evaluate the
    # client's function
    probes = len(calls.read_text().splitlines()) - (client_calls + job.PROBE_EVALUATIONS
                                                    + 2 * int(sizes[~finished].sum()) + ladders + again)
    assert probes in (2, 3), probes
    assert result["evaluated_chunks"] == int((~finished).sum())
    assert gradapprox(store).tobytes() == clean_gradapprox.tobytes()
    assert result["difference"] == clean["difference"]


def test_worker_killed_mid_job_gives_the_identical_result(tmp_path, clean_run):
    model, clean, clean_gradapprox = clean_run
    store = tmp_path / "killed.zarr"
    os.environ["GRADJOB_TEST_SLEEP"] = "0.02"  # inherited by the worker processes started below
    try:
        cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                               dashboard_address="127.0.0.1:0", silence_logs=logging.CRITICAL)
    finally:
        del os.environ["GRADJOB_TEST_SLEEP"]
    with cluster, Client(cluster) as client:
        pids = client.run(os.getpid)
        job = subprocess.Popen(GRADJOB + ["submit", "--json", "--store", str(store), "--scheduler",
                                          cluster.scheduler_address, *model_args(model)],
                               cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_until(lambda: done_count(store) >= 2)
        victim = sorted(pids.values())[0]
        os.kill(victim, signal.SIGKILL)
        stdout, stderr = job.communicate(timeout=300)
        assert victim not in client.run(os.getpid).values()  # the worker really died
    assert job.returncode == 0, stderr
    assert gradapprox(store).tobytes() == clean_gradapprox.tobytes()
    assert json.loads(stdout)["difference"] == clean["difference"]


def test_chunk_that_kills_its_workers_is_named_and_finished_chunks_stay(tmp_path, write_model, gradjob, without_the_crash):
    model = write_model(CRASHING_MODEL, "crashing.py")
    store = tmp_path / "crash.zarr"
    with dask.config.set({"distributed.scheduler.allowed-failures": 1}):
        run = gradjob("submit", "--store", store, "--workers", "2", *model_args(model, "crash_forward"))
    assert run.exit_code == 3
    assert run.stderr.endswith(CRASH_MESSAGE)  # after the progress bar, one line
    assert 10 in suspects(run.stderr)
    finished = done(store)
    assert not finished[10]
    assert_finished_chunks_as_without_the_crash(store, finished, without_the_crash)


def test_chunks_running_beside_a_crash_are_not_blamed_for_it(tmp_path, write_model, gradjob, without_the_crash):
    """One worker with two threads: a chunk running or queued beside chunk 10 dies with it, and
    Dask often gives up on both (before the fix, 2 of 6 runs named chunk 11). Re-run alone, only
    chunk 10 crashes; the other is kept."""
    model = write_model(CRASHING_MODEL, "crashing.py")
    store = tmp_path / "crash.zarr"
    os.environ["GRADJOB_TEST_SLEEP"] = "0.02"  # inherited by the worker process started below
    try:
        with dask.config.set({"distributed.scheduler.allowed-failures": 1}):
            cluster = LocalCluster(n_workers=1, threads_per_worker=2, processes=True, host="127.0.0.1",
                                   dashboard_address="127.0.0.1:0", silence_logs=logging.CRITICAL)
    finally:
        del os.environ["GRADJOB_TEST_SLEEP"]
    with cluster:
        run = gradjob("submit", "--store", store, "--scheduler", cluster.scheduler_address,
                      *model_args(model, "crash_forward"))
    assert run.exit_code == 3
    assert run.stderr.endswith(CRASH_MESSAGE)
    assert 10 in suspects(run.stderr)
    finished = done(store)
    assert not finished[10] and finished.sum() >= 1
    assert_finished_chunks_as_without_the_crash(store, finished, without_the_crash)


@pytest.mark.parametrize("forward, message", [
    ("raising_forward", "the forward failed at W2[1, 2] + step (parameter 32, chunk 10): "
                        "ValueError: matrix not positive definite; finished chunks are kept in the store"),
    ("nan_forward", "the forward failed at b2[0, 0] + step (parameter 40, chunk 13): "
                    "the cost is nan; finished chunks are kept in the store"),
])
def test_forward_failing_at_one_perturbation_names_the_parameter(tmp_path, write_model, gradjob,
                                                                 cluster_address, forward, message):
    model = write_model(CRASHING_MODEL, "crashing.py")
    run = gradjob("submit", "--store", tmp_path / "s.zarr", "--scheduler", cluster_address,
                  *model_args(model, forward))
    assert run.exit_code == 3
    error = run.stderr[run.stderr.index("\ngradjob: error: "):]
    assert error.startswith(f"\ngradjob: error: {message}\n")  # after the progress bar, one line
    assert all(line.startswith(("  File \"", "    ")) for line in error.splitlines()[2:])  # then the user's frames
    report = gradjob("report", tmp_path / "s.zarr")
    assert report.exit_code == 2 and "is unfinished" in report.stderr  # no NaN is reduced


HOLD_LOCK = ("import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
             "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); time.sleep(300)")


def test_second_writer_is_refused_and_a_dead_holders_lock_is_taken_over(tmp_path, gradjob, cluster_address):
    """The OS lock decides, not the pid the lock file names: a live holder is refused; once it dies its
    lock goes with it; and a lock file naming this very process (containers reuse pids) is stale too."""
    import socket

    from conftest import store_fingerprint

    args = ["submit", "--epsilon", "1e-7", "--store", tmp_path / "s.zarr", "--scheduler", cluster_address]
    assert gradjob(*args, "--chunk-size", "7").exit_code == 1
    before = store_fingerprint(tmp_path / "s.zarr")
    lock, host = tmp_path / "s.zarr.lock", socket.gethostname()
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(lock)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        lock.write_text(json.dumps({"host": host, "pid": holder.pid, "since": "2026-11-23T01:00:00+00:00"}))
        run = gradjob(*args)
        assert (run.exit_code, run.stderr) == (2, (
            f"gradjob: error: store {tmp_path}/s.zarr is being written by another job (process {holder.pid} on "
            f"{host}, since 2026-11-23T01:00:00+00:00); wait for it to finish or stop it\n"))
        assert store_fingerprint(tmp_path / "s.zarr") == before
    finally:
        holder.kill()
        holder.wait()
    run = gradjob(*args)
    assert run.exit_code == 1
    assert f"gradjob: note: took over a stale lock of process {holder.pid} on {host}" in run.stderr
    assert not lock.exists()

    lock.write_text(json.dumps({"host": host, "pid": os.getpid(), "since": "x"}))
    run = gradjob(*args)
    assert run.exit_code == 1
    assert f"gradjob: note: took over a stale lock of process {os.getpid()} on {host}" in run.stderr
    assert not lock.exists()


def test_a_lock_from_another_host_needs_break_lock(tmp_path, gradjob, cluster_address):
    args = ["submit", "--epsilon", "1e-7", "--store", tmp_path / "s.zarr", "--scheduler", cluster_address]
    (tmp_path / "s.zarr.lock").write_text(json.dumps({"host": "elsewhere", "pid": 7, "since": "x"}))
    run = gradjob(*args)
    assert (run.exit_code, run.stderr) == (2, f"gradjob: error: store {tmp_path}/s.zarr is locked by process 7 on "
                                              "elsewhere (since x); if that job is dead, pass --break-lock\n")
    assert not (tmp_path / "s.zarr").exists()
    run = gradjob(*args, "--break-lock")
    assert run.exit_code == 1 and "took over a stale lock of process 7 on elsewhere" in run.stderr


@pytest.mark.parametrize("where", [[], ["--workers", "1"]], ids=["in-process", "embedded-cluster"])
def test_a_forward_that_hangs_ends_the_job_named_and_finished_chunks_stay(tmp_path, write_model, gradjob, where, without_the_crash):
    """Issue 19: a hang at one perturbation used to hang the job forever; the time limit ends it, naming
    the chunk, on the serial executor and on the cluster alike."""
    model = write_model(CRASHING_MODEL, "crashing.py")
    store = tmp_path / "s.zarr"
    run = gradjob("submit", "--store", store, "--task-timeout", "2", *where, *model_args(model, "hang_forward"))
    assert run.exit_code == 3, run.stderr
    assert run.stderr.endswith(HANG_MESSAGE)
    finished = done(store)
    assert finished[:10].all() and not finished[10]  # in order in-process; on the cluster later chunks may be done too
    assert not (tmp_path / "s.zarr.lock").exists()
    assert_finished_chunks_as_without_the_crash(store, finished, without_the_crash)


STOPPED_JOB = '''
[job]
name = "nightly"
store_root = "stores"
[reports]
json = "reports/nightly.json"
junit = "reports/nightly.xml"
[[check]]
name = "quick"
model = "network"
case = "seed"
[[check]]
name = "stuck"
model = "crashing.py"
forward = "hang_forward"
backward = "backward"
case = "random"
layers = [4, 5, 3, 1]
chunk_size = 3
fast = false
[[check]]
name = "never-started"
model = "network"
case = "seed"
'''


def test_a_stopped_job_file_reports_the_finished_checks_and_marks_the_others_stopped(tmp_path, write_model):
    """Issue 19: a stopped nightly wrote no reports and no history, so CI published the night before's."""
    write_model(CRASHING_MODEL, "crashing.py")
    (tmp_path / "job.toml").write_text(STOPPED_JOB)
    job = subprocess.Popen(GRADJOB + ["submit", "job.toml"], cwd=tmp_path, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    lines = []
    for line in job.stderr:  # the stuck check's progress lines name it
        lines.append(line)
        if re.match(r"^\S+Z stuck: chunks 0/16$", line):
            break
    job.send_signal(signal.SIGTERM)
    _, rest = job.communicate(timeout=120)
    stderr = "".join(lines) + rest
    assert job.returncode == 143, stderr
    assert stderr.endswith("gradjob: stopped by SIGTERM; finished chunks are kept in the store: submit the same job "
                           "again to resume\n")
    stopped = ("stopped by SIGTERM before it finished; finished chunks are kept in the store: submit the same job "
               "again to resume")
    checks = json.loads((tmp_path / "reports/nightly.json").read_text())["checks"]
    assert [c["check"] for c in checks] == ["quick", "stuck", "never-started"]
    assert checks[0]["passed"] is True
    assert checks[1:] == [{"check": name, "passed": False, "error": stopped, "exit_code": 143}
                          for name in ("stuck", "never-started")]
    suites = ET.parse(tmp_path / "reports/nightly.xml").getroot()
    assert [e.get("message") for e in suites.findall(".//error")] == [stopped, stopped]
    assert suites[0].findall(".//error") == [] and suites[0].get("failures") == "0"
    rows = [json.loads(line) for line in (tmp_path / "stores/history.jsonl").read_text().splitlines()]
    assert [(r["check"], r["verdict"]) for r in rows] == [("quick", "pass"), ("stuck", "stopped"),
                                                          ("never-started", "stopped")]


def test_the_default_time_limit_is_generous():
    """max(60 s, 50× the task's expected time from the measured time per evaluation)."""
    from gradjob.executors.limits import default_limit

    assert default_limit(1e-3, 600) == 60.0      # 0.6 s expected: the floor
    assert default_limit(1e-2, 600) == 300.0     # 6 s expected: fifty times that
