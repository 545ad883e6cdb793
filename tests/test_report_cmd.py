"""``bpexp report`` against a real sweep: a real Optuna study (journal file) and MLflow (SQLite).

A module fixture runs ``bpexp sweep`` once through CliRunner (a 6-trial grid on
digits, λ from too low to diverging), which writes its report at the end and logs
it on the parent run. The tests read that back through MlflowClient, run
``bpexp report`` on the study, on the experiment's latest sweep and on one run,
and check that every bad name is one line on stderr and exit code 2.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from bpexp.cli import cli
from bpexp.config import config_from_dict, load_config
from bpexp.report.records import unflatten

STUDY = "report-grid"
EXPERIMENT = "report-tests"
# λ: far too low, good, diverging; two stop thresholds. 6 trials of a few epochs each.
SPEC = {
    "name": STUDY,
    "experiment": EXPERIMENT,
    "seed": 0,
    "data": {"name": "digits"},
    "model": {"kind": "perceptron", "l2": 0.001},
    "optim": {"name": "sgd", "lr": 0.1, "batch_size": 32},
    "train": {"max_epochs": 10},
    "sweep": {
        "n_trials": 6,
        "sampler": "grid",
        "pruner": "none",
        "objective": "val_loss",
        "space": {
            "optim.lr": {"choices": [1e-5, 0.3, 300.0]},
            "train.stop_loss": {"choices": [0.3, 0.15]},
        },
    },
}


def invoke(args: list[str]):
    return CliRunner().invoke(cli, args)


def artifact_names(client, run_id: str, folder: str = "report") -> set[str]:
    return {Path(a.path).name for a in client.list_artifacts(run_id, folder)}


@pytest.fixture(scope="module")
def swept(tmp_path_factory, _mlflow_template_db):
    """A finished 6-trial sweep, run by ``bpexp sweep`` in its own folder (the report written at its end)."""
    from mlflow import MlflowClient

    root = tmp_path_factory.mktemp("sweep")
    shutil.copyfile(_mlflow_template_db, root / "mlflow.db")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    (root / "spec.yaml").write_text(yaml.safe_dump(SPEC, sort_keys=False))
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        result = invoke(["sweep", "spec.yaml", "--tracking-uri", uri, "--json"])
    assert result.exit_code == 0, result.output + str(result.exception)
    outcome = json.loads(result.stdout)
    return {"root": root, "uri": uri, "outcome": outcome, "client": MlflowClient(tracking_uri=uri)}


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("BPEXP_DEBUG", raising=False)
    return tmp_path


# ---------------------------------------------------------- the sweep's own report


def test_sweep_writes_its_report_and_logs_it_on_the_parent_run(swept, tmp_path):
    outcome, client = swept["outcome"], swept["client"]
    assert outcome["counts"]["COMPLETE"] == 6
    report = outcome["report"]
    html = swept["root"] / report["html"]
    assert html.is_file() and (swept["root"] / report["spec"]).is_file()
    assert report["artifact_uri"] == f"runs:/{outcome['parent_run_id']}/report"
    assert artifact_names(client, outcome["parent_run_id"]) == {"report.html", "report.md", "best.yaml"}
    local = Path(client.download_artifacts(outcome["parent_run_id"], "report", str(tmp_path)))
    assert (local / "report.html").read_text() == html.read_text()
    assert (local / "report.md").read_text().startswith(f"# bpexp report: {STUDY}")
    # The spec logged next to the report runs as it is.
    config = load_config(local / "best.yaml")
    best = outcome["best_trial"]
    assert config.optim.lr == best["params"]["optim.lr"]
    assert config.train.stop_loss == best["params"]["train.stop_loss"]


def test_sweep_no_report_writes_none(swept, workdir):
    (workdir / "spec.yaml").write_text(yaml.safe_dump(SPEC, sort_keys=False))
    result = invoke(["sweep", "spec.yaml", "--tracking-uri", swept["uri"], "--study-name", "no-report", "--n-trials", "1",
                     "--experiment", "report-tests-other",
                     "--storage", str(workdir / "journal"), "--no-report", "--json"])
    assert result.exit_code == 0, result.output
    outcome = json.loads(result.stdout)
    assert "report" not in outcome
    assert artifact_names(swept["client"], outcome["parent_run_id"]) == set()
    assert not (workdir / "bpexp-reports").exists()
    # The one-trial study still gives a report on demand, and it says so plainly.
    result = invoke(["report", "no-report", "--storage", str(workdir / "journal"), "--tracking-uri", swept["uri"],
                     "--out", "one", "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert any("one trial" in note for note in payload["notes"])
    assert "one trial" in Path(payload["html"]).read_text()


# ------------------------------------------------------------------ loading


def test_loaded_records_match_the_study_and_the_runs(swept):
    from bpexp.report.load import load_sweep
    from bpexp.tracking import TAG_DIAGNOSIS

    sweep = load_sweep(STUDY, storage=str(swept["root"] / "optuna.journal"), tracking_uri=swept["uri"])
    outcome, client = swept["outcome"], swept["client"]
    assert sweep.parent_run_id == outcome["parent_run_id"]
    assert sweep.objective == "val_loss" and sweep.directions == ["minimize"]
    assert set(sweep.search_space) == {"optim.lr", "train.stop_loss"}
    assert [t.number for t in sweep.trials] == [t["number"] for t in outcome["trials"]]
    for trial, summary in zip(sweep.trials, outcome["trials"]):
        assert trial.value == summary["value"] and trial.run_id == summary["run_id"]
        assert trial.params["optim.lr"] == summary["params"]["optim.lr"]
        # The history read back from the run's artifact covers every epoch it ran.
        assert trial.history["epoch"] == list(range(1, trial.epochs + 1))
        run = client.get_run(trial.run_id)
        assert run.data.tags[TAG_DIAGNOSIS] == (",".join(f["mode"] for f in trial.diagnosis) or "none")
        assert trial.final["val_loss"] == pytest.approx(run.data.metrics.get("final.val_loss", float("nan")), nan_ok=True)
    diverged = [t for t in sweep.trials if t.lr == 300.0]
    assert diverged and all(t.stop_reason == "diverged" for t in diverged)


@settings(max_examples=200, deadline=None)
@given(
    value=st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-10**12, 10**12),
        st.floats(allow_nan=False, allow_infinity=False),
        st.lists(st.integers(1, 4096), max_size=4),
    )
)
def test_params_read_back_from_mlflow_strings(value):
    # MLflow stores str(value) (bpexp.tracking); lists arrive as flatten()'s YAML flow text.
    from bpexp.config import flatten
    from bpexp.report.load import parse_param

    text = flatten({"model": {"hidden": value}})["model.hidden"] if isinstance(value, list) else str(value)
    back = parse_param("optim.lr", text)
    assert back == value and type(back) is type(value)


@given(st.text(min_size=1, max_size=20).filter(lambda t: t != "None"))
def test_name_params_stay_strings(text):
    from bpexp.report.load import parse_param

    assert parse_param("name", text) == text and parse_param("data.name", text) == text


def test_every_config_param_of_a_run_reads_back(report_sweep):
    from bpexp.report.load import config_params_of

    for trial in report_sweep.trials:
        logged = {k: "None" if v is None else str(v) for k, v in trial.params.items()}
        logged["trial_number"] = str(trial.number)  # a sweep's extra param: not part of the config
        parsed = config_params_of(logged)
        assert set(parsed) == set(trial.params)
        rebuilt = config_from_dict(unflatten(parsed))
        assert rebuilt.model_dump(mode="json") == config_from_dict(trial.config).model_dump(mode="json")


# ------------------------------------------------------------- bpexp report


def test_report_a_study_by_name(swept, workdir):
    result = invoke(["report", STUDY, "--storage", str(swept["root"] / "optuna.journal"),
                     "--tracking-uri", swept["uri"], "--out", "out", "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)  # exactly one JSON object
    assert set(payload["figures"]) >= {"landscape", "curves", "stop", "history"}
    assert Path(payload["html"]) == Path("out/report.html") and Path(payload["html"]).is_file()
    config_from_dict(yaml.safe_load(Path(payload["spec"]).read_text()))
    assert payload["artifact_uri"] == f"runs:/{swept['outcome']['parent_run_id']}/report"


def test_report_the_latest_sweep_of_an_experiment(swept, workdir):
    # The storage defaults to the journal next to the SQLite tracking file, as the sweep's did.
    result = invoke(["report", "--experiment", EXPERIMENT, "--tracking-uri", swept["uri"], "--out", "latest", "--no-log"])
    assert result.exit_code == 0, result.output
    assert "report: latest/report.html" in result.stdout
    assert f"bpexp report: {STUDY}" in Path("latest/report.md").read_text()


def test_report_one_run_logs_on_that_run(swept, workdir):
    best = swept["outcome"]["best_trial"]["run_id"]
    result = invoke(["report", "--run", best, "--tracking-uri", swept["uri"], "--out", "run", "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert any("one run" in note for note in payload["notes"])
    assert artifact_names(swept["client"], best) == {"report.html", "report.md", "best.yaml"}
    assert load_config(payload["spec"]).optim.lr == swept["outcome"]["best_trial"]["params"]["optim.lr"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["report", "no-such-study"], "no study named 'no-such-study'"),
        (["report", "--run", "0123456789abcdef0123456789abcdef"], "no MLflow run with id"),
        (["report", "--experiment", "no-such-experiment"], "no MLflow experiment named 'no-such-experiment'"),
        (["report"], "give a STUDY name"),
        (["report", STUDY, "--run", "abc"], "not both"),
    ],
)
def test_bad_names_are_one_line_and_exit_2(swept, workdir, args, message):
    extra = ["--storage", str(swept["root"] / "optuna.journal"), "--tracking-uri", swept["uri"]]
    before = sorted(p.name for p in workdir.iterdir())
    result = invoke([*args, *extra])
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    if "no study named" in message:
        assert STUDY in result.stderr  # the studies that do exist are named
    assert sorted(p.name for p in workdir.iterdir()) == before  # nothing written


def test_missing_storage_and_tracking_files_exit_2(workdir):
    result = invoke(["report", STUDY])
    assert result.exit_code == 2 and "no study storage at" in result.stderr
    result = invoke(["report", "--run", "abc"])
    assert result.exit_code == 2 and "no MLflow tracking database" in result.stderr
    assert list(workdir.iterdir()) == []  # no empty mlflow.db or journal left behind
