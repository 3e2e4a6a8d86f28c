"""The ``gradjob`` command: parse, call the job, print. No numerics here."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from . import bench, history, job, jobfile, report, screen
from . import html as html_report
from . import store as store_module
from . import junit as junit_report
from .errors import InputError, JobError

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None,
                  help="Prove a hand-written backpropagation correct by distributed gradient checking.")
stderr = Console(stderr=True)
EXIT_INTERRUPTED = 130
DEFAULT_WORKERS = min(os.cpu_count() or 1, 4)


@app.callback()
def main() -> None:
    """gradjob: numerical gradient checks as a Dask batch job (exit 0 pass, 1 backprop wrong, 2 bad input, 3 job failed)."""


class _Bar(job.Progress):
    """A rich progress bar on stderr, so stdout stays clean for --json."""

    def __init__(self, enabled: bool):
        self.enabled, self.bar, self.task = enabled, None, None

    def start(self, total: int, already_done: int, dashboard: str | None) -> None:
        if not self.enabled:
            return
        if dashboard:
            stderr.print(f"Dask dashboard: {dashboard}")
        if already_done:
            stderr.print(f"resuming: {already_done} of {total} chunks already in the store")
        self.bar = Progress(TextColumn("chunks"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                            console=stderr, transient=False)
        self.task = self.bar.add_task("chunks", total=total, completed=already_done)
        self.bar.start()

    def advance(self) -> None:
        if self.bar is not None:
            self.bar.advance(self.task)

    def note(self, text: str) -> None:
        if self.enabled:
            stderr.print(text, soft_wrap=True, markup=False, highlight=False)  # above the bar while it runs

    def stop(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def _fail(exc: Exception) -> None:
    typer.echo(f"gradjob: error: {exc}", err=True)
    raise typer.Exit(exc.exit_code)


def _parse_sizes(text: str, option: str = "--layers", example: str = "784,512,256,1") -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise InputError(f"{option} must be comma-separated sizes such as {example}; got {text!r}") from None


SINGLE_CHECK_OPTIONS = ("model", "forward", "backward", "case", "layers", "examples", "seed", "epsilon", "method",
                        "fast", "threshold", "chunk_size", "store", "mode", "directions")


@app.command()
def submit(
    ctx: typer.Context,
    job_file: Optional[str] = typer.Argument(None, help="A job file (jobs/*.toml) of checks to run instead of one check."),
    model: str = typer.Option("seed-buggy", help="A model file (.py) or a built-in: linear, network, seed-buggy."),
    forward: Optional[str] = typer.Option(None, help="Forward function in the model file [forward_propagation_n]."),
    backward: Optional[str] = typer.Option(None, help="Backward function in the model file [backward_propagation_n]."),
    case: Optional[str] = typer.Option(None, help="file.npz, case.zarr, file.py:FUNC, or seed, linear, random [the model's own]."),
    layers: str = typer.Option("4,5,3,1", help="Layer sizes for --case random."),
    examples: int = typer.Option(16, help="Examples for --case random."),
    seed: int = typer.Option(0, help="Random seed for --case random."),
    epsilon: Optional[float] = typer.Option(None, help="Fixed step for every parameter [automatic per parameter]."),
    method: str = typer.Option("central", help="central, five-point or complex-step (complex-safe forwards only)."),
    fast: bool = typer.Option(True, help="Incremental evaluation for the built-in network (--no-fast: plain forward calls)."),
    threshold: Optional[float] = typer.Option(None, help="Largest difference that passes [2e-7 for float64, 1e-3 for float32]."),
    chunk_size: Optional[int] = typer.Option(None, help="Parameters per task [about 8 tasks per worker]."),
    workers: Optional[int] = typer.Option(None, help=f"Worker processes of the embedded cluster [{DEFAULT_WORKERS}]."),
    scheduler: Optional[str] = typer.Option(None, help="Use an existing Dask scheduler, tcp://HOST:PORT."),
    store: Optional[str] = typer.Option(None, help="Zarr store of this check [gradjob-stores/<model>-<case>-<hash>.zarr]."),
    overwrite: bool = typer.Option(False, help="Delete an existing store at --store and start afresh."),
    resume: bool = typer.Option(False, help="Require an existing store and compute only its missing chunks."),
    break_lock: bool = typer.Option(False, help="Take over the store's lock even if held from another host."),
    mode: str = typer.Option("full", help="full: every parameter, on the cluster; directional: a quick screen on the client."),
    directions: int = typer.Option(screen.DEFAULT_DIRECTIONS, help="Random directions per tensor in directional mode."),
    json_output: bool = typer.Option(False, "--json", help="Print one JSON object on stdout instead of text."),
    json_file: Optional[str] = typer.Option(None, help="Also write the JSON result to this file."),
    junit: Optional[str] = typer.Option(None, help="Write JUnit XML: one test case per check and tensor."),
    html_file: Optional[str] = typer.Option(None, "--html", help="Write a self-contained HTML page with plots."),
) -> None:
    """Check a backward pass against numerical derivatives of its forward, on a Dask cluster."""
    bar = _Bar(enabled=sys.stderr.isatty() or not json_output)
    reports = {"json": json_file, "junit": junit, "html": html_file}
    try:
        if job_file is not None:
            given = [name for name in SINGLE_CHECK_OPTIONS
                     if ctx.get_parameter_source(name).name == "COMMANDLINE"]
            if given:
                raise InputError(f"--{given[0].replace('_', '-')} describes a single check; with a job file put it "
                                 "in the file's [[check]]")
            jobs = jobfile.with_cluster(jobfile.load(job_file), scheduler, workers)
            reports = {k: reports[k] or jobs.reports.get(k) for k in reports}
            _run_job(jobs, reports, bar, json_output)
        request = job.Request(model=model, forward=forward, backward=backward, case=case,
                              layers=_parse_sizes(layers), examples=examples, seed=seed, epsilon=epsilon, method=method,
                              fast=fast, threshold=threshold, chunk_size=chunk_size,
                              workers=DEFAULT_WORKERS if workers is None else workers, scheduler=scheduler, store=store,
                              overwrite=overwrite, resume=resume, break_lock=break_lock)
        if mode not in ("full", "directional"):
            raise InputError(f"--mode must be full or directional; got {mode!r}")
        if mode == "directional" and directions < 1:
            raise InputError(f"--directions must be at least 1; got {directions}")
        outcome = _run_check(request, mode, directions, bar)
    except (InputError, JobError) as exc:
        bar.stop()
        _fail(exc)
    except KeyboardInterrupt:
        bar.stop()
        typer.echo("gradjob: interrupted; finished chunks are kept in the store: submit the same job again to resume",
                   err=True)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    bar.stop()
    for note in outcome.notes:
        typer.echo(f"gradjob: note: {note}", err=True)
    result = report.to_json(outcome)
    entry = {"check": Path(outcome.store.rstrip("/")).stem if outcome.store else "directional", "result": result}
    try:
        _write_reports(reports, "gradjob check", [entry], single=True)
    except InputError as exc:
        _fail(exc)
    if outcome.store is not None:
        history.append(store_module.parent(outcome.store), [_history_row(entry)])
    typer.echo(json.dumps(result) if json_output else report.to_text(outcome))
    raise typer.Exit(report.exit_code(outcome))


def _run_check(request: job.Request, mode: str, directions: int, bar: "_Bar") -> job.Outcome:
    """One check: the full pipeline on the cluster, or the directional screen on the client."""
    if mode == "directional":
        return screen.screen(job.prepare(request), directions, request.seed)
    return job.submit(request, bar)


def _run_job(jobs: jobfile.JobFile, reports: dict, bar: "_Bar", json_output: bool) -> None:
    """Run every check of a job file, write its reports and history, and exit with the worst code."""
    entries, codes = [], []
    for check in jobs.checks:
        try:
            outcome = _run_check(check.request, check.mode, check.directions, bar)
            bar.stop()
            entries.append({"check": check.name, "result": report.to_json(outcome)})
            codes.append(report.exit_code(outcome))
            if not json_output:
                typer.echo(f"== {check.name}\n{report.to_text(outcome)}\n")
        except (InputError, JobError) as exc:
            bar.stop()
            entries.append({"check": check.name, "error": str(exc), "exit_code": exc.exit_code})
            codes.append(exc.exit_code)
            typer.echo(f"gradjob: error in check {check.name}: {exc}", err=True)
    history.append(jobs.store_root, [_history_row(e) for e in entries])
    _write_reports(reports, f"gradjob job {jobs.name}", entries, single=False)
    passed = all(code == 0 for code in codes)
    if json_output:
        typer.echo(json.dumps({"job": jobs.name, "passed": passed, "checks": [_entry_json(e) for e in entries]}))
    else:
        failing = [e["check"] for e, code in zip(entries, codes) if code]
        typer.echo(f"job {jobs.name}: {len(entries) - len(failing)} of {len(entries)} checks passed"
                   + (f"; not passed: {', '.join(failing)}" if failing else ""))
    errors = [code for code in codes if code not in (0, 1)]
    raise typer.Exit(errors[0] if errors else max(codes))


def _entry_json(entry: dict) -> dict:
    if entry.get("error"):
        return {"check": entry["check"], "passed": False, "error": entry["error"]}
    return {"check": entry["check"], **entry["result"]}


def _history_row(entry: dict) -> dict:
    if entry.get("error"):
        return {"check": entry["check"], "verdict": "error", "difference": None, "error": entry["error"]}
    result = entry["result"]
    return {"check": entry["check"], "verdict": "pass" if result["passed"] else "fail",
            "difference": result["difference"], "failing": result["failing"], "store": result["store"]}


def _write_reports(reports: dict, title: str, entries: list[dict], single: bool) -> None:
    outputs = {
        "json": lambda: json.dumps(_entry_json(entries[0]) if single else
                                   {"job": title, "checks": [_entry_json(e) for e in entries]}, indent=1),
        "junit": lambda: junit_report.to_junit(title, entries),
        "html": lambda: html_report.to_html(title, entries),
    }
    rendered = {kind: outputs[kind]() for kind, path in reports.items() if path}  # all, before writing any
    for kind, text in rendered.items():
        path = reports[kind]
        try:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_text(text)
        except OSError as exc:
            raise InputError(f"cannot write the {kind} report {path}: {exc}") from None


@app.command("history")
def history_command(root: str = typer.Argument(..., help="A job's store root (its history.jsonl).")) -> None:
    """Date, check, difference and verdict of every run under ROOT, newest last."""
    rows = history.read(root)
    if not rows:
        _fail(InputError(f"no history under {root}: run a job with this store root first"))
    typer.echo(history.to_text(rows))


@app.command("bench")
def bench_command(
    layers: str = typer.Option("784,512,256,1", help="Layer sizes of the built-in network."),
    examples: int = typer.Option(128, help="Examples in the random case."),
    workers: str = typer.Option("2", help="Worker counts to run, e.g. 1,2 to measure scaling."),
    growth_layers: Optional[str] = typer.Option(
        None, help="Also run the pipeline alone on this larger network (e.g. 784,2048,256,1) and report how peak "
                   "worker memory grows."),
    json_output: bool = typer.Option(False, "--json", help="Print one JSON object on stdout instead of text."),
) -> None:
    """Time a full check of the built-in network against the seed-style loop and torch gradcheck."""
    try:
        counts = _parse_sizes(workers, "--workers", "1,2")
        if min(counts) < 1:
            raise InputError(f"--workers must be positive counts such as 1,2; got {workers!r}")
        larger = _parse_sizes(growth_layers, "--growth-layers") if growth_layers else None
        result = bench.benchmark(_parse_sizes(layers), examples, counts, larger)
    except (InputError, JobError) as exc:
        _fail(exc)
    typer.echo(json.dumps(result) if json_output else bench.to_text(result))


@app.command("report")
def report_command(
    store: str = typer.Argument(..., help="A finished gradjob store."),
    fast: bool = typer.Option(True, help="Incremental evaluation for the built-in network (--no-fast: plain forward calls)."),
    threshold: Optional[float] = typer.Option(None, help="Judge against this threshold [the job's]."),
    json_output: bool = typer.Option(False, "--json", help="Print one JSON object on stdout instead of text."),
) -> None:
    """Print the verdict of a finished store, exactly as submit printed it."""
    try:
        if threshold is not None and not threshold > 0:
            raise InputError(f"--threshold must be a positive finite number; got {threshold}")
        outcome = job.reduce_store(store, threshold)
    except (InputError, JobError) as exc:
        _fail(exc)
    _print(outcome, json_output)


def _print(outcome: job.Outcome, json_output: bool) -> None:
    if json_output:
        typer.echo(json.dumps(report.to_json(outcome)))
    else:
        typer.echo(report.to_text(outcome))
    raise typer.Exit(report.exit_code(outcome))
