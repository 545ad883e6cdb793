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
    """What :func:`write_report` wrote, and how long each stage took (seconds)."""

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
