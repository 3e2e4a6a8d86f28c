"""Issue 20: the cron line and the systemd unit's command, run for real as a system user.

A system user has no home directory and no shell; cron starts its line with ``HOME`` set to that
missing home, and systemd starts ``ExecStart`` in ``WorkingDirectory`` with no environment of the
user's. Here ``useradd --system`` makes such a user, the recipes' ``/opt/gradjob`` is a folder that
user owns (a copy of jobs/), and ``/opt/gradjob/.venv`` a virtual environment of the system's
Python that reaches this installation's packages; the commands run through ``runuser`` with the
environment cron or systemd gives. Skipped where this is not root or the tools are absent (CI
machines without them): it needs a real user, not a stand-in.
"""

from __future__ import annotations

import configparser
import os
import pwd
import shlex
import shutil
import subprocess
import sysconfig
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
USER = "gradjob-ci"          # the recipes' user is "gradjob"; a name of the test's own
SYSTEM_PYTHON = Path("/usr/bin/python3")


def _missing() -> str:
    if os.geteuid() != 0:
        return "not root: cannot create a system user"
    for tool in ("useradd", "runuser"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    if not SYSTEM_PYTHON.exists():
        return f"{SYSTEM_PYTHON} is not installed"
    same = subprocess.run([str(SYSTEM_PYTHON), "-c", "import sys; print(sys.version_info[:2])"],
                          capture_output=True, text=True).stdout.strip()
    here = subprocess.run(["python", "-c", "import sys; print(sys.version_info[:2])"],
                          capture_output=True, text=True).stdout.strip()
    if same != here:
        return f"{SYSTEM_PYTHON} is Python {same}, this installation's packages are for {here}"
    return ""


pytestmark = pytest.mark.skipif(bool(_missing()), reason=_missing() or "runs")


@pytest.fixture(scope="module")
def system_user():
    try:
        pwd.getpwnam(USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--home-dir", f"/home/{USER}",
                        "--shell", "/usr/sbin/nologin", USER], check=True)
    entry = pwd.getpwnam(USER)
    assert not Path(entry.pw_dir).exists()   # what the report ran into: no home
    return entry


@pytest.fixture(scope="module")
def opt(system_user):
    """/opt/gradjob as the recipes expect it, owned by the system user, readable by nobody else's
    path: under a world-traversable temporary folder (pytest's own is root's alone)."""
    base = Path(tempfile.mkdtemp(prefix="gradjob-system-user-"))
    base.chmod(0o755)
    opt = base / "opt-gradjob"
    shutil.copytree(ROOT / "jobs", opt / "jobs")
    venv = opt / ".venv"
    subprocess.run([str(SYSTEM_PYTHON), "-m", "venv", "--without-pip", str(venv)], check=True)
    purelib = Path(sysconfig.get_paths()["purelib"])   # this installation's (editable or not)
    site = next(venv.glob("lib/python3*/site-packages"))
    (site / "gradjob-installation.pth").write_text(f"import site; site.addsitedir({str(purelib)!r})\n")
    (venv / "bin/gradjob").write_text(
        f"#!{venv}/bin/python\nimport sys\nfrom gradjob.cli import app\n"   # as pip writes it
        "if __name__ == '__main__':\n    sys.exit(app())\n")
    (venv / "bin/gradjob").chmod(0o755)
    subprocess.run(["chown", "-R", f"{system_user.pw_uid}:{system_user.pw_gid}", str(opt)], check=True)
    yield opt
    shutil.rmtree(base, ignore_errors=True)


def _as_user(command: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([shutil.which("runuser"), "-u", USER, "--", "/bin/sh", "-c", command], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def _recipe(line: str, opt: Path) -> str:
    assert line.count("/opt/gradjob") >= 1, line
    return line.replace("/opt/gradjob", str(opt))


def test_cron_line_runs_as_a_system_user_without_a_home(opt, system_user):
    lines = [line for line in (DEPLOY / "cron/crontab").read_text().splitlines()
             if line.strip() and not line.lstrip().startswith("#")]
    command = _recipe(lines[0].split(None, 5)[5], opt)
    cron_env = {"PATH": "/usr/bin:/bin", "HOME": system_user.pw_dir, "SHELL": "/bin/sh", "LOGNAME": USER}
    run = _as_user(command, Path("/"), cron_env)
    log = (opt / "reports/cron.log").read_text()
    # the nightly job's verdict (its checks pass), and no line about a home or config folder
    assert run.returncode == 0, log
    assert "job nightly:" in log and "checks passed" in log, log
    assert "mkdir" not in log and "Permission denied" not in log and "Traceback" not in log, log
    assert (opt / "reports/nightly.html").stat().st_uid == system_user.pw_uid


def test_systemd_exec_start_runs_as_its_user(opt, system_user):
    parser = configparser.ConfigParser(strict=True, interpolation=None)
    parser.optionxform = str
    parser.read_string((DEPLOY / "systemd/gradjob-nightly.service").read_text())
    service = parser["Service"]
    assert service["User"] == "gradjob"
    # the cron test ran the nightly job as this user; here the unit's environment, on a short job
    command = _recipe(service["ExecStart"], opt).replace("jobs/nightly.toml", "jobs/seed-corrected.toml")
    # systemd's environment for a system service: PATH, and HOME/USER/LOGNAME of User=
    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
           "HOME": system_user.pw_dir, "USER": USER, "LOGNAME": USER, "SHELL": "/usr/sbin/nologin"}
    run = _as_user(shlex.join(shlex.split(command)), Path(_recipe(service["WorkingDirectory"], opt)), env)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "mkdir" not in run.stderr and "Permission denied" not in run.stderr, run.stderr
    assert "job seed-corrected: 1 of 1 checks passed" in run.stdout + run.stderr
