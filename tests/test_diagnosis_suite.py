"""The labelled suite: every failure mode caused on purpose must be named, and nothing else.

bpexp.labelled_suite builds each case from a clean config plus one manipulation; the
core cases run here at three seeds. benchmarks/diagnosis_eval.py runs the larger suite
and prints the confusion table, precision, recall, repair rates and the diagnosis cost.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bpexp.config import apply_overrides, config_from_dict, load_config
from bpexp.diagnose import MODES, diagnose, merge_suggestions
from bpexp.labelled_suite import CORE, NEGATIVE, POSITIVE, dataset_for, optimum, run_suite, score
from bpexp.train import train

SEEDS = (0, 1, 2)
GALLERY = Path(__file__).resolve().parent.parent / "experiments" / "failure_modes"


@pytest.fixture(scope="module", autouse=True)
def one_blas_thread():
    """The suite's matrices are tiny: on a shared 2-core machine BLAS threads only contend."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        yield


@pytest.fixture(scope="module")
def suite_runs(one_blas_thread):
    return run_suite(CORE, SEEDS)


def test_every_mode_has_a_positive_case():
    covered = set().union(*(case.expected for case in POSITIVE))
    assert covered == set(MODES)


def test_negative_controls_cover_every_bundled_dataset():
    from bpexp.config import BUNDLED_DATASETS

    names = {case.config(0).data.name for case in NEGATIVE}
    assert set(BUNDLED_DATASETS) <= names


@pytest.mark.parametrize("mode", MODES)
def test_precision_and_recall_per_mode(suite_runs, mode):
    s = score(suite_runs)[mode]
    misses = [(r.case, r.seed, r.found) for r in suite_runs if (mode in r.found) != (mode in r.expected)]
    assert s.tp > 0, f"no case of {mode} was found at all: {misses}"
    assert s.precision >= 0.9, f"{mode}: precision {s.precision:.2f}; wrong calls: {misses}"
    assert s.recall >= 0.9, f"{mode}: recall {s.recall:.2f}; misses: {misses}"


def test_negative_controls_have_no_finding_at_all(suite_runs):
    noisy = [(r.case, r.seed, r.findings) for r in suite_runs if not r.expected and r.found]
    assert noisy == []


def test_every_finding_names_epoch_evidence_and_advice(suite_runs):
    for run in suite_runs:
        for finding in run.findings:
            assert finding["evidence"], (run.case, finding)
            assert 1 <= finding["epoch"] and finding["advice"].strip()


def test_suggested_patches_validate(suite_runs):
    for run in suite_runs:
        if run.findings:
            case = next(c for c in CORE if c.name == run.case)
            patch = {}
            for finding in run.findings:
                patch.update(finding["suggested_config"])
            config_from_dict(apply_overrides(case.config(run.seed).model_dump(mode="json"), patch))


@pytest.mark.parametrize("case", POSITIVE, ids=lambda c: c.name)
def test_following_the_advice_makes_the_run_healthy(case):
    config = case.config(0)
    findings = diagnose(train(config, dataset_for(config)))
    patch = merge_suggestions(list(findings))
    assert patch, f"{case.name}: no config change suggested for {[f.mode for f in findings]}"
    fixed = config_from_dict(apply_overrides(config.model_dump(mode="json"), patch))
    again = diagnose(train(fixed, dataset_for(fixed)))
    assert [f.mode for f in again] == [], (patch, [f.to_dict() for f in again])


def test_the_oracle_puts_the_lr_cases_where_they_claim():
    # λ·λ_max at the optimum for the lr cases: 10×, 1.5× and 0.9× the stability limit of 2
    h, ce = optimum({"name": "digits"}, 0.01, 0)
    by_name = {c.name: c for c in CORE}
    for name, factor in (("diverge", 10.0), ("oscillate", 1.5), ("below_edge", 0.9)):
        lr = by_name[name].config(0).optim.lr
        assert lr * h / 2.0 == pytest.approx(factor, rel=1e-3)
    assert by_name["stop_below_floor"].config(0).train.stop_loss == pytest.approx(0.5 * ce, rel=1e-2)


def test_sorted_separable_digits_end_where_shuffled_ones_do():
    # the label of the sorted_separable negative: the order costs nothing by the end
    case = next(c for c in CORE if c.name == "sorted_separable")
    for seed in SEEDS[:2]:
        config = case.config(seed)
        shuffled = config_from_dict(apply_overrides(config.model_dump(mode="json"), {"data.order": "shuffled"}))
        a, b = train(config, dataset_for(config)), train(shuffled, dataset_for(shuffled))
        assert a.final["train_loss"] == pytest.approx(b.final["train_loss"], rel=0.05)
        assert a.final["val_accuracy"] >= b.final["val_accuracy"] - 0.02


# ------------------------------------------------------------------- gallery


def gallery_specs():
    return sorted(GALLERY.glob("*.yaml"))


def test_the_gallery_has_one_spec_per_mode():
    assert sorted(p.stem for p in gallery_specs()) == sorted(MODES)


@pytest.mark.parametrize("path", gallery_specs(), ids=lambda p: p.stem)
def test_each_gallery_spec_shows_its_mode(path):
    result = train(load_config(path))
    modes = [f.mode for f in diagnose(result)]
    assert path.stem in modes, modes
