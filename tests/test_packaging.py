"""Issue 20's packaging: a declared licence, and nothing the recipes write in the checkout is tracked."""

from __future__ import annotations

import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GENERATED = ["gradjob-nightly-42.log", "slurm-42.out", "reports/nightly.html", "run.pid"]


def test_license_is_mit_and_declared():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "MIT"
    assert project["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License\n")
    assert "Copyright (c) 2026 gradjob developers" in text.splitlines()


def git(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True)


@pytest.mark.skipif(shutil.which("git") is None or not (ROOT / ".git").exists(), reason="not a git checkout")
def test_files_the_recipes_write_are_ignored_and_untracked():
    ignored = git("check-ignore", "--no-index", *GENERATED)
    assert ignored.stdout.split() == GENERATED
    tracked = git("ls-files", "--", *GENERATED)
    assert tracked.stdout == ""
