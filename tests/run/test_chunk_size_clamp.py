"""Issue 19: a --chunk-size far above the number of parameters is clamped to it before anything is
created (no chunk of 10¹² elements for Zarr to allocate), and the plan says so."""

import json

import zarr

HUGE = 10**12


def test_dry_run_plan_says_the_chunk_size_was_clamped(gradjob):
    run = gradjob("submit", "--epsilon", "1e-7", "--chunk-size", HUGE, "--dry-run")
    assert run.exit_code == 0, run.stderr
    assert run.stdout.splitlines()[0] == ("plan    47 parameters in 1 chunks of 47 (chunk size 1,000,000,000,000 "
                                          "asked: more than the parameters, clamped to them)")


def test_submit_with_a_huge_chunk_size_runs_and_resumes(gradjob, tmp_path, cluster_address):
    args = ["submit", "--json", "--epsilon", "1e-7", "--store", tmp_path / "s.zarr", "--scheduler", cluster_address]
    run = gradjob(*args, "--chunk-size", HUGE)
    assert run.exit_code == 1, run.stderr
    assert json.loads(run.stdout)["difference"] == 0.2850931567761623
    assert zarr.open_group(tmp_path / "s.zarr", mode="r")["gradapprox"].chunks == (47,)
    again = gradjob(*args, "--chunk-size", HUGE)  # the same job: its store is resumed, not refused
    assert again.exit_code == 1, again.stderr
    assert json.loads(again.stdout)["difference"] == 0.2850931567761623


def test_a_job_files_chunk_size_is_clamped_too(gradjob, tmp_path):
    (tmp_path / "job.toml").write_text('[job]\nname = "j"\nstore_root = "stores"\n\n[[check]]\nname = "seed"\n'
                                       f'model = "network"\ncase = "seed"\nchunk_size = {HUGE}\n')
    run = gradjob("submit", tmp_path / "job.toml", "--dry-run")
    assert run.exit_code == 0, run.stderr
    assert run.stdout.splitlines()[1] == ("plan    47 parameters in 1 chunks of 47 (chunk size 1,000,000,000,000 "
                                          "asked: more than the parameters, clamped to them)")
