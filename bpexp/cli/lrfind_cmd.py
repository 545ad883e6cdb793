"""``bpexp lr-find``: the LR range test, summarised for a person or as one JSON object."""

from __future__ import annotations

import json

import click

from bpexp.cli.options import config_from_options, spec_options
from bpexp.cli.progress import DelayedProgress
from bpexp.cli.tracking_options import tracker_from_options, tracking_options


@click.command("lr-find")
@spec_options
@click.option("--start-lr", type=float, default=None, help="Lowest λ of the range [default 1e-5].")
@click.option("--end-lr", type=float, default=None, help="Highest λ of the range [default 10].")
@click.option("--epochs", type=float, default=None, help="Length in epochs [default 8, at least 100 steps].")
@click.option("--iterations", type=int, default=None, help="Length in steps (minibatches); instead of --epochs.")
@click.option(
    "--mode",
    type=click.Choice(["exp", "linear"]),
    default="exp",
    show_default=True,
    help="How λ rises: exponentially (fastai) or linearly (Smith's paper).",
)
@click.option(
    "--plot",
    "plot_path",
    type=click.Path(dir_okay=False),
    default="lr_find.png",
    show_default=True,
    help="Write the loss and accuracy against λ here (PNG).",
)
@click.option("--no-plot", is_flag=True, help="Do not write the figure.")
@tracking_options
@click.option("--json", "as_json", is_flag=True, help="Print exactly one JSON object on stdout.")
def lrfind_command(
    spec: str | None,
    sets: tuple[str, ...],
    start_lr: float | None,
    end_lr: float | None,
    epochs: float | None,
    iterations: int | None,
    mode: str,
    plot_path: str,
    no_plot: bool,
    as_json: bool,
    tracking_uri: str | None,
    experiment: str | None,
    no_track: bool,
    **flags,
) -> None:
    """Run the LR range test: one run with λ rising, then suggest bounds for λ.

    Records the loss (raw and smoothed) and the held-out accuracy at every step,
    stops once the smoothed loss passes 4x its minimum, and suggests base_lr and
    max_lr (where the accuracy starts to rise, and where it slows, turns ragged or
    falls: Smith 2017), max_lr/4, fastai's steepest and valley. The model and data
    come from the spec and flags; the run leaves them untouched. Exit code 0 also
    when the range diverges at once or never moves (the output says so); 2 for an
    invalid range.

    \b
    Examples:
      bpexp lr-find --dataset digits
      bpexp lr-find --spec experiments/digits_mlp.yaml --mode linear --start-lr 0.001 --end-lr 3
      bpexp lr-find --model mlp --hidden 64 --iterations 300 --no-plot --json
    """
    from bpexp import lr_find
    from bpexp.data import load_dataset

    config = config_from_options(spec, sets, flags)
    # Check the range before loading data; load the data before the progress bar starts
    # its clock, so that only the test itself can make the bar appear.
    lr_find.ramp(
        lr_find.DEFAULT_START_LR if start_lr is None else start_lr,
        lr_find.DEFAULT_END_LR if end_lr is None else end_lr,
        max(iterations or 0, lr_find.FEWEST_ITERATIONS),
        mode,
    )
    dataset = load_dataset(config.data, config.seed, dtype=config.model.dtype)  # bad data: nothing written
    tracker = tracker_from_options(tracking_uri, experiment, no_track, config)  # fails fast, before the test
    kwargs = {
        "start_lr": lr_find.DEFAULT_START_LR if start_lr is None else start_lr,
        "end_lr": lr_find.DEFAULT_END_LR if end_lr is None else end_lr,
        "num_iterations": iterations,
        "epochs": epochs,
        "mode": mode,
    }
    with DelayedProgress("lr-find", 0) as progress:

        def on_step(step: int, total: int, lr: float, smooth: float) -> None:
            progress.total = total  # known once the data is loaded; read when the bar first shows
            progress.update(step, f"λ {lr:.3g}  loss {smooth:.4g}")

        result = lr_find.range_test(config, dataset, **kwargs, on_step=on_step)
    written = None if no_plot else str(lr_find.plot(result, plot_path))
    payload = result.to_dict()
    payload["plot"] = written
    if tracker.uri is not None:
        from bpexp.tracking import log_lr_find

        payload["run_id"] = log_lr_find(tracker, result, config, name=f"{config.name}-lr-find", plot_path=written)
    if as_json:
        click.echo(json.dumps(payload, allow_nan=False))
        return
    _print_summary(payload)


def _print_summary(payload: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False)
    cfg = payload["config"]
    console.print(
        f"[bold]lr-find[/]: {cfg['model']['kind']} on {cfg['data']['name'] or cfg['data']['path']}, "
        f"{cfg['optim']['name']} batch {cfg['optim']['batch_size']}, λ {payload['mode']} "
        f"{payload['start_lr']:g} → {payload['end_lr']:g}"
    )
    stop = payload["stop_reason"]
    if stop == "diverged":
        stop = f"diverged at λ={payload['diverged_at']:.3g} (smoothed loss above 4× its minimum)"
    console.print(f"{payload['iterations']} of {payload['num_iterations']} steps: {stop} ({payload['seconds']:.2f} s)")
    for line in payload["warnings"]:
        console.print(f"[bold yellow]warning:[/] {line}")
    table = Table(show_header=True, header_style="bold")
    for column in ("suggestion", "λ", "reason"):
        table.add_column(column, overflow="fold")
    for name, item in payload["suggestions"].items():
        reason = "(see the warning above)" if item["reason"] in payload["warnings"] else item["reason"]
        table.add_row(name, "-" if item["lr"] is None else f"{item['lr']:.3g}", reason)
    console.print(table)
    if payload["plot"]:
        console.print(f"plot: {payload['plot']}")
