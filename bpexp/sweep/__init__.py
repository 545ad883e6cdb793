"""Optuna sweeps over λ, the schedule and the stop thresholds, every trial an MLflow run.

- :mod:`bpexp.sweep.spec`: the sweep spec (a base experiment + a validated ``sweep:`` section).
- :mod:`bpexp.sweep.search`: samplers, pruners, a trial's config, objective values.
- :mod:`bpexp.sweep.storage`: the study storage (journal file or RDB) and cross-process locks.
- :mod:`bpexp.sweep.worker`: the trial loop each worker process runs.
- :mod:`bpexp.sweep.runner`: :func:`run_sweep`, from setup to the parent run's summary.
"""

from bpexp.sweep.runner import SweepOutcome, TrialSummary, run_sweep
from bpexp.sweep.spec import SweepSpec, load_sweep_spec, sweep_spec_from_dict

__all__ = ["SweepOutcome", "SweepSpec", "TrialSummary", "load_sweep_spec", "run_sweep", "sweep_spec_from_dict"]
