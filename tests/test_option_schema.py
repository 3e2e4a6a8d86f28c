"""Issue 21: one declaration of every option (``gradjob.options``) makes the ``submit`` command's
parameters, the job file's schema and the Python API's keywords: the three accept the same names
with the same defaults and refuse a bad value with the same line; ``--json`` prints a refusal as JSON."""

import json
import tomllib

import pytest
import typer.main
from conftest import seed_arrays

from gradjob import api, options
from gradjob.cli.app import app
from gradjob.errors import InputError
from gradjob.model import networks
from gradjob.run import jobfile
from gradjob.types import Request

SHARED = {"seed", "epsilon", "method", "fast", "precision", "threshold", "chunk_size", "mode", "directions", "workers",
          "scheduler"}  # given on all three surfaces (workers and scheduler under a job file's [cluster])
CLI_ONLY = {"job_file", "dry_run", "json_output", "json_file", "junit", "html_file"}  # not options of a check


def surfaces():
    """The option names each surface accepts: submit's parameters, a job file's keys, the API's keywords."""
    cli = {p.name for p in typer.main.get_command(app).commands["submit"].params} - CLI_ONLY
    job = (set(jobfile.Check.model_fields) - {"name"}) | set(jobfile.Cluster.model_fields)
    return {"cli": cli, "job": job, "api": set(api.OPTIONS) - {"progress"}}


def test_the_surfaces_accept_the_declared_names():
    accepted = surfaces()
    assert accepted["cli"] == {o.name for o in options.of(options.CLI)}
    assert accepted["job"] == {o.name for o in options.of(options.CHECK) + options.of(options.CLUSTER)}
    assert accepted["api"] == {o.name for o in options.of(options.API)}
    assert accepted["cli"] & accepted["job"] & accepted["api"] == SHARED


def requests(gradjob, tmp_path, monkeypatch):
    """The ``Request`` each surface makes when no option is given."""
    made = []

    def record(request, progress=None, cluster=None):
        made.append(request)
        raise InputError("recorded")

    monkeypatch.setattr(jobfile, "run_check", record)  # submit hands its Request here, before anything runs
    assert gradjob("submit").stderr == "gradjob: error: recorded\n"
    (tmp_path / "job.toml").write_text("[[check]]\nname = 'a'\n")
    job = jobfile.load(str(tmp_path / "job.toml")).checks[0].request
    return {"cli": made[0], "job": job, "api": api.request_of("check", {})[0]}


def test_the_same_defaults_everywhere(gradjob, tmp_path, monkeypatch):
    made = requests(gradjob, tmp_path, monkeypatch)
    for option in options.OPTIONS:
        for surface, where in (("cli", options.CLI), ("job", options.CHECK), ("job", options.CLUSTER),
                               ("api", options.API)):
            if where in option.where and option.name != "workers":
                assert getattr(made[surface], option.name) == option.default, (surface, option.name)
    assert made["cli"].layers == made["job"].layers == (4, 5, 3, 1)
    assert made["cli"].examples == made["job"].examples == 16
    assert (made["cli"].epsilon, made["job"].epsilon, made["api"].epsilon) == (None, None, None)
    # workers is the surface's own: the command line's embedded cluster, the API's in-process run
    assert (made["cli"].workers, made["api"].workers) == (options.DEFAULT_WORKERS, 1)


# (option, as typed on the command line, as a TOML or Python value, the line after "gradjob: error: ")
BAD = [
    ("epsilon", "0", "0", "--epsilon must be a positive finite number; got 0.0"),
    ("threshold", "inf", "inf", "--threshold must be a positive finite number; got inf"),
    ("method", "forward", "'forward'", "--method must be one of central, five-point, complex-step; got 'forward'"),
    ("precision", "float32", "'float32'", "--precision must be one of float64, model; got 'float32'"),
    ("mode", "quick", "'quick'", "--mode must be one of full, directional; got 'quick'"),
    ("chunk_size", "0", "0", "--chunk-size must be at least 1; got 0"),
    ("directions", "0", "0", "--directions must be at least 1; got 0"),
    ("seed", "-1", "-1", "--seed must be at least 0; got -1"),   # a job file accepted it
    ("workers", "0", "0", "--workers must be at least 1; got 0"),
    ("examples", "0", "0", "--examples must be at least 1; got 0"),
    ("task_timeout", "0", "0", "--task-timeout must be a positive finite number; got 0.0"),
]


@pytest.mark.parametrize("name, text, value, message", BAD, ids=[row[0] for row in BAD])
def test_a_bad_value_is_the_same_line_everywhere(gradjob, tmp_path, name, text, value, message):
    option = options.BY_NAME[name]
    cli = gradjob("submit", option.flag, text)
    assert (cli.exit_code, cli.stdout, cli.stderr) == (2, "", f"gradjob: error: {message}\n")

    cluster = options.CLUSTER in option.where  # workers: under [cluster], beside a check
    text_of_file = f"[cluster]\n{name} = {value}\n[[check]]\nname = 'a'\n" if cluster else \
        f"[[check]]\nname = 'a'\n{name} = {value}\n"
    (tmp_path / "bad.toml").write_text(text_of_file)
    job = gradjob("submit", "bad.toml")
    key_message = message.replace(option.flag, name, 1)  # a job file names the key as it is spelled there
    where = "[cluster]" if cluster else "check 'a'"
    expected = f"gradjob: error: job file bad.toml: {where}: {key_message}\n"
    assert (job.exit_code, job.stdout, job.stderr) == (2, "", expected)

    python_value = tomllib.loads(f"v = {value}")["v"]
    if options.API in option.where:
        with pytest.raises(InputError) as raised:
            api.check(networks.network_forward, networks.network_backward, *seed_arrays(), **{name: python_value})
        assert str(raised.value) == message
    else:
        with pytest.raises(TypeError, match=f"unexpected keyword argument '{name}'"):
            api.check(networks.network_forward, networks.network_backward, *seed_arrays(), **{name: python_value})


def test_a_request_made_in_python_is_held_to_the_declarations():
    with pytest.raises(InputError, match=r"^--examples must be at least 1; got 0$"):
        options.check(Request(examples=0))
    with pytest.raises(InputError, match=r"^--overwrite and --resume contradict each other; choose one$"):
        options.check(Request(overwrite=True, resume=True))


@pytest.mark.parametrize("args, message", [
    (("submit", "--json", "--epsilon", "0"), "--epsilon must be a positive finite number; got 0.0"),  # while parsing
    (("submit", "--case", "mnist", "--json"),   # in the check
     "--case 'mnist' is not understood; give file.npz, file.py:FUNC or one of: seed, linear, random"),
    (("submit", "absent.toml", "--json"), "job file 'absent.toml' does not exist"),
    (("report", "absent.zarr", "--json"), "there is no store at absent.zarr"),
    (("submit", "--json", "--epsilonn", "1"),
     "No such option: --epsilonn (Possible options: --epsilon, --json, --precision); see gradjob -h"),
])
def test_json_output_of_bad_input_is_a_json_error(gradjob, args, message):
    run = gradjob(*args)
    assert run.exit_code == 2
    assert json.loads(run.stdout) == {"passed": False, "error": message, "exit_code": 2}
    assert run.stderr == f"gradjob: error: {message}\n"
