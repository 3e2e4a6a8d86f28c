"""The ``gradjob`` command: parse, call, print. No numerics here.

``submit``'s options are made from their declarations in ``gradjob.options`` (``report`` and
``bench`` show some of them with their own defaults and help); every action is a call into
``job``, ``jobfile``, ``bench`` or ``outputs``."""

from __future__ import annotations

import json
import signal
import sys
from contextlib import contextmanager
from typing import List, Optional

import typer

from gradjob import options
from gradjob.bench import benchmark as bench
from gradjob.cli.parsing import OneLineErrors, error_json, typed, with_options
from gradjob.errors import InputError, JobError, Stopped
from gradjob.report import outputs
from gradjob.report import text as report
from gradjob.report.outputs import Entry, ReportFiles
from gradjob.run import job, jobfile, preflight
from gradjob.run.progress import for_stream
from gradjob.storage import history
from gradjob.types import Request
from gradjob.version import __version__

EXIT_CODES = ("exit codes: 0 the check passes; 1 backprop disagrees with the numerical gradient; 2 bad input "
              "(nothing stored is changed); 3 the job could not finish; 130/143/129 stopped by SIGINT/SIGTERM/SIGHUP "
              "(finished chunks are kept: submit again to resume)")
LAYERS, EXAMPLES, WORKERS, THRESHOLD = (options.BY_NAME[n] for n in ("layers", "examples", "workers", "threshold"))
SIGNALS = {signal.SIGINT: "SIGINT", signal.SIGTERM: "SIGTERM", signal.SIGHUP: "SIGHUP"}

app = typer.Typer(cls=OneLineErrors, pretty_exceptions_enable=False, rich_markup_mode=None,
                  context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
                  help="Prove a hand-written backpropagation correct by distributed gradient checking.\n\n" + EXIT_CODES)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"gradjob {__version__}")
        raise typer.Exit(0)


@app.callback()
def main(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                      help="Print gradjob's version and exit.")) -> None:
    """gradjob: numerical gradient checks as a Dask batch job."""


def _fail(exc: Exception, json_output: bool = False) -> None:
    if json_output:  # bad input (2) or a job that could not finish (3): a tool reading stdout gets the error
        typer.echo(error_json(str(exc), exc.exit_code))
    typer.echo(f"gradjob: error: {exc}", err=True)
    for note in getattr(exc, "__notes__", ()):  # the user's frames, where the error arose in their code
        typer.echo(note, err=True)
    raise typer.Exit(exc.exit_code)


@contextmanager
def _stop_on_signals():
    """SIGTERM and SIGHUP stop the check as SIGINT does: the store's lock is released and the
    cluster shut down on the way out, finished chunks stay, the exit code is 128 + the signal."""
    def stop(signum, frame):
        raise Stopped(signum)

    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    except KeyboardInterrupt:
        raise Stopped(signal.SIGINT) from None
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _stopped(exc: Stopped) -> None:
    typer.echo(f"gradjob: stopped by {SIGNALS.get(exc.signum, exc.signum)}; finished chunks are kept in the store: "
               "submit the same job again to resume", err=True)
    raise typer.Exit(128 + exc.signum)


SINGLE_CHECK_OPTIONS = tuple(o.name for o in options.of(options.CHECK)) + ("store",)


@app.command(short_help="Run one check, or every check of a job file.")
@with_options(options.of(options.CLI), after="job_file")
def submit(
    ctx: typer.Context,
    job_file: Optional[str] = typer.Argument(None, help="A job file (jobs/*.toml) of checks to run instead of one check; "
                                             "a model file (.py) here is --model."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan (chunks, steps, memory, store) and stop: no store, no cluster."),
    json_output: bool = typer.Option(False, "--json", help="Print one JSON object on stdout instead of text."),
    json_file: Optional[str] = typer.Option(None, help="Also write the JSON result to this file."),
    junit: Optional[str] = typer.Option(None, help="Write JUnit XML: one test case per check and tensor."),
    html_file: Optional[str] = typer.Option(None, "--html", help="Write a self-contained HTML page with plots."),
    **given,
) -> None:
    """Check a backward pass against numerical derivatives of its forward, on a Dask cluster."""
    files = ReportFiles(json_file, junit, html_file)
    scheduler_given = ctx.get_parameter_source("scheduler").name in ("COMMANDLINE", "ENVIRONMENT")
    workers = given["workers"]
    try:
        if workers is not None and scheduler_given:
            raise InputError(options.WORKERS_WITH_SCHEDULER)
        if job_file is not None and job_file.endswith(".py"):  # `gradjob submit model.py`: a model, not a job
            if ctx.get_parameter_source("model").name == "COMMANDLINE":
                raise InputError(f"{job_file} and --model {given['model']} are both models: give one model file")
            given["model"], job_file = job_file, None
        if job_file is not None:
            single = [name for name in SINGLE_CHECK_OPTIONS if ctx.get_parameter_source(name).name == "COMMANDLINE"]
            if single:
                raise InputError(f"--{single[0].replace('_', '-')} describes a single check; with a job file put it "
                                 "in the file's [[check]]")
            _submit_job_file(job_file, given["scheduler"], workers, files, json_output, dry_run)
        request = Request(**{**given, "workers": options.DEFAULT_WORKERS if workers is None else workers},
                          cluster=workers is not None or scheduler_given)
        if dry_run:
            _print_plan(request)
        progress = for_stream(sys.stderr)  # a bar on a terminal, plain lines in a log (stderr)
        try:
            with _stop_on_signals():
                outcome = jobfile.run_check(request, progress)
        finally:
            progress.finish()
        entry = outputs.single_check(outcome, files)
    except (InputError, JobError) as exc:
        _fail(exc, json_output)
    except Stopped as exc:
        try:
            outputs.stopped_check(request.store, request.store_dir, request.model, files, exc)
        except InputError as problem:
            typer.echo(f"gradjob: error: {problem}", err=True)
        _stopped(exc)
    for note in outcome.notes:
        typer.echo(f"gradjob: note: {note}", err=True)
    typer.echo(json.dumps(entry.result) if json_output else report.to_text(outcome))
    raise typer.Exit(entry.exit_code)


def _print_plan(request: Request) -> None:
    if request.mode == "directional":
        typer.echo(f"plan    a directional screen on the client: {request.directions} random directions per tensor; "
                   "no store, no cluster")
        raise typer.Exit(0)
    prepared = preflight.prepare(request)
    for note in prepared.notes:
        typer.echo(f"gradjob: note: {note}", err=True)
    typer.echo(job.plan_of(prepared).to_text())
    typer.echo(f"  precision {prepared.precision.describe()}; threshold {prepared.threshold:g}")
    raise typer.Exit(0)


def _submit_job_file(path: str, scheduler: str | None, workers: int | None, files: ReportFiles, json_output: bool,
                     dry_run: bool) -> None:
    jobs = jobfile.with_cluster(jobfile.load(path), scheduler, workers)
    if dry_run:
        for named in jobs.checks:
            typer.echo(f"== {named.name}")
            try:
                _print_plan(named.request)
            except typer.Exit:
                pass
        raise typer.Exit(0)

    def on_error(name: str, exc: Exception) -> None:
        typer.echo(f"gradjob: error in check {name}: {exc}", err=True)
        for note in getattr(exc, "__notes__", ()):  # the user's frames
            typer.echo(note, err=True)

    try:
        with _stop_on_signals():
            entries, code = jobfile.run(jobs, files, lambda: for_stream(sys.stderr), on_error)
    except Stopped as exc:
        _stopped(exc)
    if json_output:
        typer.echo(json.dumps({"job": jobs.name, "passed": code == 0, "checks": [e.to_json() for e in entries]}))
    else:
        for entry in entries:
            if entry.outcome is not None:
                for note in entry.outcome.notes:
                    typer.echo(f"gradjob: note: {entry.check}: {note}", err=True)
                typer.echo(f"== {entry.check}\n{report.to_text(entry.outcome)}\n")
        failing = [e.check for e in entries if e.exit_code]
        typer.echo(f"job {jobs.name}: {len(entries) - len(failing)} of {len(entries)} checks passed"
                   + (f"; not passed: {', '.join(failing)}" if failing else ""))
    raise typer.Exit(code)


@app.command("report", short_help="Print (and write) the verdict of a finished store.")
def report_command(
    store: str = typer.Argument(..., help="A finished gradjob store."),
    threshold: Optional[float] = typed(THRESHOLD.but(help="Judge against this threshold [the job's].")),
    json_output: bool = typer.Option(False, "--json", help="Print one JSON object on stdout instead of text."),
    json_file: Optional[str] = typer.Option(None, help="Also write the JSON result to this file."),
    junit: Optional[str] = typer.Option(None, help="Write JUnit XML: one test case per check and tensor."),
    html_file: Optional[str] = typer.Option(None, "--html", help="Write a self-contained HTML page with plots."),
) -> None:
    """Print the verdict of a finished store, exactly as submit printed it; write report files."""
    try:
        outcome = job.reduce_store(store, threshold)
        entry = Entry.of(outputs.check_name(store), outcome)
        outputs.write(ReportFiles(json_file, junit, html_file), [entry])
    except (InputError, JobError) as exc:
        _fail(exc, json_output)
    typer.echo(json.dumps(entry.result) if json_output else report.to_text(outcome))
    raise typer.Exit(entry.exit_code)


@app.command("history", short_help="Every run under a job's store root, newest last.")
def history_command(root: str = typer.Argument(..., help="A job's store root (its history.jsonl).")) -> None:
    """Date, check, difference and verdict of every run under ROOT, newest last."""
    try:
        rows = history.read(root)
    except InputError as exc:
        _fail(exc)
    if not rows:
        _fail(InputError(f"no history under {root}: run a job with this store root first"))
    typer.echo(history.to_text(rows))


@app.command("bench", short_help="Speed and memory against baselines run in the same process.")
def bench_command(
    layers: str = typed(LAYERS.but(default=(784, 512, 256, 1), help="Layer sizes of the networks.")),
    examples: int = typed(EXAMPLES.but(default=128, help="Examples in the random case.")),
    workers: List[int] = typed(WORKERS.but(default=[2], help="Worker processes; repeat to measure scaling "
                                                             "(--workers 1 --workers 2).")),
    growth_layers: Optional[str] = typed(
        LAYERS.but(name="growth_layers", default=None, help="Also run the pipeline alone on this larger network (e.g. "
                   "784,2048,256,1) and report how peak worker memory grows.")),
    model: Optional[str] = typer.Option(None, help="Time this model file (instead of the built-in network) against its "
                                                   "black-box floor [the shipped seed-style example, beside the built-in network]."),
    forward: Optional[str] = typer.Option(None, help="Forward function in the model file [forward_propagation_n]."),
    backward: Optional[str] = typer.Option(None, help="Backward function in the model file [backward_propagation_n]."),
    case: Optional[str] = typer.Option(None, help="The model file's case [random, for --layers and --examples]."),
    json_output: bool = typer.Option(False, "--json", help="Print one JSON object on stdout instead of text."),
) -> None:
    """Time full checks against the seed-style loop, torch gradcheck and a model file's black-box floor."""
    try:
        result = bench.benchmark(layers, examples, tuple(workers), growth_layers, model, forward, backward, case)
    except (InputError, JobError) as exc:
        _fail(exc, json_output)
    typer.echo(json.dumps(result) if json_output else bench.to_text(result))
