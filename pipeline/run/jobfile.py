"""Job files: a TOML list of checks that ``gradjob submit jobs/FILE.toml`` runs in order.

    [job]
    name = "nightly"
    store_root = "gradjob-stores/nightly"   # stores and history.jsonl go here (relative: to the cwd)
                                            # each check's store: <root>/<check>/<model>-<case>-<hash>.zarr,
                                            # so a rerun of the same job resumes and new weights get a new store

    [cluster]                               # optional; command-line options override it
    scheduler = "tcp://127.0.0.1:8786"      # or: workers = 2
                                            # (neither: DASK_SCHEDULER_ADDRESS if set, else an embedded cluster)

    [reports]                               # optional; --json-file/--junit/--html override it
    json = "reports/nightly.json"
    junit = "reports/nightly.xml"
    html = "reports/nightly.html"

    [[check]]
    name = "fraud-network"
    model = "models/fraud_network.py"       # model and case files: relative to the job file
    case = "random"                          # any --case: file.npz, file.py:FUNC, store.zarr, seed, …
    layers = [64, 128, 64, 1]
    # also: forward, backward, examples, seed, epsilon, method, precision, threshold, chunk_size,
    # task_timeout (seconds a task may run), fast,
    # mode = "directional" with directions = 3 (a quick screen on the client: no store, no cluster)

A check's name is a plain name (it names the check's folder under store_root). The checks share
one embedded cluster, started for the first one whose work is not small (see ``job.run``).

Every key is typed by the schema below; ``Check`` and ``Cluster`` are made from the options'
declarations (``gradjob.options``). A wrong type or value is one line naming the file, the check,
the key and, for an option, the line the command line prints for it, and exit code 2. The module
holds the schema, the one-line messages made from its errors, and the running of a file's checks.
"""

from __future__ import annotations

import re
import signal
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, create_model
from pydantic_core import PydanticCustomError

from gradjob import options
from gradjob.errors import InputError, JobError, Stopped
from gradjob.model import cases
from gradjob.model import spec as models
from gradjob.report import outputs
from gradjob.report import text as report
from gradjob.report.outputs import Entry, ReportFiles
from gradjob.run import job, preflight, screen
from gradjob.run.progress import Progress
from gradjob.storage import urls
from gradjob.types import Outcome, Request

BUILTIN_NAMES = set(models.BUILTIN_MODELS) | set(cases.BUILTIN_CASES)
PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


def _key(option: options.Option):
    """A job-file key read as ``option`` declares it, refused with its message under the key's name."""
    def read(value):
        try:
            return option.read(value, typed=True, spelled=option.name)
        except InputError as exc:
            raise PydanticCustomError("gradjob_option", "{message}", {"message": str(exc)}) from None

    return Annotated[Any, BeforeValidator(read)], option.default


Check = create_model("Check", __base__=_Strict, name=(str, ...),
                     **{option.name: _key(option) for option in options.of(options.CHECK)})


class Job(_Strict):
    name: str | None = None
    store_root: str | None = None


Cluster = create_model("Cluster", __base__=_Strict,
                       **{option.name: _key(option) for option in options.of(options.CLUSTER)})


class Reports(_Strict):
    json_: str | None = Field(None, alias="json")
    junit: str | None = None
    html: str | None = None


class Schema(_Strict):
    job: Job = Job()
    cluster: Cluster = Cluster()
    reports: Reports = Reports()
    check: list[Check] = []


_SECTIONS = {"job": Job, "cluster": Cluster, "reports": Reports, "[check]": Check}


@dataclass(frozen=True)
class NamedCheck:
    name: str
    request: Request


@dataclass(frozen=True)
class JobFile:
    name: str
    path: Path
    store_root: str
    checks: tuple[NamedCheck, ...]
    reports: ReportFiles = field(default_factory=ReportFiles)


EXPECTED = {"string_type": "a string", "list_type": "a list", "model_type": "a table", "dict_type": "a table"}


def load(path: str) -> JobFile:
    """Parse and validate a job file; every problem is one ``InputError`` line naming it."""
    file = Path(path)
    if not file.is_file():
        raise InputError(f"job file {path!r} does not exist")
    try:
        data = tomllib.loads(file.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"job file {path} is not valid TOML: {exc}") from None
    try:
        schema = Schema.model_validate(data)
    except ValidationError as exc:
        raise InputError(_message(path, data, exc.errors()[0])) from None
    if not schema.check:
        raise InputError(f"job file {path} has no [[check]]; add at least one")
    seen = set()
    for spec in schema.check:
        if not PLAIN_NAME.fullmatch(spec.name) or spec.name in (".", ".."):
            raise InputError(f"job file {path}: check name {spec.name!r} is not a plain name; use letters, digits, "
                             "'.', '_' and '-', starting with a letter or digit (it names the check's folder under "
                             "store_root)")
        if spec.name in seen:
            raise InputError(f"job file {path}: two checks are named {spec.name!r}")
        seen.add(spec.name)
    name = schema.job.name or file.stem
    root = schema.job.store_root or f"gradjob-stores/{name}"  # a path or a URL (s3://…)
    checks = []
    cluster = schema.cluster.model_dump(exclude_none=True)
    for spec in schema.check:
        given = spec.model_dump(exclude={"name"}, exclude_none=True)
        for key in ("model", "case"):
            if key in given:
                given[key] = _beside(file, given[key])
        request = Request(store_dir=urls.join(root, spec.name), **given, **cluster, cluster="workers" in cluster)
        try:
            options.check(request)
        except InputError as exc:
            raise InputError(f"job file {path}: check {spec.name!r}: {exc}") from None
        checks.append(NamedCheck(spec.name, request))
    reports = schema.reports
    return JobFile(name, file, root, tuple(checks), ReportFiles(reports.json_, reports.junit, reports.html))


def _message(path: str, data: dict, error: dict) -> str:
    """One line from pydantic's first error: where, what was expected, what was found."""
    loc, kind = error["loc"], error["type"]
    if kind == "extra_forbidden" and len(loc) == 1:
        if not isinstance(data.get(loc[0]), (dict, list)):  # a key above every section, not a section
            home = [f"[{section}]" for section, model in _SECTIONS.items() if loc[0] in model.model_fields]
            where = f"put it under {' or '.join(home)}" if home else "keys belong under a section"
            return f"job file {path}: {loc[0]} is outside any section; {where}"
        return f"job file {path}: unknown section [{loc[0]}]; use check, cluster, job, reports"
    if loc and loc[0] == "check" and len(loc) >= 2 and isinstance(loc[1], int):
        entry = data["check"][loc[1]] if isinstance(data.get("check"), list) else {}
        where = f"check {entry['name']!r}" if isinstance(entry, dict) and isinstance(entry.get("name"), str) \
            else f"check {loc[1] + 1}"
        key = loc[2:]
        section = "check"
    else:
        where, key, section = f"[{loc[0]}]" if loc else "the file", loc[1:], loc[0] if loc else ""
    name = "".join(f"[{k}]" if isinstance(k, int) else (f".{k}" if i else str(k)) for i, k in enumerate(key))
    if kind == "extra_forbidden":
        return f"job file {path}: unknown key(s) {key[-1]} in [{section}]"
    if kind == "missing":
        return f"job file {path}: {where} has no {name}"
    if kind == "gradjob_option":  # a value refused by its declaration in ``gradjob.options``
        return f"job file {path}: {where}: {error['ctx']['message']}"
    expected = EXPECTED.get(kind) or error["msg"].removeprefix("Input should be ")
    return f"job file {path}: {where}: {name} must be {expected}; got {error['input']!r}"


def _beside(job_file: Path, value: str) -> str:
    """Model and case files are named relative to the job file; built-in names stay as they are."""
    if value in BUILTIN_NAMES or urls.is_url(value):
        return value
    path, colon, function = value.partition(":") if ".py:" in value else (value, "", "")
    resolved = path if Path(path).is_absolute() else str(job_file.parent / path)
    return resolved + colon + function


def with_cluster(jobs: JobFile, scheduler: str | None, workers: int | None) -> JobFile:
    """Command-line cluster options override the file's."""
    overrides = {k: v for k, v in (("scheduler", scheduler), ("workers", workers)) if v is not None}
    if not overrides:
        return jobs
    if workers is not None:
        overrides["cluster"] = True
    return JobFile(jobs.name, jobs.path, jobs.store_root,
                   tuple(NamedCheck(c.name, c.request.replace(**overrides)) for c in jobs.checks), jobs.reports)


def run_check(request: Request, progress: Progress | None = None, cluster=None) -> Outcome:
    """One check: the full pipeline (``cluster()``: where it runs when a cluster is needed), or
    the directional screen on the client."""
    if request.mode == "directional":
        prepared = preflight.prepare(request)
        return screen.screen(prepared, request.directions, request.seed)
    return job.run(request, progress, cluster=cluster)


def run(jobs: JobFile, files: ReportFiles, progress_for, on_error) -> tuple[list[Entry], int]:
    """Every check of a job file in order (an error in one is reported and the others still run),
    on one cluster at most; then its reports and history. Returns the entries and the job's exit
    code: the first error's, else 1 if any check failed, else 0. A stop (``Stopped``, Ctrl-C)
    still writes the reports and history: the finished checks', the others marked stopped."""
    from gradjob.executors.cluster import SharedCluster  # distributed only once a job runs: `import gradjob` stays light

    entries = []
    with SharedCluster() as shared:
        try:
            for named in jobs.checks:
                progress = progress_for()
                progress.label = named.name
                try:
                    entries.append(Entry.of(named.name, run_check(named.request, progress,
                                                                  lambda r=named.request: shared.use(r))))
                except (InputError, JobError) as exc:
                    on_error(named.name, exc)
                    entries.append(Entry(named.name, None, str(exc), exc.exit_code))
                finally:
                    progress.finish()
        except (Stopped, KeyboardInterrupt) as exc:
            stop = exc if isinstance(exc, Stopped) else Stopped(signal.SIGINT)
            entries += [outputs.stopped(c.name, stop) for c in jobs.checks[len(entries):]]
            _leave_behind(jobs, files, entries)
            raise stop from None
    _leave_behind(jobs, files, entries)
    codes = [e.exit_code for e in entries]
    errors = [c for c in codes if c not in (report.EXIT_PASSED, report.EXIT_FAILED)]
    return entries, errors[0] if errors else max(codes)


def _leave_behind(jobs: JobFile, files: ReportFiles, entries: list[Entry]) -> None:
    outputs.record(jobs.store_root, entries)
    outputs.write(files.merged(jobs.reports), entries, jobs.name)
