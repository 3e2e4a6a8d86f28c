"""Issue 20: the HTML page read through its DOM (html.parser): the job's summary at the top, a strip
for failing 1×N and 1-D tensors, directions named as directions; and matplotlib, imported only for
the page, quiet for a service user whose home is not writable."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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
