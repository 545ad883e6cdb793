"""``bpexp batch run|serve|status``: a set of experiments run as one batch, now or on a schedule."""

from __future__ import annotations

import json
import signal
import threading
from contextlib import contextmanager
from typing import Any, Iterator

import click

from bpexp.cli.display import fmt

BATCH_HELP = "A batch file: a name and a list of experiments (kind train, lr_find or sweep, each with a spec)."


def _database_options(func=None, *, experiment: bool = True):
    if func is None:
        return lambda f: _database_options(f, experiment=experiment)
    func = click.option(
        "--storage",
        default=None,
        help="An RDB URL (postgresql+psycopg://...): the sweeps' study storage, and the batch's ledger and "
        "schedule when the tracking URI is a server. [default: the tracking database; journal file for studies]",
    )(func)
    if experiment:
        func = click.option(
            "--experiment", default=None, help="MLflow experiment of every run. [default: the batch file's, else its name]"
        )(func)
    func = click.option(
        "--tracking-uri",
        default=None,
        envvar="MLFLOW_TRACKING_URI",
        show_envvar=True,
        help="Where runs go: sqlite:///file.db, postgresql+psycopg://... or http://host:port (then give --storage). "
        "[default: sqlite:///mlflow.db in the working directory]",
    )(func)
    return func


@contextmanager
def _stop_on(signals: tuple[int, ...]) -> Iterator[threading.Event]:
    """An event set by the given signals (in the main thread), the previous handlers restored after."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(signum: int, frame: Any) -> None:
        if not stop.is_set():
            click.echo(f"bpexp: {signal.Signals(signum).name}: stopping after the running trial or epoch", err=True)
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in signals}
    try:
        yield stop
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@click.group("batch")
def batch_group() -> None:
    """Run a set of experiments as one batch: now (run), on a schedule (serve), and see past and next runs (status).

    \b
    A batch file:
      name: nightly
      experiments:
        - {name: range-test, kind: lr_find, spec: digits_mlp.yaml}
        - {name: clr, kind: sweep, spec: digits_sweep.yaml, n_trials: 8}
        - {name: gallery, kind: train, spec: failure_modes/*.yaml}

    Every MLflow run of a batch is tagged bpexp.batch (the name) and bpexp.batch_run
    (the batch's own run, their parent), so the MLflow UI can show one night's runs:
    filter with  tags.`bpexp.batch_run` = '<id>'.
    """


@batch_group.command("run")
@click.argument("batch_file", metavar="BATCH", type=click.Path(dir_okay=False))
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Worker processes for each sweep. [default: the item's or the batch file's workers, else 1]")
@click.option("--force", is_flag=True, help="Start a new batch run even if the latest one is unfinished or finished.")
@_database_options
@click.option("--json", "as_json", is_flag=True, help="Print exactly one JSON object on stdout.")
@click.pass_context
def run_command(
    ctx: click.Context,
    batch_file: str,
    workers: int | None,
    force: bool,
    tracking_uri: str | None,
    experiment: str | None,
    storage: str | None,
    as_json: bool,
) -> None:
    """Run the batch's experiments in order, going on past failures; then print a summary.

    Running it again resumes the latest batch run: finished experiments are
    skipped, sweeps resume their studies. Once everything finished it says so and
    does nothing, unless --force starts a new batch run. SIGTERM lets the running
    trial or epoch finish, then stops (the same command resumes).

    Exit code: 0 all finished (or nothing to do), 1 an experiment failed, 2 the batch
    could not run (bad batch file, unreachable service, another run of it holds its
    lock), 130 stopped before the end.

    \b
    Examples:
      bpexp batch run experiments/nightly.yaml
      bpexp batch run experiments/nightly.yaml --workers 2 --json
      bpexp batch run nightly.yaml --tracking-uri http://mlflow:5000 --storage postgresql+psycopg://u@db/bpexp
    """
    from bpexp.batch import load_batch, run_batch

    batch = load_batch(batch_file)  # a bad batch file stops here, before anything runs
    with _stop_on((signal.SIGTERM,)) as stop:
        outcome = run_batch(
            batch, tracking_uri=tracking_uri, experiment=experiment, storage=storage, workers=workers, force=force,
            stop=stop, echo=lambda line: click.echo(line, err=True),
        )
    if as_json:
        click.echo(json.dumps(outcome.to_json(), allow_nan=False))
    else:
        print_outcome(outcome)
    ctx.exit(outcome.exit_code)


@batch_group.command("serve")
@click.argument("batch_file", metavar="BATCH", type=click.Path(dir_okay=False))
@click.option("--cron", required=True,
              help="When to run: 5 crontab fields 'minute hour day month day_of_week' ('0 2 * * *': 02:00 daily), "
              "or 6 with seconds first ('*/30 * * * * *').")
@click.option("--misfire-grace", type=click.IntRange(min=1), default=6 * 3600, show_default=True,
              help="Seconds late a missed firing may still run once when the scheduler starts again.")
@click.option("--timezone", default=None, help="Time zone of the cron fields (e.g. Europe/Paris). [default: this machine's]")
@click.option("--workers", type=click.IntRange(min=1), default=None, help="Worker processes for each sweep.")
@_database_options
def serve_command(
    batch_file: str,
    cron: str,
    misfire_grace: int,
    timezone: str | None,
    workers: int | None,
    tracking_uri: str | None,
    experiment: str | None,
    storage: str | None,
) -> None:
    """Run the batch on a cron schedule until stopped (SIGTERM or Ctrl-C).

    The schedule lives in the batch's database (APScheduler's SQLAlchemy job store),
    so a firing missed while no scheduler ran happens once at start (several missed
    firings make one run). Two runs of a batch never overlap, across machines too
    (an advisory lock in the database); each firing is one batch run keyed by its
    fire time. SIGTERM lets the running trial or epoch finish, then exits with 0.

    \b
    Examples:
      bpexp batch serve experiments/nightly.yaml --cron '0 2 * * *'
      bpexp batch serve nightly.yaml --cron '0 2 * * *' --tracking-uri http://mlflow:5000 \\
          --storage postgresql+psycopg://u@db/bpexp
    """
    from bpexp.batch.scheduler import parse_cron, serve

    parse_cron(cron, timezone)  # a bad expression is exit 2 before anything else
    with _stop_on((signal.SIGTERM, signal.SIGINT)) as stop:
        serve(
            batch_file, cron=cron, tracking_uri=tracking_uri, experiment=experiment, storage=storage, workers=workers,
            misfire_grace=misfire_grace, timezone=timezone, stop=stop,
        )


@batch_group.command("status")
@click.argument("batch", required=False, metavar="[BATCH]")
@click.option("--limit", type=click.IntRange(min=1), default=10, show_default=True, help="Past runs to list.")
@_database_options(experiment=False)
@click.option("--json", "as_json", is_flag=True, help="Print exactly one JSON object on stdout.")
def status_command(batch: str | None, limit: int, tracking_uri: str | None, storage: str | None, as_json: bool) -> None:
    """List a batch's past runs (from the ledger) and its next scheduled run (from the job store).

    BATCH is a batch file or a batch name; without it, every batch's runs.
    """
    from pathlib import Path

    from bpexp.batch.ledger import Ledger
    from bpexp.batch.locks import try_lock
    from bpexp.batch.runner import batch_database
    from bpexp.batch.scheduler import read_schedule
    from bpexp.tracking import probe_tracking_uri, resolve_tracking_uri

    name = None
    if batch is not None:
        if Path(batch).is_file():
            from bpexp.batch import load_batch

            name = load_batch(batch).name
        else:
            name = batch
    uri = resolve_tracking_uri(tracking_uri)
    db = batch_database(uri, storage)
    if not uri.startswith(("http://", "https://")):
        probe_tracking_uri(uri)
    ledger = Ledger(db)
    try:
        runs = ledger.list_runs(name, limit=limit)
    finally:
        ledger.dispose()
    stale = set()
    for row in runs:
        if row.status == "running":
            lock = try_lock(db, f"batch-{row.batch}")
            if lock is not None:
                lock.release()
                stale.add(row.id)
    names = [name] if name else sorted({row.batch for row in runs})
    schedules = {n: read_schedule(db, n) for n in names}
    if as_json:
        payload = {
            "runs": [{**row.to_json(), "stale": row.id in stale} for row in runs],
            "schedules": {
                n: (None if s is None else {"trigger": s.trigger, "next_run_time": s.next_run_time.isoformat() if s.next_run_time else None})
                for n, s in schedules.items()
            },
        }
        click.echo(json.dumps(payload, allow_nan=False))
        return
    _print_status(runs, stale, schedules)


# --------------------------------------------------------------------------- output



def _result(summary: dict[str, Any]) -> str:
    if not summary:
        return ""
    if "best_value" in summary:
        counts = summary.get("counts") or {}
        text = f"best {summary.get('objective')} {fmt(summary.get('best_value'))} (trial {fmt(summary.get('best_trial'))}); "
        return text + f"{counts.get('COMPLETE', 0)} complete, {counts.get('PRUNED', 0)} pruned, {counts.get('FAIL', 0)} failed"
    if "val_accuracy" in summary:
        diagnosis = ", ".join(summary.get("diagnosis") or []) or "healthy"
        return f"{summary.get('stop_reason')} after {summary.get('epochs')} epochs, val acc {fmt(summary.get('val_accuracy'))}; {diagnosis}"
    if "max_lr" in summary:
        return f"base_lr {fmt(summary.get('base_lr'))}, max_lr {fmt(summary.get('max_lr'))} ({summary.get('stop_reason')})"
    return ""


def escape(text: str) -> str:
    """Text shown as written: rich would read ``[...]`` in it as markup."""
    from rich.markup import escape as rich_escape

    return rich_escape(text)


def _console():
    from rich.console import Console

    console = Console(highlight=False)
    if not console.is_terminal:
        console.width = 120  # piped or logged: no terminal width to fit, keep rows on one line
    return console


def _when(value: Any) -> str:
    return value.astimezone().strftime("%Y-%m-%d %H:%M:%S") if value is not None else "-"


def print_outcome(outcome: Any) -> None:
    """The batch run's summary table (stdout), then its status line."""
    from rich.table import Table

    console = _console()
    if outcome.experiments and outcome.status not in ("up_to_date", "skipped"):
        table = Table(title=f"batch {outcome.batch}", show_header=True, header_style="bold")
        for column in ("experiment", "kind", "state", "seconds", "result"):
            table.add_column(column, overflow="fold")
        colour = {"finished": "green", "skipped": "dim", "failed": "bold red", "pending": "yellow"}
        for e in outcome.experiments:
            state = "finished earlier" if e.state == "skipped" else e.state
            result = e.error if e.state == "failed" else _result(e.summary)
            seconds = f"{e.seconds:.1f}" if e.seconds is not None else "-"
            table.add_row(escape(e.name), e.kind, f"[{colour.get(e.state, '')}]{state}[/]", seconds, escape(result or ""))
        console.print(table)
    line = f"[bold]batch {escape(outcome.batch)}[/]: {outcome.status}"
    if outcome.batch_run_id:
        line += f" — run {outcome.batch_run_id}" + (" (resumed)" if outcome.resumed else "")
    console.print(line)
    if outcome.message:
        console.print(escape(outcome.message))
    if outcome.ui_url:
        console.print(f"MLflow: {outcome.ui_url}")


def _print_status(runs: list, stale: set, schedules: dict) -> None:
    from rich.table import Table

    console = _console()
    table = Table(title="batch runs", show_header=True, header_style="bold")
    for column in ("batch", "run", "key", "status", "started", "ended", "experiments"):
        table.add_column(column, overflow="fold", no_wrap=column in ("run", "started", "ended"))
    for row in runs:
        counts: dict[str, int] = {}
        for e in row.experiments:
            counts[e.state] = counts.get(e.state, 0) + 1
        status = "stopped (its process is gone)" if row.id in stale else row.status
        table.add_row(
            escape(row.batch), row.id, escape(row.key), status, _when(row.created_at), _when(row.ended_at),
            ", ".join(f"{n} {s}" for s, n in counts.items()),
        )
    if runs:
        console.print(table)
    else:
        console.print("no batch runs yet")
    for name, schedule in schedules.items():
        if schedule is None:
            console.print(escape(f"batch {name}: not scheduled"))
        else:
            from datetime import datetime, timezone

            if schedule.next_run_time is None:
                when = "paused"
            elif schedule.next_run_time <= datetime.now(timezone.utc):
                when = f"due since {_when(schedule.next_run_time)} (missed: a scheduler started within the grace time runs it once)"
            else:
                when = _when(schedule.next_run_time)
            console.print(escape(f"batch {name}: next run {when}; {schedule.trigger}"))
