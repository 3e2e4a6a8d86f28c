"""Issue 6: what can be validated here of the deploy recipes: every manifest parses, each recipe
runs the documented command, that exact command succeeds against a local Dask cluster, and the
systemd units pass ``systemd-analyze verify``."""

import configparser
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
COMMAND = "gradjob submit jobs/nightly.toml"
CLUSTER_COMMAND = 'gradjob submit jobs/nightly.toml --scheduler "$GRADJOB_SCHEDULER"'


def yaml_documents(path):
    return list(yaml.safe_load_all(path.read_text()))


def test_every_manifest_parses():
    for path in DEPLOY.rglob("*"):
        if path.suffix in (".yml", ".yaml"):
            assert all(doc for doc in yaml_documents(path)), path
        elif path.suffix in (".service", ".timer"):
            parser = configparser.ConfigParser(strict=False, interpolation=None)
            parser.optionxform = str
            parser.read_string(path.read_text())
            assert parser.sections(), path
        elif path.suffix == ".py":
            compile(path.read_text(), str(path), "exec")
        elif path.suffix == ".sbatch":
            assert subprocess.run(["bash", "-n", str(path)]).returncode == 0


def recipe_commands() -> dict[str, str]:
    """The command each recipe runs, with install paths and shell wrapping taken away."""
    service = configparser.ConfigParser(strict=False, interpolation=None)
    service.read_string((DEPLOY / "systemd/gradjob-nightly.service").read_text())
    compose = yaml_documents(DEPLOY / "compose/docker-compose.yml")[0]["services"]["job"]["command"]
    cron = [line for line in (DEPLOY / "cron/crontab").read_text().splitlines() if line and not line.startswith("#")]
    cronjob = yaml_documents(DEPLOY / "kubernetes/cronjob.yaml")[0]
    container = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    sbatch = [line for line in (DEPLOY / "slurm/nightly.sbatch").read_text().splitlines() if line.startswith("gradjob ")]
    commands = {
        "systemd": service["Service"]["ExecStart"],
        "cron": re.search(r"(\S*gradjob submit [^>]*)", cron[0]).group(1).strip(),
        "compose": compose[-1].replace("$$", "$"),
        "kubernetes": container["command"][-1],
        "slurm": sbatch[0],
    }
    return {k: re.sub(r"^/\S*/bin/", "", v).strip() for k, v in commands.items()}


def test_each_recipe_runs_the_documented_command():
    commands = recipe_commands()
    assert commands == {"systemd": COMMAND, "cron": COMMAND, "compose": CLUSTER_COMMAND,
                        "kubernetes": CLUSTER_COMMAND, "slurm": CLUSTER_COMMAND}
    assert COMMAND in (DEPLOY / "README.md").read_text() and CLUSTER_COMMAND in (DEPLOY / "README.md").read_text()


def test_no_scheduler_on_a_public_interface():
    compose = yaml_documents(DEPLOY / "compose/docker-compose.yml")[0]
    assert "ports" not in compose["services"]["scheduler"]
    assert compose["networks"]["gradjob"]["internal"] is True
    cluster = yaml_documents(DEPLOY / "kubernetes/daskcluster.yaml")[0]
    assert cluster["spec"]["scheduler"]["service"]["type"] == "ClusterIP"


@pytest.mark.parametrize("command", [COMMAND, CLUSTER_COMMAND])
def test_the_exact_command_succeeds_against_a_local_cluster(command, tmp_path, cluster_address):
    """Run as the recipes run it: a shell, the installed ``gradjob`` script, a checkout's jobs/."""
    shutil.copytree(ROOT / "jobs", tmp_path / "jobs")
    gradjob = shutil.which("gradjob") or str(Path(sys.executable).with_name("gradjob"))
    env = {**os.environ, "GRADJOB_SCHEDULER": cluster_address,
           "PATH": f"{Path(gradjob).parent}{os.pathsep}{os.environ['PATH']}"}
    shell = command if "GRADJOB_SCHEDULER" in command else f"{command} --workers 2"
    run = subprocess.run(["bash", "-c", shell], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "job nightly: 2 of 2 checks passed" in run.stdout
    for report in ("nightly.json", "nightly.xml", "nightly.html"):
        assert (tmp_path / "reports" / report).stat().st_size > 0


def test_systemd_units_verify(tmp_path):
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is part of this machine image; install systemd to run this test"
    gradjob = shutil.which("gradjob") or str(Path(sys.executable).with_name("gradjob"))
    for name in ("gradjob-nightly.service", "gradjob-nightly.timer"):
        text = (DEPLOY / "systemd" / name).read_text()
        # verify against this machine: the installed gradjob, an existing folder and user
        text = text.replace("/opt/gradjob/.venv/bin/gradjob", gradjob).replace("/opt/gradjob", str(tmp_path))
        text = text.replace("User=gradjob", "User=root")
        (tmp_path / name).write_text(text)
    run = subprocess.run([analyze, "verify", str(tmp_path / "gradjob-nightly.service"),
                          str(tmp_path / "gradjob-nightly.timer")], capture_output=True, text=True, timeout=120)
    problems = [line for line in run.stderr.splitlines() if "gradjob-nightly" in line]
    assert run.returncode == 0 and not problems, run.stderr
