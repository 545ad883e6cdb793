"""Smoke test of benchmarks/train_speed.py: it runs end to end and reports what it promises.

Tiny sizes, one repeat, one thread. No timing is asserted: times on a shared
machine say nothing about correctness; the benchmark itself prints the ratios.
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
