"""Tests of bpexp.config: the spec's validation, its error messages, YAML loading and overrides."""

from __future__ import annotations

import math

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from bpexp.config import (
    ExperimentConfig,
    ModelConfig,
    apply_overrides,
    config_from_dict,
    json_safe,
    flatten,
    load_config,
    load_yaml,
    parse_scalar,
)
from bpexp.errors import BpexpError, ConfigError


def error_of(raw: dict) -> str:
    with pytest.raises(ConfigError) as info:
        config_from_dict(raw, source="s.yaml")
    message = str(info.value)
    assert "\n" not in message  # one line, for the CLI
    return message


def test_defaults_validate_and_round_trip():
    cfg = config_from_dict({})
    assert cfg == ExperimentConfig()
    dumped = cfg.model_dump(mode="json")
    assert set(dumped) == {"name", "experiment", "seed", "data", "model", "optim", "schedule", "train"}
    assert config_from_dict(dumped) == cfg


def test_config_error_is_a_bad_input_error():
    assert issubclass(ConfigError, BpexpError)
    assert ConfigError("x").exit_code == 2


# ----------------------------------------------------------------- unknown keys


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({"bogus": 1}, "bogus"),
        ({"optim": {"lrr": 0.1}}, "optim.lrr"),
        ({"data": {"nme": "digits"}}, "data.nme"),
        ({"schedule": {"name": "triangular", "foo": 1}}, "schedule.foo"),
        # keys that share a schedule's name are named too
        ({"schedule": {"name": "step", "step": 5}}, "schedule.step"),
        ({"data": {"cosine": 1}}, "data.cosine"),
        ({"schedule": {"name": "sequence", "stages": [{"name": "step", "epochs": 2, "step": 1}]}}, "schedule.stages.0.step"),
    ],
)
def test_unknown_key_is_named(raw, key):
    assert f"unknown key {key!r}" in error_of(raw)


# ----------------------------------------------------------------- out of range


@pytest.mark.parametrize(
    ("raw", "field", "bound", "value"),
    [
        ({"optim": {"lr": -1}}, "optim.lr", "> 0", "-1"),
        ({"optim": {"lr": 0}}, "optim.lr", "> 0", "0"),
        ({"optim": {"momentum": 1.0}}, "optim.momentum", "< 1", "1.0"),
        ({"model": {"dropout": 1.5}}, "model.dropout", "< 1", "1.5"),
        ({"model": {"l2": -0.1}}, "model.l2", ">= 0", "-0.1"),
        ({"model": {"hidden": [64, 0]}}, "model.hidden.1", ">= 1", "0"),
        ({"train": {"max_epochs": 0}}, "train.max_epochs", ">= 1", "0"),
        ({"train": {"diverge_factor": 1}}, "train.diverge_factor", "> 1", "1"),
        ({"data": {"val_fraction": 1.2}}, "data.val_fraction", "< 1", "1.2"),
        ({"data": {"label_noise": -0.5}}, "data.label_noise", ">= 0", "-0.5"),
        ({"seed": -3}, "seed", ">= 0", "-3"),
        ({"schedule": {"name": "triangular", "max_lr": -1}}, "schedule.max_lr", "> 0", "-1"),
        ({"optim": {"lr": math.nan}}, "optim.lr", "a finite number", "nan"),
        ({"optim": {"lr": math.inf}}, "optim.lr", "a finite number", "inf"),
        ({"train": {"stop_loss": math.inf}}, "train.stop_loss", "a finite number", "inf"),
    ],
)
def test_value_out_of_range_names_field_range_and_value(raw, field, bound, value):
    message = error_of(raw)
    assert message.startswith("s.yaml: ")
    assert f"{field} must be {bound}" in message
    assert f"(got {value})" in message


@pytest.mark.parametrize(
    ("raw", "pattern"),
    [
        ({"optim": {"batch_size": 0}}, r"optim.batch_size.*integer >= 1 or 'full'.*got 0"),
        ({"optim": {"batch_size": "half"}}, r"optim.batch_size.*got 'half'"),
        ({"optim": {"name": "rmsprop"}}, r"optim.name.*'sgd'.*got 'rmsprop'"),
        ({"schedule": {"name": "nope"}}, r"schedule.name must be one of.*got 'nope'"),
        ({"model": {"kind": "mlp", "init": "zeros"}}, r"model.init 'zeros'"),
        ({"model": {"kind": "mlp", "hidden": []}}, r"model.hidden must name at least one layer width"),
        ({"model": {"kind": "perceptron", "init": "he"}}, r"model.init 'he' is for ReLU layers"),
        ({"data": {"val_fraction": 0.6, "test_fraction": 0.5}}, r"val_fraction \+ data.test_fraction must be < 1"),
        ({"data": {"name": "nope"}}, r"data.name must be one of digits.*got 'nope'"),
        ({"schedule": {"name": "triangular", "base_lr": 2, "max_lr": 1}}, r"base_lr must be <"),
    ],
)
def test_other_bad_values(raw, pattern):
    import re

    assert re.search(pattern, error_of(raw)), error_of(raw)


def test_every_problem_is_reported():
    message = error_of({"optim": {"lr": -1, "lrr": 2}, "model": {"dropout": 2}})
    for part in ("optim.lr", "'optim.lrr'", "model.dropout"):
        assert part in message


def test_data_path_replaces_the_name_check():
    cfg = config_from_dict({"data": {"name": None, "path": "x.npz"}})
    assert cfg.data.path == "x.npz"


def test_batch_size_full_and_integers():
    assert config_from_dict({"optim": {"batch_size": "full"}}).optim.batch_size == "full"
    assert config_from_dict({"optim": {"batch_size": 1}}).optim.batch_size == 1
    with pytest.raises(ConfigError):
        config_from_dict({"optim": {"batch_size": True}})


def test_init_is_resolved_in_the_logged_config():
    assert ModelConfig(kind="perceptron").init == "zeros"
    assert ModelConfig(kind="mlp").init == "he"
    assert ModelConfig(kind="mlp", init="small_random").init == "small_random"
    assert config_from_dict({"model": {"kind": "mlp"}}).model_dump()["model"]["init"] == "he"


def test_dataset_flag_replaces_a_spec_file(tmp_path):
    from bpexp.cli.options import config_from_options

    spec = tmp_path / "s.yaml"
    spec.write_text("data: {path: somewhere.npz}\n")
    cfg = config_from_options(str(spec), (), {"dataset": "iris"})
    assert cfg.data.path is None and cfg.data.name == "iris"


def test_assignment_is_validated():
    cfg = config_from_dict({})
    with pytest.raises(Exception):
        cfg.optim.lr = -1.0


# ------------------------------------------------------------------------ YAML


def test_load_yaml_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"missing.yaml: cannot read the spec"):
        load_yaml(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim: [\n  lr: 1\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: not valid YAML"):
        load_yaml(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match=r"list.yaml: a spec must be a mapping of sections, got list"):
        load_yaml(listy)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert load_yaml(empty) == {}


def test_load_config_applies_overrides_and_names_the_file(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text("optim:\n  lr: 0.5\n  name: adam\nmodel:\n  kind: mlp\n")
    cfg = load_config(spec, {"optim.lr": 0.01, "train.max_epochs": 7, "model.dropout": None})
    assert (cfg.optim.lr, cfg.optim.name, cfg.train.max_epochs, cfg.model.kind) == (0.01, "adam", 7, "mlp")
    assert cfg.model.dropout == 0.0
    with pytest.raises(ConfigError, match=r"spec.yaml: optim.lr must be > 0"):
        load_config(spec, {"optim.lr": -2})
    assert load_config(None, {"seed": 4}).seed == 4


# ------------------------------------------------------------------- overrides


def test_apply_overrides_sets_dotted_keys_without_mutating():
    raw = {"optim": {"lr": 0.1}, "schedule": {"name": "triangular", "base_lr": 0.01}}
    merged = apply_overrides(raw, {"optim.lr": 0.2, "model.hidden": [3, 2], "seed": None})
    assert merged["optim"]["lr"] == 0.2
    assert merged["model"]["hidden"] == [3, 2]
    assert "seed" not in merged
    assert raw == {"optim": {"lr": 0.1}, "schedule": {"name": "triangular", "base_lr": 0.01}}
    # a new schedule drops the old one's fields; the same name keeps them
    assert apply_overrides(raw, {"schedule.name": "cosine"})["schedule"] == {"name": "cosine"}
    assert apply_overrides(raw, {"schedule.name": "triangular"})["schedule"]["base_lr"] == 0.01


@given(
    value=st.one_of(
        st.integers(-(10**9), 10**9),
        st.floats(allow_nan=False, allow_infinity=False, width=64),
        st.booleans(),
        st.lists(st.integers(0, 1000), max_size=4),
    )
)
def test_parse_scalar_reads_what_yaml_writes(value):
    text = yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()
    assert parse_scalar(text) == value


@given(text=st.text(alphabet=st.characters(codec="ascii", categories=["L"]), min_size=1, max_size=12))
def test_parse_scalar_keeps_words(text):
    parsed = parse_scalar(text)
    # YAML turns a few words into booleans or null; every other word stays text
    if text.lower() in ("true", "false", "yes", "no", "on", "off", "null", "y", "n"):
        return
    if text == "~":
        return
    assert parsed == text


def test_parse_scalar_survives_bad_yaml():
    assert parse_scalar("[1, 2") == "[1, 2"


@settings(max_examples=30, deadline=None)
@given(
    lr=st.floats(1e-6, 10.0),
    batch=st.one_of(st.just("full"), st.integers(1, 512)),
    hidden=st.lists(st.integers(1, 256), min_size=1, max_size=3),
    name=st.sampled_from(["sgd", "momentum", "nesterov", "adam"]),
    schedule=st.sampled_from(["constant", "triangular", "cosine", "one_cycle", "exp_range"]),
)
def test_resolved_config_round_trips(lr, batch, hidden, name, schedule):
    cfg = config_from_dict(
        {"optim": {"lr": lr, "batch_size": batch, "name": name}, "model": {"kind": "mlp", "hidden": hidden}, "schedule": {"name": schedule}}
    )
    again = config_from_dict(cfg.model_dump(mode="json"))
    assert again == cfg
    assert again.model_dump() == cfg.model_dump()


def test_flatten_and_json_safe():
    flat = flatten({"a": {"b": 1, "c": {"d": 2}}, "e": [1, 2], "f": {}})
    assert flat == {"a.b": 1, "a.c.d": 2, "e": "[1, 2]", "f": "{}"}
    assert json_safe(1.5) == 1.5
    assert json_safe(math.nan) is None and json_safe(-math.inf) is None and json_safe(None) is None
    assert json_safe({"a": [1, math.nan, (math.inf, "x")], "b": {"c": 2.0}}) == {"a": [1, None, [None, "x"]], "b": {"c": 2.0}}
