"""``bpexp train``: one training run, summarised for a person or as one JSON object."""

from __future__ import annotations

import json

import click

from bpexp.cli.display import fmt

from bpexp.cli.options import config_from_options, spec_options
from bpexp.cli.progress import DelayedProgress
from bpexp.cli.tracking_options import tracker_from_options, tracking_options


@click.command("train")
@spec_options
@tracking_options
@click.option("--json", "as_json", is_flag=True, help="Print exactly one JSON object on stdout.")
@click.option(
    "--apply-advice",
    is_flag=True,
    help="Re-run with the config changes the diagnosis suggests and show both runs "
    "(--json: the second run's object, with applied_advice).",
)
def train_command(
    spec: str | None,
    sets: tuple[str, ...],
    as_json: bool,
    tracking_uri: str | None,
    experiment: str | None,
    no_track: bool,
    apply_advice: bool,
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
      bpexp train --spec experiments/failure_modes/lr_too_high.yaml --apply-advice
    """
    from bpexp.data import load_dataset
    from bpexp.train import train

    from bpexp.tracking import TAG_KIND, EpochLogger, diagnose_result, log_result, open_run

    config = config_from_options(spec, sets, flags)
    # Bad data fails here, before the tracking store is touched: a bad input writes nothing.
    loaded = {"data": config.data, "dtype": config.model.dtype, "dataset": load_dataset(config.data, config.seed, config.model.dtype)}
    tracker = tracker_from_options(tracking_uri, experiment, no_track, config)  # fails fast, before training

    def dataset_for(config):
        if (config.data, config.model.dtype) != (loaded["data"], loaded["dtype"]):  # advice may change the data
            loaded.update(data=config.data, dtype=config.model.dtype,
                          dataset=load_dataset(config.data, config.seed, config.model.dtype))
        return loaded["dataset"]

    def run_once(config):
        dataset = dataset_for(config)
        with open_run(tracker, config.name, tags={TAG_KIND: "train"}) as run_id:
            logger = EpochLogger(tracker, run_id)
            with DelayedProgress(f"train {config.name}", config.train.max_epochs) as progress:

                def on_epoch(epoch, history):
                    progress.update(epoch, f"loss {history.train_loss[-1]:.4g}  val acc {history.val_accuracy[-1]:.3f}")
                    logger(epoch, history)

                result = train(config, dataset, on_epoch=on_epoch)
            findings = diagnose_result(result)
            log_result(tracker, run_id, result, findings, logger=logger)
        payload = result.to_json()
        payload["run_id"] = run_id if tracker.uri is not None else None
        if findings and not payload.get("diagnosis"):
            payload["diagnosis"] = [f.to_dict() for f in findings]
        return payload, findings

    payload, findings = run_once(config)
    if apply_advice:
        first = payload
        if not as_json:
            _print_summary(first)
        second = _rerun_with_advice(config, findings, run_once, as_json)
        if second is None:  # nothing to apply: the one run is the answer
            if not as_json:
                return
            payload = {**first, "applied_advice": []}
        else:
            payload = second
            payload["first_run"] = {k: first[k] for k in ("run_id", "stop_reason", "epochs", "final", "diagnosis")}
            if not as_json:
                _print_summary(payload)
                _print_before_after(first, payload)
                return
    if as_json:
        click.echo(json.dumps(payload, allow_nan=False))
        return
    _print_summary(payload)



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
    table.add_row("train", fmt(final["train_loss"], ".4f"), fmt(final["train_accuracy"], ".4f"))
    table.add_row("val", fmt(final["val_loss"], ".4f"), fmt(final["val_accuracy"], ".4f"))
    if final.get("test_accuracy") is not None:
        table.add_row("test", fmt(final["test_loss"], ".4f"), fmt(final["test_accuracy"], ".4f"))
    console.print(table)
    _print_findings(console, payload.get("diagnosis") or [])


def _print_findings(console, findings: list[dict]) -> None:
    """The diagnosis as a short table: mode, confidence, first epoch, advice."""
    from rich.table import Table

    if not findings:
        console.print("diagnosis: [green]healthy[/] (no failure mode found)")
        return
    table = Table(title="diagnosis", title_justify="left", show_header=True, header_style="bold")
    table.add_column("mode", style="bold red", no_wrap=True)
    table.add_column("conf", justify="right")
    table.add_column("from epoch", justify="right")
    table.add_column("advice")
    for f in findings:
        table.add_row(f["mode"], f"{f['confidence']:.2f}", str(f["epoch"]), f["advice"])
    console.print(table)


def _rerun_with_advice(config, findings, run_once, as_json: bool) -> dict | None:
    """Apply the findings' suggested_config patches to ``config`` and run it again.

    Returns:
        The second run's payload with an ``applied_advice`` list (mode, confidence,
        suggested_config per finding applied), or None when no finding suggests a change.
    """
    from bpexp.config import apply_overrides, config_from_dict
    from bpexp.diagnose import merge_suggestions

    applied = [f for f in findings if f.suggested_config]
    patch = merge_suggestions(applied)
    if not as_json:
        _print_summary_note(findings, patch)
    if not patch:
        return None
    raw = apply_overrides(config.model_dump(mode="json"), patch)
    raw["name"] = f"{config.name}-advised"
    advised = config_from_dict(raw, source="the diagnosis' advice")
    payload, _ = run_once(advised)
    payload["applied_advice"] = [
        {"mode": f.mode, "confidence": round(f.confidence, 3), "suggested_config": dict(f.suggested_config)} for f in applied
    ]
    return payload


def _print_before_after(first: dict, second: dict) -> None:
    """One line per run: its diagnosis and validation accuracy, first run then advised run."""
    from rich.console import Console

    console = Console()
    for label, payload in (("before", first), ("after", second)):
        modes = ", ".join(f["mode"] for f in payload.get("diagnosis") or []) or "healthy"
        console.print(
            f"{label:>6}: {modes}; stopped by {payload['stop_reason']} after {payload['epochs']} epochs, "
            f"val accuracy {fmt(payload['final']['val_accuracy'], '.4f')}"
        )


def _print_summary_note(findings, patch: dict) -> None:
    """Before the second run: the first run's summary and the changes about to be applied."""
    from rich.console import Console

    console = Console()
    if not findings:
        console.print("--apply-advice: the run is healthy, nothing to change")
        return
    if not patch:
        console.print("--apply-advice: no finding suggests a config change; see the advice above")
        return
    changes = ", ".join(f"{key}: {value}" for key, value in patch.items())
    console.print(f"--apply-advice: re-running with {changes}")
