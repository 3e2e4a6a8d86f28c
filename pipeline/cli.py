"""The ``gradjob`` command: parse, call the job, print. No numerics here."""

from __future__ import annotations

import json
import os
import sys
from typing import Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from . import job, report, screen
from .errors import InputError, JobError

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None,
                  help="Prove a hand-written backpropagation correct by distributed gradient checking.")
stderr = Console(stderr=True)
EXIT_INTERRUPTED = 130


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

    def stop(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def _fail(exc: Exception) -> None:
    typer.echo(f"gradjob: error: {exc}", err=True)
    raise typer.Exit(exc.exit_code)


def _parse_layers(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise InputError(f"--layers must be comma-separated sizes such as 784,512,256,1; got {text!r}") from None


@app.command()
def submit(
    model: str = typer.Option("seed-buggy", help="A model file (.py) or a built-in: linear, network, seed-buggy."),
    forward: Optional[str] = typer.Option(None, help="Forward function in the model file [forward_propagation_n]."),
    backward: Optional[str] = typer.Option(None, help="Backward function in the model file [backward_propagation_n]."),
    case: Optional[str] = typer.Option(None, help="file.npz, file.py:FUNC, or seed, linear, random [the model's own]."),
    layers: str = typer.Option("4,5,3,1", help="Layer sizes for --case random."),
    examples: int = typer.Option(16, help="Examples for --case random."),
    seed: int = typer.Option(0, help="Random seed for --case random."),
    epsilon: Optional[float] = typer.Option(None, help="Fixed step for every parameter [automatic per parameter]."),
    method: str = typer.Option("central", help="central, five-point or complex-step (complex-safe forwards only)."),
    fast: bool = typer.Option(True, help="Incremental evaluation for the built-in network (--no-fast: plain forward calls)."),
    threshold: Optional[float] = typer.Option(None, help="Largest difference that passes [2e-7 for float64, 1e-3 for float32]."),
    chunk_size: Optional[int] = typer.Option(None, help="Parameters per task [about 8 tasks per worker]."),
    workers: int = typer.Option(min(os.cpu_count() or 1, 4), help="Worker processes of the embedded cluster."),
    scheduler: Optional[str] = typer.Option(None, help="Use an existing Dask scheduler, tcp://HOST:PORT."),
    store: Optional[str] = typer.Option(None, help="Zarr store of this check [gradjob-stores/<model>-<case>-<hash>.zarr]."),
    overwrite: bool = typer.Option(False, help="Delete an existing store at --store and start afresh."),
    resume: bool = typer.Option(False, help="Require an existing store and compute only its missing chunks."),
    break_lock: bool = typer.Option(False, help="Take over the store's lock even if held from another host."),
    mode: str = typer.Option("full", help="full: every parameter, on the cluster; directional: a quick screen on the client."),
    directions: int = typer.Option(screen.DEFAULT_DIRECTIONS, help="Random directions per tensor in directional mode."),
    json_output: bool = typer.Option(False, "--json", help="Print one JSON object on stdout instead of text."),
) -> None:
    """Check a backward pass against numerical derivatives of its forward, on a Dask cluster."""
    bar = _Bar(enabled=sys.stderr.isatty() or not json_output)
    try:
        request = job.Request(model=model, forward=forward, backward=backward, case=case,
                              layers=_parse_layers(layers), examples=examples, seed=seed, epsilon=epsilon, method=method, fast=fast,
                              threshold=threshold, chunk_size=chunk_size, workers=workers, scheduler=scheduler,
                              store=store, overwrite=overwrite, resume=resume, break_lock=break_lock)
        if mode == "directional":
            if directions < 1:
                raise InputError(f"--directions must be at least 1; got {directions}")
            outcome = screen.screen(job.prepare(request), directions, seed)
        elif mode == "full":
            outcome = job.submit(request, bar)
        else:
            raise InputError(f"--mode must be full or directional; got {mode!r}")
    except (InputError, JobError) as exc:
        bar.stop()
        _fail(exc)
    except KeyboardInterrupt:
        bar.stop()
        typer.echo("gradjob: interrupted; finished chunks are kept in the store: submit the same job again to resume",
                   err=True)
        raise typer.Exit(EXIT_INTERRUPTED)
    bar.stop()
    for note in outcome.notes:
        typer.echo(f"gradjob: note: {note}", err=True)
    _print(outcome, json_output)


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
