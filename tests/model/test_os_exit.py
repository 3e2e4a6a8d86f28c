"""os._exit in the user's code ends no check as a pass: a small check runs in gradjob's own process,
where ``os._exit(0)`` used to end gradjob with exit 0, read as a PASS by CI. Through the CLI as a
subprocess (an in-process runner would itself be ended), in this process and on a Dask worker."""

import json
import subprocess
import sys

import pytest

GRADJOB = [sys.executable, "-c", "from gradjob.cli import app; app(prog_name='gradjob')"]

MODEL = '''
import os
from gradjob.model.networks import network_forward, network_backward
from gradjob.model.cases import seed_case

B3 = seed_case().parameters["b3"][0, 0]


def on_a_worker():
    try:
        from distributed import get_worker
        get_worker()
        return True
    except (ImportError, ValueError):
        return False


def forward(X, Y, parameters):
    if float(parameters["b3"][0, 0]) != B3:
        os._exit(int(os.environ.get("STATUS", "0")))
    return network_forward(X, Y, parameters)


def forward_on_workers(X, Y, parameters):
    if float(parameters["b3"][0, 0]) != B3 and on_a_worker():
        os._exit(0)
    return network_forward(X, Y, parameters)


backward = network_backward
'''


def submit(tmp_path, *args, status="0"):
    model = tmp_path / "exiting.py"
    model.write_text(MODEL)
    return subprocess.run([*GRADJOB, "submit", "--model", str(model), "--backward", "backward", "--case", "seed",
                           "--store", str(tmp_path / "s.zarr"), *args], capture_output=True, text=True,
                          cwd=tmp_path, env={**__import__("os").environ, "STATUS": status}, timeout=600)


def errors(run):
    return [line for line in run.stderr.splitlines() if line.startswith("gradjob: error:")]


@pytest.mark.parametrize("status, fast", [("0", "--no-fast"), ("1", "--fast")])
def test_os_exit_in_this_process_is_an_error_exit_3(tmp_path, status, fast):
    run = submit(tmp_path, "--forward", "forward", fast, status=status)
    assert (run.returncode, run.stdout) == (3, "")
    assert errors(run) == ["gradjob: error: the forward failed at b3[0, 0] + step (parameter 46, chunk 15): "
                           f"SystemExit: os._exit({status}) was called; finished chunks are kept in the store"]
    assert run.stderr.splitlines()[-2:] == [f'  File "{tmp_path / "exiting.py"}", line 20, in forward',
                                            f'    os._exit(int(os.environ.get("STATUS", "0")))']


def test_os_exit_at_import_is_exit_2(tmp_path):
    model = tmp_path / "importing.py"
    model.write_text("import os\nos._exit(0)\n")
    run = subprocess.run([*GRADJOB, "submit", "--model", str(model), "--case", "seed"], capture_output=True,
                         text=True, cwd=tmp_path, timeout=600)
    assert (run.returncode, run.stdout) == (2, "")
    assert run.stderr.splitlines() == [f"gradjob: error: model file {model} failed to load: SystemExit: "
                                       "os._exit(0) was called", f'  File "{model}", line 2, in <module>',
                                       "    os._exit(0)"]


def test_os_exit_on_a_dask_worker_is_an_error_exit_3(tmp_path, cluster_address):
    run = submit(tmp_path, "--forward", "forward_on_workers", "--no-fast", "--scheduler", cluster_address)
    assert (run.returncode, run.stdout) == (3, "")
    assert errors(run) == ["gradjob: error: the forward failed at b3[0, 0] + step (parameter 46, chunk 15): "
                           "SystemExit: os._exit(0) was called; finished chunks are kept in the store"]
    assert run.stderr.splitlines()[-2:] == [f'  File "{tmp_path / "exiting.py"}", line 26, in forward_on_workers',
                                            "    os._exit(0)"]


FORKING = '''
import os
from gradjob.model.networks import network_forward, network_backward


FORKED = []


def forward(X, Y, parameters):
    if not FORKED:  # once, in the first call (gradjob's own, at θ)
        FORKED.append(os.fork())
        if FORKED[0] == 0:
            os._exit(7)  # a child the forward forks ends as it asks (multiprocessing's children end so)
        assert os.waitpid(FORKED[0], 0)[1] >> 8 == 7
    return network_forward(X, Y, parameters)


backward = network_backward
'''


def test_a_child_the_forward_forks_still_ends_with_os_exit(tmp_path):
    model = tmp_path / "forking.py"
    model.write_text(FORKING)
    run = subprocess.run([*GRADJOB, "submit", "--model", str(model), "--forward", "forward", "--backward", "backward",
                          "--case", "seed", "--no-fast", "--json", "--store", str(tmp_path / "s.zarr")],
                         capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["passed"] is True  # one verdict: no child went on as gradjob
