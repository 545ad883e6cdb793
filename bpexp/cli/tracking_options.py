"""Flags shared by every command that records runs: --tracking-uri, --experiment, --no-track."""

from __future__ import annotations

from typing import Any, Callable

import click


def tracking_options(func: Callable) -> Callable:
    """Add ``--tracking-uri``, ``--experiment`` and ``--no-track`` to a command."""
    func = click.option(
        "--no-track", is_flag=True, help="Run without MLflow: nothing is recorded and mlflow is not imported."
    )(func)
    func = click.option(
        "--experiment",
        default=None,
        help="MLflow experiment name. [default: the spec's `experiment`, else bpexp]",
    )(func)
    func = click.option(
        "--tracking-uri",
        default=None,
        envvar="MLFLOW_TRACKING_URI",
        show_envvar=True,
        help="Where runs go: sqlite:///file.db, http://host:port (an mlflow server) or "
        "postgresql+psycopg://... [default: sqlite:///mlflow.db in the working directory]",
    )(func)
    return func


def tracker_from_options(tracking_uri: str | None, experiment: str | None, no_track: bool, config: Any = None, *,
                         process: bool = False):
    """Build and check the tracker the flags ask for, before any training starts.

    ``process`` writes from a helper process (see :mod:`bpexp.tracking_process`): its
    check only probes the URI, and the store is opened while training goes on.

    Returns:
        A :class:`bpexp.tracking.Tracker`.

    Raises:
        ServiceError: when the tracking URI cannot be reached (exit code 2), within seconds.
    """
    from bpexp.tracking import make_tracker

    name = experiment or (getattr(config, "experiment", None) if config is not None else None)
    tracker = make_tracker(tracking_uri, name, enabled=not no_track, process=process)
    tracker.check()
    return tracker
