"""README's main command, run verbatim in a fresh virtual environment on a clean copy of the repo.
(The test command is what CI itself runs, from README, so it is exercised on every submission.)"""

import json
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_command(marker: str) -> str:
    text = (ROOT / "README.md").read_text()
    match = re.search(rf"<!-- {marker} -->\n```bash\n(.+)\n```", text)
    assert match, f"README.md has no command after <!-- {marker} -->"
    return match.group(1)


def test_main_command_in_a_fresh_venv(tmp_path):
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout.split(b"\0")
    for name in filter(None, (f.decode() for f in files)):
        target = tmp_path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes((ROOT / name).read_bytes())
    run = subprocess.run(["bash", "-c", readme_command("main-command")], cwd=tmp_path, capture_output=True,
                         text=True, timeout=900)
    # exit 1 is the documented outcome: the seed's planted bugs are found and named
    assert run.returncode == 1, run.stderr[-2000:]
    assert "FAIL  backprop disagrees with the numerical gradient: difference 2.850932e-01" in run.stdout
    assert "FAIL  dW2 is 2.00× the numerical gradient" in run.stdout
    assert "FAIL  db1 is 4.00× the numerical gradient" in run.stdout
    report = subprocess.run(["bash", "-c", ". .venv/bin/activate && gradjob report --json gradjob-stores/*.zarr"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert json.loads(report.stdout)["failing"] == ["b1", "W2"]

    # the installed copy, from a folder outside the checkout: the package, and the bench with the model
    # file it ships (the bench once looked for it in the source tree)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    venv = tmp_path / ".venv" / "bin"
    imported = subprocess.run([venv / "python", "-c", "import gradjob, sys; print(gradjob.__file__)"], cwd=outside,
                              capture_output=True, text=True, timeout=60)
    assert "/site-packages/gradjob/" in imported.stdout, imported.stderr
    bench = subprocess.run([venv / "gradjob", "bench", "--layers", "16,8,1", "--examples", "8", "--json"],
                           cwd=outside, capture_output=True, text=True, timeout=600)
    assert bench.returncode == 0, bench.stderr[-2000:]
    user = json.loads(bench.stdout)["user_model"]
    assert "/site-packages/gradjob/examples/seed_style.py" in user["model"] and user["evaluator"] == "traced"


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    assert "<!-- test-command -->" in ci and "README.md" in ci
    assert readme_command("test-command").endswith("python -m pytest -q -n 2 --dist loadfile")
