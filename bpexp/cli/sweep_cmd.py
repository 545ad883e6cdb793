"""``bpexp sweep SPEC.yaml``: an Optuna sweep, every trial an MLflow run under one parent run."""

from __future__ import annotations

import json
import math
from typing import Any

import click

from bpexp.cli.display import fmt

from bpexp.cli.tracking_options import tracker_from_options, tracking_options


@click.command("sweep")
@click.argument("spec", type=click.Path(dir_okay=False))
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Worker processes on this machine, sharing the study (BLAS threads split between them). "
              "All of them write to MLflow through one more process, which with as many workers as cores "
              "takes its CPU from them (opening the store, under 1 s once on a migrated SQL store and 1.5-5 s by machine where "
              "MLflow must be imported, then 8-25 ms per 60-epoch trial on SQLite); with trials under a second that shows, "
              "and --no-track avoids it.")
@click.option("--storage", default=None,
              help="Study storage: an RDB URL (postgresql+psycopg://...) for several machines, or a journal file. "
              "[default: optuna.journal next to the MLflow data]")
@click.option("--n-trials", type=click.IntRange(min=1), default=None, help="Finished trials to reach in total. [sweep.n_trials]")
@click.option("--study-name", default=None, help="Optuna study name. [sweep.study_name, else the spec's name]")
@tracking_options
@click.option("--no-report", is_flag=True, help="Do not write the sweep's report (bpexp report) when it ends.")
@click.option("--json", "as_json", is_flag=True, help="Print exactly one JSON object on stdout.")
def sweep_command(
    spec: str,
    workers: int,
    storage: str | None,
    n_trials: int | None,
    study_name: str | None,
    tracking_uri: str | None,
    experiment: str | None,
    no_track: bool,
    no_report: bool,
    as_json: bool,
) -> None:
    """Sweep λ, the schedule and the stop thresholds with Optuna.

    SPEC is an experiment spec with a `sweep:` section (n_trials, sampler, pruner,
    objective, space). Running the same command again resumes the study until
    n_trials are finished in total. Several machines share one study with
    --storage postgresql+psycopg://...; each runs this same command.

    \b
    Examples:
      bpexp sweep experiments/digits_sweep.yaml
      bpexp sweep experiments/digits_sweep.yaml --workers 2 --json
      bpexp sweep spec.yaml --storage postgresql+psycopg://user@db/optuna --tracking-uri http://mlflow:5000
    """
    from bpexp.cli.progress import DelayedProgress
    from bpexp.sweep import load_sweep_spec, run_sweep

    from bpexp.data import load_dataset

    sweep_spec = load_sweep_spec(spec)  # a bad spec stops here, before anything runs
    base = sweep_spec.base
    load_dataset(base.data, base.seed, dtype=base.model.dtype)  # so does bad data: nothing is written
    # fails fast; MLflow itself then loads in a helper process while the sweep trains
    tracker = tracker_from_options(tracking_uri, experiment, no_track, sweep_spec.base, process=True)
    total = n_trials or sweep_spec.sweep.n_trials
    with DelayedProgress(f"sweep {study_name or sweep_spec.study_name}", total, delay=0.5) as bar:

        def progress(finished: int, target: int, failed: int, status: str) -> None:
            bar.total = target
            bar.update(finished, status)

        try:
            outcome = run_sweep(
                sweep_spec,
                tracker,
                storage=storage,
                workers=workers,
                n_trials=n_trials,
                study_name=study_name,
                progress=progress,
                hooks=after_sweep_hooks(report=not no_report),
            )
        finally:
            tracker.close()
    if as_json:
        click.echo(json.dumps(outcome.to_json(), allow_nan=False))
        return
    print_summary(outcome)
    report = outcome.extras.get("report")
    if report:
        click.echo(f"report: {report['html']}")


def after_sweep_hooks(report: bool = True) -> list:
    """Callables run with the SweepOutcome once a sweep ends: the report, unless ``--no-report``."""
    if not report:
        return []
    from bpexp.report.build import report_after_sweep

    return [report_after_sweep]



def print_summary(outcome: Any, top: int = 5) -> None:
    """The best trials and the diagnosis counts as a short table (stdout)."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    counts = outcome.counts
    console.print(
        f"[bold]{outcome.study_name}[/]: {counts['COMPLETE']} complete, {counts['PRUNED']} pruned, "
        f"{counts['FAIL']} failed of {outcome.n_trials} ({outcome.seconds:.1f} s)"
        + ("" if outcome.finished else " [yellow]— not finished[/]")
    )
    multi = len(outcome.objectives) > 1
    complete = [t for t in outcome.trials if t.state == "COMPLETE"]
    if multi:
        shown = outcome.best
        title = "Pareto front"
    else:
        reverse = outcome.directions[0] == "maximize"
        finite = [t for t in complete if t.value is not None and math.isfinite(t.value)]
        shown = sorted(finite, key=lambda t: t.value, reverse=reverse)[:top]
        title = f"best {len(shown)} trials"
    table = Table(title=title, show_header=True, header_style="bold")
    table.add_column("trial", justify="right")
    for name in outcome.objectives:
        table.add_column(name, justify="right")
    keys = sorted({k for t in shown for k in t.params})
    for key in keys:
        table.add_column(key)
    table.add_column("stop")
    table.add_column("diagnosis")
    for trial in shown:
        values = trial.values if trial.values is not None else [trial.value]
        table.add_row(
            str(trial.number),
            *[fmt(v) for v in values],
            *[fmt(trial.params.get(k)) for k in keys],
            trial.stop_reason or "-",
            ", ".join(trial.diagnosis) or "healthy",
        )
    console.print(table)
    if outcome.diagnosis_counts:
        parts = [f"{mode} {n}" for mode, n in sorted(outcome.diagnosis_counts.items(), key=lambda kv: -kv[1])]
        console.print("diagnosis of complete trials: " + ", ".join(parts))
    if outcome.parent_run_id:
        console.print(f"parent run {outcome.parent_run_id} in {outcome.tracking_uri}")
