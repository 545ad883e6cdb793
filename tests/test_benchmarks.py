"""Smoke test of benchmarks/train_speed.py: it runs end to end and reports what it promises.

Tiny sizes, one repeat, one thread. No timing is asserted: times on a shared
machine say nothing about correctness; the benchmark itself prints the ratios.
Also the equal-work spec benchmarks/sweep_speed.py derives for 1 against 2 workers.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "train_speed.py"


@pytest.fixture(scope="module")
def report() -> dict:
    args = ["--quick", "--json", "--n", "600", "--digits-epochs", "1", "--repeats", "1", "--threads", "1"]
    done = subprocess.run([sys.executable, str(SCRIPT), *args], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)  # exactly one JSON object on stdout; progress went to stderr


def positive_time(entry: dict | None, allow_missing: bool = False) -> None:
    if entry is None and allow_missing:
        return
    assert entry["median_s"] > 0
    assert entry["min_s"] > 0
    assert len(entry["times_s"]) == 1 and all(t > 0 for t in entry["times_s"])


def test_report_names_the_machine_and_the_threads(report):
    assert report["threads"] == 1
    machine = report["machine"]
    assert {"cpu", "numpy", "OPENBLAS_CORETYPE", "threadpools", "torch"} <= set(machine)
    assert any(pool["library"] == "openblas" or pool["library"] == "mkl" for pool in machine["threadpools"])
    assert all(pool["threads"] == 1 for pool in machine["threadpools"])


def test_epoch_benchmark_times_every_contender(report):
    epoch = report["epoch"]
    assert epoch["n"] == 600 and epoch["batch"] == 128
    assert set(epoch["models"]) == {"perceptron", "mlp"}
    for kind, entry in epoch["models"].items():
        positive_time(entry["bpexp"])
        positive_time(entry["gemm_floor"])
        positive_time(entry["gather"])
        positive_time(entry["sklearn"])
        positive_time(entry["torch"], allow_missing=report["machine"]["torch"] is None)
        assert entry["gemm_per_step"], f"{kind}: the GEMM floor recorded no matrix product"
        assert set(entry["ratios"]) == {"bpexp/torch", "bpexp/gemm_floor", "bpexp/sklearn", "bpexp/(gemm_floor+gather)"}
        assert set(entry["cpu_ratios"]) == set(entry["ratios"])
        assert entry["ratios"]["bpexp/gemm_floor"] > 0
        assert all(0.0 <= acc <= 1.0 for acc in entry["train_accuracy"].values())


def test_small_benchmark_runs_train_and_the_torch_loop(report):
    small = report["small"]
    assert small["dataset"] == "digits" and small["epochs"] == 1
    for entry in small["models"].values():
        positive_time(entry["bpexp"])
        positive_time(entry["torch"], allow_missing=report["machine"]["torch"] is None)
        assert entry["steps"] == -(-entry["n_train"] // small["batch"])
        assert 0.0 <= entry["val_accuracy"]["bpexp"] <= 1.0


def test_every_goal_is_reported(report):
    goals = {(g["goal"], g["model"]) for g in report["goals"]}
    assert len(goals) == 8  # three epoch goals and one small-data goal, for each of the two models
    for g in report["goals"]:
        assert g["met"] in (True, False, None)


def test_sweep_speed_equal_work_spec_is_the_whole_grid(tmp_path):
    # 1 and 2 workers can only run the same trials if the derived spec is a valid grid
    # whose n_trials is its size (a smaller n_trials lets each worker pick its own subset)
    import importlib.util

    from bpexp.sweep import load_sweep_spec
    from bpexp.sweep.search import grid_size

    loaded = importlib.util.spec_from_file_location("sweep_speed", ROOT / "benchmarks" / "sweep_speed.py")
    sweep_speed = importlib.util.module_from_spec(loaded)
    loaded.loader.exec_module(sweep_speed)
    digits = ROOT / "experiments" / "digits_sweep.yaml"
    spec = load_sweep_spec(sweep_speed.equal_work_spec(digits, tmp_path))
    assert spec.sweep.sampler.name == "grid" and spec.sweep.pruner.name == "none" and not spec.auto_lr
    assert spec.sweep.n_trials == grid_size(spec) == 5 * 3 * 2  # schedules × batch sizes × two λ
    assert spec.space["optim.lr"].choices == [0.05, 0.2]  # half and twice the spec's optim.lr, 0.1
    assert spec.base == load_sweep_spec(digits).base  # the model, data and budget are the spec's own
    long = load_sweep_spec(sweep_speed.equal_work_spec(digits, tmp_path, lr_values=8))
    assert long.sweep.n_trials == grid_size(long) == 5 * 3 * 8
    lrs = long.space["optim.lr"].choices
    assert (lrs[0], lrs[-1]) == (0.05, 0.2) and len(set(lrs)) == 8 and lrs == sorted(lrs)
    ratios = [b / a for a, b in zip(lrs, lrs[1:])]
    assert max(ratios) / min(ratios) < 1 + 1e-4  # evenly spaced on a log scale
