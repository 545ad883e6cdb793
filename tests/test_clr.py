"""Tests of bpexp.clr (Smith's Table 1 on our data) and ``bpexp clr-compare``.

- The protocol file: both budgets load; bad budgets, keys and ranges are refused by name.
- The pure parts: the grid, iterations-to-reach, the rows' texts ("never", k/n), speed-ups.
- End to end: the real protocol file's small budget, once, with the table's structure checked.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from bpexp import clr
from bpexp.cli import cli
from bpexp.errors import ConfigError

PROTOCOL = Path(__file__).resolve().parent.parent / "experiments" / "clr_vs_fixed.yaml"


# ---------------------------------------------------------------- the file


def test_the_full_budget_follows_the_paper():
    p = clr.load_protocol(PROTOCOL, "full")
    assert len(p.seeds) >= 5
    assert set(p.policies) == {"triangular", "triangular2", "exp_range"}
    assert len(p.tasks) == 3 and {"digits_perceptron", "digits_mlp"} <= set(p.tasks)
    assert 2 <= p.stepsize_epochs <= 10  # Smith's advice
    assert p.epochs == p.cycles * 2 * p.stepsize_epochs
    grid = p.grid()
    assert grid[0] == pytest.approx(p.range_test.start_lr) and grid[-1] == pytest.approx(p.range_test.end_lr)


def test_the_small_budget_replaces_only_what_it_names():
    full, small = clr.load_protocol(PROTOCOL, "full"), clr.load_protocol(PROTOCOL, "small")
    assert small.budget == "small" and len(small.seeds) < len(full.seeds)
    assert small.range_test.iterations is not None
    assert small.range_test.start_lr == full.range_test.start_lr  # one nested key changed, the rest kept
    assert small.tasks["digits_mlp"] == full.tasks["digits_mlp"]
    mnist_small, mnist_full = small.tasks["mnist_mlp"], full.tasks["mnist_mlp"]
    assert mnist_small.data.per_class == 60 and mnist_full.data.per_class is None
    assert mnist_small.model == mnist_full.model and mnist_small.data.name == mnist_full.data.name


def write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "protocol.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def minimal(**changes) -> dict:
    data = {
        "seeds": [0],
        "range_test": {"start_lr": 1e-3, "end_lr": 10.0, "iterations": 60},
        "grid_per_decade": 1,
        "stepsize_epochs": 1,
        "cycles": 1,
        "tasks": {"p": {"data": {"name": "digits"}, "model": {"kind": "perceptron"}}},
    }
    data.update(changes)
    return data


@pytest.mark.parametrize(
    "changes, budget, message",
    [
        ({}, "tiny", "unknown budget 'tiny'"),
        ({"sedes": [0]}, "full", "sedes"),
        ({"range_test": {"start_lr": 1.0, "end_lr": 0.1}}, "full", "start_lr"),
        ({"policies": ["cosine"]}, "full", "policies"),
        ({"cycles": 0}, "full", "cycles"),
        ({"tasks": {"p": {"model": {"kind": "perceptron"}, "schedule": {"name": "constant"}}}}, "full", "tasks.p.schedule"),
        ({"tasks": {"p": {"optim": {"lr": -1}}}}, "full", "optim.lr"),
        ({"tasks": {}}, "full", "tasks"),
    ],
)
def test_bad_protocols_are_refused_by_name(tmp_path, changes, budget, message):
    with pytest.raises(ConfigError, match=message):
        clr.load_protocol(write(tmp_path, minimal(**changes)), budget)


def test_grid_points_per_decade(tmp_path):
    p = clr.load_protocol(write(tmp_path, minimal(grid_per_decade=2)))
    grid = np.array(p.grid())
    assert len(grid) == 2 * 4 + 1  # 1e-3 .. 10: four decades
    assert np.allclose(np.diff(np.log10(grid)), 0.5)


# -------------------------------------------------------------- pure parts


def test_iterations_to_reach():
    curve = clr.Curve(iterations=[10, 20, 30, 40], test_accuracy=[0.5, 0.8, 0.7, 0.9], final_val_accuracy=0.9, stop_reason="max_epochs")
    assert clr.iterations_to_reach(curve, 0.8) == 20  # the first epoch at or above, not the last
    assert clr.iterations_to_reach(curve, 0.9) == 40
    assert clr.iterations_to_reach(curve, 0.95) is None


def test_rows_say_never_and_how_many_reached():
    never = clr.PolicyRow("exp_range", "0.1..0.4", [None, None], [0.8, 0.81])
    partial = clr.PolicyRow("triangular", "0.1..0.4", [100, None, 300], [0.9, 0.8, 0.9])
    skipped = clr.PolicyRow("triangular2", "no bounds", [], [])
    assert never.iterations_text() == "never" and never.reached == 0
    assert partial.iterations_text() == "200 ± 100 (2/3)"
    assert skipped.iterations_text() == "n/a" and skipped.final_text() == "n/a"
    assert never.final_text() == "0.8050 ± 0.0050"
    d = never.to_dict()
    assert d["iterations_mean"] is None and d["iterations"] == [None, None]
    json.dumps(d, allow_nan=False)


def test_speedups_only_when_every_seed_got_there():
    fixed = clr.PolicyRow("fixed", "1", [400, 600], [0.9, 0.9])
    fast = clr.PolicyRow("triangular", "a..b", [100, 150], [0.9, 0.9])
    partial = clr.PolicyRow("triangular2", "a..b", [50, None], [0.9, 0.8])
    never = clr.PolicyRow("exp_range", "a..b", [None, None], [0.8, 0.8])
    rows = [fixed, fast, partial, never]
    clr.add_speedups(rows)
    assert fixed.speedup == pytest.approx(1.0)
    assert fast.speedup == pytest.approx(500 / 125)
    assert partial.speedup is None and never.speedup is None
    assert fast.speedup_text() == "4.00×" and never.speedup_text() == "-"


def test_exp_range_gamma_leaves_the_papers_share():
    gamma = clr.exp_range_gamma(clr.PAPER_EXP_RANGE_DECAY, 1360)
    assert gamma**1360 == pytest.approx(0.99994**70000, rel=1e-9)
    assert math.isclose(clr.PAPER_EXP_RANGE_DECAY, 0.015, rel_tol=0.01)


# ------------------------------------------------------------ the bounds


@pytest.fixture(scope="module")
def digits_mlp_task():
    p = clr.load_protocol(PROTOCOL, "full")
    task = p.tasks["digits_mlp"]
    from bpexp.data import load_dataset

    return task, load_dataset(task.data, 0, dtype=task.model.dtype)


def test_linear_to_divergence_reads_a_linear_test_up_to_where_the_sweep_diverged(digits_mlp_task):
    from bpexp.lr_find import range_test

    task, dataset = digits_mlp_task
    settings = clr.RangeTestSettings(start_lr=1e-5, end_lr=10.0, mode="linear_to_divergence", iterations=150)
    got = clr.range_test_bounds(task, dataset, settings)
    sweep = range_test(task, dataset, start_lr=1e-5, end_lr=10.0, num_iterations=150, mode="exp")
    assert sweep.diverged_at is not None  # this MLP diverges inside the sweep
    assert got["range"] == [sweep.diverged_at * clr.LINEAR_START, sweep.diverged_at] and got["mode"] == "linear"
    linear = range_test(task, dataset, start_lr=got["range"][0], end_lr=got["range"][1], num_iterations=150, mode="linear")
    assert got["max_lr"] == linear.suggestions["max_lr"].lr and got["base_lr"] == linear.suggestions["base_lr"].lr
    assert got["base_lr"] < got["max_lr"] < sweep.diverged_at


def test_exp_mode_reads_the_sweep_itself(digits_mlp_task):
    from bpexp.lr_find import range_test

    task, dataset = digits_mlp_task
    got = clr.range_test_bounds(task, dataset, clr.RangeTestSettings(mode="exp", iterations=150))
    sweep = range_test(task, dataset, start_lr=1e-5, end_lr=10.0, num_iterations=150, mode="exp")
    assert got["range"] == [1e-5, 10.0] and got["max_lr"] == sweep.suggestions["max_lr"].lr


# -------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def small_report():
    protocol = clr.load_protocol(PROTOCOL, "small")
    return protocol, clr.run_protocol(protocol)


def test_small_budget_produces_the_whole_table(small_report):
    protocol, report = small_report
    assert [t.task for t in report.tasks] == list(protocol.tasks)
    for task in report.tasks:
        assert [r.policy for r in task.rows] == ["fixed", *protocol.policies]
        # every run lasts a whole number of cycles
        assert task.budget_iterations == protocol.cycles * 2 * task.stepsize_iterations
        assert task.best_fixed_lr in protocol.grid()
        assert len(task.grid) == len(protocol.grid()) and len(task.bounds) == len(protocol.seeds)
        best = max(task.grid, key=lambda g: g["val_accuracy_mean"])
        assert best["lr"] == task.best_fixed_lr
        fixed = task.rows[0]
        # the fixed λ reaches its own final accuracy, at the latest at the end of the budget
        assert fixed.reached == len(protocol.seeds)
        assert all(0 < it <= task.budget_iterations for it in fixed.iterations)
        with_bounds = sum(b["base_lr"] is not None and b["max_lr"] is not None for b in task.bounds)
        for row in task.rows[1:]:
            assert len(row.iterations) == len(row.finals) == with_bounds
            assert all(it is None or 0 < it <= task.budget_iterations for it in row.iterations)
            assert all(0.0 <= acc <= 1.0 for acc in row.finals)
            assert (row.iterations_text() == "never") == (row.reached == 0 and with_bounds > 0)
        for bound in task.bounds:
            if bound["base_lr"] is not None:
                assert bound["base_lr"] < bound["max_lr"]
    payload = report.to_dict()
    json.dumps(payload, allow_nan=False)
    markdown = report.markdown()
    assert markdown.count("| fixed |") == len(report.tasks)
    for policy in protocol.policies:
        assert markdown.count(f"| {policy} |") == len(report.tasks)


def test_cli_json_and_tables(tmp_path):
    path = write(tmp_path, minimal(seeds=[0, 1]))
    runner = CliRunner()
    result = runner.invoke(cli, ["clr-compare", str(path), "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["budget"] == "full" and len(payload["tasks"]) == 1
    assert payload["range_mode"] == "linear_to_divergence"  # the default
    assert payload["tasks"][0]["bounds"][0]["mode"] == "linear"
    rows = payload["tasks"][0]["rows"]
    assert [r["policy"] for r in rows] == ["fixed", "triangular", "triangular2", "exp_range"]
    assert all(len(r["iterations"]) == 2 for r in rows)
    human = runner.invoke(cli, ["clr-compare", str(path)], catch_exceptions=False)
    assert human.exit_code == 0 and "triangular2" in human.stdout and "final test acc." in human.stdout
    markdown = runner.invoke(cli, ["clr-compare", str(path), "--markdown", "--range-mode", "exp"], catch_exceptions=False)
    assert markdown.stdout.count("| exp_range |") == 1 and "range test exp" in markdown.stdout


def test_cli_refuses_a_missing_file(tmp_path):
    result = CliRunner().invoke(cli, ["clr-compare", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 2 and "nope.yaml" in result.stderr
