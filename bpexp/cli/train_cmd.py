"""``bpexp train``: one training run, summarised for a person or as one JSON object."""

from __future__ import annotations

import json
import math

import click

from bpexp.cli.options import config_from_options, spec_options
from bpexp.cli.progress import DelayedProgress
from bpexp.cli.tracking_options import tracker_from_options, tracking_options


@click.command("train")
@spec_options
@tracking_options
@click.option("--json", "as_json", is_flag=True, help="Print exactly one JSON object on stdout.")
def train_command(
    spec: str | None,
    sets: tuple[str, ...],
    as_json: bool,
    tracking_uri: str | None,
    experiment: str | None,
    no_track: bool,
    **flags,
) -> None:
    """Train one model by backpropagation and say how it went.

    The spec (YAML) holds data, model, optim, schedule and train sections; every
    flag overrides one spec value, and --set reaches any other. Exit code 0 for a
    finished run, a diverged one included.

    \b
    Examples:
      bpexp train --dataset digits --lr 0.1 --max-epochs 50
      bpexp train --spec experiments/digits_mlp.yaml --json
      bpexp train --dataset circles --model mlp --hidden 32 --optimizer adam --lr 0.01
    """
    from bpexp.train import train

    from bpexp.tracking import TAG_KIND, EpochLogger, diagnose_result, log_result, open_run

    config = config_from_options(spec, sets, flags)
    tracker = tracker_from_options(tracking_uri, experiment, no_track, config)  # fails fast, before training
    with open_run(tracker, config.name, tags={TAG_KIND: "train"}) as run_id:
        logger = EpochLogger(tracker, run_id)
        with DelayedProgress(f"train {config.name}", config.train.max_epochs) as progress:

            def on_epoch(epoch, history):
                progress.update(epoch, f"loss {history.train_loss[-1]:.4g}  val acc {history.val_accuracy[-1]:.3f}")
                logger(epoch, history)

            result = train(config, on_epoch=on_epoch)
        findings = diagnose_result(result)
        log_result(tracker, run_id, result, findings, logger=logger)
    payload = result.to_json()
    payload["run_id"] = run_id if tracker.uri is not None else None
    if findings and not payload.get("diagnosis"):
        payload["diagnosis"] = [f.to_dict() for f in findings]
    if as_json:
        click.echo(json.dumps(payload, allow_nan=False))
        return
    _print_summary(payload)


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}" if math.isfinite(value) else str(value)
    return str(value)


def _print_summary(payload: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    cfg = payload["config"]
    final = payload["final"]
    console.print(
        f"[bold]{cfg['name']}[/]: {cfg['model']['kind']} on {payload['data']['name']} "
        f"({payload['data']['n_train']} train / {payload['data']['n_val']} val), "
        f"{cfg['optim']['name']} λ={cfg['optim']['lr']:g}, schedule {cfg['schedule']['name']}"
    )
    console.print(
        f"stopped after {payload['epochs']} epochs: [bold]{payload['stop_reason']}[/] ({payload['seconds']:.2f} s)"
    )
    table = Table(show_header=True, header_style="bold")
    for column in ("split", "loss", "accuracy"):
        table.add_column(column)
    table.add_row("train", _fmt(final["train_loss"]), _fmt(final["train_accuracy"]))
    table.add_row("val", _fmt(final["val_loss"]), _fmt(final["val_accuracy"]))
    if final.get("test_accuracy") is not None:
        table.add_row("test", _fmt(final["test_loss"]), _fmt(final["test_accuracy"]))
    console.print(table)
