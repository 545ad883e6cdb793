"""Writing a report: records → data → figures → HTML, Markdown and the recommended spec.

:func:`write_report` is the whole pipeline for a :class:`SweepRecord`; :func:`log_report`
puts the files on the sweep's MLflow parent run under ``report/``, so the report
opens from the MLflow UI.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bpexp.report.records import SweepRecord

HTML_NAME = "report.html"
MARKDOWN_NAME = "report.md"
SPEC_NAME = "best.yaml"
ARTIFACT_DIR = "report"
DEFAULT_OUT_ROOT = "bpexp-reports"


@dataclass
class ReportFiles:
    """What :func:`write_report` wrote, and how long each stage took (seconds).

    ``timings`` holds ``data``, ``figures``, ``render`` and ``total`` (the three
    together); :func:`make_report` adds ``load`` (study and runs) and ``log`` (artifacts).
    """

    html: Path
    markdown: Path
    spec: Path | None
    timings: dict[str, float] = field(default_factory=dict)
    figures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    artifact_uri: str | None = None

    def to_json(self) -> dict[str, Any]:
        """Plain JSON values for ``--json``."""
        return {
            "html": str(self.html),
            "markdown": str(self.markdown),
            "spec": str(self.spec) if self.spec else None,
            "figures": list(self.figures),
            "notes": list(self.notes),
            "timings": {k: round(v, 3) for k, v in self.timings.items()},
            "artifact_uri": self.artifact_uri,
        }


def slug(name: str) -> str:
    """A file-system-safe version of a study or run name."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name).strip(".") or "report"


def default_out_dir(sweep: SweepRecord) -> Path:
    """``bpexp-reports/<study>`` in the working directory."""
    return Path(DEFAULT_OUT_ROOT) / slug(sweep.study_name)


def write_report(sweep: SweepRecord, out_dir: str | Path | None = None) -> ReportFiles:
    """Write ``report.html`` (self-contained), ``report.md`` and ``best.yaml`` into ``out_dir``.

    ``best.yaml`` is written only when some trial completed with a value; it
    validates with :func:`bpexp.config.config_from_dict`.

    Returns:
        The paths written and the seconds spent computing data, drawing and rendering.

    Raises:
        ConfigError: when the best trial's config no longer validates.
        OSError: when ``out_dir`` cannot be written.
    """
    from bpexp.report.data import build_report_data
    from bpexp.report.figures import draw_all
    from bpexp.report.html import render_html, render_markdown, spec_yaml

    out = Path(out_dir) if out_dir is not None else default_out_dir(sweep)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    started = time.perf_counter()
    report = build_report_data(sweep)
    timings["data"] = time.perf_counter() - started
    mark = time.perf_counter()
    images = draw_all(report)
    timings["figures"] = time.perf_counter() - mark
    mark = time.perf_counter()
    spec_path = None
    spec_text = ""
    rec = report.recommendation
    if rec is not None:
        header = (
            f"The best {'healthy ' if rec.healthy else ''}trial ({rec.number}) of {sweep.kind} {sweep.study_name}: "
            f"{rec.objective} = {rec.value:.6g}.\n"
            f"Run it with: bpexp train --spec {SPEC_NAME}"
        )
        spec_text = spec_yaml(rec.config, header)
        spec_path = out / SPEC_NAME
        spec_path.write_text(spec_text)
    html = render_html(report, images, spec_name=SPEC_NAME, spec_text=spec_text, parent_run_id=sweep.parent_run_id)
    markdown = render_markdown(
        report, html_name=HTML_NAME, spec_name=SPEC_NAME, spec_text=spec_text, parent_run_id=sweep.parent_run_id
    )
    html_path, md_path = out / HTML_NAME, out / MARKDOWN_NAME
    html_path.write_text(html, encoding="utf-8")
    md_path.write_text(markdown, encoding="utf-8")
    timings["render"] = time.perf_counter() - mark
    timings["total"] = time.perf_counter() - started
    return ReportFiles(html_path, md_path, spec_path, timings, sorted(images), list(report.notes))


def log_report(files: ReportFiles, tracker: Any, run_id: str) -> str:
    """Log the report's files on ``run_id`` under ``report/`` (via a :class:`bpexp.tracking.Tracker`).

    Returns:
        The artifact path the files went to (``report``).

    Raises:
        ServiceError: when the tracking backend cannot be reached.
    """
    with tempfile.TemporaryDirectory(prefix="bpexp-report-") as tmp:
        folder = Path(tmp) / ARTIFACT_DIR
        folder.mkdir()
        for path in (files.html, files.markdown, files.spec):
            if path is not None:
                shutil.copy2(path, folder / path.name)
        tracker.log_artifacts(run_id, tmp)
    files.artifact_uri = f"runs:/{run_id}/{ARTIFACT_DIR}"
    return ARTIFACT_DIR


def make_report(
    study: str | None = None,
    *,
    run_id: str | None = None,
    experiment: str | None = None,
    storage: str | None = None,
    tracking_uri: str | None = None,
    out_dir: str | Path | None = None,
    log: bool = True,
) -> ReportFiles:
    """Load a sweep (or one run), write its report, and log it on the sweep's parent run (or the run).

    Give one of ``study`` (an Optuna study name, in ``storage``), ``run_id`` (one
    MLflow run) or ``experiment`` alone (the latest sweep recorded in that MLflow
    experiment).

    Returns:
        The files written; ``artifact_uri`` is set when they were logged.

    Raises:
        ConfigError: for an unknown study, run or experiment, or none / several of them given.
        ServiceError: when the study storage or the tracking store cannot be reached.
    """
    from bpexp.errors import ConfigError
    from bpexp.report import load

    started = time.perf_counter()
    given = [name for name, value in (("STUDY", study), ("--run", run_id)) if value]
    if len(given) > 1:
        raise ConfigError("give a STUDY or --run RUN_ID, not both")
    if run_id:
        sweep = load.load_run(run_id, tracking_uri)
        target = run_id
    else:
        if not study and not experiment:
            raise ConfigError("give a STUDY name, --run RUN_ID, or --experiment NAME (its latest sweep)")
        sweep = load.load_sweep(study, storage=storage, tracking_uri=tracking_uri, experiment=experiment)
        target = sweep.parent_run_id
    loaded = time.perf_counter() - started
    files = write_report(sweep, out_dir)
    files.timings = {"load": loaded, **files.timings}
    if log and target and sweep.tracking_uri:
        from bpexp.tracking import make_tracker

        mark = time.perf_counter()
        log_report(files, make_tracker(sweep.tracking_uri, experiment), target)
        files.timings["log"] = time.perf_counter() - mark
    return files


def report_after_sweep(outcome: Any) -> ReportFiles | None:
    """The hook ``bpexp sweep`` runs at its end: write the sweep's report and log it on the parent run.

    The files' paths go into ``outcome.extras["report"]`` (so ``--json`` shows them). A
    report that cannot be written never fails the sweep, whose results are stored
    already: the reason goes to stderr and into ``outcome.extras["report_error"]``.

    Returns:
        The files written, or None when the report failed.
    """
    import sys

    try:
        files = make_report(
            outcome.study_name,
            storage=outcome.storage,
            tracking_uri=outcome.tracking_uri,
            log=outcome.tracking_uri is not None,
        )
    except Exception as exc:  # noqa: BLE001 - any failure here is reported, the sweep stands
        message = f"{type(exc).__name__}: {exc}"
        print(f"bpexp: warning: the sweep's report was not written ({message})", file=sys.stderr)
        outcome.extras["report_error"] = message
        return None
    outcome.extras["report"] = files.to_json()
    return files

