"""Batches: a named set of experiments (train specs, range tests, sweeps) run in order, now or on a schedule.

- :mod:`bpexp.batch.spec`: the batch file, validated with every spec it names.
- :mod:`bpexp.batch.ledger`: batch runs and their experiments' states, in the tracking database.
- :mod:`bpexp.batch.locks`: the non-blocking lock that keeps two runs of a batch apart.
- :mod:`bpexp.batch.runner`: :func:`run_batch`, one batch run (new or resumed).
- :mod:`bpexp.batch.scheduler`: :func:`serve`, the batch on a cron schedule (APScheduler).
"""

from bpexp.batch.runner import BatchOutcome, ExperimentOutcome, batch_database, run_batch
from bpexp.batch.spec import BatchSpec, batch_from_dict, load_batch

__all__ = ["BatchOutcome", "BatchSpec", "ExperimentOutcome", "batch_database", "batch_from_dict", "load_batch", "run_batch"]
