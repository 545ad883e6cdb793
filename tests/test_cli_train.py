"""Tests of ``bpexp train`` through click's CliRunner: bad input, --json, a diverged run.

Every test runs in its own empty working directory. Tests that must write nothing
pass ``--no-track`` (when the command has it) and compare the directory's listing
before and after.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from bpexp.cli import cli
from bpexp.config import config_from_dict


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("BPEXP_DEBUG", raising=False)
    return tmp_path


def no_track() -> list[str]:
    """``--no-track`` where ``bpexp train`` has it (it records to MLflow otherwise)."""
    command = cli.get_command(None, "train")
    return ["--no-track"] if any(p.name == "no_track" for p in command.params) else []


def listing(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def run(args: list[str]):
    return CliRunner().invoke(cli, ["train", *args, *no_track()])


def strict_json(text: str) -> dict:
    """Parse JSON that must hold no NaN or Infinity (JSON has neither)."""

    def refuse(constant):
        raise ValueError(f"non-standard JSON constant {constant}")

    return json.loads(text, parse_constant=refuse)


# ------------------------------------------------------------------- bad input


def write_npz(path: Path, **overrides) -> str:
    rng = np.random.default_rng(0)
    X = rng.standard_normal((60, 3))
    y = np.arange(60) % 3
    arrays = {"X_train": X[:40], "y_train": y[:40], "X_val": X[40:], "y_val": y[40:]}
    arrays.update(overrides)
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return path.name


def nan_X():
    X = np.zeros((40, 3))
    X[5, 2] = np.nan
    return X


def inf_X():
    X = np.zeros((40, 3))
    X[7, 0] = -np.inf
    return X


# (case id, files to write: name -> callable(path) returning the CLI args, expected substrings)
CASES = {
    "nan_in_X": (lambda d: ["--data-path", write_npz(d / "nan.npz", X_train=nan_X())], ["nan.npz", "NaN or inf"]),
    "inf_in_X": (lambda d: ["--data-path", write_npz(d / "inf.npz", X_train=inf_X())], ["inf.npz", "NaN or inf"]),
    "labels_not_integers": (
        lambda d: ["--data-path", write_npz(d / "float.npz", y_train=np.arange(40) % 3 + 0.25)],
        ["float.npz", "labels must be integers"],
    ),
    "labels_text": (
        lambda d: ["--data-path", write_npz(d / "text.npz", y_val=np.array(["a"] * 20))],
        ["text.npz", "labels must be integers"],
    ),
    "lengths_differ": (
        lambda d: ["--data-path", write_npz(d / "len.npz", y_train=np.arange(39) % 3)],
        ["len.npz", "40 rows but y has 39 labels"],
    ),
    "class_without_samples": (
        lambda d: ["--data-path", write_npz(d / "gap.npz", y_train=np.where(np.arange(40) % 3 == 1, 2, np.arange(40) % 3))],
        ["gap.npz", "class 1 has no training sample"],
    ),
    "unknown_dataset_flag": (lambda d: ["--dataset", "imagenet"], ["data.name must be one of", "'imagenet'"]),
    "unknown_dataset_spec": (
        lambda d: ["--spec", write_text(d / "ds.yaml", "data:\n  name: imagenet\n")],
        ["ds.yaml", "data.name must be one of", "'imagenet'"],
    ),
    "missing_data_file": (lambda d: ["--data-path", "absent.npz"], ["absent.npz", "no such file"]),
    "missing_csv_file": (lambda d: ["--data-path", "absent.csv"], ["absent.csv", "no such file"]),
    "missing_spec_file": (lambda d: ["--spec", "absent.yaml"], ["absent.yaml", "cannot read the spec"]),
    "missing_npz_array": (
        lambda d: ["--data-path", write_npz(d / "part.npz", X_val=None)],
        ["part.npz", "missing array 'X_val'"],
    ),
    "unknown_spec_key": (
        lambda d: ["--spec", write_text(d / "key.yaml", "optim:\n  lr: 0.1\n  learning_rate: 0.2\n")],
        ["key.yaml", "unknown key 'optim.learning_rate'"],
    ),
    "value_out_of_range": (
        lambda d: ["--spec", write_text(d / "range.yaml", "model:\n  dropout: 1.5\n")],
        ["range.yaml", "model.dropout", "must be < 1", "(got 1.5)"],
    ),
    "value_out_of_range_flag": (lambda d: ["--lr", "-0.5"], ["optim.lr", "must be > 0", "(got -0.5)"]),
    "malformed_yaml": (
        lambda d: ["--spec", write_text(d / "broken.yaml", "optim: {lr: 0.1\nmodel: [\n")],
        ["broken.yaml", "not valid YAML"],
    ),
    "spec_not_a_mapping": (lambda d: ["--spec", write_text(d / "list.yaml", "- 1\n")], ["list.yaml", "mapping"]),
    "csv_missing_label_column": (
        lambda d: ["--data-path", write_text(d / "t.csv", "a,b\n1,0\n2,1\n"), "--label-column", "target"],
        ["t.csv", "no label column 'target'"],
    ),
    "bad_set": (lambda d: ["--set", "optim.lr"], ["--set takes KEY=VALUE"]),
    "bad_hidden": (lambda d: ["--model", "mlp", "--hidden", "64,x"], ["--hidden", "'64,x'"]),
    "he_init_perceptron": (lambda d: ["--init", "he"], ["model.init 'he'", "perceptron"]),
    "empty_hidden": (lambda d: ["--model", "mlp", "--hidden", ""], ["model.hidden", "at least one layer"]),
    "bad_batch_size": (lambda d: ["--batch-size", "half"], ["--batch-size", "'half'"]),
}


def write_text(path: Path, text: str) -> str:
    path.write_text(text)
    return path.name


@pytest.mark.parametrize("tracked", [False, True], ids=["no-track", "tracked"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_gives_one_line_exit_2_and_writes_nothing(workdir, case, tracked):
    # tracked: the default MLflow store must not be created either (bad data fails first)
    make_args, expected = CASES[case]
    args = make_args(workdir)
    before = listing(workdir)
    if tracked:
        result = CliRunner().invoke(cli, ["train", *args, "--max-epochs", "1", "--json"])
    else:
        result = run([*args, "--max-epochs", "1", "--json"])
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
    assert result.stdout == ""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("bpexp: error: ")
    assert "Traceback" not in result.stderr
    for part in expected:
        assert part in lines[0], (part, lines[0])
    assert listing(workdir) == before


def test_internal_errors_exit_1_with_one_line(workdir, monkeypatch):
    import bpexp.train

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(bpexp.train, "train", broken)
    result = run(["--dataset", "iris", "--max-epochs", "1"])
    assert result.exit_code == 1
    assert "internal error: RuntimeError: boom" in result.stderr
    assert "Traceback" not in result.stderr


# ---------------------------------------------------------------------- --json


def test_json_is_one_object_with_the_documented_keys(workdir):
    before = listing(workdir)
    result = run(["--dataset", "iris", "--max-epochs", "3", "--lr", "0.05", "--json"])
    assert result.exit_code == 0, result.stderr
    assert result.stdout.count("\n") == 1 and result.stdout.endswith("}\n")  # exactly one object, one line
    payload = strict_json(result.stdout)
    assert {"config", "epochs", "stop_reason", "final", "history", "diagnosis", "run_id"} <= set(payload)
    assert payload["epochs"] == 3
    assert payload["stop_reason"] == "max_epochs"
    assert {"train_loss", "train_accuracy", "val_loss", "val_accuracy", "test_accuracy"} <= set(payload["final"])
    history = payload["history"]
    for key in ("epoch", "lr", "train_loss", "val_loss", "train_accuracy", "val_accuracy"):
        assert len(history[key]) == 3, key
    assert history["epoch"] == [1, 2, 3]
    assert history["lr"] == [0.05] * 3
    assert isinstance(payload["diagnosis"], list)
    # the fully resolved config: every section, every default, and it validates back to itself
    config = payload["config"]
    assert set(config) >= {"seed", "data", "model", "optim", "schedule", "train"}
    assert config["data"]["name"] == "iris" and config["optim"]["lr"] == 0.05
    assert config["optim"]["batch_size"] == 32 and "momentum" in config["optim"]
    assert config_from_dict(config).model_dump(mode="json") == config
    if no_track():
        assert payload["run_id"] is None
        assert listing(workdir) == before


def test_json_run_is_reproducible(workdir):
    args = ["--dataset", "iris", "--model", "mlp", "--hidden", "8", "--dropout", "0.2", "--max-epochs", "3", "--json"]
    first = strict_json(run(args).stdout)
    second = strict_json(run(args).stdout)
    assert first["history"] == second["history"]
    assert first["final"] == second["final"]


def test_spec_with_flags_and_set_overrides(workdir):
    spec = workdir / "s.yaml"
    spec.write_text("seed: 3\ndata:\n  name: iris\noptim:\n  lr: 0.2\ntrain:\n  max_epochs: 5\n")
    result = run(["--spec", "s.yaml", "--lr", "0.01", "--set", "train.max_epochs=2", "--set", "model.dtype=float64", "--json"])
    assert result.exit_code == 0, result.stderr
    config = strict_json(result.stdout)["config"]
    assert config["seed"] == 3
    assert config["optim"]["lr"] == 0.01  # the flag beats the spec
    assert config["train"]["max_epochs"] == 2  # so does --set
    assert config["model"]["dtype"] == "float64"


def test_diverged_run_exits_0_with_valid_json(workdir):
    before = listing(workdir)
    result = run(["--dataset", "iris", "--lr", "1e300", "--batch-size", "full", "--max-epochs", "10", "--json"])
    assert result.exit_code == 0, result.stderr
    payload = strict_json(result.stdout)  # NaN would make this fail: it must come out as null
    assert payload["stop_reason"] == "diverged"
    assert payload["epochs"] < 10
    assert payload["final"]["train_loss"] is None
    assert None in payload["history"]["train_loss"]
    if no_track():
        assert listing(workdir) == before


def test_huge_lr_diverges_with_finite_numbers_too(workdir):
    result = run(["--dataset", "iris", "--lr", "1e6", "--max-epochs", "10", "--json"])
    assert result.exit_code == 0, result.stderr
    payload = strict_json(result.stdout)
    assert payload["stop_reason"] == "diverged"


def test_summary_for_people(workdir):
    result = run(["--dataset", "iris", "--max-epochs", "2"])
    assert result.exit_code == 0, result.stderr
    assert "max_epochs" in result.stdout
    assert "val" in result.stdout and "train" in result.stdout
    with pytest.raises(json.JSONDecodeError):
        json.loads(result.stdout)


def test_train_help_lists_the_spec_flags(workdir):
    result = CliRunner().invoke(cli, ["train", "--help"])
    assert result.exit_code == 0
    for flag in ("--spec", "--set", "--json", "--lr", "--batch-size", "--patience"):
        assert flag in result.stdout


def test_stop_rules_through_the_cli(workdir):
    result = run(["--dataset", "iris", "--lr", "0.1", "--batch-size", "8", "--stop-loss", "0.5", "--max-epochs", "300", "--json"])
    payload = strict_json(result.stdout)
    assert payload["stop_reason"] == "loss_threshold"
    assert payload["history"]["train_loss"][-1] < 0.5
    assert not math.isnan(payload["final"]["val_loss"])
