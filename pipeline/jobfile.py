"""Job files: a TOML list of checks that ``gradjob submit jobs/FILE.toml`` runs in order.

    [job]
    name = "nightly"
    store_root = "gradjob-stores/nightly"   # stores and history.jsonl go here (relative: to the cwd)
                                            # each check's store: <root>/<check>/<model>-<case>-<hash>.zarr,
                                            # so a rerun of the same job resumes and new weights get a new store

    [cluster]                               # optional; command-line options override it
    scheduler = "tcp://127.0.0.1:8786"      # or: workers = 2

    [reports]                               # optional; --json-file/--junit/--html override it
    json = "reports/nightly.json"
    junit = "reports/nightly.xml"
    html = "reports/nightly.html"

    [[check]]
    name = "fraud-network"
    model = "models/fraud_network.py"       # model and case files: relative to the job file
    case = "random"                          # any --case: file.npz, file.py:FUNC, store.zarr, seed, …
    layers = [64, 128, 64, 1]
    # also: forward, backward, examples, seed, epsilon, method, threshold, chunk_size, fast,
    # mode = "directional" with directions = 3 (a quick screen on the client: no store, no cluster)
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path

from . import store
from .errors import InputError
from .job import Request
from .screen import DEFAULT_DIRECTIONS

CHECK_KEYS = {"name", "model", "forward", "backward", "case", "layers", "examples", "seed", "epsilon", "method",
              "threshold", "chunk_size", "fast", "mode", "directions"}
MODES = ("full", "directional")
SECTIONS = {"job": {"name", "store_root"}, "cluster": {"scheduler", "workers"},
            "reports": {"json", "junit", "html"}, "check": CHECK_KEYS}
BUILTIN_NAMES = {"seed", "linear", "random", "seed-buggy", "network"}


@dataclass
class Check:
    name: str
    request: Request
    mode: str = "full"              # or "directional": a quick screen on the client, no store
    directions: int = DEFAULT_DIRECTIONS


@dataclass
class JobFile:
    name: str
    path: Path
    store_root: str
    checks: list[Check]
    reports: dict[str, str] = field(default_factory=dict)


def load(path: str) -> JobFile:
    """Parse and validate a job file; every problem is one ``InputError`` line naming it."""
    file = Path(path)
    if not file.is_file():
        raise InputError(f"job file {path!r} does not exist")
    try:
        data = tomllib.loads(file.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"job file {path} is not valid TOML: {exc}") from None
    for section, value in data.items():
        if section not in SECTIONS:
            raise InputError(f"job file {path}: unknown section [{section}]; use {', '.join(sorted(SECTIONS))}")
        for table in (value if isinstance(value, list) else [value]):
            unknown = set(table) - SECTIONS[section]
            if unknown:
                raise InputError(f"job file {path}: unknown key(s) {', '.join(sorted(unknown))} in [{section}]")
    job, cluster = data.get("job", {}), data.get("cluster", {})
    checks = data.get("check", [])
    if not checks:
        raise InputError(f"job file {path} has no [[check]]; add at least one")
    name = job.get("name", file.stem)
    root = str(job.get("store_root", f"gradjob-stores/{name}"))  # a path or a URL (s3://…)
    seen, result = set(), []
    for number, check in enumerate(checks, start=1):
        check_name = check.get("name")
        if not check_name or not isinstance(check_name, str):
            raise InputError(f"job file {path}: check {number} has no name")
        if check_name in seen:
            raise InputError(f"job file {path}: two checks are named {check_name!r}")
        seen.add(check_name)
        options = {k: v for k, v in check.items() if k not in ("name", "mode", "directions")}
        mode, directions = check.get("mode", "full"), check.get("directions", DEFAULT_DIRECTIONS)
        if mode not in MODES:
            raise InputError(f"job file {path}: check {check_name!r}: mode must be full or directional; got {mode!r}")
        if isinstance(directions, bool) or not isinstance(directions, int) or directions < 1:
            raise InputError(f"job file {path}: check {check_name!r}: directions must be a whole number of at least 1; "
                             f"got {directions!r}")
        for key in ("model", "case"):
            if key in options:
                options[key] = _beside(file, options[key])
        if "layers" in options:
            options["layers"] = tuple(options["layers"])
        try:
            request = Request(store_dir=store.join(root, check_name), **options, **cluster)
        except TypeError as exc:
            raise InputError(f"job file {path}: check {check_name!r}: {exc}") from None
        result.append(Check(check_name, request, mode, directions))
    return JobFile(name, file, root, result, dict(data.get("reports", {})))


def _beside(job_file: Path, value: str) -> str:
    """Model and case files are named relative to the job file; built-in names stay as they are."""
    if value in BUILTIN_NAMES:
        return value
    path, colon, function = value.partition(":") if ".py:" in value else (value, "", "")
    resolved = path if Path(path).is_absolute() else str(job_file.parent / path)
    return resolved + colon + function


def with_cluster(jobfile: JobFile, scheduler: str | None, workers: int | None) -> JobFile:
    """Command-line cluster options override the file's."""
    overrides = {k: v for k, v in (("scheduler", scheduler), ("workers", workers)) if v is not None}
    return replace(jobfile, checks=[replace(c, request=replace(c.request, **overrides)) for c in jobfile.checks])
