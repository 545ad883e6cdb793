"""Failure-mode diagnosis: a finished run in, a list of findings out.

Each :class:`Finding` names one mode of :data:`MODES`, how sure it is, the first epoch
its evidence holds, that evidence as named numbers, one sentence of advice, and, where
the advice is a change of the config, a ``suggested_config`` patch for
:func:`bpexp.config.apply_overrides`. A healthy run has no findings.

- :func:`diagnose` takes a :class:`~bpexp.train.TrainResult`: it reads the History and
  then checks candidates physically on the final model and its data (Hessian λ_max,
  per-class recall, a nearest-neighbour reference, a few safe full-batch steps, and a
  short shuffled twin run when the order is suspect).
- :func:`diagnose_history` works from a History alone (e.g. read back from MLflow); the
  physical checks are skipped and confidences are lower.

Both are pure: no files, no network, no global state; the run's model is never changed.

Package layout: ``findings`` (vocabulary), ``signals`` (numbers read off a History),
``physics`` (measurements on the model), ``detectors`` (one rule per mode, with the
source of every threshold), ``advice`` (what to change, rounded safely).
"""

from __future__ import annotations

import math
import time
from typing import Any

from bpexp.diagnose.detectors import DETECTORS
from bpexp.diagnose.findings import MODES, Finding, merge_suggestions
from bpexp.diagnose.physics import RunPhysics
from bpexp.diagnose.signals import RunView, view_of

__all__ = ["MODES", "Finding", "diagnose", "diagnose_history", "merge_suggestions", "Diagnosis", "run_diagnosis"]


class Diagnosis(list):
    """A list of :class:`Finding` that also says what the diagnosis cost.

    Attributes:
        seconds: wall time of the whole diagnosis.
        check_seconds: wall time per physical check (``h_end``, ``h_end_bound``, ``h_init``, ``recall``,
            ``knn``, ``polish``, ``twin``), for the checks that ran.
        check_cpu_seconds: the same in CPU time of the calling thread.
    """

    seconds: float = 0.0
    check_seconds: dict[str, float]
    check_cpu_seconds: dict[str, float]

    def __init__(self, findings=(), seconds: float = 0.0, check_seconds: dict[str, float] | None = None,
                 check_cpu_seconds: dict[str, float] | None = None) -> None:
        super().__init__(findings)
        self.seconds = seconds
        self.check_seconds = dict(check_seconds or {})
        self.check_cpu_seconds = dict(check_cpu_seconds or {})


def _run(view: RunView, phys: RunPhysics | None) -> list[Finding]:
    if view.n == 0:
        return []  # nothing was trained: no evidence of anything
    found: dict[str, Finding] = {}
    for mode, detector in DETECTORS:
        finding = detector(view, phys, found)
        if finding is not None:
            finding.epoch = min(max(1, int(finding.epoch)), view.n)
            found[mode] = finding
    return [found[mode] for mode in MODES if mode in found]


def diagnose(result, *, lr_find: Any = None, twin: bool = True) -> Diagnosis:
    """Diagnose a finished run: its History first, then physical checks on its model and data.

    Args:
        result: a :class:`bpexp.train.TrainResult` (config, history, model, dataset, final).
        lr_find: an optional :class:`bpexp.lr_find.LRFindResult`; its ``suggestions``
            (name → Suggestion(lr, reason)) are preferred when advising a new λ.
        twin: allow a short shuffled twin run to confirm a suspected bad ordering
            (only ever run for a non-shuffled, minibatch run; its cost is in
            ``check_seconds["twin"]`` and the finding's evidence).

    Returns:
        A :class:`Diagnosis`: the findings in :data:`MODES` order (empty for a healthy run).
    """
    started = time.perf_counter()
    view = view_of(result.history, result.config, _summary(result.dataset), stop_reason=result.stop_reason,
                   final=result.final)
    view.lr_find = lr_find
    phys = RunPhysics(result, twin=twin)
    findings = _run(view, phys)
    return Diagnosis(findings, time.perf_counter() - started, phys.seconds, phys.cpu_seconds)


def _summary(dataset) -> dict:
    """The parts of Dataset.summary() diagnosis reads, without hashing every array for the fingerprint."""
    import numpy as np

    return {
        "name": dataset.name,
        "n_train": len(dataset.train),
        "n_val": len(dataset.val),
        "n_classes": dataset.n_classes,
        "train_class_counts": np.bincount(dataset.train.y, minlength=dataset.n_classes).tolist(),
        "val_class_counts": np.bincount(dataset.val.y, minlength=dataset.n_classes).tolist(),
    }


def diagnose_history(history, config, data_summary: dict | None, *, stop_reason: str | None = None,
                     lr_find: Any = None) -> Diagnosis:
    """Diagnose from a History alone, e.g. one read back from MLflow; physical checks are skipped.

    Args:
        history: a :class:`bpexp.train.History` (any length, NaN allowed).
        config: the run's :class:`bpexp.config.ExperimentConfig`.
        data_summary: :meth:`bpexp.data.Dataset.summary` of the run's data (class counts,
            sizes); may be empty.
        stop_reason: the run's stop reason; replayed from the stop rules when omitted.
        lr_find: as for :func:`diagnose`.

    Returns:
        A :class:`Diagnosis` of findings in :data:`MODES` order; runs shorter than five
        epochs only get low-confidence findings.
    """
    started = time.perf_counter()
    view = view_of(history, config, data_summary, stop_reason=stop_reason)
    view.lr_find = lr_find
    findings = _run(view, None)
    return Diagnosis(findings, time.perf_counter() - started)


def run_diagnosis(result, **kwargs) -> tuple[Diagnosis, float]:
    """:func:`diagnose` and the share of the run's training time it cost.

    Returns:
        ``(diagnosis, cost)`` with cost = diagnosis seconds / training seconds (inf for a
        run that took no measurable time).
    """
    diagnosis = diagnose(result, **kwargs)
    cost = diagnosis.seconds / result.seconds if result.seconds > 0 else math.inf
    return diagnosis, cost
