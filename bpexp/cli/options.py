"""Flags shared by every command that builds an experiment config from a spec."""

from __future__ import annotations

from typing import Any, Callable

import click

from bpexp.config import REMOVE, SCHEDULE_NAMES, ExperimentConfig, load_config, parse_scalar
from bpexp.errors import ConfigError

# (flag, dotted config key, click options); None as default means "leave the spec's value".
SPEC_FLAGS: list[tuple[str, str, dict[str, Any]]] = [
    ("--name", "name", {"help": "Run name."}),
    ("--seed", "seed", {"type": int, "help": "Seed for the split, init, order and dropout."}),
    ("--dataset", "data.name", {"help": "digits, iris, wine, breast_cancer, mnist, blobs, circles, moons, classification."}),
    ("--data-path", "data.path", {"help": "A .npz (X_train, y_train, X_val, y_val[, X_test, y_test]), .csv, or IDX folder."}),
    ("--label-column", "data.label_column", {"help": "Label column of a .csv file."}),
    ("--per-class", "data.per_class", {"type": int, "help": "Keep N training samples per class."}),
    ("--imbalance", "data.imbalance", {"type": float, "help": "Majority:minority ratio in the training split."}),
    ("--label-noise", "data.label_noise", {"type": float, "help": "Share of training labels replaced at random."}),
    ("--order", "data.order", {"type": click.Choice(["shuffled", "fixed", "sorted"]), "help": "Sample order per epoch."}),
    ("--model", "model.kind", {"type": click.Choice(["perceptron", "mlp"]), "help": "softmax(A·x) or an MLP."}),
    ("--hidden", "model.hidden", {"help": "MLP hidden widths, comma-separated, e.g. 128 or 256,128."}),
    ("--dropout", "model.dropout", {"type": float, "help": "MLP dropout rate on hidden layers."}),
    ("--init", "model.init", {"type": click.Choice(["zeros", "small_random", "he"]), "help": "Weight init."}),
    ("--l2", "model.l2", {"type": float, "help": "λ₂ of (λ₂/2)·‖W‖² (biases excluded)."}),
    ("--dtype", "model.dtype", {"type": click.Choice(["float32", "float64"]), "help": "Floating-point type."}),
    ("--optimizer", "optim.name", {"type": click.Choice(["sgd", "momentum", "nesterov", "adam"]), "help": "Update rule."}),
    ("--lr", "optim.lr", {"type": float, "help": "Learning rate λ."}),
    ("--momentum", "optim.momentum", {"type": float, "help": "Momentum μ."}),
    ("--batch-size", "optim.batch_size", {"help": "1 (online), N, or 'full'."}),
    ("--schedule", "schedule.name", {"type": click.Choice(SCHEDULE_NAMES[:-1]), "help": "λ schedule."}),
    ("--base-lr", "schedule.base_lr", {"type": float, "help": "Cyclical lower bound (default max/4)."}),
    ("--max-lr", "schedule.max_lr", {"type": float, "help": "Cyclical / one-cycle / cosine peak (default --lr)."}),
    ("--stepsize", "schedule.stepsize", {"type": int, "help": "Half cycle in iterations."}),
    ("--stepsize-epochs", "schedule.stepsize_epochs", {"type": float, "help": "Half cycle in epochs (2-10 advised)."}),
    ("--gamma", "schedule.gamma", {"type": float, "help": "Decay of exponential (per epoch) or exp_range (per step)."}),
    ("--max-epochs", "train.max_epochs", {"type": int, "help": "Epoch budget."}),
    ("--stop-loss", "train.stop_loss", {"type": float, "help": "Stop once the watched loss is below this."}),
    ("--stop-on", "train.stop_on", {"type": click.Choice(["train", "val"]), "help": "The loss --stop-loss watches."}),
    ("--patience", "train.patience", {"type": int, "help": "Early stopping patience on validation loss."}),
]


def _param_name(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


def spec_options(func: Callable) -> Callable:
    """Add ``--spec``, ``--set`` and every flag of :data:`SPEC_FLAGS` to a command."""
    for flag, key, extra in reversed(SPEC_FLAGS):
        help_text = f"{extra.get('help', '')} [{key}]"
        func = click.option(flag, _param_name(flag), default=None, **{**extra, "help": help_text})(func)
    func = click.option(
        "--set",
        "sets",
        multiple=True,
        metavar="KEY=VALUE",
        help="Override any spec value by its dotted key, e.g. --set train.diverge_factor=5.",
    )(func)
    func = click.option(
        "--spec", type=click.Path(dir_okay=False), default=None, help="Experiment spec (YAML); flags override it."
    )(func)
    return func


def config_from_options(spec: str | None, sets: tuple[str, ...], values: dict[str, Any]) -> ExperimentConfig:
    """Resolve a config from a spec file, the named flags and ``--set`` pairs (later wins).

    Raises:
        ConfigError: for a malformed ``--set``, a bad spec or a value out of range.
    """
    overrides: dict[str, Any] = {}
    for flag, key, _ in SPEC_FLAGS:
        value = values.get(_param_name(flag))
        if value is None:
            continue
        if key == "model.hidden":
            value = _parse_widths(value)
        elif key == "optim.batch_size":
            value = value if value == "full" else _parse_int(value, "--batch-size")
        overrides[key] = value
    if values.get("dataset") is not None and values.get("data_path") is None:
        overrides["data.path"] = REMOVE  # --dataset replaces a file the spec names
    for pair in sets:
        if "=" not in pair:
            raise ConfigError(f"--set takes KEY=VALUE, got {pair!r}")
        key, raw = pair.split("=", 1)
        overrides[key.strip()] = parse_scalar(raw)
    return load_config(spec, overrides)


def _parse_widths(text: str) -> list[int]:
    try:
        widths = [int(part) for part in str(text).split(",") if part.strip()]
    except ValueError:
        raise ConfigError(f"--hidden takes comma-separated integers such as 128 or 256,128; got {text!r}") from None
    return widths


def _parse_int(text: str, flag: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"{flag} takes a positive integer or 'full'; got {text!r}") from None
