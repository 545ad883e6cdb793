"""``bpexp report``: one sweep (or one run) as a self-contained HTML page, a Markdown summary and a spec."""

from __future__ import annotations

import json

import click


@click.command("report")
@click.argument("study", required=False)
@click.option("--run", "run_id", default=None, metavar="RUN_ID", help="Report on one MLflow run instead of a sweep.")
@click.option(
    "--experiment",
    default=None,
    help="MLflow experiment of the sweep; alone (no STUDY), report on its latest sweep.",
)
@click.option(
    "--storage",
    default=None,
    help="Optuna storage of the study: a journal file path or an RDB URL. [default: the sweep's default]",
)
@click.option(
    "--tracking-uri",
    default=None,
    envvar="MLFLOW_TRACKING_URI",
    show_envvar=True,
    help="MLflow tracking URI of the runs. [default: sqlite:///mlflow.db in the working directory]",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Folder for report.html, report.md and best.yaml. [default: bpexp-reports/<study>]",
)
@click.option("--no-log", is_flag=True, help="Do not log the report as artifacts on the MLflow parent run.")
@click.option("--json", "as_json", is_flag=True, help="Print exactly one JSON object on stdout.")
def report_command(
    study: str | None,
    run_id: str | None,
    experiment: str | None,
    storage: str | None,
    tracking_uri: str | None,
    out_dir: str | None,
    no_log: bool,
    as_json: bool,
) -> None:
    """Write a sweep's report: the λ landscape, the range test, learning curves by
    failure mode, the stop-threshold trade-off, schedules, importances, a failure
    table and a ready-to-run spec of the best configuration.

    The HTML page embeds its images and needs no network; it is also logged on the
    sweep's MLflow parent run under report/, so it opens from the MLflow UI.

    \b
    Examples:
      bpexp report digits-lr                  the study named digits-lr
      bpexp report --experiment bpexp         the latest sweep in an MLflow experiment
      bpexp report --run 3f2a9c...            one run
    """
    from bpexp.report.build import make_report

    files = make_report(
        study,
        run_id=run_id,
        experiment=experiment,
        storage=storage,
        tracking_uri=tracking_uri,
        out_dir=out_dir,
        log=not no_log,
    )
    if as_json:
        click.echo(json.dumps(files.to_json(), allow_nan=False))
        return
    click.echo(f"report: {files.html}")
    click.echo(f"summary: {files.markdown}")
    if files.spec is not None:
        click.echo(f"best spec: {files.spec}  (bpexp train --spec {files.spec})")
    for note in files.notes:
        click.echo(f"note: {note}")
    if files.artifact_uri:
        click.echo(f"logged: {files.artifact_uri}")
