"""``bpexp clr-compare``: Smith's Table 1 (cyclical against fixed λ), reproduced on our data."""

from __future__ import annotations

import json

import click

from bpexp.cli.progress import DelayedProgress


@click.command("clr-compare")
@click.argument("protocol_file", type=click.Path(dir_okay=False))
@click.option("--budget", default="full", show_default=True, help="A budget of the protocol file: full, or small (CI).")
@click.option(
    "--range-mode",
    type=click.Choice(["exp", "linear", "linear_to_divergence"]),
    default=None,
    help="Override the protocol's range_test.mode.",
)
@click.option("--json", "as_json", is_flag=True, help="Print exactly one JSON object on stdout.")
@click.option("--markdown", is_flag=True, help="Print the tables as Markdown (for the README).")
def clr_command(protocol_file: str, budget: str, range_mode: str | None, as_json: bool, markdown: bool) -> None:
    """Compare triangular, triangular2 and exp_range with the best fixed λ (Smith 2017, Table 1).

    For each task and seed: the LR range test gives base_lr and max_lr; a grid of
    fixed λ over the same range gives the best fixed λ (on validation); the
    cyclical policies run between the bounds for a whole number of cycles. The
    table gives, per policy, the iterations needed to reach the fixed λ's final
    test accuracy ("never" if not reached) and the final test accuracy at equal
    iterations, as mean ± std over the seeds.

    \b
    Examples:
      bpexp clr-compare experiments/clr_vs_fixed.yaml
      bpexp clr-compare experiments/clr_vs_fixed.yaml --budget small --json
      bpexp clr-compare experiments/clr_vs_fixed.yaml --range-mode exp   # bounds read off a log sweep
    """
    from bpexp.clr import count_runs, load_protocol, run_protocol

    protocol = load_protocol(protocol_file, budget)
    if range_mode is not None:
        protocol = protocol.model_copy(update={"range_test": protocol.range_test.model_copy(update={"mode": range_mode})})
    with DelayedProgress(f"clr-compare ({budget})", count_runs(protocol)) as progress:
        report = run_protocol(protocol, on_run=lambda done, total, label: progress.update(done, label))
    if as_json:
        click.echo(json.dumps(report.to_dict(), allow_nan=False))
        return
    if markdown:
        click.echo(report.markdown())
        return
    _print_tables(report)


def _print_tables(report) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False)
    console.print(
        f"[bold]{report.name}[/] ({report.budget} budget, range test {report.range_mode}): every run {report.epochs} epochs = "
        f"{report.cycles} cycles of 2 × {report.stepsize_epochs} epochs ({report.seconds:.0f} s)"
    )
    for task in report.tasks:
        table = Table(
            title=f"{task.task}: {task.description}; {len(task.seeds)} seeds, {task.budget_iterations:,} iterations",
            show_header=True,
            header_style="bold",
        )
        for column in ("policy", "λ", "iterations to fixed's final acc.", "speed-up", "final test acc."):
            table.add_column(column, justify="left" if column in ("policy", "λ") else "right")
        for row in task.rows:
            table.add_row(row.policy, row.lr, row.iterations_text(), row.speedup_text(), row.final_text())
        console.print(table)
        missing = [b["seed"] for b in task.bounds if b["base_lr"] is None or b["max_lr"] is None]
        if missing:
            console.print(f"[bold yellow]warning:[/] no bounds from the range test for seeds {missing}; their cyclical runs were skipped")
