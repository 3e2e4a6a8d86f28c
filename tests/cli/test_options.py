"""Issue 20: `--help` shows the choices and ranges of typed options (as click's Choice, IntRange and
FloatRange would), their errors stay one line with exit code 2, and `gradjob submit model.py`
checks that model file as `--model model.py` does."""

import re

import pytest

from gradjob.types import METHODS, MODES, PRECISIONS

MODEL = '''
from gradjob.model.networks import network_forward as forward, network_backward as backward
'''


def flat(text: str) -> str:
    return " ".join(text.split())


def test_help_lists_choices_and_ranges(gradjob):
    submit = gradjob("submit", "-h")
    assert submit.exit_code == 0
    help_text = flat(submit.stdout)
    for option, choices in (("--method", METHODS), ("--precision", PRECISIONS), ("--mode", MODES)):
        assert f"{option} <{'|'.join(choices)}> " in help_text, option
    for shown in ("--examples <int range> Examples for --case random. [default: 16; x>=1]",
                  "--seed <int range> Random seed for --case random. [default: 0; x>=0]",
                  "--directions <int range> Random directions per tensor in directional mode. [default: 3; x>=1]",
                  "--chunk-size <int range> Parameters per task [about 8 tasks per worker]. [x>=1]",
                  "--epsilon <float range> Fixed step for every parameter [automatic, from the measured noise]. [x>0]",
                  "--threshold <float range> Largest difference that passes [2e-7 for float64, 1e-3 for float32]. [x>0]",
                  "--layers <int,int,...> Layer sizes for --case random. [default: 4,5,3,1]",
                  "job_file <str> A job file (jobs/*.toml) of checks to run instead of one check; a model file (.py) "
                  "here is --model."):
        assert shown in help_text, shown
    bench = flat(gradjob("bench", "-h").stdout)
    assert "--workers <int range> Worker processes; repeat to measure scaling (--workers 1 --workers 2). [default: 2; x>=1]" in bench
    report = flat(gradjob("report", "-h").stdout)
    assert "--threshold <float range> Judge against this threshold [the job's]. [x>0]" in report


@pytest.mark.parametrize("args, message", [
    (("submit", "--method", "backward"), "--method must be one of central, five-point, complex-step; got 'backward'"),
    (("submit", "--precision", "f32"), "--precision must be one of float64, model; got 'f32'"),
    (("submit", "--mode", "quick"), "--mode must be one of full, directional; got 'quick'"),
    (("submit", "--examples", "0"), "--examples must be at least 1; got 0"),
    (("submit", "--seed", "-1"), "--seed must be at least 0; got -1"),   # was a numpy traceback
    (("submit", "--directions", "x"), "--directions must be a whole number; got 'x'"),
    (("submit", "--epsilon", "0"), "--epsilon must be a positive finite number; got 0.0"),
    (("submit", "--threshold", "inf"), "--threshold must be a positive finite number; got inf"),
    (("submit", "--layers", "4,x"), "--layers must be comma-separated sizes such as 784,512,256,1; got '4,x'"),
    (("report", "store.zarr", "--threshold", "-1"), "--threshold must be a positive finite number; got -1.0"),
    (("bench", "--workers", "1", "--workers", "0"), "--workers must be at least 1; got 0"),
])
def test_bad_values_are_one_line_and_exit_2(gradjob, args, message):
    run = gradjob(*args)
    assert (run.exit_code, run.stdout, run.stderr) == (2, "", f"gradjob: error: {message}\n")


def test_a_model_file_as_the_argument_is_the_model(gradjob, write_model, tmp_path):
    write_model(MODEL)
    options = ("--forward", "forward", "--backward", "backward", "--case", "random", "--layers", "3,2,1",
               "--examples", "4", "--workers", "1", "--dry-run")
    as_option = gradjob("submit", "--model", "model.py", *options)
    as_argument = gradjob("submit", "model.py", *options)
    assert as_option.exit_code == 0, as_option.stderr
    def unmeasured(stderr):  # the evaluator note carries this run's measured times (issue 18.3)
        return re.sub(r"evaluator: traced, .*", "evaluator: traced, …", stderr)

    assert (as_argument.exit_code, as_argument.stdout, unmeasured(as_argument.stderr)) == (
        0, as_option.stdout, unmeasured(as_option.stderr))
    assert as_argument.stdout.startswith("plan    11 parameters in ")
    both = gradjob("submit", "model.py", "--model", "linear", "--dry-run")
    assert (both.exit_code, both.stderr) == (2, "gradjob: error: model.py and --model linear are both models: "
                                                "give one model file\n")
    (tmp_path / "job.toml").write_text("[job\n")   # anything else is still a job file
    job = gradjob("submit", "job.toml", "--dry-run")
    assert job.exit_code == 2 and job.stderr.startswith("gradjob: error: job file job.toml is not valid TOML: ")
